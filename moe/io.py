"""Model files: one .safetensors file, config as JSON in its metadata. Safe for untrusted input.

Loading never runs code from the file (no pickle, no torch.load). Before any tensor is read,
the header is parsed and checked by hand: header size, JSON, format version, config (every size
bounded by ModelConfig), and every tensor's name, dtype, shape and byte range against the model
the config describes (built on the meta device, so a hostile config allocates nothing).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load

from moe.config import ModelConfig
from moe.model import MoEClassifier
from mycroft.errors import ConfigError, ModelFileError
from mycroft.files import write_atomic

FORMAT = "mycroft-moe"
FORMAT_VERSION = 1
CONFIG_KEY = "mycroft_config"
MAX_FILE_BYTES = 512 << 20
MAX_HEADER_BYTES = 4 << 20
MAX_PARAMETERS = 64_000_000

_DTYPES = {torch.float32: "F32", torch.int64: "I64"}
_DTYPE_SIZE = {"F32": 4, "I64": 8}


def _state(model: MoEClassifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Safetensors bytes with sorted keys: the same model always gives the same bytes (and hash).

    The safetensors library's own writer orders metadata through a hash map, so its output varies
    between calls; this writer follows the same format (little-endian, 8-byte aligned header).
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        raw = t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def model_to_bytes(model: MoEClassifier) -> bytes:
    config = json.dumps(model.config.to_dict(), sort_keys=True)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), CONFIG_KEY: config}
    return _serialize(_state(model), metadata)


def save_model(model: MoEClassifier, path: str | Path, write_json: bool = True) -> Path:
    """Write `path` (.safetensors); with write_json also path.with_suffix('.json') for humans."""
    path = Path(path)
    data = model_to_bytes(model)
    # Atomic and fsynced: a reader never sees a half-written model. 0o644: as readable as the
    # plain write it replaces (write_atomic is owner-only unless told).
    write_atomic(path, lambda f: f.write(data), mode=0o644, binary=True)
    if write_json:
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sha256": model_sha256(data),
            "config": model.config.to_dict(),
        }
        text = json.dumps(info, indent=2) + "\n"
        write_atomic(path.with_suffix(".json"), lambda f: f.write(text), mode=0o644)
    return path


def model_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise ModelFileError(f"model file truncated: {len(data)} bytes, no header")
    if len(data) > MAX_FILE_BYTES:
        raise ModelFileError(f"model file too large: {len(data)} bytes > {MAX_FILE_BYTES}")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise ModelFileError(f"model header too large: {n} bytes > {MAX_HEADER_BYTES}")
    if 8 + n > len(data):
        raise ModelFileError(f"model file truncated: header needs {n} bytes, file has {len(data)}")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"model header is not valid JSON: {exc}") from exc
    except RecursionError:  # a hostile header of deeply nested arrays
        raise ModelFileError("model header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ModelFileError("model header is not a JSON object")
    return header


def _config(header: dict[str, Any]) -> ModelConfig:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or CONFIG_KEY not in meta:
        raise ModelFileError(f"model file has no {CONFIG_KEY!r} metadata: not a Mycroft model")
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"model file format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise ModelFileError(
            f"model format version {meta.get('format_version')!r} unsupported "
            f"(this build reads {FORMAT_VERSION})"
        )
    try:
        raw = json.loads(meta[CONFIG_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"model config metadata is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ModelFileError("model config metadata is nested too deeply") from None
    try:
        return ModelConfig.from_dict(raw)
    except ConfigError as exc:
        raise ModelFileError(f"model file has an invalid config: {exc}") from exc


def _check_tensors(header: dict[str, Any], config: ModelConfig, data_len: int) -> None:
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            expected = MoEClassifier(config).state_dict()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"model config cannot be built: {exc}") from exc
    n_params = sum(t.numel() for t in expected.values())
    if n_params > MAX_PARAMETERS:
        raise ModelFileError(f"model too large: {n_params} parameters > {MAX_PARAMETERS}")
    found = {k: v for k, v in header.items() if k != "__metadata__"}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise ModelFileError(
            f"model tensors do not match its config: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    end = 0
    for name, want in expected.items():
        info = found[name]
        if not isinstance(info, dict):
            raise ModelFileError(f"tensor {name}: malformed header entry")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype != _DTYPES.get(want.dtype):
            raise ModelFileError(f"tensor {name}: dtype {dtype}, expected {_DTYPES[want.dtype]}")
        if shape != list(want.shape):
            raise ModelFileError(f"tensor {name}: shape {shape}, expected {list(want.shape)}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_SIZE[dtype]
            or offsets[0] < 0
        ):
            raise ModelFileError(f"tensor {name}: bad data offsets {offsets}")
        end = max(end, offsets[1])
    if end > data_len:
        raise ModelFileError(f"model file truncated: tensors need {end} bytes, have {data_len}")


def model_from_bytes(data: bytes) -> MoEClassifier:
    """Parse and verify an (untrusted) model file's bytes. Raises ModelFileError on any problem."""
    data = bytes(data)
    header = _header(data)
    config = _config(header)
    (n,) = struct.unpack("<Q", data[:8])
    _check_tensors(header, config, len(data) - 8 - n)
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types; all mean "bad file"
        raise ModelFileError(f"model file is corrupt: {exc}") from exc
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"tensor {name} holds NaN or infinite values")
    model = MoEClassifier(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"model tensors do not match its config: {exc}") from exc
    perm_ok = all(
        layer.permutation is None or _valid_perm(layer.permutation.perm)
        for layer in model.moe_layers
    )
    if not perm_ok:
        raise ModelFileError("model file holds an invalid expert permutation")
    model.eval()
    return model


def _valid_perm(perm: torch.Tensor) -> bool:
    return bool((perm.sort().values == torch.arange(perm.numel())).all())


def load_model(path: str | Path) -> MoEClassifier:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read model file: {exc.strerror}") from exc
    if size > MAX_FILE_BYTES:
        raise ModelFileError(f"{path}: model file too large ({size} bytes > {MAX_FILE_BYTES})")
    try:
        return model_from_bytes(path.read_bytes())
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
