"""The windows of bench/load.py's hostile mix: 32 honest trainers quiet, then with the
hostile clients of bench/_hostile.py at the same time, against one owner whose memory, CPU
and state directory are sampled throughout (`Sampler`)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import _hostile, _hostile_report
from bench._grpc_bench import owner_mapping, server

HONEST = 32  # honest trainers in every window (as the 32 level of the load table)
# The windows, in order, each with the hostile clients that run in it. "hostile" (the whole mix)
# is compared with "quiet"; the two halves of the mix show which half costs what. The
# refusal-only window comes before the whole mix because it leaves no work behind it.
REFUSALS, WORK = ("reflection", "stalled upload"), ("new-model upload", "feature select")
# The split windows last half as long (the whole run stays within ~3 minutes).
PHASES: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("quiet", (), 1.0),
    ("refusals only", REFUSALS, 0.5),
    ("hostile", _hostile.KINDS, 1.0),
    ("work only", WORK, 0.5),
)
DRAIN = 20.0  # at most this long between windows for the owner to finish queued work


def run_hostile(seconds: float, tmp: Path, model: bytes) -> dict:
    """One owner (default [owner] settings plus the mix's explicit bounds), 32 honest trainers
    as at the 32 level: a quiet window, then the same window with hostile clients (`PHASES`)."""
    from bench import load as L

    ids = [f"t{i:02d}" for i in range(HONEST)]
    state = tmp / "hostile"
    mapping = owner_mapping(str(state), ids, cap=10**9, max_rows=128)
    mapping["selection"]["methods"] = ["feature", "random"]
    _hostile.configure(mapping)
    spec = {"rows": L.ROWS, "features": L.FEATURES, "config": mapping}
    pid: list[int] = []
    log_path = tmp / "owner-hostile.log"
    phases = []
    with open(log_path, "w") as log, server("owner", spec, pid=pid, stderr=log) as port:
        cancelled: list[float] = []  # seconds each cancelled setup upload had lasted
        sha = L.upload(port, ids[0], model, cancelled)  # alone first: the owner imports torch
        with ThreadPoolExecutor(8) as uploads:  # honest: one model; hostile: one seed each
            list(uploads.map(lambda t: L.upload(port, t, model, cancelled), ids[1:]))
            seeds = {h: L.model_bytes(seed=1 + i) for i, h in enumerate(_hostile.HOSTILE)}
            shas = dict(
                zip(
                    seeds,
                    uploads.map(lambda h: L.upload(port, h, seeds[h], cancelled), seeds),
                    strict=True,
                )
            )
        client = _hostile.HostileClient(port, shas, len(model))
        for phase, kinds, share in PHASES:
            window = seconds * share
            drained = _drain(pid[0])
            load0 = os.getloadavg()[0]
            log.flush()
            offset = log_path.stat().st_size
            sampler = Sampler(pid[0], state, time.time())
            sampler.start()
            mix = (client, kinds) if kinds else None
            calls, hostile = L._window(port, ids, sha, window, mix)
            footprint = sampler.finish()
            with open(log_path) as f:
                f.seek(offset)
                owner_log = _hostile_report.log_summary(f.read())
            r = {
                "phase": phase,
                "kinds": list(kinds),
                "drain_s": drained,
                "trainers": len(ids),
                "seconds": window,
                "honest": L.honest_summary(calls, window),
                "hostile": _hostile_report.summarise(hostile),
                "owner_log": owner_log,
                **footprint,
                "load_avg": load0,
            }
            phases.append(r)
            _print(r)
        client.close()
    out = _hostile_report.result(phases, seconds)
    out["setup_uploads_cancelled_after_s"] = cancelled
    return out


def _drain(pid: int) -> float:
    """Wait (at most DRAIN s) until the owner is idle: under 0.1 core over half a second."""
    start = time.time()
    while time.time() - start < DRAIN:
        cpu = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - cpu < 0.05:
            break
    return round(time.time() - start, 1)


def _print(r: dict) -> None:
    h, rss, du = r["honest"], r["rss_mib"], r["state_dir_mib"]
    print(
        f"{r['phase']}: honest {h['calls']} calls, p50 {h['latency_s']['p50'] * 1e3:.0f} ms, "
        f"p99 {h['latency_s']['p99'] * 1e3:.0f} ms, errors {h['errors'] or 'none'}; RSS "
        f"{rss['start']:.0f}/{rss['max']:.0f}/{rss['end']:.0f} MiB; state dir "
        f"{du['start']:.0f}/{du['max']:.0f}/{du['end']:.0f} MiB; owner CPU "
        f"{r['owner_cpu_cores']:.2f} cores (machine {r['machine_busy']:.0%} busy); "
        f"hostile {r['hostile']['by_kind'] or '-'}",
        flush=True,
    )


# ------------------------------------------------------------------ the owner's footprint


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v) - idle, sum(v)


def du_mib(root: Path) -> float:
    """Disk usage of `root` like `du`: allocated blocks, files that vanish meanwhile skipped."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total / (1 << 20)


class Sampler(threading.Thread):
    """Every `period` s: the owner's VmRSS and the size of its state directory (and of the
    part the disk quota governs: models and embeddings)."""

    def __init__(self, pid: int, state_dir: Path, t0: float, period: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.dir, self.t0, self.period = pid, state_dir, t0, period
        self.samples: list[tuple[float, float, float, float]] = []
        self.cpu: list[float] = []  # the owner's CPU seconds at each sample
        self.machine: list[tuple[float, float]] = []  # the machine's busy, total CPU time
        self._done = threading.Event()

    def sample(self) -> None:
        models = du_mib(self.dir / "models") + du_mib(self.dir / "embeddings")
        row = (time.time() - self.t0, rss_mib(self.pid), du_mib(self.dir), models)
        self.samples.append(tuple(round(v, 2) for v in row))
        self.cpu.append(cpu_seconds(self.pid))
        self.machine.append(machine_busy())

    def run(self) -> None:
        while True:
            self.sample()
            if self._done.wait(self.period):
                break

    def finish(self) -> dict[str, Any]:
        self._done.set()
        self.join()
        self.sample()
        s, m = self.samples, self.machine

        def span(i: int) -> dict[str, float]:
            return {"start": s[0][i], "max": max(r[i] for r in s), "end": s[-1][i]}

        return {
            # the owner's CPU use over the sampled time, in cores (2 = both cores busy)
            "owner_cpu_cores": (self.cpu[-1] - self.cpu[0]) / max(s[-1][0] - s[0][0], 1e-9),
            "machine_busy": (m[-1][0] - m[0][0]) / max(m[-1][1] - m[0][1], 1),  # 0..1
            "rss_mib": span(1),
            "state_dir_mib": span(2),
            "models_embeddings_mib": span(3),
            "samples": [list(r) for r in s],  # seconds from t0, RSS, state dir, models+emb
        }
