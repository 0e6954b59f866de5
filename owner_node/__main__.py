"""`python -m owner_node --config owner.toml`: run a data owner until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import sys

from owner_node.server import run_owner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m owner_node", description="Run a Mycroft data owner (gRPC)."
    )
    parser.add_argument("--config", required=True, help="owner TOML config (examples/owner.toml)")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_owner(args.config)


if __name__ == "__main__":
    sys.exit(main())
