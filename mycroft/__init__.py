"""Mycroft: privacy-preserving data acquisition.

Owners keep their data and reveal only small, budgeted subsets chosen to fix a
trainer's failures; the trainer ranks owners by the utility those subsets bring.

The notebook API (mycroft.api) is loaded on first use, so `import mycroft` stays fast and
imports no torch: `mycroft.Owner`, `mycroft.RemoteOwner`, `mycroft.acquire`,
`mycroft.simulate_scenario`, `mycroft.Report`, `mycroft.Scenario`, `mycroft.load_scenario`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mycroft.errors import ConfigError, DataError, MycroftError

if TYPE_CHECKING:
    from mycroft.api import Owner, RemoteOwner, Report, acquire, simulate_scenario
    from mycroft.scenario import Scenario, load_scenario, parse_scenario

__version__ = "0.1.0"

# Public name -> the module defining it, imported when the name is first used.
_LAZY = {
    "Owner": "mycroft.api_owner",
    "RemoteOwner": "mycroft.api_owner",
    "Report": "mycroft.api_report",
    "acquire": "mycroft.api",
    "simulate_scenario": "mycroft.api",
    "Scenario": "mycroft.scenario",
    "load_scenario": "mycroft.scenario",
    "parse_scenario": "mycroft.scenario",
}

__all__ = [
    "ConfigError",
    "DataError",
    "MycroftError",
    "Owner",
    "RemoteOwner",
    "Report",
    "Scenario",
    "__version__",
    "acquire",
    "load_scenario",
    "parse_scenario",
    "simulate_scenario",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mycroft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
