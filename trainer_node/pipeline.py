"""One trainer run, end to end.

pre-flight Describe of every owner -> load data -> baseline MoE -> D_hard (shared / eval) -> model
bytes -> the owners that answered, concurrently -> train on own data + each subset per seed and
mode -> utility, ranking, warnings -> report.json (atomic, run_files) and a printed summary.
`run_trainer(config)` is the library entry point, `run_trainer_cli` the CLI's.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import sys
import time
from pathlib import Path

from moe.io import model_sha256, model_to_bytes
from mycroft import logs
from trainer_node.acquire import AcquireContext, ProgressEvent, ProgressFn, acquire_all
from trainer_node.baseline import (
    Baseline,
    TrainerData,
    hard_payload,
    load_trainer_data,
    train_baseline,
)
from trainer_node.config import FULL_METHOD, TrainerConfig, load_config
from trainer_node.evaluate import evaluate_owners, per_class_list, routing_of
from trainer_node.preflight import OwnerCheck, check_owners, require_usable, warning_lines
from trainer_node.report import (
    BaselineSummary,
    DataSummary,
    DHardClass,
    DHardSummary,
    ModelSummary,
    Report,
    Settings,
    Timings,
)
from trainer_node.results import (
    RowTruth,
    full_information,
    owner_reports,
    rank_all,
    setting_key,
)
from trainer_node.rounds import RoundsPlan
from trainer_node.run_files import REPORT_NAME, write_run_reports
from trainer_node.run_warnings import run_warnings, train_accuracy
from trainer_node.summary import print_summary

log = logging.getLogger("mycroft.trainer")

__all__ = ["REPORT_NAME", "new_run_id", "run_trainer", "run_trainer_cli", "run_trainer_from_path"]


def new_run_id(trainer_id: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{trainer_id}-{stamp}-{secrets.token_hex(3)}"


def _emit(progress: ProgressFn | None, stage: str, message: str) -> None:
    log.info("%s: %s", stage, message)
    if progress is not None:
        progress(ProgressEvent(stage, message))


def _warn(message: str, echo: bool) -> None:
    """Printed at once on the CLI (stderr; rich keeps it above the progress bars), logged for
    library callers."""
    if echo:
        print(f"mycroft: warning: {message}", file=sys.stderr)
    else:
        log.warning("%s", message)


def _preflight(config: TrainerConfig, progress: ProgressFn | None, echo: bool) -> list[OwnerCheck]:
    """Describe every owner before anything slow; stop at once if none can take part."""
    _emit(progress, "preflight", f"checking {len(config.owners)} owners")
    checks = check_owners(config.owners, config.client)
    for line in warning_lines(checks, config.selection.methods):
        _warn(line, echo)
    require_usable(checks)
    return checks


def _dhard_summary(base: Baseline, class_names: tuple[str, ...]) -> DHardSummary:
    shared, held = base.dhard.shared, base.dhard.eval
    per_class = [
        DHardClass(
            class_name=class_names[c],
            class_index=int(c),
            shared=int((shared.labels == c).sum()),
            eval=int((held.labels == c).sum()),
        )
        for c in base.dhard.classes
    ]
    return DHardSummary(
        classes=[class_names[c] for c in base.dhard.classes],
        shared_total=len(shared),
        eval_total=len(held),
        per_class=per_class,
        shared_failures=base.dhard.shared_failures,
    )


def _settings(cfg: TrainerConfig) -> Settings:
    from moe.device import describe, resolve_device

    t, s = cfg.training, cfg.selection
    method, budget = s.primary
    return Settings(
        methods=list(s.methods),
        budgets=list(s.budgets),
        seeds=list(t.seeds),
        selection_mode=s.mode,
        training_mode=t.mode,
        training_modes=list(t.modes),
        rank_by={"method": method, "budget": budget, "training_mode": t.modes[0]},
        epochs=t.epochs,
        finetune_epochs=t.finetune_epochs or t.epochs,
        oversample_to=t.oversample_to,
        score_epoch=s.score_epoch,
        rounds=s.rounds,
        device=describe(resolve_device(t.device)),
        compute=cfg.compute.describe(),
        batch_size=t.batch_size,
        lr=t.lr,
        replay_fraction=t.replay_fraction,
        dhard_classes=list(cfg.dhard.classes) if cfg.dhard.classes is not None else None,
        shared_fraction=cfg.dhard.shared_fraction,
        dhard_seed=cfg.dhard.seed,
        selection_seed=s.seed,
    )


def _rounds_plan(config: TrainerConfig, base: Baseline, data: TrainerData) -> RoundsPlan | None:
    """What each chain of rounds fine-tunes with between its requests; None for one request."""
    if config.selection.rounds == 1:
        return None
    return RoundsPlan(
        base=base,
        data=data,
        training=config.training,
        rounds=config.selection.rounds,
        seed=config.training.seeds[0],
        dhard=config.dhard,
    )


def run_trainer(
    config: TrainerConfig,
    progress: ProgressFn | None = None,
    run_id: str | None = None,
    print_table: bool = False,
    truth: RowTruth | None = None,
) -> Report:
    """`_run_trainer` with the trainer's id on every log line of the run (`mycroft.logs`)."""
    with logs.bound(trainer_id=config.id):
        return _run_trainer(config, progress, run_id, print_table, truth)


def _run_trainer(
    config: TrainerConfig,
    progress: ProgressFn | None,
    run_id: str | None,
    print_table: bool,
    truth: RowTruth | None,
) -> Report:
    """Run the whole trainer side; write `<run_dir>/<run_id>/report.json` and, if an owner was
    ranked, `<run_dir>/report.json` (run_files). Owners that fail are in the report with their
    error; the run fails only if no owner passes pre-flight or the trainer's own side cannot go
    on. `truth` (a simulation's knowledge of the owners' rows) adds each request's share of
    needles and wrong labels to the report."""
    t0 = time.perf_counter()
    run_id = run_id or config.run_id or new_run_id(config.id)
    created_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    log.info("run %s: trainer %s, %d owners", run_id, config.id, len(config.owners))
    checks = _preflight(config, progress, echo=print_table)
    usable = [c.endpoint for c in checks if c.usable]

    t_base_start = time.perf_counter()  # pre-flight counts in the total, not the baseline
    _emit(progress, "baseline", "loading data")
    data: TrainerData = load_trainer_data(config.data)
    # Said up front: a small CSV split by val_fraction can leave far fewer training rows than
    # the file holds, and the user should see that before waiting on the result.
    _emit(
        progress,
        "baseline",
        f"training the baseline on {len(data.train)} rows (validation {len(data.val)}, "
        f"test {len(data.test)} held out)",
    )
    base = train_baseline(config, data, progress)
    names = data.class_names
    _emit(
        progress,
        "dhard",
        f"baseline test accuracy {base.test.accuracy:.3f}; D_hard shared {len(base.dhard.shared)}"
        f", eval {len(base.dhard.eval)}",
    )
    model_bytes = model_to_bytes(base.scoring_model)
    sha = model_sha256(model_bytes)
    t_base = time.perf_counter() - t_base_start

    ctx = AcquireContext(
        run_id=run_id,
        model_bytes=model_bytes,
        model_sha256=sha,
        hard={
            mode: hard_payload(
                base.scoring_model, base.dhard.shared, mode, device=config.training.device
            )
            for mode in config.selection.modes
        },
        class_names=names,
        input_shape=data.train.input_shape,
        selection=config.selection,
        rounds=_rounds_plan(config, base, data),
    )
    _emit(progress, "acquire", f"querying {len(usable)} owners (model {sha[:12]})")
    t1 = time.perf_counter()
    acquired = iter(acquire_all(usable, config.client, ctx, progress))
    # Owners left out at pre-flight keep their error, in config order, and are not asked again.
    outcomes = [next(acquired) if c.usable else c.failed_outcome() for c in checks]
    t_acq = time.perf_counter() - t1

    t2 = time.perf_counter()
    evaluation = evaluate_owners(
        outcomes, base, data, config.training, progress, compute=config.compute
    )
    t_eval = time.perf_counter() - t2

    owners = owner_reports(outcomes, evaluation.results, names, truth, evaluation.failures)
    method, budget = config.selection.primary
    primary_mode = config.training.modes[0]
    ranking = rank_all(owners, setting_key(method, budget, primary_mode))
    full = (
        full_information(owners, primary_mode) if FULL_METHOD in config.selection.methods else None
    )
    mcfg = base.config
    warnings = run_warnings(
        len(base.dhard.eval),
        train_accuracy(base.model, data.train),
        config.training.epochs,
        base.epoch_losses,
    )
    if n_failed := evaluation.failed_cells:  # gains over fewer seeds than configured
        warnings.append(
            f"{n_failed} evaluation cell{'s' if n_failed > 1 else ''} failed after "
            "compute.retries; their owners' gains rest on fewer seeds "
            "(owners[].evaluation_failures has the errors)"
        )
    if not print_table:  # the CLI prints them with the summary
        for line in warnings:
            log.warning("%s", line)
    report = Report(
        run_id=run_id,
        created_at=created_at,
        trainer_id=config.id,
        data=DataSummary(
            name=data.name,
            train_rows=len(data.train),
            val_rows=len(data.val),
            test_rows=len(data.test),
            input_shape=list(data.train.input_shape),
        ),
        class_names=list(names),
        model=ModelSummary(
            gate=mcfg.gate,
            num_experts=mcfg.num_experts,
            top_k=mcfg.top_k,
            embed_dim=mcfg.embed_dim,
            sha256=sha,
            size_bytes=len(model_bytes),
            config=mcfg.to_dict(),
        ),
        settings=_settings(config),
        baseline=BaselineSummary(
            dhard_eval_accuracy=base.dhard_eval_accuracy,
            test_accuracy=base.test.accuracy,
            val_accuracy=base.val.accuracy,
            test_loss=base.test.loss,
            per_class_accuracy=per_class_list(base.test, names),
            routing=routing_of(base.test),
            train_seconds=base.train_seconds,
        ),
        dhard=_dhard_summary(base, names),
        owners=owners,
        ranking=ranking,
        full_information=full,
        timings=Timings(
            total_seconds=time.perf_counter() - t0,
            baseline_seconds=t_base,
            acquire_seconds=t_acq,
            evaluate_seconds=t_eval,
        ),
        warnings=warnings,
    )
    obj = report.to_dict()
    files = write_run_reports(obj, Path(config.run_dir), run_id)
    _emit(progress, "report", f"wrote {files.run_json} and {files.run_html.name}")
    if files.latest_updated:
        _emit(progress, "report", f"updated {files.latest_json} and {files.latest_html.name}")
    else:
        _warn(files.kept_note(), print_table)
    if print_table:
        print_summary(obj)
    return report


def run_trainer_cli(
    config: TrainerConfig, progress: ProgressFn | None = None, truth: RowTruth | None = None
) -> int:
    """A run with progress bars and the summary table, as `mycroft trainer run` and `mycroft
    simulate` do it: 0 when at least one owner was ranked, 1 when none could be. User errors
    (MycroftError) propagate: the CLI prints their one-line message."""
    from mycroft.progress import StageBars

    with StageBars() as bars:
        report = run_trainer(config, progress=progress or bars, print_table=True, truth=truth)
    return 0 if report.ranking else 1


def run_trainer_from_path(path: str | Path, progress: ProgressFn | None = None) -> int:
    """`run_trainer_cli` on a config file."""
    return run_trainer_cli(load_config(path), progress)
