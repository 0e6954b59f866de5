"""`python -m owner_node --config owner.toml`: run a data owner until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from mycroft import logs
from mycroft.errors import MycroftError
from owner_node.server import run_owner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m owner_node", description="Run a Mycroft data owner (gRPC)."
    )
    parser.add_argument("--config", required=True, help="owner TOML config (examples/owner.toml)")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        help=f"text or JSON lines (default: ${logs.ENV_VAR}, else text)",
    )
    args = parser.parse_args(argv)
    try:
        logs.configure(args.log_level, args.log_format)
    except MycroftError as e:
        logs.report_error(str(e))
        return 2
    return run_owner(args.config)


if __name__ == "__main__":
    sys.exit(main())
