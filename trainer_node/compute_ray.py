"""The Ray backend of trainer_node.compute: one Ray task per training run.

Imported only when `compute.backend = "ray"`, so ray stays an optional install.
An instance this process already runs (a simulation that placed its owners on Ray) is reused
and left running; otherwise one is started (or a cluster joined) and shut down afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from mycroft.errors import ConfigError
from trainer_node.compute import (
    RAY_INSTALL_HINT,
    ComputeSettings,
    DoneFn,
    Job,
    TaskFailure,
    run_with_retries,
)

log = logging.getLogger("mycroft.trainer.compute")


def import_ray(setting: str = "compute.backend") -> Any:
    """The ray module, or a ConfigError naming the `setting` that asked for it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"{setting}: ray is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def _start(ray: Any, compute: ComputeSettings) -> bool:
    """Connect to Ray; True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    if compute.address is None:
        workers = compute.workers if compute.workers > 1 else None  # None: every core
        ray.init(address="local", num_cpus=workers, include_dashboard=False)
    else:
        ray.init(address=compute.address)
    return True


def _check_gpus(ray: Any, compute: ComputeSettings) -> None:
    """Tasks asking for more GPUs than the cluster has would wait forever: say so instead.
    Only an error on a local instance; a cluster's autoscaler may still add GPU nodes."""
    have = float(ray.cluster_resources().get("GPU", 0.0))
    if not compute.gpus_per_task and have:
        # Ray hides the GPUs from a task that asked for none: "auto" then means the CPU.
        log.warning(
            "the Ray cluster has %g GPUs but compute.gpus_per_task is 0: tasks train on CPUs", have
        )
    if compute.gpus_per_task <= have:
        return
    problem = f"compute.gpus_per_task: {compute.gpus_per_task} but the Ray cluster has {have} GPUs"
    if compute.address is None:
        raise ConfigError(problem)
    log.warning("%s; tasks wait until the cluster has them", problem)


def run_on_ray(
    compute: ComputeSettings, job: Job[Any, Any, Any], tasks: Sequence[Any], on_done: DoneFn
) -> list[Any]:
    ray = import_ray()
    started = _start(ray, compute)
    try:
        _check_gpus(ray, compute)
        shared = ray.put(job)  # once: each task reads the baseline and data from the store
        # Exceptions are retried inside the task by `run_with_retries`, the loop every backend shares;
        # Ray's own retries cover what that loop cannot: a worker process or node that died.
        remote = ray.remote(run_with_retries).options(
            num_cpus=compute.cpus_per_task,
            num_gpus=compute.gpus_per_task,
            max_retries=compute.retries,
            retry_exceptions=False,
        )
        pending = {remote.remote(shared, task): i for i, task in enumerate(tasks)}
        out: list[Any] = [None] * len(tasks)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    out[i] = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker or node died every time
                    out[i] = TaskFailure(
                        f"ray task failed: {type(exc).__name__}: {exc}", job.retries + 1
                    )
                on_done(i, out[i])
        return out
    finally:
        if started:
            ray.shutdown()
