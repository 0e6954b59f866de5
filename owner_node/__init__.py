"""The data owner's gRPC node: holds private rows, answers budgeted Select requests.

Public entry points: `build_server`, `serve`, `run_owner` (server.py), `load_config`
(config.py), `Engine` (engine.py, selection without the network), `Ledger` (ledger.py).
"""

from owner_node.config import OwnerConfig, load_config, parse_config
from owner_node.server import OwnerServer, build_server, run_owner, serve

__all__ = [
    "OwnerConfig",
    "OwnerServer",
    "build_server",
    "load_config",
    "parse_config",
    "run_owner",
    "serve",
]
