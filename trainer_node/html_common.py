"""What the report page's templates share: the jinja2 environment and the number formatting.

The markup lives in trainer_node/templates/*.html.j2; Python only computes the values they lay
out. Autoescaping is on for every template, so owner names, class names, reasons and error
messages (they come from the network or from config) reach the page as text, never as markup.
StrictUndefined makes a value the code forgot to pass an error rather than an empty cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import jinja2

from trainer_node.verdict_sentences import OwnerName

DASH = "–"  # a value that does not exist (no result, no CI, no budget)


@dataclass(frozen=True)
class Signed:
    """A signed percentage-point cell: its text and its colour class ("" when about zero)."""

    text: str
    cls: str


def pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return DASH
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def signed(x: float | None, digits: int = 1) -> Signed:
    cls = "" if x is None or abs(x) < 5e-4 else ("pos" if x > 0 else "neg")
    return Signed(DASH if x is None else f"{100 * x:+.{digits}f}", cls)


def interval(ci: list[float] | None) -> str:
    """' [+1.0, +4.5]' after a mean, or nothing without a CI (one seed)."""
    return f" [{pct(ci[0], True)}, {pct(ci[1], True)}]" if ci else ""


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("trainer_node", "templates"),
        # On for every template and every string, not chosen by file name: a page that
        # forgot to escape one owner name is the failure this guards against.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,  # the page ends in a newline, like any text file
    )
    env.tests["owner_name"] = lambda part: isinstance(part, OwnerName)
    return env


def render(template: str, **context: Any) -> str:
    """`template` from trainer_node/templates with `context`; jinja2.UndefinedError when the
    template uses a value the context lacks."""
    return environment().get_template(template).render(**context)
