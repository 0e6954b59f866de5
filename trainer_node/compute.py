"""Where the trainer's independent training runs execute: here, a local process pool, or Ray.

The `[compute]` table of the trainer config picks the backend. Every backend runs the same
`fn(shared, task)` for each task with the same retry loop (`run_with_retries`), so a task's result and
its failure semantics do not depend on where it ran: a task that raises is tried again up to
`retries` times, then recorded as a `TaskFailure` while the other tasks go on.

`shared` (the trainer's baseline and data) is sent to each worker once: as the initialiser
argument of every loky worker process, or put into Ray's object store once. These are the
trainer's own objects sent to its own workers; nothing that crosses the owner/trainer trust
boundary is pickled or unpickled here (owner subsets arrive as numpy arrays the trainer decoded).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import Field, model_validator

from mycroft.config_base import ConfigModel, FieldProblem, Float, Int, Str

log = logging.getLogger("mycroft.trainer.compute")

S = TypeVar("S")  # what every task shares (sent once per worker)
T = TypeVar("T")  # one task's own input
R = TypeVar("R")  # one task's result

RAY_INSTALL_HINT = "pip install 'mycroft[ray]'"


class ComputeSettings(ConfigModel):
    """The `[compute]` table: where the evaluation's training runs execute."""

    # "local": this machine (workers = 1: one after another in this process; > 1: a pool of
    # loky worker processes). "ray": tasks on a Ray cluster, or a local Ray instance.
    backend: Literal["local", "ray"] = "local"
    workers: Int = Field(1, ge=1)
    # Ray only. None: the Ray instance this process already runs, else a new local one;
    # "auto", "host:6379" or "ray://host:10001": an existing cluster.
    address: Str | None = Field(None, min_length=1)
    cpus_per_task: Float = Field(1.0, gt=0.0)  # Ray's num_cpus per task
    gpus_per_task: Float = Field(0.0, ge=0.0)  # Ray's num_gpus per task; fractions share a GPU
    retries: Int = Field(1, ge=0)  # further attempts of a task that raised

    @model_validator(mode="after")
    def _backend_fields(self) -> ComputeSettings:
        if self.backend == "ray":
            if importlib.util.find_spec("ray") is None:
                raise FieldProblem("backend", f"ray is not installed: {RAY_INSTALL_HINT}")
            return self
        defaults = {"address": None, "cpus_per_task": 1.0, "gpus_per_task": 0.0}
        for name, default in defaults.items():
            if getattr(self, name) != default:
                raise FieldProblem(name, 'applies to backend "ray" only (see compute.backend)')
        return self

    def describe(self) -> str:
        """For progress, logs and the report: "local, 1 worker", "ray (auto), 1 CPU + 0.25 GPU
        per task" (on Ray the cluster decides how many run at once)."""
        if self.backend == "local":
            return f"local, {self.workers} worker{'s' if self.workers > 1 else ''}"
        gpus = f" + {self.gpus_per_task:g} GPU" if self.gpus_per_task else ""
        where = self.address or "local instance"
        return f"ray ({where}), {self.cpus_per_task:g} CPU{gpus} per task"


@dataclass(frozen=True)
class TaskFailure:
    """A task that raised on every attempt: the last error, as "Type: message"."""

    error: str
    attempts: int

    def describe(self) -> str:
        return f"{self.error} (after {self.attempts} attempt{'s' if self.attempts > 1 else ''})"


@dataclass(frozen=True)
class Job(Generic[S, T, R]):
    fn: Callable[[S, T], R]
    shared: S
    retries: int


Outcome = Any  # R | TaskFailure; a TypeVar union reads poorly in the callbacks below
DoneFn = Callable[[int, Outcome], None]


def run_with_retries(job: Job[S, T, R], task: T) -> R | TaskFailure:
    """`job.fn(job.shared, task)`, tried 1 + `job.retries` times: the one retry loop of every
    backend. Exceptions become a TaskFailure, so one bad task never stops the others."""
    error = ""
    for attempt in range(1, job.retries + 2):
        try:
            return job.fn(job.shared, task)
        except Exception as exc:  # any failure of one task is reported, not raised
            error = f"{type(exc).__name__}: {exc}"
            log.warning("task attempt %d of %d failed: %s", attempt, job.retries + 1, error)
    return TaskFailure(error, job.retries + 1)


def run_tasks(
    compute: ComputeSettings,
    fn: Callable[[S, T], R],
    shared: S,
    tasks: Sequence[T],
    on_done: DoneFn | None = None,
) -> list[R | TaskFailure]:
    """`fn(shared, task)` for every task, on the configured backend; results in task order.
    `on_done(index, result)` is called in this thread as each task completes."""
    job = Job(fn, shared, compute.retries)
    if not tasks:
        return []
    if compute.backend == "ray":
        from trainer_node.compute_ray import run_on_ray

        return run_on_ray(compute, job, tasks, on_done or _ignore)
    if compute.workers == 1:
        return _run_serial(job, tasks, on_done or _ignore)
    return _run_loky(compute.workers, job, tasks, on_done or _ignore)


def _ignore(index: int, outcome: Outcome) -> None:
    del index, outcome


def _run_serial(job: Job[S, T, R], tasks: Sequence[T], on_done: DoneFn) -> list[Any]:
    out = []
    for i, task in enumerate(tasks):
        out.append(run_with_retries(job, task))
        on_done(i, out[-1])
    return out


# A loky worker's job, installed once per process by the pool's initialiser.
_worker_job: Job[Any, Any, Any] | None = None


def _install_job(job: Job[Any, Any, Any]) -> None:
    global _worker_job
    _worker_job = job


def _run_installed(task: Any) -> Any:
    assert _worker_job is not None, "the pool initialiser installs the job first"
    return run_with_retries(_worker_job, task)


def _run_loky(workers: int, job: Job[S, T, R], tasks: Sequence[T], on_done: DoneFn) -> list[Any]:
    """A pool of fresh loky processes (no fork of this threaded process), each sent the job
    once by its initialiser; only the small per-task inputs travel with each task."""
    from joblib.externals.loky import ProcessPoolExecutor

    out: list[Any] = [None] * len(tasks)
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)), initializer=_install_job, initargs=(job,)
    )
    try:
        futures = {pool.submit(_run_installed, task): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                out[i] = future.result()
            except Exception as exc:  # a worker that died takes its task with it
                out[i] = TaskFailure(f"worker process failed: {type(exc).__name__}: {exc}", 1)
            on_done(i, out[i])
    finally:
        pool.shutdown(wait=True)
    return out
