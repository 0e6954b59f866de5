"""Model files: exact roundtrips, and refusal of corrupt, mismatched or hostile files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_moe import tiny_config
from safetensors.torch import save as st_save

from moe.config import ModelConfig
from moe.io import (
    CONFIG_KEY,
    FORMAT,
    load_model,
    model_from_bytes,
    model_sha256,
    model_to_bytes,
    save_model,
)
from moe.model import build_model
from mycroft.errors import ConfigError, ModelFileError


def cfg(**kw) -> ModelConfig:
    return tiny_config(**{"norm_mean": (0.3,), "norm_std": (0.4,), **kw})


def tensors_and_meta(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + n])["__metadata__"]
    from safetensors.torch import load

    return load(data), meta


@pytest.mark.parametrize(
    "kw",
    [
        {"gate": "topk"},
        {"gate": "sinkhorn"},
        {"gate": "hash"},
        {"gate": "comet", "local_search": True},
        {"gate": "dense"},
        {"gate": "topk", "stem": "mlp", "input_shape": (64,), "norm_mean": None, "norm_std": None},
    ],
)
def test_save_load_gives_identical_logits(tmp_path: Path, kw: dict) -> None:
    m = build_model(cfg(**kw), seed=3).eval()
    x = torch.rand(20, *m.config.input_shape)
    path = save_model(m, tmp_path / "model.safetensors")
    assert json.loads(path.with_suffix(".json").read_text())["config"]["gate"] == kw["gate"]
    loaded = load_model(path)
    assert loaded.config == m.config
    with torch.no_grad():
        assert torch.equal(m(x), loaded(x))
        assert torch.equal(m.embed(x), loaded.embed(x))


def test_bytes_roundtrip_and_hash() -> None:
    m = build_model(cfg(gate="topk"), seed=0)
    data = model_to_bytes(m)
    assert model_to_bytes(m) == data  # deterministic bytes -> stable hash
    assert len(model_sha256(data)) == 64
    m2 = model_from_bytes(data)
    assert model_to_bytes(m2) == data
    w, b = m2.head_weights()
    assert w.shape == (10, 16) and b.shape == (10,) and w.dtype.name == "float32"


def test_config_dict_roundtrip_and_validation() -> None:
    c = cfg(gate="comet", top_k=3)
    assert ModelConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ConfigError, match="unknown gate 'moe-magic'"):
        ModelConfig.from_dict({**c.to_dict(), "gate": "moe-magic"})
    with pytest.raises(ConfigError, match="unknown field"):
        ModelConfig.from_dict({**c.to_dict(), "evil": 1})
    with pytest.raises(ConfigError, match="top_k"):
        ModelConfig.from_dict({**c.to_dict(), "top_k": 9})
    with pytest.raises(ConfigError):
        ModelConfig.from_dict({**c.to_dict(), "num_experts": "8"})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"num_experts": 8.0}, "num_experts: must be an integer, got 8.0"),
        ({"balance_alpha": True}, "balance_alpha: must be a number, got True"),
        ({"local_search": 1}, "local_search: must be true or false"),
        ({"norm_mean": ["0.3"]}, "norm_mean[0]: must be a number"),
        ({"norm_std": [0.0]}, "norm_std[0]: must be > 0"),
        ({"norm_std": None}, "norm_std: norm_mean and norm_std must be set together"),
        ({"input_shape": [1, 8, 8, 8]}, "input_shape: must list at most 3"),
        ({"input_shape": [1, 3, 8]}, "input_shape: conv stem needs H, W >= 4"),
        ({"input_shape": [1, 2048, 2048]}, "input_shape: (1, 2048, 2048) has more than"),
        ({"class_names": ["a"]}, "class_names: 1 names for 10 classes"),
        ({"top_k": 5, "num_experts": 8, "expert_hidden": 8192}, "expert_hidden: top_k * expert"),
        ({"z_loss_coef": 10**400}, "z_loss_coef: too large for a number"),
    ],
)
def test_config_refuses_loose_values(change: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict({**cfg().to_dict(), **change})
    assert str(info.value).startswith(f"model config: {expected}")


def test_config_missing_field_and_numpy_values() -> None:
    with pytest.raises(ConfigError, match="^model config: class_names: required"):
        ModelConfig.from_dict({k: v for k, v in cfg().to_dict().items() if k != "class_names"})
    c = cfg(
        input_shape=np.array([1, 8, 8]),
        num_classes=np.int64(10),
        norm_mean=np.zeros(1, dtype=np.float32),
        norm_std=(np.float32(0.5),),
        local_search=np.bool_(True),
    )
    assert c.to_dict() == cfg(norm_mean=[0.0], norm_std=[0.5], local_search=True).to_dict()
    assert type(c.input_shape[0]) is int and type(c.norm_std[0]) is float
    with pytest.raises(ConfigError, match="num_classes: must be an integer"):
        cfg(num_classes=np.float64(10))  # only numpy's integers are integers
    with pytest.raises(ConfigError, match="top_k: 9 exceeds num_experts 8"):
        c.replace(top_k=9)  # a changed copy is checked like any config


def good_bytes() -> bytes:
    return model_to_bytes(build_model(cfg(gate="topk"), seed=0))


def rebuild(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    return st_save(tensors, metadata=meta)


def hostile_files() -> dict[str, bytes]:
    data = good_bytes()
    tensors, meta = tensors_and_meta(data)
    conf = json.loads(meta[CONFIG_KEY])
    out: dict[str, bytes] = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "truncated header": data[:40],
        "garbage": b"\x00" * 8 + b"not json at all" * 10,
        "huge header size": struct.pack("<Q", 1 << 60) + data[8:],
        "bad header json": struct.pack("<Q", 5) + b"{oops" + data[13:],
        "no metadata": rebuild(tensors, {}),
        "wrong format": rebuild(tensors, {**meta, "format": "other"}),
        "future version": rebuild(tensors, {**meta, "format_version": "99"}),
        "bad config json": rebuild(tensors, {**meta, CONFIG_KEY: "{not json"}),
        "unknown gate": rebuild(tensors, {**meta, CONFIG_KEY: json.dumps({**conf, "gate": "x"})}),
        "config/shape mismatch": rebuild(
            tensors, {**meta, CONFIG_KEY: json.dumps({**conf, "stem_dim": 48})}
        ),
        "oversized config": rebuild(
            tensors,
            {
                **meta,
                CONFIG_KEY: json.dumps(
                    {**conf, "num_experts": 256, "expert_hidden": 8192, "stem_dim": 8192}
                ),
            },
        ),
        "missing tensor": rebuild({k: v for k, v in tensors.items() if k != "head.bias"}, meta),
        "extra tensor": rebuild({**tensors, "evil": torch.zeros(3)}, meta),
        "wrong dtype": rebuild({**tensors, "head.bias": tensors["head.bias"].half()}, meta),
        "nan weights": rebuild(
            {**tensors, "head.bias": torch.full_like(tensors["head.bias"], float("nan"))}, meta
        ),
    }
    flipped = bytearray(data)
    (n,) = struct.unpack("<Q", data[:8])
    flipped[8 + n // 2] = ord("\x07")  # a control byte inside the JSON header
    out["corrupt header byte"] = bytes(flipped)
    return out


@pytest.mark.parametrize("case", sorted(hostile_files()))
def test_hostile_files_are_refused(case: str, tmp_path: Path) -> None:
    data = hostile_files()[case]
    with pytest.raises(ModelFileError):
        model_from_bytes(data)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match="bad.safetensors"):
        load_model(path)


def test_missing_file_is_model_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot read"):
        load_model(tmp_path / "nope.safetensors")


def test_metadata_names_the_format() -> None:
    _, meta = tensors_and_meta(good_bytes())
    assert meta["format"] == FORMAT and ModelConfig.from_dict(json.loads(meta[CONFIG_KEY]))


def test_random_byte_corruption_never_escapes_as_another_error() -> None:
    """Any mutated file either loads (a flipped weight byte) or raises ModelFileError."""
    import numpy as np

    data = model_to_bytes(build_model(cfg(gate="hash", local_search=True), seed=0))
    (n,) = struct.unpack("<Q", data[:8])
    rng = np.random.default_rng(0)
    refused = 0
    for trial in range(200):
        buf = bytearray(data)
        # Mostly hit the header (structure), sometimes the tensor bytes.
        hi = 8 + n if trial % 4 else len(buf)
        for pos in rng.integers(0, hi, size=int(rng.integers(1, 4))):
            buf[pos] = int(rng.integers(0, 256))
        try:
            model_from_bytes(bytes(buf))
        except ModelFileError:
            refused += 1
    assert refused > 100


def test_deeply_nested_header_is_refused_cleanly():
    import struct

    from moe.io import model_from_bytes
    from mycroft.errors import ModelFileError

    header = ("[" * 100_000 + "]" * 100_000).encode()
    blob = struct.pack("<Q", len(header)) + header
    with pytest.raises(ModelFileError, match="nested too deeply"):
        model_from_bytes(blob)
