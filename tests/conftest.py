"""Shared fixtures. `data` (digits, the owner's rows) and `model` (a tiny MoE for them) serve the
owner tests, once per module. `real_report` is one small but real trainer run, shared by the
report tests.

Three in-process owner servers on loopback gRPC plus a fourth owner pointed at a dead address,
digits, a tiny MoE, 1 epoch, two budgets (so the budget plot exists), two seeds (so gains have
error bars) and full information (so the agreement section exists). Built once per session.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REAL_RUN_TOKEN = "report-fixture-token-0123456789"
REAL_RUN_SCARCE = [3, 8]  # classes the trainer barely has: its D_hard


# Few, small steps: one epoch at batch 16 still moves the tiny model off chance, so the gains
# and plots are not all zero.
REAL_RUN_TRAINING: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 16,
    "lr": 1e-2,
    "seeds": 2,
    "num_threads": 1,
}


@pytest.fixture(scope="module")
def data():
    from helpers_grpc import digits_data

    return digits_data()


@pytest.fixture(scope="module")
def model(data) -> bytes:
    from helpers_grpc import tiny_model_bytes

    return tiny_model_bytes(data)


def build_real_run(tmp: Path, training: dict[str, Any] | None = None) -> Path:
    """Serve three owners, run the trainer against them and a dead address; the report path."""
    from helpers_grpc import TRAINER_MODEL, save_scarce_trainer_files, serve_for_trainer

    from trainer_node.config import parse_config as trainer_config
    from trainer_node.pipeline import REPORT_NAME, run_trainer

    train, perm = save_scarce_trainer_files(tmp, REAL_RUN_SCARCE)
    # Owners of different worth: rich in the scarce classes, a generic slice, none of them.
    pool = train.subset(perm[400:1000])
    scarce = np.flatnonzero(np.isin(pool.labels, REAL_RUN_SCARCE))
    other = np.flatnonzero(~np.isin(pool.labels, REAL_RUN_SCARCE))
    parts = {
        "rich": np.concatenate([scarce[:40], other[:40]]),
        "mixed": np.arange(200, 280),
        "useless": other[100:180],
    }
    owners: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        for name, idx in parts.items():
            address = serve_for_trainer(stack, tmp, name, pool.subset(idx, name), REAL_RUN_TOKEN)
            owners.append({"name": name, "address": address})
        owners.append({"name": "dead", "address": "127.0.0.1:1", "deadline_seconds": 2})
        raw = {
            "trainer": {"id": "t1", "run_dir": "run", "run_id": "report-fixture"},
            "data": {"train": "train.npz", "test": "test.npz", "val_fraction": 0.4},
            "model": TRAINER_MODEL,
            "training": training or REAL_RUN_TRAINING,
            "dhard": {"classes": ["3", "8"]},
            "selection": {"methods": ["feature", "random", "full"], "budgets": [4, 8]},
            "owners": [{**o, "token": REAL_RUN_TOKEN} for o in owners],
            "client": {"retries": 0, "backoff": 0.05, "concurrency": 4},
        }
        config = trainer_config(raw, base_dir=tmp)
        run_trainer(config)
    return Path(config.run_dir) / REPORT_NAME


@pytest.fixture(scope="session")
def real_report_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a report.json written by `run_trainer` against real owners (schema-validated)."""
    return build_real_run(tmp_path_factory.mktemp("real_run"))


@pytest.fixture(scope="session")
def real_report(real_report_path: Path) -> dict[str, Any]:
    """The real run's report as a dict; tests must copy it before changing it."""
    return json.loads(real_report_path.read_text(encoding="utf-8"))
