"""Summaries and the BENCHMARKS.md section of bench/load.py's hostile mix (bench/_hostile.py)."""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

from bench import _hostile as H
from bench._grpc_bench import Stats

KINDS = H.KINDS
GOAL_P99 = 2.0  # honest p99 with the hostile mix, at most this many times the quiet run's


def summarise(hostile: dict | None) -> dict[str, Any]:
    """Hostile calls by kind and status code (with one message per code and latencies)."""
    if hostile is None:
        return {"calls": 0, "by_kind": {}}
    calls = hostile["calls"]
    by_kind: dict[str, dict[str, int]] = {}
    details: dict[str, dict[str, str]] = {}
    latency: dict[str, dict[str, dict]] = {}
    for kind in KINDS:
        mine = [c for c in calls if c[0] == kind]
        codes = Counter(c[1] for c in mine)
        by_kind[kind] = dict(codes.most_common())
        details[kind] = {c[1]: c[4] for c in mine if c[4]}
        latency[kind] = {
            code: Stats.of([c[3] for c in mine if c[1] == code]).to_dict() for code in codes
        }
    window = max((c[2] + c[3] for c in calls), default=0.0) - min((c[2] for c in calls), default=0)
    return {
        "calls": len(calls),
        "calls_per_s": len(calls) / window if window > 0 else 0.0,
        "by_kind": by_kind,
        "details": details,
        "latency_s": latency,
        "open_at_end": hostile["open_at_end"],
        "started_late_s": hostile["started_late_s"],
        "threads_left": hostile["threads_left"],
        "client_cpu_cores": hostile["client_cpu_cores"],
    }


_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):([\w.]+):(.*)$")


def log_summary(text: str) -> dict[str, Any]:
    """The owner's log (WARNING and up): lines by level and logger, a few examples each."""
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    tracebacks = 0
    for line in text.splitlines():
        m = _LINE.match(line)
        if line.startswith("Traceback"):
            tracebacks += 1
        if not m:
            continue
        key = f"{m[1]}:{m[2]}"
        counts[key] += 1
        ex = examples.setdefault(key, [])
        if len(ex) < 3 and m[3][:200] not in ex:
            ex.append(m[3][:200])
    blocks = text.split("Traceback (most recent call last):")[1:3]  # the first two, trimmed
    return {
        "lines": dict(counts.most_common()),
        "tracebacks": tracebacks,
        "examples": examples,
        "first_tracebacks": [b.strip()[-1500:] for b in blocks],
    }


def _tail(samples: list[list[float]], col: int) -> tuple[float, float]:
    """Min and max of column `col` over the second half of a window's samples."""
    half = [r[col] for r in samples[len(samples) // 2 :]]
    return min(half), max(half)


def result(phases: list[dict], seconds: float) -> dict[str, Any]:
    by = {p["phase"]: p for p in phases}
    quiet, hostile = by["quiet"], by["hostile"]
    q99, h99 = (by[k]["honest"]["latency_s"]["p99"] for k in ("quiet", "hostile"))
    cache = H.SELECTION_BOUNDS["cache_mib"]
    quota = H.OWNER_BOUNDS["disk_quota_mib"]
    rss_max = max(p["rss_mib"]["max"] for p in phases)
    disk_max = max(p["models_embeddings_mib"]["max"] for p in phases)
    goals = {
        "p99_ratio": h99 / q99,
        "p99_within_2x": h99 / q99 <= GOAL_P99,
        "honest_errors": sum(hostile["honest"]["errors"].values()),
        # The owner's peak under hostile clients beyond its quiet peak, against the cache bound.
        "rss_growth_mib": rss_max - quiet["rss_mib"]["max"],
        "rss_within_cache_bound": rss_max - quiet["rss_mib"]["max"] <= cache,
        "rss_hostile_second_half_mib": _tail(hostile["samples"], 1),
        "models_embeddings_max_mib": disk_max,
        "models_embeddings_hostile_second_half_mib": _tail(hostile["samples"], 3),
        "disk_within_quota": disk_max <= quota,
    }
    return {
        "seconds": seconds,
        "honest_trainers": quiet["trainers"],
        "mix": {
            "hostile_trainers": list(H.HOSTILE),
            "stallers": list(H.STALLERS),
            "uploaders": list(H.UPLOADERS),
            "reflection_streams": H.REFLECTION_STREAMS,
            "stalled_uploads": H.STALLED_UPLOADS,
            "pause_after_refusal_s": H.PAUSE,
            "ramp_s": H.RAMP,
            "hostile_queries": H.HOSTILE_QUERIES,
        },
        "bounds": {"owner": H.OWNER_BOUNDS, "selection": H.SELECTION_BOUNDS},
        "goals": goals,
        "phases": phases,
    }


def _ms(x: float) -> str:
    return f"{x * 1e3:.0f}"


def _codes(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


def _span(s: dict[str, float]) -> str:
    return f"{s['start']:.0f} / {s['max']:.0f} / {s['end']:.0f}"


def markdown(data: dict[str, Any]) -> str:
    o, sel, mix = data["bounds"]["owner"], data["bounds"]["selection"], data["mix"]
    phases = {p["phase"]: p for p in data["phases"]}
    lines = [
        "## Hostile mix (one owner, 32 honest trainers and hostile clients)",
        "",
        f"The {data['honest_trainers']} honest trainers of the table above (same data, model, "
        f"Select loop and {data['seconds']:.0f} s window) run in successive windows against "
        "one owner: quiet, then with hostile clients in a third client process. The hostile "
        f"clients use {len(mix['hostile_trainers'])} trainer identities of their own (in the "
        f"owner's config, `queries = {mix['hostile_queries']}` each, as every new model costs a "
        f"query): {mix['reflection_streams']} server-reflection streams with no token that "
        f"send nothing; {mix['stalled_uploads']} UploadModel streams from "
        f"{len(mix['stallers'])} trainers that send half a model in a first chunk and then "
        f"stall; {len(mix['uploaders'])} trainers uploading a model never seen before "
        "(a fresh torch seed each time) back to back; and all of them calling Select "
        '"feature" on their own model with fresh `query_batch`, `nprobe` and `flat_threshold` '
        "each call (within `FeatureMatching.param_constraints`; half the thresholds are below "
        "the ~2,000 rows of a class, so IVF indexes are trained; the strategy declares no "
        "`nlist`). A hostile call is made again as soon as it ends, after "
        f"{mix['pause_after_refusal_s']} s when it was refused within a second; hostile "
        f"clients start {mix['ramp_s']:.0f} s before the honest window. The goal compares "
        '"quiet" with "hostile" (the whole mix); "refusals only" (the reflection and stalled '
        'streams) and "work only" (new models and varied Selects) split the mix in two.',
        "",
        "One owner config throughout: the [owner] defaults plus explicit bounds, "
        f"`reflection = {str(o['reflection']).lower()}` (so reflection's auth path is what "
        f"answers the token-less streams), `max_reflection_streams = "
        f"{o['max_reflection_streams']}`, `max_uploads = {o['max_uploads']}`, "
        f"`max_uploads_per_trainer = {o['max_uploads_per_trainer']}`, "
        f"`selections_per_trainer = {o['selections_per_trainer']}`, `stream_idle_seconds = "
        f"{o['stream_idle_seconds']:g}` (so stalled streams are cancelled within a window), "
        f"`disk_quota_mib = {o['disk_quota_mib']}`, `disk_quota_per_trainer_mib = "
        f"{o['disk_quota_per_trainer_mib']}` and `[selection] cache_mib = {sel['cache_mib']}`: "
        "small enough to be reached within the run (a model here is ~2.6 MiB on disk with its "
        "embeddings and ~5 MiB in the cache with its index; the 40 models uploaded before the "
        "windows take ~110 MiB of disk and ~210 MiB of cache). The owner's RSS (VmRSS), its CPU "
        "time and the size of its state directory (`du`; in brackets the models and embeddings "
        "the disk quota governs, the rest is the ledger) are sampled every 0.5 s through each "
        "window.",
        "",
        f"Goal: honest p99 within {GOAL_P99:g}× the quiet window's, no honest errors, the "
        "owner's RSS and disk flat (bounded by config).",
        "",
        "| window | honest calls | req/s | p50 ms | p99 ms | honest errors | hostile calls "
        "(per s) | owner CPU, cores (machine busy) | owner RSS MiB start / max / end | state "
        "dir MiB start / max / end (models + embeddings) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in data["phases"]:
        h, x = p["honest"], p["hostile"]
        me = p["models_embeddings_mib"]
        hostile = f"{x['calls']} ({x['calls_per_s']:.0f}/s)" if x["calls"] else "none"
        lines.append(
            f"| {p['phase']} | {h['calls']} | {h['rps']:.0f} | {_ms(h['latency_s']['p50'])} | "
            f"{_ms(h['latency_s']['p99'])} | {_codes(h['errors'])} | {hostile} | "
            f"{p['owner_cpu_cores']:.2f} ({p['machine_busy']:.0%}) | {_span(p['rss_mib'])} | "
            f"{_span(p['state_dir_mib'])} ({_span(me)}) |"
        )
    x = phases["hostile"]["hostile"]
    lines += [
        "",
        "Hostile calls in the whole-mix window:",
        "",
        "| hostile client | calls by status code | p50 ms of the most common code |",
        "|---|---|---|",
    ]
    for kind in KINDS:
        codes = x["by_kind"].get(kind, {})
        top = next(iter(codes), None)
        lat = _ms(x["latency_s"][kind][top]["p50"]) if top else "–"
        lines.append(f"| {kind} | {_codes(codes)} | {lat} ({top or '–'}) |")
    lines += ["", _verdict(data, phases), "", _why(data, phases), "", _log(data), ""]
    lines.append(
        f"Machine: {os.cpu_count()} cores shared with other jobs (1-min load average "
        + ", ".join(f"{p['load_avg']:.1f}" for p in data["phases"])
        + " at the start of each window); the owner and all client processes share them, so "
        "the hostile clients' own CPU is taken from the owner's. Details (messages per status "
        "code, the owner's log by logger, every RSS/CPU/disk sample) are in "
        "`bench/results/load_hostile.json`. Run: `.venv/bin/python -m bench.load "
        f"--hostile-only` ({data.get('total_seconds', 0):.0f} s)."
    )
    return "\n".join(lines)


def _verdict(data: dict[str, Any], phases: dict[str, dict]) -> str:
    g, o, sel = data["goals"], data["bounds"]["owner"], data["bounds"]["selection"]
    q = phases["quiet"]
    ok = "met" if g["p99_within_2x"] else "**missed**"
    lo, hi = g["rss_hostile_second_half_mib"]
    dlo, dhi = g["models_embeddings_hostile_second_half_mib"]
    return " ".join(
        [
            f"**Result.** Honest p99 with the whole mix / quiet: {g['p99_ratio']:.2f}× "
            f"(goal ≤ {GOAL_P99:g}×: {ok}).",
            f"Honest errors with the mix: {g['honest_errors']}"
            + (" (goal 0: met)." if g["honest_errors"] == 0 else " (goal 0: **missed**)."),
            f"Owner RSS: peak {g['rss_growth_mib']:+.0f} MiB over the quiet window's "
            f"({q['rss_mib']['max']:.0f} MiB), "
            f"{'within' if g['rss_within_cache_bound'] else '**beyond**'} the "
            f"{sel['cache_mib']} MiB cache bound; {lo:.0f}–{hi:.0f} MiB over the second half "
            "of the whole-mix window.",
            f"Models and embeddings on disk: peak {g['models_embeddings_max_mib']:.0f} MiB, "
            f"{'within' if g['disk_within_quota'] else '**beyond**'} the "
            f"{o['disk_quota_mib']} MiB quota ({dlo:.0f}–{dhi:.0f} MiB over the second half "
            f"of the whole-mix window; the {len(data['mix']['uploaders'])} uploading "
            f"trainers can hold at most {o['disk_quota_per_trainer_mib']} MiB each).",
        ]
    )


def _why(data: dict[str, Any], phases: dict[str, dict]) -> str:
    """What the split windows and the refusal messages say about the result (this run's
    numbers; the reading of them is the bench author's)."""
    q, h = phases["quiet"], phases["hostile"]
    o = data["bounds"]["owner"]
    parts = ["**Why.**"]
    for name in ("refusals only", "work only"):
        if name in phases:
            p = phases[name]
            lat = p["honest"]["latency_s"]
            parts.append(
                f'With "{name}" ({p["seconds"]:.0f} s), honest p50 / p99 are {_ms(lat["p50"])} / {_ms(lat["p99"])} '
                f"ms ({lat['p99'] / q['honest']['latency_s']['p99']:.1f}× quiet's p99), "
                f"honest errors {_codes(p['honest']['errors'])}, the owner uses "
                f"{p['owner_cpu_cores']:.2f} cores and the hostile client process "
                f"{p['hostile'].get('client_cpu_cores', 0):.2f}."
            )
    busy = h["honest"]["error_details"].get("UNAVAILABLE", "")
    if busy:
        parts.append(
            f'Honest Selects are refused with "{busy}": the place limit is per trainer '
            f"(`selections_per_trainer = {o['selections_per_trainer']}`), not per kind of "
            f"caller, so {len(data['mix']['hostile_trainers'])} hostile identities may hold "
            f"up to {o['selections_per_trainer'] * len(data['mix']['hostile_trainers'])} of "
            "the selection_workers + selection_queue places, and an upload returns before its "
            "warm-up runs, so a trainer uploading back to back keeps its share full of "
            "warm-ups."
        )
    refusal = h["hostile"]["latency_s"]["reflection"].get("UNAUTHENTICATED", {}).get("p50", 0)
    parts.append(
        "The owner is one Python process, so its gRPC handlers share one interpreter lock: "
        "about one core of Python work at most, which the quiet window already comes close to "
        "when the machine is not busy with other jobs. Every hostile call, refused or not, "
        "takes some of it (a stream, a handler, an auth check or a ledger read, an abort), "
        f"and refusals were answered in {_ms(refusal)} ms p50 here. The queued work is served in turn by trainer, so each honest Select also "
        "waits behind one job of every busy hostile trainer: a warm-up (the owner's 20,000 "
        "rows embedded) or a Select that builds fresh indexes."
    )
    return " ".join(parts)


def _log(data: dict[str, Any]) -> str:
    """The owner's log (WARNING and up) over the windows with hostile clients."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for p in data["phases"]:
        if p["hostile"]["calls"]:
            counts.update(p["owner_log"]["lines"])
            for key, ex in p["owner_log"]["examples"].items():
                first.setdefault(key, ex[0] if ex else "")
    if not counts:
        return "The owner logged nothing at WARNING or above under the hostile clients."
    items = "; ".join(f'{n} × {k} ("{first.get(k, "")[:90]}")' for k, n in counts.most_common())
    return f"The owner's log (WARNING and up) over the windows with hostile clients: {items}."
