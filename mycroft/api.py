"""The Python API for notebooks: `import mycroft`, no TOML.

    with mycroft.Owner.from_arrays("owner-a", X_a, y_a, budget=100) as a:
        report = mycroft.acquire((X, y), (X_test, y_test), owners=[a])
    report.ranking, report.summary, report.to_dataframe(), report.html()

A thin layer over the production code: `acquire` builds the trainer's config as a dict, validates
it with the trainer's config models and runs `trainer_node.pipeline.run_trainer`, exactly what
`mycroft trainer run` does; `simulate_scenario` is `mycroft simulate` (owner processes on
loopback). `Owner`/`RemoteOwner` are in mycroft.api_owner, `Report` in mycroft.api_report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mycroft.api_owner import DEFAULT_TRAINER_ID, Owner, RemoteOwner
from mycroft.api_report import REPORT_NAME, Report
from mycroft.api_settings import ConfigPath, Settings, labeled_arrays, progress_shown
from mycroft.errors import ConfigError

if TYPE_CHECKING:
    from mycroft.scenario import Scenario

__all__ = ["Owner", "RemoteOwner", "Report", "acquire", "simulate_scenario"]

# Trainer keywords: a shortcut for one field of the trainer's config, or a section as a dict.
TRAINER_SETTINGS = Settings(
    shortcuts={
        "methods": ("selection", "methods"),
        "budgets": ("selection", "budgets"),
        "seeds": ("training", "seeds"),
        "epochs": ("training", "epochs"),
        "batch_size": ("training", "batch_size"),
        "lr": ("training", "lr"),
        "device": ("training", "device"),
        "dhard_classes": ("dhard", "classes"),
        "val_fraction": ("data", "val_fraction"),
        "split_seed": ("data", "split_seed"),
        "trainer_id": ("trainer", "id"),
        "run_id": ("trainer", "run_id"),
    },
    sections=("model", "training", "dhard", "selection", "client", "compute"),
)
ArraysOrSource = tuple[Any, Any] | Mapping[str, Any]


def acquire(
    train: ArraysOrSource,
    test: tuple[Any, Any] | None = None,
    *,
    owners: Iterable[Owner | RemoteOwner | Mapping[str, Any]],
    val: tuple[Any, Any] | None = None,
    methods: Sequence[str] = ("feature", "random"),
    budgets: Sequence[int] = (16,),
    seeds: int | Sequence[int] = 3,
    run_dir: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    progress: bool = False,
    **settings: Any,
) -> Report:
    """Run the trainer against `owners`, as `mycroft trainer run` does: train the baseline on
    `train`, find D_hard (its validation mistakes), ask each owner for `budgets` rows by each
    of `methods`, fine-tune on each subset for each seed, and rank the owners by the gain.

    `train`: `(features, labels)` arrays (as `Owner.from_arrays` takes them, with
    `class_names`), or a data source dict with the keys of the trainer's `[data]` table
    (`{"source": "csv", "path": ..., "label_column": ...}`). `test`: `(features, labels)`, or
    None to carve the test rows from `train` (a source with a test split uses it). `val`:
    the validation rows, where D_hard (the baseline's mistakes) is found, as
    `(features, labels)`; by default carved from the training rows (`val_fraction`, default
    0.2), so give them when the training rows are short of what the model fails on.
    `owners`: `Owner`s of this process, `RemoteOwner`s, or `[[owners]]` dicts. `methods` and
    `budgets`: a list, or one of them. `seeds`: a count or a list; with one seed there is no
    confidence interval, so no owner is named worth paying.

    Keyword settings (each one field of the trainer's config): `epochs`, `batch_size`, `lr`,
    `device` ([training]), `dhard_classes` ([dhard] classes), `val_fraction`, `split_seed`
    ([data]), `trainer_id` (default "trainer-1"), `run_id`; whole sections as dicts: `model`,
    `training`, `dhard`, `selection`, `client`, `compute`. An unknown keyword is an error.

    The report is written to `run_dir` (default: a new temporary folder) as
    `<run_dir>/<run id>/report.json` and report.html; `Report.path` says where. Quiet unless
    `progress=True`.
    """
    from trainer_node.config import parse_config

    endpoints = [_endpoint(o, i) for i, o in enumerate(owners)]
    if not endpoints:
        raise ConfigError("owners: list at least one owner")
    made_dir = run_dir is None
    folder = Path(tempfile.mkdtemp(prefix="mycroft-run-") if made_dir else run_dir).resolve()
    try:
        data, renames = _trainer_data(train, test, val, class_names, folder / "data")
        raw = TRAINER_SETTINGS.apply(
            {"trainer": {"run_dir": str(folder)}, "data": data, "owners": endpoints},
            {
                "trainer_id": DEFAULT_TRAINER_ID,
                **settings,
                "methods": _listed(methods),
                "budgets": _listed(budgets),
                "seeds": seeds if isinstance(seeds, int) else _listed(seeds),
            },
        )
        config = TRAINER_SETTINGS.validate(lambda: parse_config(raw, base_dir=Path.cwd()), renames)
    except BaseException:
        if made_dir:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return _run(config, progress)


def simulate_scenario(
    scenario: str | os.PathLike[str] | Scenario | Mapping[str, Any],
    *,
    seed: int = 0,
    run_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    **run: Any,
) -> Report:
    """Run a scenario as `mycroft simulate` does: its owners as `mycroft owner serve`
    processes on loopback ports, the trainer in this process against them.

    `scenario`: a built-in name ("demo", see `mycroft.scenario.builtin_scenarios()`), a TOML
    path, a `mycroft.Scenario` (from `mycroft.load_scenario`), or a dict laid out as a scenario
    file. Further keywords replace fields of its `[run]` table (`epochs=1`, `seeds=2`,
    `budgets=[10]`, `methods=[...]`), checked as in the file. The owners' data, configs, logs
    and the report are written under `run_dir` (default: a new temporary folder).

    (Named `simulate_scenario` because `mycroft.simulate` is the module behind the command.)
    """
    from mycroft.simulate import prepare, process_owners
    from trainer_node.pipeline import run_trainer

    chosen = _with_run_settings(_scenario(scenario), run)
    made_dir = run_dir is None
    folder = Path(tempfile.mkdtemp(prefix="mycroft-sim-") if made_dir else run_dir)
    try:
        plan = prepare(chosen, folder, seed=seed)
    except BaseException:
        if made_dir:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    with progress_shown(progress) as bars, process_owners(plan) as trainer:
        result = run_trainer(trainer, progress=bars, truth=plan.truth)
    return Report.load(Path(trainer.run_dir) / result.run_id / REPORT_NAME)


def _run(config: Any, progress: bool) -> Report:
    from trainer_node.pipeline import run_trainer

    with progress_shown(progress) as bars:
        result = run_trainer(config, progress=bars)
    return Report.load(Path(config.run_dir) / result.run_id / REPORT_NAME)


def _listed(value: Any) -> Any:
    """A list for a config field that holds one: one value is a list of one, and anything
    else is left for the config to refuse in its own words."""
    if isinstance(value, str | int):
        return [value]
    return list(value) if isinstance(value, tuple | list | range) else value


def _endpoint(owner: Owner | RemoteOwner | Mapping[str, Any], index: int) -> dict[str, Any]:
    if isinstance(owner, Owner | RemoteOwner):
        return owner.endpoint()
    if isinstance(owner, Mapping):
        return dict(owner)
    raise ConfigError(
        f"owners[{index}]: must be a mycroft.Owner, a mycroft.RemoteOwner or a dict, "
        f"got {type(owner).__name__}"
    )


def _trainer_data(
    train: ArraysOrSource,
    test: tuple[Any, Any] | None,
    val: tuple[Any, Any] | None,
    class_names: Sequence[str] | None,
    folder: Path,
) -> tuple[dict[str, Any], dict[str, ConfigPath]]:
    """The trainer's `[data]` table, and the keyword its errors should name. Arrays are
    written as NPZ files in `folder`, the trainer's own format for prepared data."""
    from mycroft.data import save_npz

    if isinstance(train, Mapping):
        for argument, given in (("test", test), ("val", val), ("class_names", class_names)):
            if given is not None:
                raise ConfigError(
                    f"{argument}: only with train arrays; a data source dict holds its own "
                    "splits and class names"
                )
        return dict(train), {"train": ("data",)}
    if val is not None and test is None:
        raise ConfigError("test: required when val is given")
    rows = labeled_arrays(*_pair(train, "train"), class_names, None, "arrays", "train")
    table = {"train": str(save_npz(rows, folder / "train.npz"))}
    for split, given in (("val", val), ("test", test)):
        if given is not None:  # labels index the training rows' classes, whichever they hold
            part = labeled_arrays(*_pair(given, split), rows.class_names, None, split, split)
            table[split] = str(save_npz(part, folder / f"{split}.npz"))
    if test is None:  # the test rows carved first, as from any source without a test split
        return {"source": "npz", "path": table["train"], "name": "arrays"}, {}
    return table, {}


def _pair(value: Any, argument: str) -> tuple[Any, Any]:
    if isinstance(value, tuple | list) and len(value) == 2:
        return value[0], value[1]
    raise ConfigError(
        f"{argument}: must be (features, labels)"
        + (" or a data source dict" if argument == "train" else "")
        + f", got {type(value).__name__}"
    )


def _scenario(scenario: Any) -> Scenario:
    from mycroft.scenario import Scenario, load_scenario, parse_scenario

    if isinstance(scenario, Scenario):
        return scenario
    if isinstance(scenario, Mapping):
        name = scenario.get("name")
        return parse_scenario(scenario, name=name if isinstance(name, str) else "scenario")
    if isinstance(scenario, str | os.PathLike):
        return load_scenario(scenario)
    raise ConfigError(
        "scenario: must be a built-in name, a path, a dict or a mycroft.Scenario, got "
        f"{type(scenario).__name__}"
    )


def _with_run_settings(scenario: Scenario, run: Mapping[str, Any]) -> Scenario:
    """`scenario` with fields of its [run] table replaced, validated as the file is."""
    from mycroft.scenario import parse_scenario

    if not run:
        return scenario
    raw = scenario.model_dump(exclude_unset=True)  # what was given: defaults stay defaults
    raw["run"] = {**raw.get("run", {}), **run}
    settings = Settings({key: ("run", key) for key in run}, ())
    return settings.validate(
        lambda: parse_scenario(raw, name=scenario.name, base_dir=scenario.base_dir)
    )
