"""Progress as a user sees it: bars with "k of N" on a terminal, periodic plain lines in logs,
nothing with --quiet. The terminal test runs the real CLI under a pseudo-terminal."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_cli_simulation import TINY_SCENARIO

from mycroft import progress
from mycroft.progress import StageBars
from trainer_node.acquire import ProgressEvent

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def progress_enabled() -> Iterator[None]:
    progress.configure(True)
    yield
    progress.configure(True)


def run_in_pty(args: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run `args` with stdin, stdout and stderr on a pseudo-terminal; exit code and output."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal's other end has exited
                break
            if not chunk:
                break
            chunks.append(chunk)
        else:
            proc.kill()
            pytest.fail(f"{args} did not finish within {timeout:.0f} s")
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_simulate_on_a_terminal_draws_bars_with_counts(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY_SCENARIO)
    args = [sys.executable, "-m", "mycroft", "simulate", "--scenario", str(scenario)]
    code, output = run_in_pty([*args, "--out", str(tmp_path / "run")], tmp_path, timeout=240)
    text = ANSI_ESCAPE.sub("", output)
    assert "Traceback" not in text, text[-4000:]
    assert code == 0, text[-4000:]
    # Tiny scenario: each owner answers 2 requests; 3 owners x 2 requests x 1 seed to evaluate.
    assert re.search(r"acquire relevant: .* 2 of 2", text)
    assert re.search(r"evaluate: .* 5 of 5", text)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    # The simulation knows which rows it flipped: each request says what share it got of them
    # (none from the clean owners; no sub-population here). The noisy owner's flipped rows
    # mostly carry labels outside D_hard's classes, which neither method asks for: its share
    # is small but known (the exact values are checked in test_subpop).
    truth = {
        o["name"]: [q["truth"] for q in o["requests"] if q["rows_received"]]
        for o in report["owners"]
    }
    assert all(t["needle"] is None for ts in truth.values() for t in ts)
    assert all(t["wrong_label"] == 0.0 for t in truth["relevant"] + truth["irrelevant"])
    assert len(truth["noisy"]) == 2 and all(0 <= t["wrong_label"] < 0.3 for t in truth["noisy"])
    # and prints it beside the comparison with random rows
    assert re.search(r"noisy\s+[+-]\d.*wrong labels \d+% / \d+%", text)


def evaluate_events(clock: FakeClock, bars: StageBars, steps: list[tuple[float, int]]) -> None:
    for at, done in steps:
        clock.now = at
        bars(ProgressEvent("evaluate", f"cell {done}", None, done, 40))


def test_off_a_terminal_a_plain_line_every_period_and_at_the_end(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="mycroft.progress")
    clock = FakeClock()
    with StageBars(report_every=10, clock=clock) as bars:
        bars(ProgressEvent("acquire", "querying 3 owners"))  # no counts: the stage log says it
        evaluate_events(clock, bars, [(0, 0), (5, 5), (62, 12), (65, 13), (200, 40), (201, 40)])
    assert [r.getMessage() for r in caplog.records] == [
        "evaluate: 12 of 40 (30%), elapsed 1m02s, ETA 2m25s",
        "evaluate: 40 of 40 (100%), elapsed 3m20s, done",
    ]


def test_quiet_shows_nothing_on_a_terminal_or_in_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    progress.configure(False)
    caplog.set_level(logging.INFO, logger="mycroft.progress")
    for stream in (FakeTerminal(), io.StringIO()):
        monkeypatch.setattr(sys, "stderr", stream)
        clock = FakeClock()
        with StageBars(report_every=10, clock=clock) as bars:
            evaluate_events(clock, bars, [(0, 0), (30, 20), (60, 40)])
        assert stream.getvalue() == ""
    assert caplog.records == []


def test_terminal_bars_show_counts_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with StageBars() as bars:
        bars(ProgressEvent("baseline", "loading data"))
        for done in range(3):
            bars(ProgressEvent("acquire", f"relevant: request {done}", "relevant", done, 4))
    text = ANSI_ESCAPE.sub("", terminal.getvalue())
    assert re.search(r"acquire relevant: request 2 .* 2 of 4 .*ETA", text)
    assert "baseline: loading data" in text


def test_baseline_training_counts_epochs(tmp_path: Path) -> None:
    from mycroft.data import Digits, save_npz
    from trainer_node.baseline import load_trainer_data, train_baseline
    from trainer_node.config import parse_config

    train = Digits().load("train")
    keep = np.flatnonzero(~np.isin(train.labels, [3, 8]) | (np.arange(len(train)) % 6 == 0))
    save_npz(train.subset(keep[:400], "trainer"), tmp_path / "train.npz")
    save_npz(Digits().load("test").subset(np.arange(100), "test"), tmp_path / "test.npz")
    config = parse_config(
        {
            "trainer": {"id": "t1", "run_dir": "run"},
            "data": {"train": "train.npz", "test": "test.npz", "val_fraction": 0.4},
            "model": {"num_experts": 2, "top_k": 1, "embed_dim": 8, "stem_dim": 16},
            "training": {"epochs": 3, "batch_size": 32, "seeds": 1, "num_threads": 1},
            "dhard": {"classes": ["3", "8"]},
            "owners": [{"name": "unused", "address": "127.0.0.1:1"}],
        },
        base_dir=tmp_path,
    )
    events: list[ProgressEvent] = []
    train_baseline(config, load_trainer_data(config.data), events.append)
    assert [(e.stage, e.done, e.total) for e in events] == [("baseline", k, 3) for k in range(4)]
