"""The JSON report schema against a report from a real run (tests/conftest.py `real_report`),
and corrupted reports rejected with the failing JSON path named."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mycroft.errors import DataError, MycroftError
from trainer_node.html_report import read_report, render_report_file
from trainer_node.report import SCHEMA_VERSION, load_schema, validate_report


def _write(tmp_path: Path, obj: Any, name: str = "run.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(load_schema())


def test_real_run_report_matches_schema(real_report: dict[str, Any]) -> None:
    validate_report(real_report)
    assert real_report["schema_version"] == SCHEMA_VERSION
    # The run the report tests rely on: three ranked owners, a failed one, two budgets.
    assert sorted(r["owner"] for r in real_report["ranking"]) == ["mixed", "rich", "useless"]
    owners = {o["name"]: o for o in real_report["owners"]}
    assert owners["dead"]["status"] == "failed" and owners["dead"]["error"]
    assert real_report["settings"]["budgets"] == [4, 8]
    assert real_report["full_information"] is not None


@pytest.mark.parametrize(
    ("mutate", "path_text"),
    [
        (lambda r: r.pop("run_id"), "$"),
        (lambda r: r["owners"][0].pop("status"), "$.owners[0]"),
        (lambda r: r["ranking"][0].update(rank="first"), "$.ranking[0].rank"),
        (lambda r: r["baseline"].update(test_accuracy=1.5), "$.baseline.test_accuracy"),
        (lambda r: r["data"].update(train_rows=-1), "$.data.train_rows"),
        (lambda r: r["owners"][1].update(extra_field=1), "$.owners[1]"),
    ],
    ids=["missing-run-id", "missing-owner-status", "rank-wrong-type", "accuracy-over-1",
         "negative-count", "unknown-field"],
)  # fmt: skip
def test_corrupted_report_is_rejected_naming_the_path(
    real_report: dict[str, Any], tmp_path: Path, mutate: Any, path_text: str
) -> None:
    bad = copy.deepcopy(real_report)
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError) as excinfo:
        validate_report(bad)
    assert excinfo.value.json_path == path_text
    # The CLI path turns it into one line naming the file and the JSON path.
    path = _write(tmp_path, bad)
    with pytest.raises(DataError) as err:
        read_report(path)
    message = str(err.value)
    assert str(path) in message and f"at {path_text}:" in message and "\n" not in message


def test_unreadable_reports_name_the_file(tmp_path: Path, real_report: dict[str, Any]) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(MycroftError, match=r"nope\.json: report file not found"):
        render_report_file(str(missing))
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema_version": "1.0",', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON"):
        read_report(broken)
    with pytest.raises(DataError, match=r"list\.json: not a Mycroft report"):
        read_report(_write(tmp_path, [1, 2], "list.json"))
    future = {**real_report, "schema_version": "2.0"}
    with pytest.raises(DataError, match=r"schema_version '2\.0' is not supported"):
        read_report(_write(tmp_path, future, "future.json"))
    assert not list(tmp_path.glob("*.html"))  # nothing rendered from a bad input


def _property_names(node: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(node, dict):
        names |= set(node.get("properties", {}))
        for value in node.values():
            names |= _property_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= _property_names(value)
    return names


def test_schema_doc_covers_every_field() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "REPORT_SCHEMA.md").read_text()
    missing = sorted(n for n in _property_names(load_schema()) if f"`{n}`" not in doc)
    assert not missing, f"docs/REPORT_SCHEMA.md does not describe: {missing}"
