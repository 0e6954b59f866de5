"""Everyday trainer use: misspelt methods fail at load, owners are checked before training,
a failed re-run keeps the last good report, and a ranking from tiny D_hard says so."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from helpers_grpc import save_scarce_trainer_files, serve_for_trainer, trainer_toml_head

from mycroft.cli import main as cli_main
from mycroft.errors import ConfigError
from trainer_node import pipeline
from trainer_node.config import parse_config
from trainer_node.pipeline import run_trainer_from_path
from trainer_node.report import load_report
from trainer_node.run_warnings import (
    ci_half_width,
    dhard_eval_warning,
    rows_for_half_width,
    undertrained_warning,
)

TOKEN = "everyday-token-0123456789"
SCARCE = [3, 8]
DEAD = "127.0.0.1:1"  # nothing listens here


# ---------------------------------------------------------------- config: method names


def _raw(**selection: Any) -> dict[str, Any]:
    return {
        "trainer": {"id": "t1"},
        "data": {"source": "digits"},
        "selection": {"methods": ["feature", "random"], "budgets": [8], **selection},
        "owners": [{"name": "a", "address": "127.0.0.1:5000"}],
    }


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (
            {"methods": ["feature", "gradiant"]},
            "selection.methods[1]: unknown method 'gradiant' (did you mean 'gradient'? known: ",
        ),
        (
            {"rank_by": {"method": "randm", "budget": 8}},
            "selection.rank_by.method: 'randm' is not in selection.methods (did you mean 'random'?",
        ),
        (
            {"params": {"feature": {"n_prob": 4}}},
            "selection.params.feature.n_prob: not a parameter of 'feature'; known: ",
        ),
        ({"params": {"random": {"k": 1}}}, "selection.params.random.k: 'random' takes no"),
    ],
)
def test_config_names_the_misspelt_selection_field(tmp_path, selection, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(_raw(**selection), tmp_path)
    assert str(exc.value).startswith(message)


def test_cli_misspelt_method_is_one_line_exit_2(tmp_path, capsys):
    config = tmp_path / "trainer.toml"
    config.write_text(
        '[trainer]\nid = "t1"\n[data]\nsource = "digits"\n'
        '[selection]\nmethods = ["feature", "gradiant"]\n'
        '[[owners]]\nname = "a"\naddress = "127.0.0.1:5000"\n'
    )
    assert cli_main(["trainer", "run", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mycroft: error: selection.methods[1]: unknown method 'gradiant'")
    assert "\n" not in err


# ---------------------------------------------------------------- warning thresholds


def test_rows_needed_for_a_ten_point_ci():
    assert rows_for_half_width(0.10) == 97  # 1.96^2 * 0.25 / 0.01 = 96.04
    assert ci_half_width(97) <= 0.10 < ci_half_width(96)
    assert math.isclose(ci_half_width(3), 1.96 * math.sqrt(0.25 / 3))


def test_dhard_eval_warning_says_resolution_and_rows_needed():
    text = dhard_eval_warning(3)
    assert text is not None
    assert "D_hard-eval has 3 rows" in text and "steps of 33 points" in text
    assert "±57 points" in text and "about 97 held-out rows" in text
    assert dhard_eval_warning(96) is not None
    assert dhard_eval_warning(97) is None


def test_undertrained_warning_only_when_accuracy_is_low_and_the_loss_still_falls():
    text = undertrained_warning(0.41, 2, [2.1, 1.6])
    assert text is not None and "training accuracy 0.41 after 2 epochs" in text
    assert "loss still falling" in text and "raise training.epochs" in text
    assert undertrained_warning(0.95, 2, [2.1, 1.6]) is None
    # A hard or noisy task that plateaued below the bar: more epochs would not help.
    assert undertrained_warning(0.62, 30, [0.91, 0.90]) is None


# ---------------------------------------------------------------- runs against real owners


@pytest.fixture(scope="module")
def owners(tmp_path_factory) -> Any:
    """Two owner servers ("good" offers every method, "narrow" only `feature`) and the trainer's
    data files; yields (folder, {name: address})."""
    tmp = tmp_path_factory.mktemp("everyday")
    train, perm = save_scarce_trainer_files(tmp, SCARCE)
    addresses: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for name, methods, idx in (
            ("good", None, perm[400:650]),
            ("narrow", ["feature"], perm[650:900]),
        ):
            selection = {} if methods is None else {"methods": methods}
            addresses[name] = serve_for_trainer(
                stack,
                tmp,
                name,
                train.subset(idx, name),
                TOKEN,
                budget={"default_cap": 1000},
                selection=selection,
            )
        yield tmp, addresses


def _write_config(folder: Path, run_id: str, owners: list[tuple[str, str, str]]) -> Path:
    """A small trainer config; `owners` is (name, address, token). D_hard-eval stays tiny: the
    classes are scarce and 90% of their hard rows are shared."""
    tables = "".join(
        f'\n[[owners]]\nname = "{n}"\naddress = "{a}"\ntoken = "{t}"\ndeadline_seconds = 20\n'
        for n, a, t in owners
    )
    path = folder / f"{run_id}.toml"
    path.write_text(
        f"""
{trainer_toml_head(run_id)}
[training]
epochs = 2
batch_size = 32
lr = 3e-3
seeds = 1
num_threads = 1

[dhard]
classes = ["3", "8"]
shared_fraction = 0.9

[selection]
methods = ["random"]
budgets = [8]
{tables}
[client]
retries = 1
backoff = 0.05
"""
    )
    return path


def test_no_usable_owner_fails_before_training(owners, monkeypatch, capsys):
    folder, addresses = owners
    config = _write_config(
        folder, "all-bad", [("dead", DEAD, TOKEN), ("impostor", addresses["good"], "wrong-token")]
    )

    def no_training(*_: Any) -> None:
        raise AssertionError("data was loaded although no owner can take part")

    monkeypatch.setattr(pipeline, "load_trainer_data", no_training)
    start = time.perf_counter()
    assert cli_main(["trainer", "run", "--config", str(config)]) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert (
        f"mycroft: error: no owner answered: dead ({DEAD}): unreachable; "
        f"impostor ({addresses['good']}): token refused"
    ) in err
    assert not (folder / "run" / "all-bad").exists()


def test_good_run_then_failed_rerun_keeps_the_last_good_report(owners, capsys):
    folder, addresses = owners
    good = _write_config(
        folder, "first", [("good", addresses["good"], TOKEN), ("impostor", addresses["good"], "x")]
    )
    assert run_trainer_from_path(good) == 0
    out = capsys.readouterr()
    # The wrong token is reported before training, once, naming the owner.
    assert f"mycroft: warning: impostor ({addresses['good']}): token refused" in out.err
    run_dir = folder / "run"
    latest = load_report(run_dir / "report.json")
    assert latest == load_report(run_dir / "first" / "report.json")
    assert (run_dir / "report.html").read_bytes() == (
        run_dir / "first" / "report.html"
    ).read_bytes()
    owners_by_name = {o["name"]: o for o in latest["owners"]}
    assert owners_by_name["impostor"]["status"] == "failed"
    assert owners_by_name["impostor"]["error_code"] == "UNAUTHENTICATED"
    assert [r["owner"] for r in latest["ranking"]] == ["good"]
    # Three-odd held-out rows: the report and the terminal both say the ranking is noise.
    n_eval = latest["dhard"]["eval_total"]
    assert 0 < n_eval < 97
    tiny = [w for w in latest["warnings"] if w.startswith(f"D_hard-eval has {n_eval} rows")]
    assert len(tiny) == 1 and "about 97 held-out rows" in tiny[0]
    assert f"warning: D_hard-eval has {n_eval} rows" in out.out

    # Re-run whose only owner offers none of the methods: nothing is ranked.
    before = (run_dir / "report.json").read_bytes()
    failed = _write_config(folder, "second", [("narrow", addresses["narrow"], TOKEN)])
    assert run_trainer_from_path(failed) == 1
    err = capsys.readouterr().err
    assert "narrow" in err and "does not offer 'random'" in err  # said at pre-flight
    assert (run_dir / "report.json").read_bytes() == before
    second = json.loads((run_dir / "second" / "report.json").read_text())
    assert second["ranking"] == [] and second["run_id"] == "second"
    assert (run_dir / "second" / "report.html").is_file()
    assert (
        f"this run's report is {run_dir.resolve() / 'second' / 'report.json'}; "
        f"the last good report {run_dir.resolve() / 'report.json'} is kept"
    ) in err
