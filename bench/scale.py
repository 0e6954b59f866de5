"""Scale: CPU vs GPU, serial vs parallel evaluation, and a large owner's first answer, in one run.

Three parts, each a module of its own that also runs alone (printing, not writing):
- `device`: training samples/s and owner embedding rows/s on the CPU and, where torch sees a CUDA
  device, on it (bench/scale_device.py);
- `eval`: the demo scenario's evaluation, local serial vs a local worker pool vs Ray with 2
  workers, with a check that every backend gives the serial numbers (bench/scale_eval.py);
- `owner`: an owner of 1e5 and 1e6 Fashion-sized rows from a fresh model upload to the last row
  received, stage by stage, over real gRPC (bench/scale_owner.py).

The same command runs unchanged on a GPU machine; `auto` devices pick the GPU there.

    .venv/bin/python -m bench.scale [--quick] [--parts device,eval,owner] [--no-write]
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

from bench._report import bench_parser, write_section

PARTS = ("device", "eval", "owner")


def _device_table(r: dict[str, Any]) -> str:
    train, embed = r["train"], r["embed"]
    gpu = r["devices"]["cuda"] or f"none ({r['cuda_reason']})"
    m = r["model"]
    model = (
        f"{m['stem']} stem, {m['gate']} gate, {m['num_experts']} experts, top-{m['top_k']}, "
        f"embed {m['embed_dim']}, {m['parameters']['total']:,} parameters"
    )
    lines = [
        "### CPU vs GPU",
        "",
        f"Model: the Fashion-MNIST config ({model}); CPU: {r['devices']['cpu']}, "
        f"1 thread for training; GPU: {gpu}.",
        "",
        "| measure | CPU | GPU | GPU / CPU |",
        "|---|---|---|---|",
    ]
    for batch in map(str, train["batch_sizes"]):
        cpu = train["cpu"][batch]["samples_per_s"]
        cuda = (train["cuda"] or {}).get(batch, {}).get("samples_per_s")
        ratio = (train["cuda_over_cpu"] or {}).get(batch)
        lines.append(
            f"| training, batch {batch} (samples/s) | {cpu:,.0f} | "
            f"{f'{cuda:,.0f}' if cuda else '–'} | {f'{ratio}x' if ratio else '–'} |"
        )
    for threads, rate in embed["cpu_rows_per_s"].items():
        gpu_rate = embed["cuda_rows_per_s"] if threads == "threads_1" else None
        ratio = embed["cuda_over_cpu_1_thread"] if threads == "threads_1" else None
        lines.append(
            f"| embedding, batch {embed['batch_size']}, CPU {threads.replace('_', ' ')} "
            f"(rows/s) | {rate:,.0f} | {f'{gpu_rate:,.0f}' if gpu_rate else '–'} | "
            f"{f'{ratio}x' if ratio else '–'} |"
        )
    if not r["devices"]["cuda"]:
        lines += [
            "",
            "No GPU here: the GPU columns fill in when the same command runs on a CUDA machine. "
            "Goals there: training at batch ≥ 512 at least 20x the CPU, and a 1e6-row owner's "
            "first answer under 10 s.",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = bench_parser(__doc__, quick="small sizes: 1e5-row owner, a few evaluation cells")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated of {PARTS}")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if unknown := sorted(set(parts) - set(PARTS)):
        ap.error(f"--parts: unknown {unknown}; choose from {PARTS}")
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    results: dict[str, Any] = {"quick": args.quick, "machine": platform.machine()}
    sections = ["## Scale (`bench/scale.py`)"]
    if "device" in parts:
        from bench.scale_device import measure_devices

        results["device"] = measure_devices(args.quick)
        sections.append(_device_table(results["device"]))
        print(sections[-1], flush=True)
    if "eval" in parts:
        from bench.scale_eval import markdown, measure_evaluation

        results["eval"] = measure_evaluation(args.quick)
        sections.append("### Evaluation: serial vs parallel\n\n" + markdown(results["eval"]))
        print(sections[-1], flush=True)
    if "owner" in parts:
        from bench.scale_owner import measure_owner_first_answer, table

        results["owner"] = measure_owner_first_answer(quick=args.quick)
        sections.append(
            "### A large owner's first answer\n\nA real owner (gRPC, its own process) receives "
            "a fresh Fashion-config model, embeds its rows and answers one `gradient` Select at "
            "a 1% budget; first answer = upload start to last row received. Stages from the "
            "owner's own records; later Selects reuse the embeddings and index.\n\n"
            + table(results["owner"])
        )
        print(sections[-1], flush=True)
    seconds = time.perf_counter() - started
    results.update(seconds=round(seconds, 1), load=[load0, os.getloadavg()[0]])
    sections.append(
        f"Run: {seconds / 60:.1f} min, load average {load0:.1f} → {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores{' (quick)' if args.quick else ''}."
    )
    if not args.no_write:
        write_section("scale", "\n\n".join(sections), results)


if __name__ == "__main__":
    main()
