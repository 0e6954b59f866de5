"""The trainer's evaluation as independent tasks (trainer_node.compute): the same numbers on every
backend, retries, failures reported without stopping the rest, progress, and the [compute] table.

Tiny data (digits, a two-expert MoE, 4 optimiser steps) keeps each training run to milliseconds;
the Ray tests pay for starting a local instance (a few seconds each).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from mycroft.errors import ConfigError
from mycroft.messages import Allowance, SelectSummaryInfo
from trainer_node.compute import ComputeSettings, TaskFailure, run_tasks
from trainer_node.config import OwnerEndpoint, parse_config

if TYPE_CHECKING:  # imported where used: loky and Ray workers import this file for `_task`
    from trainer_node.acquire import OwnerOutcome, ProgressEvent
    from trainer_node.evaluate import Evaluation
    from trainer_node.messages import OwnerSubset

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install '.[ray]')")
TESTS_DIR = str(Path(__file__).resolve().parent)
SEEDS = 2


def _raw_config(tmp: Path, compute: dict[str, Any] | None = None) -> dict[str, Any]:
    from helpers_grpc import TRAINER_MODEL

    raw = {
        "trainer": {"id": "t1", "run_dir": "run"},
        "data": {"train": "train.npz", "test": "test.npz", "val_fraction": 0.4},
        "model": TRAINER_MODEL,
        "training": {"epochs": 1, "batch_size": 16, "seeds": SEEDS, "max_steps": 4},
        "dhard": {"classes": ["3", "8"]},
        "owners": [{"name": "unused", "address": "127.0.0.1:1"}],
    }
    return raw if compute is None else {**raw, "compute": compute}


def _subset(rows: Any, request_id: str) -> OwnerSubset:
    from trainer_node.messages import OwnerSubset

    n = len(rows)
    summary = SelectSummaryInfo(request_id, n, n, False, Allowance(100, n, 100 - n), {}, (), "")
    return OwnerSubset(
        features=rows.features,
        labels=rows.labels,
        row_ids=rows.row_ids,
        scores=np.ones(n, np.float32),
        summary=summary,
        attempts=1,
        seconds=0.01,
    )


@dataclasses.dataclass
class World:
    outcomes: list[OwnerOutcome]
    base: Any
    data: Any
    settings: Any


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A trained tiny baseline and two owners with two 8-row requests each, one owner also with
    a request that returned no rows: 8 cells to train and 2 distinct controls (finetune, seed,
    8 rows) that all cells share."""
    from helpers_grpc import save_scarce_trainer_files

    from trainer_node.acquire import OwnerOutcome, RequestOutcome
    from trainer_node.baseline import load_trainer_data, train_baseline

    tmp = tmp_path_factory.mktemp("compute")
    train, perm = save_scarce_trainer_files(tmp, [3, 8])
    config = parse_config(_raw_config(tmp), base_dir=tmp)
    data = load_trainer_data(config.data)
    base = train_baseline(config, data)
    outcomes = []
    for k, name in enumerate(["alpha", "beta"]):
        requests = [
            RequestOutcome(
                f"{name}-{method}",
                method,
                8,
                8,
                _subset(train.subset(perm[400 + 16 * (2 * k + i) :][:8]), f"{name}-{method}"),
            )
            for i, method in enumerate(["feature", "random"])
        ]
        if name == "beta":
            empty = _subset(train.subset(np.arange(0)), "beta-empty")
            requests.append(RequestOutcome("beta-empty", "feature", 16, 16, empty))
        endpoint = OwnerEndpoint(name=name, address="127.0.0.1:1")
        outcomes.append(OwnerOutcome(endpoint, None, True, requests, Allowance(100, 16, 84)))
    return World(outcomes, base, data, config.training)


def _evaluate(world: World, compute: ComputeSettings | None = None, **kw: Any) -> Evaluation:
    from trainer_node.evaluate import evaluate_owners

    return evaluate_owners(
        world.outcomes, world.base, world.data, world.settings, compute=compute, **kw
    )


@pytest.fixture(scope="module")
def serial(world: World) -> Evaluation:
    return _evaluate(world)


def test_serial_evaluation_has_every_cell_in_order(serial: Evaluation) -> None:
    cells = [(r.method, r.budget, r.seed) for r in serial.results["beta"]]
    feature, random_, empty = ("feature", 8), ("random", 8), ("feature", 16)
    assert cells == [(*s, seed) for s in (feature, random_, empty) for seed in range(SEEDS)]
    assert [len(rs) for rs in serial.results.values()] == [2 * SEEDS, 3 * SEEDS]
    assert serial.failures == {}
    assert all(r.dhard_gain == 0.0 and r.rows_received == 0 for r in serial.results["beta"][4:])


@pytest.fixture(scope="module")
def pooled(world: World) -> tuple[Evaluation, list[ProgressEvent]]:
    """The evaluation on a pool of two local worker processes, and its progress events."""
    events: list[ProgressEvent] = []
    return _evaluate(world, ComputeSettings(workers=2), progress=events.append), events


def test_local_workers_give_the_serial_numbers(
    pooled: tuple[Evaluation, list[ProgressEvent]], serial: Evaluation
) -> None:
    assert pooled[0].measured() == serial.measured()
    assert pooled[0].failures == {}


def test_progress_counts_completed_tasks_up_to_the_total(
    pooled: tuple[Evaluation, list[ProgressEvent]],
) -> None:
    events = pooled[1]
    # 8 cells with rows and their 2 distinct controls; the empty request trains nothing
    assert {(e.stage, e.owner, e.total) for e in events} == {("evaluate", None, 10)}
    assert [e.done for e in events] == [0, *range(1, 11), 10]
    assert sum("control" in e.message for e in events) == 2
    assert events[-1].message == "done"


@needs_ray
def test_ray_backend_on_its_own_local_instance_gives_the_local_numbers(
    world: World, serial: Evaluation
) -> None:
    import ray

    assert not ray.is_initialized()  # so the backend starts its instance, and must stop it
    on_ray = _evaluate(world, ComputeSettings(backend="ray", workers=2))
    assert on_ray.measured() == serial.measured()
    assert not ray.is_initialized()


def _fail_some(monkeypatch: pytest.MonkeyPatch, fails: dict[tuple[str, int], int]) -> list[str]:
    """train_and_measure raising for (extra rows' name, seed) the given number of times."""
    from trainer_node import evaluate as evaluate_mod

    real, calls = evaluate_mod.train_and_measure, []

    def flaky(base: Any, data: Any, extra: Any, mode: str, seed: int, settings: Any) -> Any:
        key = (extra.name, seed)
        calls.append(f"{extra.name}/{seed}")
        if fails.get(key, 0) > 0:
            fails[key] -= 1
            raise RuntimeError(f"injected failure of {extra.name} seed {seed}")
        return real(base, data, extra, mode, seed, settings)

    monkeypatch.setattr(evaluate_mod, "train_and_measure", flaky)
    return calls


def test_a_task_failing_once_is_retried(
    world: World, serial: Evaluation, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fail_some(monkeypatch, {("alpha-feature-8", 1): 1, ("control", 0): 1})
    again = _evaluate(world, ComputeSettings(retries=1))
    assert again.failures == {}
    assert again.measured() == serial.measured()
    assert calls.count("alpha-feature-8/1") == 2 and calls.count("control/0") == 2


def test_a_task_failing_always_is_reported_and_the_rest_complete(
    world: World, serial: Evaluation, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_some(monkeypatch, {("alpha-feature-8", 1): 99, ("control", 0): 99})
    broken = _evaluate(world, ComputeSettings(retries=2))
    failed = [(f.method, f.budget, f.seed) for f in broken.failures["alpha"]]
    # seed 0 needs the failed control; seed 1 of alpha-feature failed itself
    assert failed == [("feature", 8, 0), ("feature", 8, 1), ("random", 8, 0)]
    assert [(f.method, f.seed) for f in broken.failures["beta"]] == [("feature", 0), ("random", 0)]
    assert "injected failure of alpha-feature-8 seed 1 (after 3 attempts)" in (
        broken.failures["alpha"][1].error
    )
    assert broken.failures["alpha"][0].error.startswith("control run failed: RuntimeError")
    assert broken.failed_cells == 5
    survivors = {
        owner: [
            r
            for r in rs
            if (r["method"], r["budget"], r["seed"])
            not in {(f.method, f.budget, f.seed) for f in broken.failures.get(owner, [])}
        ]
        for owner, rs in serial.measured().items()
    }
    assert broken.measured() == survivors


# Module-level so that worker processes (loky, Ray) can import them: this file's folder is on
# their PYTHONPATH (the loky pool copies sys.path; the Ray test sets the variable).
def _task(marker_dir: str, task: tuple[str, int]) -> int:
    kind, value = task
    if kind == "always":
        raise ValueError(f"task {value} cannot succeed")
    if kind == "once":
        marker = Path(marker_dir) / f"tried-{value}"
        if not marker.exists():
            marker.touch()
            raise OSError(f"task {value}: first attempt fails")
    return value * 10


TASKS = [("ok", 1), ("once", 2), ("always", 3), ("ok", 4)]


def _check_retry_semantics(compute: ComputeSettings, marker_dir: Path) -> None:
    done: list[int] = []
    out = run_tasks(compute, _task, str(marker_dir), TASKS, lambda i, _: done.append(i))
    assert out[0] == 10 and out[1] == 20 and out[3] == 40
    assert out[2] == TaskFailure("ValueError: task 3 cannot succeed", compute.retries + 1)
    assert sorted(done) == [0, 1, 2, 3]
    assert (marker_dir / "tried-2").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_local_backends_retry_then_report(workers: int, tmp_path: Path) -> None:
    _check_retry_semantics(ComputeSettings(workers=workers, retries=1), tmp_path)


def test_without_retries_the_first_failure_is_final(tmp_path: Path) -> None:
    once = run_tasks(ComputeSettings(retries=0), _task, str(tmp_path), [("once", 5), ("ok", 6)])
    assert once == [TaskFailure("OSError: task 5: first attempt fails", 1), 60]


@needs_ray
def test_ray_backend_reuses_a_running_instance_and_retries_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    # Workers inherit the environment of the instance started here: they can import this file.
    monkeypatch.setenv("PYTHONPATH", ":".join([TESTS_DIR, *sys.path]))
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        _check_retry_semantics(ComputeSettings(backend="ray", retries=1), tmp_path)
        assert ray.is_initialized()  # the backend did not stop an instance it did not start
    finally:
        ray.shutdown()


@pytest.mark.parametrize(
    ("compute", "message"),
    [
        ({"backend": "spark"}, "compute.backend"),
        ({"workers": 0}, "compute.workers"),
        ({"address": "auto"}, 'compute.address: applies to backend "ray" only'),
        ({"gpus_per_task": 0.5}, 'compute.gpus_per_task: applies to backend "ray" only'),
        ({"backend": "ray", "cpus_per_task": 0}, "compute.cpus_per_task"),
        ({"backend": "ray", "gpus_per_task": -1}, "compute.gpus_per_task"),
        ({"retries": -1}, "compute.retries"),
        ({"threads": 2}, "compute.threads"),
    ],
)
def test_compute_config_errors_name_the_field(
    compute: dict[str, Any], message: str, tmp_path: Path
) -> None:
    (tmp_path / "train.npz").touch()
    (tmp_path / "test.npz").touch()
    if compute.get("backend") == "ray" and not HAVE_RAY:
        pytest.skip("ray is not installed")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_config(_raw_config(tmp_path, compute), base_dir=tmp_path)


def test_ray_tasks_training_on_a_gpu_must_ask_for_one(tmp_path: Path) -> None:
    (tmp_path / "train.npz").touch()
    (tmp_path / "test.npz").touch()
    if not HAVE_RAY:
        pytest.skip("ray is not installed")
    raw = _raw_config(tmp_path, {"backend": "ray"})
    raw["training"] = {**raw.get("training", {}), "device": "cuda"}
    with pytest.raises(ConfigError, match=r"compute\.gpus_per_task: training\.device is 'cuda'"):
        parse_config(raw, base_dir=tmp_path)
    raw["compute"]["gpus_per_task"] = 0.5  # a GPU share: accepted (the GPU is looked for later)
    assert parse_config(raw, base_dir=tmp_path).compute.gpus_per_task == 0.5


def test_ray_backend_without_ray_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "train.npz").touch()
    (tmp_path / "test.npz").touch()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ray" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match=r"compute\.backend: ray is not installed: pip install"):
        parse_config(_raw_config(tmp_path, {"backend": "ray"}), base_dir=tmp_path)


def test_compute_config_defaults_and_ray_settings(tmp_path: Path) -> None:
    (tmp_path / "train.npz").touch()
    (tmp_path / "test.npz").touch()
    assert parse_config(_raw_config(tmp_path), base_dir=tmp_path).compute == ComputeSettings(
        backend="local", workers=1, address=None, cpus_per_task=1.0, gpus_per_task=0.0, retries=1
    )
    if HAVE_RAY:
        ray = {"backend": "ray", "address": "ray://head:10001", "gpus_per_task": 0.25}
        compute = parse_config(_raw_config(tmp_path, ray), base_dir=tmp_path).compute
        assert (compute.address, compute.gpus_per_task, compute.cpus_per_task) == (
            "ray://head:10001",
            0.25,
            1.0,
        )


def test_a_run_with_a_failed_cell_reports_it_and_still_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A whole trainer run against real owners where one seed of the ranked setting of owner
    "rich" fails: the report (schema-checked when written) lists the cell, ranks "rich" on its
    remaining seed, and the verdict and the printed summary say what failed."""
    from conftest import build_real_run

    from trainer_node.report import load_report
    from trainer_node.summary import format_summary

    _fail_some(monkeypatch, {("rich-feature-4", 1): 99})
    report = load_report(build_real_run(tmp_path))
    rich = next(o for o in report["owners"] if o["name"] == "rich")
    assert [
        (f["method"], f["budget"], f["training_mode"], f["seed"])
        for f in rich["evaluation_failures"]
    ] == [("feature", 4, "finetune", 1)]
    assert (
        "injected failure of rich-feature-4 seed 1 (after 2 attempts)"
        in (rich["evaluation_failures"][0]["error"])
    )
    assert all(o["evaluation_failures"] == [] for o in report["owners"] if o["name"] != "rich")
    primary = [u for u in rich["utility"] if (u["method"], u["budget"]) == ("feature", 4)]
    assert [u["dhard_gain"]["n"] for u in primary] == [1]
    assert "rich" in [r["owner"] for r in report["ranking"]]
    entry = next(o for o in report["verdict"]["owners"] if o["name"] == "rich")
    assert entry["reason"].startswith("1 seed failed to evaluate: RuntimeError: injected")
    assert any("1 evaluation cell failed after compute.retries" in w for w in report["warnings"])
    text = format_summary(report)
    assert "rich: 1 evaluation cell failed (first: feature@4 finetune seed 1: " in text
    from trainer_node.html_report import render_html

    page = render_html(report)
    assert report["settings"]["device"] == "cpu"  # "auto" on a machine without a GPU
    assert report["settings"]["compute"] == "local, 1 worker"
    assert "cpu; evaluation local, 1 worker" in page
    assert "training feature @ 4, finetune seed 1" in page
    assert "injected failure of rich-feature-4 seed 1" in page
