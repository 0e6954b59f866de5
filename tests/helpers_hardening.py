"""Pieces shared by the hardening tests: an owner run as a real process, synthetic data.

`OwnerProcess` starts `python -m owner_node --config owner.toml` (config and NPZ written by
`write_owner`), reads the port from its log, keeps draining its log (an owner logs every Select;
an undrained pipe would block it) and can SIGKILL it. `rss_kib` reads a process's memory from
/proc, so the server's own footprint is measured, not the test runner's.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tomli_w
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers_grpc import TOKENS

from mycroft.data import save_npz
from mycroft.data.base import LabeledData
from mycroft.files import toml_ready

ROOT = Path(__file__).resolve().parent.parent
# Loopback clients that pull a stream slowly must really slow the sender: no window growth.
SLOW_READER_OPTIONS = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),
]


def synthetic_data(rows: int, dim: int, classes: int, seed: int = 0) -> LabeledData:
    """Random float rows, balanced labels, ids that are not positions (as real owners have)."""
    rng = np.random.default_rng(seed)
    return LabeledData(
        features=rng.standard_normal((rows, dim), dtype=np.float32),
        labels=np.arange(rows, dtype=np.int64) % classes,
        class_names=tuple(f"c{i}" for i in range(classes)),
        row_ids=np.arange(rows, dtype=np.int64) * 7 + 1000,
        name="synthetic",
    )


def write_owner(
    tmp: Path,
    data: LabeledData,
    trainers: Mapping[str, int],
    **sections: Mapping[str, Any],
) -> Path:
    """owner.toml + data.npz in `tmp`; `trainers` maps test trainer names to caps."""
    save_npz(data, tmp / "data.npz")
    tables: dict[str, Any] = {
        "owner": {"name": "proc-owner", "listen": "127.0.0.1:0", "state_dir": "state"},
        "data": {"source": "npz", "path": "data.npz"},
    }
    for name, table in sections.items():
        tables[name] = {**tables.get(name, {}), **table}
    tables["trainers"] = [{"id": t, "token": TOKENS[t], "cap": cap} for t, cap in trainers.items()]
    path = tmp / "owner.toml"
    path.write_text(tomli_w.dumps(toml_ready(tables)))  # None values: not set
    return path


class OwnerProcess:
    """An owner node in its own process; `start()` returns once it listens."""

    def __init__(self, config: Path):
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=200)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> OwnerProcess:
        # One ready event per process: a killed process's reader thread reaches EOF and sets
        # its own event, which must not wake the start() of the process that replaces it.
        ready = threading.Event()
        self.port = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "owner_node", "--config", str(self.config)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._drain, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(timeout) or self.port is None:
            self.kill()
            raise AssertionError("owner did not start:\n" + "\n".join(self.log))
        return self

    def _drain(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(line.rstrip())
            match = re.search(r"on port (\d+)", line)
            if match and not ready.is_set():
                self.port = int(match.group(1))
                ready.set()
        ready.set()  # the process ended: wake start() instead of waiting out its timeout

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler runs, no grace, nothing flushed that was not already durable."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def rss_kib(self) -> tuple[int, int]:
        """(current RSS, peak RSS) of the owner process in KiB, from /proc."""
        assert self.proc is not None
        return rss_kib(self.proc.pid)


def rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def is_serving(address: str, timeout: float = 10.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_until(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
