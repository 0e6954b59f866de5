"""The `mycroft` command: one CLI with subcommands for owners, trainers, simulation, reports.

Handlers import their node lazily so `mycroft --help` is instant and an owner machine never
loads trainer code. Errors the user can fix print one line naming the problem, not a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mycroft import __version__, logs
from mycroft.errors import MycroftError

log = logging.getLogger("mycroft")


# Each handler reads its config before importing the node, whose modules load torch: a mistake
# in the file is reported in a fraction of a second, not after the heavy imports.


def _owner_serve(args: argparse.Namespace) -> int:
    from owner_node.config import load_config

    config = load_config(args.config)
    from owner_node.server import run_owner

    return run_owner(config)


def _owner_inspect(args: argparse.Namespace) -> int:
    from owner_node.ledger_report import inspect_ledger

    return inspect_ledger(args.config, trainer=args.trainer, as_json=args.json)


def _owner_health(args: argparse.Namespace) -> int:
    from owner_node.health import check_health

    return check_health(args.config, address=args.address, timeout=args.timeout)


def _trainer_run(args: argparse.Namespace) -> int:
    from trainer_node.config import load_config

    config = load_config(args.config)
    from trainer_node.pipeline import run_trainer_cli

    return run_trainer_cli(config)


def _simulate(args: argparse.Namespace) -> int:
    from mycroft.simulate import simulate_from_args

    return simulate_from_args(args)


def _report(args: argparse.Namespace) -> int:
    from trainer_node.html_report import render_report_file

    return render_report_file(args.run_json, out=args.out)


def _verbosity_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # On every leaf command too, so `mycroft trainer run --config x -q` works; SUPPRESS keeps a
    # leaf that was not given the flag from resetting what the top level set.
    default = argparse.SUPPRESS if suppress else False
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="errors only, no progress"
    )
    group.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logs")
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=argparse.SUPPRESS if suppress else None,
        help=f"log lines as text or one JSON object each (default: ${logs.ENV_VAR}, else text)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mycroft",
        description="Privacy-preserving data acquisition: owners reveal small budgeted subsets "
        "chosen to fix a trainer's failures; the trainer ranks owners by utility gain.",
    )
    parser.add_argument("--version", action="version", version=f"mycroft {__version__}")
    _verbosity_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    owner = commands.add_parser("owner", help="run or inspect a data-owner node")
    owner_cmds = owner.add_subparsers(dest="owner_command", required=True, metavar="ACTION")
    serve = owner_cmds.add_parser("serve", help="serve the owner's gRPC node")
    serve.add_argument("--config", required=True, help="owner TOML config")
    serve.set_defaults(func=_owner_serve)
    inspect = owner_cmds.add_parser("inspect", help="show the budget ledger")
    inspect.add_argument("--config", required=True, help="owner TOML config")
    inspect.add_argument("--trainer", help="only this trainer id")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(func=_owner_inspect)
    health = owner_cmds.add_parser(
        "health", help="exit 0 if the owner node reports SERVING, 1 if not (saying why)"
    )
    health.add_argument(
        "--config", help="owner TOML config (only its listen addresses and [tls] are read)"
    )
    health.add_argument(
        "--address", help="host:port ([::1]:50051 for IPv6); overrides the config's address"
    )
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.set_defaults(func=_owner_health)

    trainer = commands.add_parser("trainer", help="run the trainer")
    trainer_cmds = trainer.add_subparsers(dest="trainer_command", required=True, metavar="ACTION")
    run = trainer_cmds.add_parser("run", help="query owners, train, rank, write the report")
    run.add_argument("--config", required=True, help="trainer TOML config")
    run.set_defaults(func=_trainer_run)

    sim = commands.add_parser(
        "simulate",
        help="run owners as local processes (or Ray actors) and a trainer against them",
        description="Run a scenario: its owners as local processes (--backend local) or as "
        "actors on a Ray instance (--backend ray, which runs the trainer's evaluation as Ray "
        "tasks on the same instance), and the trainer in this process against them.",
    )
    sim.add_argument("--scenario", default="demo", help="built-in scenario name or a TOML path")
    sim.add_argument("--out", help="run directory (default: runs/<scenario>-<time>)")
    sim.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    sim.add_argument(
        "--prepare-only",
        action="store_true",
        help="write data and node configs, start nothing (used by docker compose)",
    )
    sim.add_argument(
        "--hosts",
        choices=["loopback", "compose"],
        default="loopback",
        help="owners on loopback ports, or on compose service names (default loopback)",
    )
    sim.add_argument("--tls", choices=["on", "off"], default="off", help="mutual TLS (default off)")
    sim.add_argument("--certs", help="directory from scripts/make_dev_certs.sh (with --tls on)")
    sim.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="owners as local processes, or as Ray actors with the evaluation as Ray tasks "
        "(default local). On a multi-node Ray cluster the owners' data, state (ledgers) and "
        "logs are read and written in the run directory (--out): it must be on a filesystem "
        "every node shares, at the same path",
    )
    sim.add_argument(
        "--ray-address",
        metavar="ADDR",
        help='with --backend ray: a running Ray cluster ("auto", host:port or '
        "ray://host:port); default: start a local Ray instance in this process",
    )
    sim.add_argument(
        "--ray-cpus",
        type=int,
        metavar="N",
        help="with --backend ray: CPUs of the local Ray instance (default: this machine's)",
    )
    sim.add_argument(
        "--ray-owner-cpus",
        type=float,
        metavar="CPUS",
        help="with --backend ray: CPUs each owner actor reserves, a fraction up to 1 or a "
        "whole number (default: owners share half of what one evaluation task leaves, at "
        "most 1 each); the evaluation's tasks need CPUs beside them",
    )
    sim.set_defaults(func=_simulate)

    report = commands.add_parser("report", help="re-render the HTML report of a run")
    report.add_argument("run_json", metavar="RUN.json", help="a run's JSON report")
    report.add_argument("--out", help="HTML path (default: next to RUN.json)")
    report.set_defaults(func=_report)
    for leaf in (serve, inspect, health, run, sim, report):
        _verbosity_options(leaf, suppress=True)
    return parser


def configure_logging(quiet: bool, verbose: bool, log_format: str | None = None) -> None:
    """Level and format (`mycroft.logs`) for every command; ConfigError for a bad format."""
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    logs.configure(level, log_format)
    if not verbose:  # faiss logs each CPU-specific build it probes for and does not find
        logging.getLogger("faiss").setLevel(logging.WARNING)
    # Progress bars follow the same switch (see mycroft.progress).
    from mycroft import progress

    progress.configure(enabled=not quiet)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(args.quiet, args.verbose, args.log_format)
        return int(args.func(args) or 0)
    except MycroftError as err:
        logs.report_error(str(err))
        return 2
    except KeyboardInterrupt:
        print("mycroft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
