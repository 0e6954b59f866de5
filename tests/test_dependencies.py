"""The dependency declarations in pyproject.toml stay honest.

Every third-party module the code imports is declared (not merely pulled in by something else),
every range stops below the next major, and constraints/minimum.txt pins exactly the declared
lower bounds, which `make test-minimum` then proves by running the fast tests against them.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from mycroft.data import ParquetSource
from mycroft.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
FIRST_PARTY = {"mycroft", "moe", "selection", "owner_node", "trainer_node", "bench"}
SHIPPED = ["mycroft", "moe", "selection", "owner_node", "trainer_node"]
RUNTIME_EXTRAS = ["parquet", "ray", "pandas"]
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(*extras: str) -> dict[str, str]:
    """Declared requirement strings by normalised distribution name, with the extras given and
    those they name (`mycroft[pandas]`)."""
    found: dict[str, str] = {}
    for group in [
        PYPROJECT["dependencies"],
        *(PYPROJECT["optional-dependencies"][e] for e in extras),
    ]:
        for req in group:
            if req.startswith("mycroft["):
                found |= requirements(*req[len("mycroft[") : -1].split(","))
            else:
                found[normalise(_NAME.match(req).group(1))] = req
    return found


def version_key(version: str) -> tuple[int | str, ...]:
    """'1.26' and '1.26.0' are the same release ('1.8.0.post1' keeps its zero)."""
    parts: list[int | str] = [int(p) if p.isdigit() else p for p in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not an exact pin"
            found[normalise(name)] = version.strip()
    return found


def third_party_imports(folder: Path) -> dict[str, str]:
    """Top-level module -> a file importing it, for every import, lazy ones included."""
    local = {p.stem for p in folder.glob("*.py")}  # a test folder's own helpers
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in (n.split(".")[0] for n in names):
                if top in sys.stdlib_module_names or top in FIRST_PARTY | local | {"__future__"}:
                    continue
                found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize(
    ("folders", "extras"),
    [
        (SHIPPED, RUNTIME_EXTRAS),  # the package never needs a test-only tool
        (["bench"], RUNTIME_EXTRAS),
        (["tests"], [*RUNTIME_EXTRAS, "test"]),
    ],
)
def test_every_imported_module_is_declared(folders: list[str], extras: list[str]) -> None:
    declared = set(requirements(*extras))
    distributions = packages_distributions()
    undeclared = []
    for folder in folders:
        for module, where in third_party_imports(ROOT / folder).items():
            # A module not installed here cannot be mapped to its distribution; importing it
            # fails in the tests that need it.
            owners = {normalise(d) for d in distributions.get(module, [])}
            if owners and not owners & declared:
                undeclared.append(f"{module} ({where}; from {', '.join(sorted(owners))})")
    assert not undeclared, f"imported but not declared with extras {extras}: {undeclared}"


def test_every_module_imports() -> None:
    """Each module of the packages and benches imports with what is installed: the check that
    a dependency's lower bound still offers every name the code takes from it."""
    walk = (
        "import importlib, pkgutil\n"
        f"for pkg in {sorted(FIRST_PARTY)}:\n"
        "    for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + '.'):\n"
        "        if not info.name.endswith('__main__'):\n"
        "            importlib.import_module(info.name)\n"
    )
    # A fresh interpreter: no module is already imported, and nothing leaks into this one.
    result = subprocess.run(
        [sys.executable, "-c", walk], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_every_range_stops_below_the_next_major() -> None:
    for name, req in requirements(*PYPROJECT["optional-dependencies"]).items():
        assert "<" in req or "==" in req, f"{name}: {req!r} has no upper bound"


def test_minimum_constraints_pin_exactly_the_declared_lower_bounds() -> None:
    minimum = pins(ROOT / "constraints" / "minimum.txt")
    # dev's tools (grpcio-tools, ruff) are not installed in the minimum venv.
    declared = requirements(*RUNTIME_EXTRAS, "test")
    assert set(minimum) == set(declared), "minimum.txt and pyproject.toml list different packages"
    for name, req in declared.items():
        lower = re.search(r">=\s*([0-9a-z.]+)", req)
        assert lower, f"{name}: {req!r} has no lower bound"
        assert version_key(minimum[name]) == version_key(lower.group(1)), (
            f"{name}: pyproject.toml says {req!r}, constraints/minimum.txt pins {minimum[name]}"
        )


def test_the_installed_torch_pin_is_the_declared_minimum() -> None:
    torch_pin = pins(ROOT / "constraints" / "torch.txt")
    assert set(torch_pin) == {"torch"}
    assert torch_pin["torch"] == pins(ROOT / "constraints" / "minimum.txt")["torch"]
    # Every place that installs torch installs exactly this one (a bare `pip install torch`
    # would pull several GB of CUDA packages).
    for where in ("Makefile", "Dockerfile", "README.md"):
        text = (ROOT / where).read_text()
        installs = re.findall(r"pip install [^\n]*?(?<![\w/])torch\b(?!\.txt)([^\s']*)", text)
        assert installs, f"{where} installs no torch"
        assert set(installs) == {"==" + torch_pin["torch"]}, (where, installs)


def test_dev_pins_grpcio_tools_to_the_version_the_generated_code_names() -> None:
    generated = (ROOT / "mycroft" / "v1" / "owner_pb2_grpc.py").read_text()
    made_with = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", generated).group(1)
    dev = requirements("dev")
    assert dev["grpcio-tools"] == f"grpcio-tools=={made_with}"


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    path = tmp_path / "rows.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"rows\.parquet: .*pip install 'mycroft\[parquet\]'"):
        ParquetSource(path, "label").load()
