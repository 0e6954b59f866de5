"""The trainer's evaluation of the demo scenario on each compute backend: wall time and equality.

The demo scenario (`mycroft.scenario.load_scenario("demo")`) is prepared as `mycroft simulate`
prepares it; its owners run as real `mycroft owner serve` processes only long enough for the
trainer to train its baseline and acquire every subset once. Then only `evaluate_owners` is
timed, on the same outcomes, with `[compute]` set to: local serial (workers = 1), a local pool
of 2 loky worker processes, and a local Ray instance with 2 workers. Training runs on the CPU
with one torch thread per task, so every backend must give the serial run's numbers exactly.

    .venv/bin/python -m bench.scale_eval [--quick]

`--quick`: one training seed and two methods (fewer fine-tunes); bench/scale.py calls
`measure_evaluation` and writes the table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

BACKENDS: dict[str, dict[str, Any]] = {
    "local serial": {"backend": "local", "workers": 1},
    "local, 2 worker processes": {"backend": "local", "workers": 2},
    "ray (local instance), 2 workers": {"backend": "ray", "workers": 2},
}


def _scenario(quick: bool) -> Any:
    from mycroft.scenario import load_scenario

    scenario = load_scenario("demo")
    if not quick:
        return scenario
    run = scenario.run.model_copy(update={"seeds": 1, "methods": scenario.run.methods[:2]})
    return scenario.model_copy(update={"run": run})


def _acquired(trainer: Any) -> tuple[Any, Any, list[Any]]:
    """The trainer's data, baseline and every owner's outcome, as `run_trainer` gets them."""
    from moe.io import model_sha256, model_to_bytes
    from trainer_node.acquire import AcquireContext, acquire_all
    from trainer_node.baseline import hard_payload, load_trainer_data, train_baseline

    data = load_trainer_data(trainer.data)
    base = train_baseline(trainer, data)
    model_bytes = model_to_bytes(base.scoring_model)
    ctx = AcquireContext(
        run_id=f"scale-eval-{time.time_ns()}",
        model_bytes=model_bytes,
        model_sha256=model_sha256(model_bytes),
        hard={
            mode: hard_payload(base.scoring_model, base.dhard.shared, mode)
            for mode in trainer.selection.modes
        },
        class_names=data.class_names,
        input_shape=data.train.input_shape,
        selection=trainer.selection,
        rounds=None,
    )
    return data, base, list(acquire_all(list(trainer.owners), trainer.client, ctx))


def _mean_train_seconds(evaluation: Any) -> float:
    seconds = [r.train_seconds for rs in evaluation.results.values() for r in rs]
    return sum(seconds) / max(1, len(seconds))


def measure_evaluation(quick: bool) -> dict[str, Any]:
    """Wall seconds of `evaluate_owners` per backend on the demo scenario's acquired subsets,
    each backend's speed-up over serial, and whether its results equal the serial run's."""
    from mycroft.simulate import prepare, process_owners
    from trainer_node.compute import ComputeSettings
    from trainer_node.evaluate import evaluate_owners, plan

    scenario = _scenario(quick)
    with tempfile.TemporaryDirectory(prefix="scale-eval-") as tmp:
        sim = prepare(scenario, Path(tmp), write_trainer=False)
        with process_owners(sim) as trainer:
            data, base, outcomes = _acquired(trainer)
    settings = trainer.training.model_copy(update={"device": "cpu"})  # same numbers everywhere
    cells, tasks = plan(outcomes, data, settings)
    runs: list[dict[str, Any]] = []
    serial = None
    for name, table in BACKENDS.items():
        start = time.perf_counter()
        evaluation = evaluate_owners(
            outcomes, base, data, settings, compute=ComputeSettings(**table)
        )
        seconds = time.perf_counter() - start
        measured = evaluation.measured()
        serial = serial or (seconds, measured)
        runs.append(
            {
                "backend": name,
                "compute": table,
                "seconds": round(seconds, 2),
                "speedup_vs_serial": round(serial[0] / seconds, 2),
                "identical_to_serial": measured == serial[1],
                # per fine-tune: tells a slower worker from pool overhead
                "mean_train_seconds": round(_mean_train_seconds(evaluation), 3),
                "failed_cells": evaluation.failed_cells,
            }
        )
    return {
        "scenario": scenario.name,
        "quick": quick,
        "owners": len(outcomes),
        "cells": len(cells),
        "training_runs": len(tasks),
        "seeds": list(settings.seeds),
        "methods": list(scenario.run.methods),
        "runs": runs,
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as a table for docs/BENCHMARKS.md."""
    lines = [
        f"Evaluation of scenario `{result['scenario']}`: {result['cells']} cells, "
        f"{result['training_runs']} training runs (cells + distinct controls), CPU.",
        "",
        "| compute | wall s | speed-up vs serial | identical results |",
        "|---|---|---|---|",
    ]
    for r in result["runs"]:
        same = "yes" if r["identical_to_serial"] else "**no**"
        lines.append(f"| {r['backend']} | {r['seconds']} | {r['speedup_vs_serial']}x | {same} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, two methods")
    result = measure_evaluation(quick=ap.parse_args().quick)
    print(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
