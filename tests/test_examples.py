"""The README walkthroughs run as written: `make example`, then `make example-owner` in one
terminal and `make example-trainer` in another (and the same for the CSV example).

The end-to-end tests run those make targets on a copy of examples/ whose fixed ports are
rewritten to free ones (`make ... EXAMPLES=<copy>`), so they never clash with a real owner.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from owner_node.config import load_config as load_owner_config
from trainer_node.baseline import load_trainer_data
from trainer_node.config import load_config as load_trainer_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
# (owner config, trainer config, token file, env var the make target fills) per walkthrough.
WALKTHROUGHS = {
    "digits": ("owner.toml", "trainer.toml", "owner-a_trainer-1.token", "MYCROFT_TOKEN_OWNER_A"),
    "csv": (
        "csv/owner.toml",
        "csv/trainer.toml",
        "site-south_trainer-1.token",
        "MYCROFT_TOKEN_SITE_SOUTH",
    ),
}
TARGETS = {"digits": "example", "csv": "example-csv"}


def make(*args: str) -> list[str]:
    """A make command in the repository root, using this interpreter's environment and never
    reinstalling it (other work may have touched pyproject.toml)."""
    return ["make", "-s", "-C", str(ROOT), "-o", ".venv/.installed", f"BIN={BIN}", *args]


def copy_examples(tmp_path: Path) -> Path:
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns(".secrets", "certs", "*-state"))
    return copy


def create_tokens(examples: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        make("example", f"EXAMPLES={examples}"), capture_output=True, text=True, timeout=60
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _make_available():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")


def test_make_example_creates_private_tokens_once(tmp_path):
    examples = copy_examples(tmp_path)
    result = create_tokens(examples)
    assert result.returncode == 0, result.stderr
    secrets_dir = examples / ".secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    tokens = {}
    for _, _, token_name, _ in WALKTHROUGHS.values():
        path = secrets_dir / token_name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        tokens[token_name] = path.read_text().strip()
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", tokens[token_name]), "24 random bytes, base64url"
    assert len(set(tokens.values())) == len(tokens), "each owner-trainer pair has its own token"
    # A second run (every make example-* target runs it) keeps the tokens a running owner holds.
    assert create_tokens(examples).returncode == 0
    for name, value in tokens.items():
        assert (secrets_dir / name).read_text().strip() == value


def test_the_secrets_the_examples_create_are_ignored_by_git():
    probe = ["examples/.secrets/owner-a_trainer-1.token", "examples/owner-a-state/ledger.db"]
    result = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", *probe],
        capture_output=True,
        text=True,
    )
    if result.returncode == 128:
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    assert result.stdout.split() == probe


@pytest.mark.parametrize("walkthrough", list(WALKTHROUGHS))
def test_owner_and_trainer_examples_name_each_other_and_share_one_token(
    tmp_path, walkthrough, monkeypatch
):
    """The trainer's id is the owner's trainer id, it calls the owner by its name at its listen
    address, and the make target hands the trainer the very token the owner reads."""
    owner_file, trainer_file, token_name, env_var = WALKTHROUGHS[walkthrough]
    examples = copy_examples(tmp_path)
    assert create_tokens(examples).returncode == 0
    owner = load_owner_config(examples / owner_file)
    target = f"{TARGETS[walkthrough]}-trainer"
    dry_run = subprocess.run(
        make("-n", target, f"EXAMPLES={examples}"), capture_output=True, text=True, timeout=60
    )
    assert dry_run.returncode == 0, dry_run.stderr
    token_file = examples / ".secrets" / token_name
    assert f'{env_var}="$(cat {token_file})"' in dry_run.stdout
    assert str(examples / trainer_file) in dry_run.stdout
    monkeypatch.setenv(env_var, token_file.read_text().strip())
    trainer = load_trainer_config(examples / trainer_file)

    assert [t.id for t in owner.trainers] == [trainer.id]
    assert [o.name for o in trainer.owners] == [owner.owner.name]
    assert trainer.owners[0].address == owner.owner.listen
    assert trainer.owners[0].token == owner.trainers[0].token


def test_csv_data_is_what_its_generator_writes(tmp_path):
    generator = EXAMPLES / "csv" / "make_data.py"
    result = subprocess.run(
        [sys.executable, str(generator), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    written = sorted(tmp_path.glob("*.csv"))
    assert [p.name for p in written] == ["machines-site-south.csv", "machines-trainer.csv"]
    for path in written:
        committed = EXAMPLES / "csv" / path.name
        assert committed.read_bytes() == path.read_bytes(), f"rerun {generator}"
        assert committed.stat().st_size < 100_000


def test_csv_trainer_split_matches_the_documented_arithmetic(monkeypatch):
    """README and examples/csv/trainer.toml: 450 rows at val_fraction 0.25 give 113 test,
    84 validation and 253 training rows."""
    monkeypatch.setenv("MYCROFT_TOKEN_SITE_SOUTH", "x" * 32)
    data = load_trainer_data(load_trainer_config(EXAMPLES / "csv" / "trainer.toml").data)
    assert (len(data.train), len(data.val), len(data.test)) == (253, 84, 113)
    assert data.class_names == ("ok", "worn", "failing")
    assert data.train.feature_names == (
        "temperature",
        "vibration",
        "pressure",
        "current",
        "rpm",
        "age_years",
    )


def test_72_row_csv_split_from_the_readme(tmp_path):
    """README's worked example: 72 rows in 3 classes of 24 at val_fraction 0.5 train on 18."""
    rows = ["x,label"] + [f"{i},{'abc'[i % 3]}" for i in range(72)]
    (tmp_path / "small.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "trainer.toml"
    config.write_text(
        '[trainer]\nid = "t"\n[data]\nsource = "csv"\npath = "small.csv"\n'
        'label_column = "label"\nval_fraction = 0.5\n'
        '[[owners]]\nname = "o"\naddress = "127.0.0.1:1"\n'
    )
    data = load_trainer_data(load_trainer_config(config).data)
    assert (len(data.test), len(data.val), len(data.train)) == (36, 18, 18)


def _run_walkthrough(tmp_path: Path, walkthrough: str) -> tuple[dict, list[dict], float]:
    """make example-owner in the background, make example-trainer to the end; the report,
    the owner's ledger and the trainer's wall time."""
    owner_file, trainer_file, _, _ = WALKTHROUGHS[walkthrough]
    examples = copy_examples(tmp_path)
    port = free_port()
    for name in (owner_file, trainer_file):
        path = examples / name
        text = path.read_text()
        where = re.compile(r'^((?:listen|address) *= *"127\.0\.0\.1):\d+"', re.MULTILINE)
        text, count = where.subn(rf'\1:{port}"', text)
        assert count == 1, f"{name}: one address on loopback expected"
        path.write_text(text)
    target = TARGETS[walkthrough]
    log = (tmp_path / "owner.log").open("w")
    owner = subprocess.Popen(
        make(f"{target}-owner", f"EXAMPLES={examples}"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: make, the shell and the owner
    )
    owner_config = str(examples / owner_file)
    try:
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                [BIN / "mycroft", "owner", "health", "--config", owner_config],
                capture_output=True,
            ).returncode
            != 0
        ):
            assert owner.poll() is None, (tmp_path / "owner.log").read_text()
            assert time.monotonic() < deadline, "the example owner never became healthy"
            time.sleep(0.5)
        trainer = subprocess.run(
            make(f"{target}-trainer", f"EXAMPLES={examples}"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert trainer.returncode == 0, trainer.stdout[-3000:] + trainer.stderr[-3000:]
    finally:
        os.killpg(owner.pid, signal.SIGTERM)
        owner.wait(timeout=30)
        log.close()
    with (examples / trainer_file).open("rb") as fh:
        run_dir = (examples / trainer_file).parent / tomllib.load(fh)["trainer"]["run_dir"]
    report = json.loads((run_dir / "report.json").read_text())
    inspect = subprocess.run(
        [BIN / "mycroft", "owner", "inspect", "--config", owner_config, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert inspect.returncode == 0, inspect.stderr
    return report, json.loads(inspect.stdout), trainer.stdout + trainer.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("walkthrough", "owner_name"), [("digits", "owner-a"), ("csv", "site-south")]
)
def test_two_terminal_walkthrough_ranks_the_owner(tmp_path, walkthrough, owner_name):
    report, ledger, output = _run_walkthrough(tmp_path, walkthrough)
    assert report["trainer_id"] == "trainer-1"
    assert [r["owner"] for r in report["ranking"]] == [owner_name]
    assert [o["status"] for o in report["owners"]] == ["ok"]
    # The owner's ledger names the trainer as the trainer's report does, and shows what it took.
    [entry] = ledger
    assert entry["trainer"] == report["trainer_id"]
    assert entry["requests"], "the owner recorded the trainer's requests"
    assert all(r["request_id"].startswith(report["run_id"]) for r in entry["requests"])
    if walkthrough == "csv":
        data = report["data"]
        assert (data["train_rows"], data["val_rows"], data["test_rows"]) == (253, 84, 113)
        # The split is said before training, not only in report.json afterwards.
        assert "training the baseline on 253 rows (validation 84, test 113 held out)" in output
