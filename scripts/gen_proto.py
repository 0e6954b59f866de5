"""Generate the Python gRPC code from proto/ into mycroft/v1/ (one command: `make proto`).

`--check` regenerates into a temporary directory and exits 1 if the committed code differs,
so a test can catch a .proto edited without regenerating.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT  # package mycroft.v1 -> mycroft/v1/


def generate(out_dir: Path) -> list[Path]:
    try:
        from grpc_tools import protoc
    except ModuleNotFoundError:
        raise SystemExit(
            "grpcio-tools is not installed: pip install -e '.[dev]' (it pins the version "
            "the committed code was generated with)"
        ) from None

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return [p.relative_to(PROTO_ROOT).with_suffix("") for p in protos]


def generated_files(root: Path, stems: list[Path]) -> list[Path]:
    files = []
    for stem in stems:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            files.append(root / stem.parent / f"{stem.name}{suffix}")
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stems = generate(Path(tmp))
        stale = [
            str(committed.relative_to(OUT))
            for fresh, committed in zip(
                generated_files(Path(tmp), stems), generated_files(OUT, stems), strict=True
            )
            if not committed.exists() or not filecmp.cmp(fresh, committed, shallow=False)
        ]
    if stale:
        print("generated code is out of step with proto/; run `make proto`:", *stale, sep="\n  ")
        # The files embed the generator's version, so another grpcio-tools alone makes them stale.
        print(f"(made here with grpcio-tools {version('grpcio-tools')}; .[dev] pins the right one)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
