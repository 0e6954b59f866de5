"""Selection speed and peak memory: each strategy beside a naive way, for owners of 1e4, 1e5 and
1e6 rows (embedding dim 64, 10 classes, D_hard 500 rows, B = 1%).

Every case runs in its own subprocess, which reports wall time of the selection call (data
generation excluded) and its own peak RSS (ru_maxrss: numpy/faiss allocations included, unlike
tracemalloc), plus the RSS after generating the data, so the selection's own share is visible.
Naive cases that exceed their cap are killed and reported as "> cap s (stopped)".

Naive ways: numpy brute-force kNN (full similarity matrix, argpartition) for `feature`; dense
per-class gradient matrices with OMP re-solving every weight system from scratch (`omp_naive`)
for `gradient` and `funcfeat`. A prefilter check runs funcfeat's OMP on one class of the largest
owner with and without the top-M prefilter (CPU time, same rows, objective).

    .venv/bin/python -m bench.selection_speed [--sizes 1e4,1e5,1e6] [--cap 60]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench._report import ROOT, write_section

D, C, M_HARD = 64, 10, 500


def make_data(n: int, seed: int = 0):
    from selection import Candidates, HardSet, Head

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(C, D)).astype(np.float32)
    y = rng.integers(0, C, n).astype(np.int64)
    emb = rng.standard_normal((n, D), dtype=np.float32)
    emb += 0.6 * means[y]
    yh = rng.integers(0, C, M_HARD).astype(np.int64)
    # D_hard: weaker class signal, i.e. near the decision boundaries
    eh = (0.3 * means[yh] + rng.standard_normal((M_HARD, D), dtype=np.float32)).astype(np.float32)
    head = Head((0.5 * means).astype(np.float32), np.zeros(C, np.float32))
    return Candidates(np.arange(n, dtype=np.int64), y, emb), HardSet(yh, eh), head


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so the selection's own peak is
    measured apart from data generation's temporaries."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def naive_feature(cand, hard, budget: int) -> np.ndarray:
    from selection.feature import round_robin

    def norm(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    q = norm(hard.embeddings)
    depth = min(2 * -(-budget // len(hard)) + 1, len(cand))
    neigh = np.full((len(hard), depth), -1, np.int64)
    sims = np.full((len(hard), depth), -np.inf, np.float32)
    for c in np.unique(hard.labels):
        pos = np.flatnonzero(cand.labels == c)
        rows = np.flatnonzero(hard.labels == c)
        s = q[rows] @ norm(cand.embeddings[pos]).T  # the full (m_c, n_c) similarity matrix
        k = min(depth, len(pos))
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), 1), 1)
        neigh[rows, :k] = pos[order]
        sims[rows, :k] = np.take_along_axis(s, order, 1)
    return round_robin(neigh, sims, budget)[0]


def naive_gradient(cand, hard, head, budget: int, funcfeat: bool) -> np.ndarray:
    from selection import allocate, last_layer_gradients
    from selection.funcfeat import geometric_median
    from selection.omp import omp_naive

    classes, counts = np.unique(hard.labels, return_counts=True)
    caps = {int(c): int((cand.labels == c).sum()) for c in classes}
    alloc = allocate(dict(zip(classes.tolist(), counts.tolist(), strict=True)), caps, budget)
    out = []
    for c in classes.tolist():
        pos = np.flatnonzero(cand.labels == c)
        a = last_layer_gradients(cand.embeddings[pos], cand.labels[pos], head)  # dense (n_c, 650)
        he = hard.embeddings[hard.labels == c]
        t = last_layer_gradients(he, hard.labels[hard.labels == c], head).sum(0, dtype=np.float64)
        kw = {}
        if funcfeat:
            psi = np.linalg.norm(cand.embeddings[pos] - geometric_median(he), axis=1)
            kw = dict(lam2=2.0, psi=psi)
        out.append(pos[omp_naive(a, t, alloc[c], lam=0.5, **kw).indices])
    return np.concatenate(out)


def prefilter_check(n: int, sizes: tuple[int, ...] = (10_000, 20_000)) -> dict:
    """funcfeat OMP on class 0 of the n-row owner with the top-M prefilter vs without it."""
    from threadpoolctl import threadpool_limits

    from selection import allocate, last_layer_gradients, softmax_residuals
    from selection.funcfeat import geometric_median
    from selection.omp import FactoredAtoms, omp

    cand, hard, head = make_data(n)
    classes, counts = np.unique(hard.labels, return_counts=True)
    caps = {int(c): int((cand.labels == c).sum()) for c in classes}
    k = allocate(dict(zip(classes.tolist(), counts.tolist(), strict=True)), caps, n // 100)[0]
    pos = np.flatnonzero(cand.labels == 0)
    e = cand.embeddings[pos]
    u = softmax_residuals(e, cand.labels[pos], head)
    he = hard.embeddings[hard.labels == 0]
    t = last_layer_gradients(he, hard.labels[hard.labels == 0], head).sum(0, dtype=np.float64)
    psi = np.linalg.norm(e - geometric_median(he), axis=1)
    align = FactoredAtoms(u, e).matvec(t)
    runs = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for m in (*[s for s in sizes if s < len(pos)], len(pos)):
            sub = np.sort(np.argpartition(-align, m - 1)[:m]) if m < len(pos) else np.arange(m)
            cpu0 = time.process_time()
            r = omp(FactoredAtoms(u[sub], e[sub]), t, k, lam=0.5, lam2=2.0, psi=psi[sub])
            cpu = time.process_time() - cpu0
            idx = sub[r.indices]
            obj = r.residual_norm**2 + np.sum((0.5 + 2.0 * psi[idx] ** 2) * r.weights**2)
            runs[m] = {"cpu_seconds": cpu, "objective": float(obj), "ids": idx}
    ref = runs[len(pos)]
    return {
        "class_rows": len(pos),
        "k": int(k),
        "runs": [
            {
                "m": m,
                "cpu_seconds": v["cpu_seconds"],
                "objective_ratio": v["objective"] / ref["objective"],
                "overlap": float(len(np.intersect1d(v["ids"], ref["ids"])) / len(ref["ids"])),
            }
            for m, v in runs.items()
        ],
    }


def child(case: str, impl: str, n: int, out: str) -> None:
    if case == "prefilter-check":
        print(json.dumps(prefilter_check(n)))
        return
    from selection import get_strategy

    cand, hard, head = make_data(n)
    budget = n // 100
    strategy = get_strategy(case) if impl == "fast" else None  # plugin scan excluded
    data_mib = _status_mib("VmRSS")
    hwm_ok = _reset_hwm()
    start, cpu0 = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    if strategy is not None:
        res = strategy.select(cand, hard, budget, head=head)
        ids, timings = res.row_ids, res.timings
    elif case == "feature":
        ids = naive_feature(cand, hard, budget)
    else:
        ids = naive_gradient(cand, hard, head, budget, funcfeat=case == "funcfeat")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    np.save(out, np.asarray(ids, dtype=np.int64))
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,  # all threads: less sensitive than wall time to a busy box
                "peak_mib": _status_mib("VmHWM") if hwm_ok else _rss_mib(),
                "process_peak_mib": _rss_mib(),  # includes data generation
                "data_mib": data_mib,
                "rows": int(len(ids)),
                "timings": timings,
            }
        )
    )


def run_case(case: str, impl: str, n: int, cap: float, tmp: str) -> dict:
    out = os.path.join(tmp, f"{case}-{impl}-{n}.npy")
    cmd = [sys.executable, "-m", "bench.selection_speed", "--child", case, impl, str(n), out]
    load = os.getloadavg()[0]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=cap, check=True, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {"case": case, "impl": impl, "n": n, "stopped_after": cap, "load1": load}
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec.update(case=case, impl=impl, n=n, ids_file=out, load1=load)
    return rec


CASES = [  # (case, naive available)
    ("random", False),
    ("feature", True),
    ("gradient", True),
    ("funcfeat", True),
]


def _overlap(a: dict, b: dict) -> float | None:
    if "ids_file" not in a or "ids_file" not in b:
        return None
    x, y = np.load(a["ids_file"]), np.load(b["ids_file"])
    return float(len(np.intersect1d(x, y)) / max(1, len(x)))


def _fmt_time(r: dict | None) -> str:
    if r is None:
        return "–"
    if "stopped_after" in r:
        return f"> {r['stopped_after']:.0f} s (stopped)"
    return f"{r['seconds']:.2f} s"


def _fmt_cpu(r: dict | None) -> str:
    return "–" if r is None or "cpu_seconds" not in r else f"{r['cpu_seconds']:.2f} s"


def _fmt_mem(r: dict | None) -> str:
    if r is None or "peak_mib" not in r:
        return "–"
    return f"{r['peak_mib']:.0f} ({r['peak_mib'] - r['data_mib']:+.0f})"


def _ratio(fast: dict, naive: dict | None) -> str:
    if naive is None:
        return "–"
    if "stopped_after" in naive:
        return f"> {naive['stopped_after'] / fast['seconds']:.0f}×"
    return f"{naive['seconds'] / fast['seconds']:.1f}×"


def table(rows: list[dict]) -> str:
    lines = [
        "| strategy | owner rows | B | ours wall | ours CPU | naive wall | naive CPU | speed-up "
        "(wall) | peak RSS MiB ours (+ over data) | peak RSS MiB naive | same rows as naive |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fast, naive = r["fast"], r.get("naive")
        same = "–" if r.get("overlap") is None else f"{100 * r['overlap']:.1f}%"
        lines.append(
            f"| {r['case']} | {r['n']:,} | {r['n'] // 100:,} | {_fmt_time(fast)} | "
            f"{_fmt_cpu(fast)} | {_fmt_time(naive)} | {_fmt_cpu(naive)} | "
            f"{_ratio(fast, naive)} | {_fmt_mem(fast)} | "
            f"{_fmt_mem(naive)} | {same} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6")
    ap.add_argument("--cap", type=float, default=60.0, help="seconds before a naive case stops")
    ap.add_argument("--fast-cap", type=float, default=300.0)
    ap.add_argument(
        "--child", nargs=4, metavar=("CASE", "IMPL", "N", "OUT"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.child:
        case, impl, n, out = args.child
        child(case, impl, int(n), out)
        return
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    rows: list[dict] = []
    prefilter: dict[int, dict] = {}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            for case, has_naive in CASES:
                fast = run_case(case, "fast", n, args.fast_cap, tmp)
                naive = run_case(case, "naive", n, args.cap, tmp) if has_naive else None
                row = {"case": case, "n": n, "fast": fast, "naive": naive}
                row["overlap"] = _overlap(fast, naive) if naive else None
                rows.append(row)
                print(f"{case:>9} n={n:>9,}: ours {_fmt_time(fast)}, naive {_fmt_time(naive)}")
                if "stopped_after" in fast:
                    raise SystemExit(f"{case} at n={n} exceeded {args.fast_cap} s")
            if n >= 1_000_000:  # what the top-M prefilter costs in quality, and buys in time
                check = run_case("prefilter-check", "fast", n, 3 * args.cap, tmp)
                check.pop("ids_file", None)
                prefilter[n] = check
                print(f"prefilter check n={n:,}: {check}")
        for r in rows:
            for k in ("fast", "naive"):
                if r.get(k):
                    r[k].pop("ids_file", None)
    total = time.perf_counter() - began
    md = table(rows)
    notes = [
        "",
        f"Machine: {os.cpu_count()} cores; run took {total:.0f} s. Time is the selection call "
        "only (data generation excluded); peak RSS is the case subprocess's high-water mark "
        "during the selection (VmHWM, reset after generating the data; numpy and faiss "
        "buffers included), with the share above the resident data in brackets. Owners: embedding "
        "dim 64, 10 classes, D_hard 500 rows, B = 1% of the owner. Naive: numpy brute-force kNN "
        "(feature); dense per-class gradients + OMP re-solving from scratch (gradient, "
        "funcfeat), stopped after the cap; OMP steps run single-threaded BLAS. 'same rows' = share of our rows the naive run also "
        "chose. The 1-minute load average at each case start is in the JSON (the machine is "
        "shared, so timings carry that noise).",
    ]
    for n, check in prefilter.items():
        if "runs" not in check:
            notes.append(f"\nPrefilter check at {n:,} rows: {_fmt_time(check)}.")
            continue
        parts = [
            f"M = {r['m']:,}: {r['cpu_seconds']:.2f} s CPU, {100 * r['overlap']:.1f}% same rows, "
            f"objective ×{r['objective_ratio']:.4f}"
            for r in check["runs"]
        ]
        notes.append(
            f"\nPrefilter check (funcfeat OMP on class 0 of the {n:,}-row owner: "
            f"{check['class_rows']:,} rows, k = {check['k']}; the last M is no prefilter): "
            + "; ".join(parts)
            + ". The strategy uses M = max(10·k, 10 000)."
        )
    markdown = md + "\n" + "\n".join(notes) + "\n"
    result = {
        "rows": rows,
        "prefilter_check": {str(n): c for n, c in prefilter.items()},
        "total_seconds": total,
        "cpu_count": os.cpu_count(),
    }
    write_section("selection_speed", markdown, result)
    print(markdown)


if __name__ == "__main__":
    main()
