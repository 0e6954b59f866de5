"""The one config layer: declared models (pydantic v2), field types, one loader, one error wording.

Every config the product reads (trainer, owner, scenario) is a tree of `ConfigModel`s. A model
declares each field once: its type, default, bounds (`Field(ge=, le=)`) and choices
(`Literal`); cross-field rules are `model_validator`s. `parse(Model, raw, base_dir=...)`
validates a parsed TOML document and turns the first problem into one `ConfigError` line that
names the field the way users write it: ``trainers[1].token: must be at most 4096 characters``.

Why pydantic over msgspec (measured on our configs, see docs/ARCHITECTURE.md): its errors are
structured (kind, location, bounds, input), so the messages stay ours; validators see a context
(the config file's folder for relative paths, whether secrets are read); msgspec reports one
pre-worded English string and has no validation context. Its extra ~0.2 s of import is small
beside torch's, and config parsing never imports torch.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Strict,
    ValidationError,
    ValidationInfo,
)

from mycroft.errors import ConfigError
from mycroft.files import read_toml

__all__ = [
    "Bool",
    "ConfigModel",
    "Distinct",
    "FieldProblem",
    "Float",
    "Int",
    "RelPath",
    "Secret",
    "Str",
    "load",
    "parse",
    "require_files",
    "shown",
]

# TOML values map to these exactly: `true` is not a count, 8.0 is not an integer, "8" is not a
# number. Floats must be finite; an integer where a number is wanted is fine.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _resolve_path(value: str, info: ValidationInfo) -> Path:
    if not value:
        raise ValueError("empty path")
    path = Path(os.path.expanduser(value))
    base = Path((info.context or {}).get("base_dir") or Path.cwd())
    try:
        return path if path.is_absolute() else (base / path).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop, a folder we may not read
        raise ValueError(f"cannot resolve {value}: {e}") from None


# A path relative to the config file's folder, so a config works from any working directory.
# Code that builds a config (tests, simulation) may pass Path objects.
RelPath = Annotated[Str, BeforeValidator(_fspath), AfterValidator(_resolve_path)]


def _distinct(values: Any) -> Any:
    seen: set[Any] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise FieldProblem((i,), f"{shown(value)} is listed twice")
        seen.add(value)
    return values


# A list whose items must differ: `Annotated[tuple[Str, ...], Distinct]`. Names the repeat.
Distinct = AfterValidator(_distinct)


def _secret(value: Any) -> Any:
    if not isinstance(value, str):  # a token typed without quotes is still a secret: not echoed
        raise ValueError("must be a string")
    return value


# A token or password: never shown in an error message or a repr (declare it `repr=False`).
Secret = Annotated[Str, BeforeValidator(_secret)]


class ConfigModel(BaseModel):
    """A config section: unknown fields refused, values immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=False)


class FieldProblem(ValueError):
    """Raised in a model validator about one of the model's fields (or a path below it):
    the message is reported at ``<model>.<field>`` instead of at the model itself."""

    def __init__(self, field: str | tuple[str | int, ...], problem: str):
        super().__init__(problem)
        self.loc = (field,) if isinstance(field, str) else tuple(field)
        self.problem = problem


def require_files(model: BaseModel, fields: tuple[str, ...]) -> None:
    """For a model validator: each of `fields` that is set must be an existing file."""
    for field in fields:
        path = getattr(model, field)
        if path is not None and not Path(path).is_file():
            raise FieldProblem(field, f"file not found: {path}")


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], raw: Any, base_dir: Path | None = None, **context: Any) -> M:
    """Validate `raw` (a parsed TOML document) as `model`; the first problem is a ConfigError."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config: must be a table")
    try:
        return model.model_validate(raw, context={"base_dir": base_dir or Path.cwd(), **context})
    except ValidationError as exc:
        raise ConfigError(describe(exc, model)) from None


def load(model: type[M], path: str | os.PathLike[str], **context: Any) -> M:
    """Read a TOML file and validate it; relative paths in it resolve against its folder."""
    p = Path(path).resolve()
    return parse(model, read_toml(p), base_dir=p.parent, config_path=p, **context)


def describe(exc: ValidationError, model: type[BaseModel]) -> str:
    """`field: problem` for the first error, in our wording."""
    error = exc.errors(include_url=False)[0]
    loc = tuple(part for part in error["loc"] if not _is_union_tag(part))
    problem = _problem(error, model, loc)
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldProblem):
        loc += cause.loc
    where = _where(loc)
    return f"{where}: {problem}" if where else problem


def _where(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _is_union_tag(part: str | int) -> bool:
    # Union members and validator wrappers appear in locations as e.g. "int", "list[int]",
    # "function-after[...]"; field names never contain brackets or start that way.
    return isinstance(part, str) and ("[" in part or part in ("int", "str", "float", "bool"))


def shown(value: Any) -> str:
    """`value` for an error message, shortened: TOML allows integers thousands of digits long."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


_KINDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "tuple": "a list",
    "dict": "a table",
    "model": "a table",
    "model_attributes": "a table",
    "dataclass": "a table",
}


def _problem(error: Any, model: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    got = f", got {shown(value)}"
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        known = _known_fields(model, loc[:-1])
        return "unknown field" + (f"; known: {', '.join(known)}" if known else "")
    if kind in ("value_error", "assertion_error"):
        cause = ctx.get("error")
        return cause.problem if isinstance(cause, FieldProblem) else str(cause)
    if kind == "finite_number":
        return f"must be a finite number{got}"
    if kind == "float_type" and isinstance(value, int) and not isinstance(value, bool):
        return "too large for a number"
    base = kind.removesuffix("_type").removesuffix("_parsing").removesuffix("_from_float")
    if base in _KINDS:
        return f"must be {_KINDS[base]}{got}"
    bounds = {
        "greater_than_equal": ("must be >= {}", "ge"),
        "greater_than": ("must be > {}", "gt"),
        "less_than_equal": ("must be at most {}", "le"),
        "less_than": ("must be < {}", "lt"),
    }
    if kind in bounds:
        text, key = bounds[kind]
        return text.format(_number(ctx[key])) + got
    if kind == "literal_error":
        return f"must be one of {ctx['expected'].replace(' or ', ', ')}{got}"
    if kind == "string_too_short":
        return "must be a non-empty string"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else error["msg"]
    if kind == "too_long":
        return f"must list at most {ctx['max_length']}"
    return error["msg"]


def _number(bound: Any) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _known_fields(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """Field names of the model found at `loc` below `model`, to list after "unknown field"."""
    annotation: Any = model
    for part in loc:
        if isinstance(part, int):  # an index into a list or tuple of models
            annotation = _item_type(annotation)
            continue
        found = _model_in(annotation)
        field = found.model_fields.get(part) if found is not None else None
        if field is None:
            return []
        annotation = field.annotation
    found = _model_in(annotation)
    if found is None:
        return []
    return sorted(f.alias or name for name, f in found.model_fields.items())


def _item_type(annotation: Any) -> Any:
    """The element type of a (possibly optional) list or tuple annotation."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) in (list, tuple):
            args = [a for a in typing.get_args(candidate) if a is not Ellipsis]
            return args[0] if args else None
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class an annotation holds (through Optional, tuple[...] and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            if (found := _model_in(arg)) is not None:
                return found
    return None
