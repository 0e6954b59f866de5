"""Entry-point plugins, loaded once per group on first use.

Shared by the selection strategies (`mycroft.selection`) and the data sources
(`mycroft.data_sources`). Kept light on purpose: only `importlib.metadata`, so either registry
can import it without pulling in the other's dependencies.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

EntryPoint = importlib.metadata.EntryPoint


class PluginGroup:
    """The entry points of one group, each handed to `on_entry` the first time `load` runs.

    `on_entry` decides what loading means (import for its side effects, or store the object
    under the entry point's name). `loaded` is set before the first entry is handled, so a
    plugin that fails to import is not retried on every lookup.
    """

    def __init__(self, group: str, on_entry: Callable[[EntryPoint], None]) -> None:
        self.group = group
        self.on_entry = on_entry
        self.loaded = False

    def load(self) -> None:
        if self.loaded:
            return
        self.loaded = True
        # looked up at call time, so tests can stand in their own entry points
        for ep in importlib.metadata.entry_points(group=self.group):
            self.on_entry(ep)
