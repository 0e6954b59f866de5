"""The generated gRPC code must stay in step with proto/ (regenerate with `make proto`)."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A dev tool (`pip install -e '.[dev]'`): the minimum-versions venv runs without it.
needs_grpc_tools = pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools is not installed (.[dev])"
)


@needs_grpc_tools
def test_generated_code_matches_proto():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_grpc_tools
def test_check_detects_a_stale_file(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    shutil.copytree(ROOT / "mycroft" / "v1", tmp_path / "mycroft" / "v1")
    stale = tmp_path / "mycroft" / "v1" / "owner_pb2.py"
    stale.write_text(stale.read_text() + "\n# edited by hand\n")
    monkeypatch.setattr(gen, "OUT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["gen_proto.py", "--check"])
    assert gen.main() == 1
    assert "owner_pb2.py" in capsys.readouterr().out


def test_service_has_the_contracted_methods():
    from mycroft.v1 import owner_pb2

    service = owner_pb2.DESCRIPTOR.services_by_name["DataOwner"]
    assert owner_pb2.DESCRIPTOR.package == "mycroft.v1"
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Describe", "HasModel", "UploadModel", "Select", "GetLedger"}
    assert methods["UploadModel"].client_streaming
    assert methods["Select"].server_streaming
