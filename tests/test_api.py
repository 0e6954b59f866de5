"""The notebook API (`import mycroft`): owners from arrays, a trainer run, the Report object, a
scenario simulation, errors naming the keyword, and the README's example run as written.

One small real run is shared by the module: two in-process owners built from digits arrays,
the trainer on a tiny MoE, one epoch, one seed, budget 4.
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers_grpc import TRAINER_MODEL

import mycroft
from mycroft.api_report import DATAFRAME_COLUMNS
from mycroft.data import Digits

ROOT = Path(__file__).resolve().parent.parent
SCARCE = [3, 8]
SMALL_RUN = {"epochs": 1, "seeds": 1, "budgets": [4], "model": TRAINER_MODEL}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Owners "digits-a" (every digit) and "digits-b" (no 3s or 8s), still serving, and the
    report of a trainer short of 3s and 8s that asked both of them."""
    train, test = Digits().load("train"), Digits().load("test")
    perm = np.random.default_rng(0).permutation(len(train))
    mine, val, pool = perm[:300], perm[300:500], perm[500:900]
    mine = mine[~np.isin(train.labels[mine], SCARCE) | (np.arange(len(mine)) % 6 == 0)]
    parts = {
        "digits-a": pool[:200],
        "digits-b": pool[200:][~np.isin(train.labels[pool[200:]], SCARCE)],
    }
    X, y = train.features, train.labels
    out = io.StringIO()
    with contextlib.ExitStack() as stack:
        owners = [
            stack.enter_context(
                mycroft.Owner.from_arrays(
                    name, X[idx], y[idx], row_ids=train.row_ids[idx], budget=50
                )
            )
            for name, idx in parts.items()
        ]
        with contextlib.redirect_stdout(out):
            report = mycroft.acquire(
                (X[mine], y[mine]),
                (test.features[:150], test.labels[:150]),
                val=(X[val], y[val]),
                owners=owners,
                dhard_classes=[str(c) for c in SCARCE],
                training={"num_threads": 1},
                run_dir=tmp_path_factory.mktemp("api-run"),
                **SMALL_RUN,
            )
        yield SimpleNamespace(
            report=report,
            owners=owners,
            row_ids={n: set(train.row_ids[idx].tolist()) for n, idx in parts.items()},
            stdout=out.getvalue(),
        )


def test_import_mycroft_loads_no_torch_until_a_run():
    code = (
        "import sys, mycroft\n"
        "assert 'torch' not in sys.modules, 'import mycroft'\n"
        "api = (mycroft.Owner, mycroft.RemoteOwner, mycroft.acquire, mycroft.Report)\n"
        "assert 'torch' not in sys.modules, 'the API objects'\n"
        "print(mycroft.__version__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == mycroft.__version__


def test_owners_built_from_arrays_answer_and_ledgers_show_the_rows_charged(run):
    report = run.report.to_dict()
    for owner in run.owners:
        entry = next(o for o in report["owners"] if o["name"] == owner.name)
        assert entry["status"] == "ok" and entry["describe"]["row_count"] == owner.rows
        ledger = owner.ledger()
        charged = sum(q["new_rows_charged"] for q in entry["requests"])
        assert ledger["budget"]["cap"] == 50
        assert ledger["budget"]["used"] == charged == len(ledger["revealed_rows"])
        assert set(ledger["revealed_rows"]) <= run.row_ids[owner.name]
        assert {q["method"] for q in ledger["requests"]} == {"feature", "random"}
        assert ledger["budget"]["queries_used"] >= len(ledger["requests"])
    assert run.owners[0].ledger()["budget"]["used"] > 0  # digits-a holds 3s and 8s


def test_the_report_ranks_both_owners_and_reloads_from_its_file(run):
    report = run.report
    assert sorted(report.ranking) == ["digits-a", "digits-b"]
    assert report.path is not None and report.path.name == "report.json"
    assert report.path.with_name("report.html").is_file()
    assert mycroft.Report.load(report.path.parent).to_dict() == report.to_dict()
    assert report.verdict["setting"] == {
        "method": "feature",
        "budget": 4,
        "training_mode": "finetune",
    }
    assert set(report.pay) <= set(report.ranking) and report.summary
    assert run.stdout == ""  # quiet unless progress=True


def test_the_dataframe_has_one_row_per_owner_and_setting(run):
    pytest.importorskip("pandas")
    frame = run.report.to_dataframe()
    assert tuple(frame.columns) == DATAFRAME_COLUMNS
    assert len(frame) == 2 * 2  # owners x methods, one budget and training mode
    ranked = frame[frame["ranking_setting"]].sort_values("rank")
    assert list(ranked["owner"]) == run.report.ranking
    assert set(frame["method"]) == {"feature", "random"} and set(frame["budget"]) == {4}
    assert (frame["seeds"] == 1).all() and frame["dhard_gain_ci_low"].isna().all()


def test_to_dataframe_without_pandas_says_how_to_get_it(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(mycroft.MycroftError, match=r"to_dataframe needs pandas: pip install"):
        run.report.to_dataframe()


def test_html_and_the_notebook_view_escape_owner_names(run, tmp_path):
    page = run.report.html()
    assert page.startswith("<!DOCTYPE html>") and "digits-a" in page and "digits-b" in page
    hostile = "<img src=x onerror=alert(1)>"
    data = run.report.to_dict()
    for owner in data["owners"]:
        owner["name"] = owner["name"].replace("digits-a", hostile)
    for entry in data["ranking"]:
        entry["owner"] = entry["owner"].replace("digits-a", hostile)
    del data["verdict"]  # recomputed from the renamed owners
    renamed = mycroft.Report(data)
    saved = renamed.save(tmp_path / "renamed.html")  # the page, as html() renders it
    for text in (saved.read_text(), renamed._repr_html_()):
        assert hostile not in text and "&lt;img src=x onerror=alert(1)&gt;" in text


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda X, y: mycroft.Owner.from_arrays("o", X, y, budget=-1), r"^budget: must be >= 0"),
        (lambda X, y: mycroft.Owner.from_arrays("o", X, y, colour=1), r"^colour: unknown setting"),
        (lambda X, y: mycroft.Owner.from_arrays("o", X, y, token="short"), r"^token: token must"),
        (lambda X, y: mycroft.Owner.from_arrays("o", X, y[:-1]), r"^labels: 9 labels for 10"),
        (lambda X, y: mycroft.Owner.from_arrays("o", X * np.nan, y), r"^features, row 0: .*NaN"),
        (lambda X, y: mycroft.Owner.from_source("o", "nosuch"), r"^data\.source: unknown data"),
        (lambda X, y: mycroft.RemoteOwner("o", "nohost"), r"^address: expected host:port"),
        (lambda X, y: _acquire(X, y, epochs=0), r"^epochs: must be >= 1, got 0"),
        (lambda X, y: _acquire(X, y, budgets=[8, 0]), r"^budgets\[1\]: must be >= 1"),
        (lambda X, y: _acquire(X, y, training={"epoch": 2}), r"^training\.epoch: unknown field"),
        (lambda X, y: _acquire(X, y, test=(X, y)), r"^test: only with train arrays"),
        (
            lambda X, y: mycroft.simulate_scenario("digits_four_owners", epochs=0),
            r"^epochs: must be >= 1, got 0",
        ),
    ],
)
def test_bad_input_is_one_error_naming_the_keyword(build, message, tmp_path, monkeypatch):
    # Nothing may be left behind: not where the user works, not in temporary folders.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    X, y = np.zeros((10, 4), dtype=np.float32), np.arange(10) % 2
    with pytest.raises(mycroft.MycroftError, match=message):
        build(X, y)
    assert list(tmp_path.iterdir()) == []


def _acquire(X, y, test=None, **settings):
    owner = mycroft.RemoteOwner("o", "127.0.0.1:1", token="t" * 20)
    train = {"source": "digits"} if test is not None else (X, y)
    return mycroft.acquire(train, test, owners=[owner], **settings)


def test_simulating_a_scenario_object_returns_its_report(tmp_path, caplog):
    scenario = mycroft.parse_scenario(
        {
            "name": "tiny",
            "data": {"source": "digits"},
            "trainer": {"size": 200, "scarce_classes": ["3", "8"], "val_size": 150},
            "owners": [
                {"name": "relevant", "classes": ["3", "8"], "size": 60},
                {"name": "irrelevant", "classes": ["0", "1", "2"], "size": 60},
            ],
            "run": {"methods": ["random", "feature"], "budgets": [8], "seeds": 1, "epochs": 3},
        }
    )
    assert isinstance(scenario, mycroft.Scenario)
    caplog.set_level("INFO", logger="mycroft")
    report = mycroft.simulate_scenario(scenario, run_dir=tmp_path, epochs=1, progress=True)
    assert isinstance(report, mycroft.Report)
    assert sorted(report.ranking) == ["irrelevant", "relevant"]
    assert report.path.is_relative_to(tmp_path) and report.path.is_file()
    assert report.to_dict()["settings"]["epochs"] == 1  # the keyword replaced run.epochs
    assert {p.name for p in (tmp_path / "logs").iterdir()} == {"relevant.log", "irrelevant.log"}
    assert any("training the baseline" in r.getMessage() for r in caplog.records)


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    found = [b for b in blocks if "mycroft.Owner.from_arrays" in b]
    assert found, "README.md has no python example using mycroft.Owner.from_arrays"
    return found[0]


def test_the_readme_example_is_the_example_script_and_runs(tmp_path, monkeypatch, capsys):
    script = ROOT / "examples" / "notebook.py"
    assert _readme_example() in script.read_text()  # verbatim: what the README shows runs
    monkeypatch.chdir(tmp_path)
    names = runpy.run_path(str(script), run_name="__main__")
    report = names["report"]
    assert report.ranking[0] == "owner-a"  # owner-b holds no 3s or 8s
    assert (tmp_path / "runs" / "notebook" / "report.html").is_file()
    assert "'owner-a', 'owner-b'" in capsys.readouterr().out
