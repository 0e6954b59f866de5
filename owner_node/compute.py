"""The owner's `[compute]` table: where and with how many threads it runs a trainer's model over
rows. Reading it imports no torch; resolving the device does."""

from __future__ import annotations

import logging
import os
from typing import Annotated

from pydantic import AfterValidator, Field

from moe.device import check_device
from mycroft.config_base import ConfigModel, Int
from mycroft.errors import ConfigError
from owner_node.config_fields import Text

log = logging.getLogger("owner_node.compute")


class ComputeSection(ConfigModel):
    """`[compute]`: where the owner runs the trainer's model over rows (its own rows, embedded
    once per model before the first selection, and raw D_hard rows)."""

    # "auto": the first CUDA device when torch sees one, else the CPU. A named GPU the machine
    # lacks stops the owner at start-up (`resolved_device`), never a silent CPU fallback.
    device: Annotated[Text, AfterValidator(check_device)] = "auto"
    # Intra-op CPU threads for those passes; 0: every core this process may use. Default 1:
    # on a shared 2-core machine with other work running, Fashion-sized rows embedded at ~22k
    # rows/s on 1 thread and ~3k on 2 (batch 256); give more on a machine of its own.
    threads: Int = Field(1, ge=0, le=1024)

    def resolved_device(self) -> str:
        """`device` resolved on this machine ("cpu", "cuda:0"): a GPU it lacks stops the owner at
        start-up, naming the field, rather than when the first model arrives."""
        from moe.device import describe, resolve_device

        try:
            device = resolve_device(self.device)
        except ValueError as e:
            raise ConfigError(f"compute.device: {e}") from None
        log.info("owner models run on %s", describe(device))
        return str(device)

    def resolved_threads(self) -> int:
        """`threads`, 0 resolved to the cores this process may use."""
        if self.threads:
            return self.threads
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # no affinity on this platform (macOS)
            return os.cpu_count() or 1
