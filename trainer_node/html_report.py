"""The trainer's report as one self-contained HTML page (`mycroft report RUN.json`).

Everything is inline: CSS in a <style> block, charts as base64 PNG data URIs (trainer_node.plots),
no scripts and no external URLs, so the file can be mailed or archived and opens offline. The
markup is templates/report.html.j2 (autoescaped, see trainer_node.html_common); this module
computes the values it lays out: numbers formatted, rows chosen and ordered.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mycroft.errors import DataError
from mycroft.files import write_atomic
from trainer_node import plots
from trainer_node.html_common import DASH, interval, pct, render, signed
from trainer_node.html_verdict import verdict_view, versus_random_view
from trainer_node.report import SCHEMA_VERSION, validate_report
from trainer_node.verdict import compute_verdict, primary_request, revealed_rows

log = logging.getLogger("mycroft.report")

HTML_NAME = "report.html"
TEMPLATE = "report.html.j2"


def _facts(r: dict[str, Any]) -> list[tuple[str, Any]]:
    """The "Run" section: what was trained on what, and how."""
    d, m, s, b = r["data"], r["model"], r["settings"], r["baseline"]
    method, budget, mode = plots.primary(r)
    return [
        ("trainer", r["trainer_id"]),
        ("created", r["created_at"]),
        (
            "data",
            f"{d['name']} ({d['train_rows']} train / {d['val_rows']} val / "
            f"{d['test_rows']} test, shape {'×'.join(map(str, d['input_shape']))})",
        ),
        (
            "model",
            f"{m['gate']} gate, {m['num_experts']} experts, top_k {m['top_k']}, "
            f"embed {m['embed_dim']}, {m['size_bytes'] / 1024:.0f} KiB",
        ),
        ("model sha256", m["sha256"][:16] + "…"),
        ("methods", ", ".join(s["methods"])),
        ("budgets", ", ".join(map(str, s["budgets"]))),
        ("seeds", ", ".join(map(str, s["seeds"]))),
        ("ranked by", f"{method} @ {budget}, {mode}"),
        ("selection mode", s["selection_mode"]),
        ("ran on", f"{s.get('device') or 'cpu'}; evaluation {s.get('compute') or 'local'}"),
        (
            "training",
            f"{'/'.join(s['training_modes'])}, {s['epochs']} epochs "
            f"(finetune {s['finetune_epochs']}), batch {s['batch_size']}, lr {s['lr']:g}"
            + (
                f", subsets oversampled to {s['oversample_to']} rows"
                if s.get("oversample_to")
                else ""
            ),
        ),
        ("D_hard classes", ", ".join(r["dhard"]["classes"]) or "none"),
        (
            "D_hard rows",
            f"{r['dhard']['shared_total']} shared"
            + (
                f" (the systematic ones of {r['dhard']['shared_failures']} failures: most of "
                "their nearest validation rows fail too)"
                if r["dhard"].get("shared_failures")
                else ""
            )
            + f", {r['dhard']['eval_total']} held out for evaluation",
        ),
        (
            "baseline",
            f"test {pct(b['test_accuracy'])}%, D_hard-eval "
            f"{pct(b['dhard_eval_accuracy'])}%, val {pct(b['val_accuracy'])}%",
        ),
        ("schema", r["schema_version"]),
        ("wall time", f"{r['timings']['total_seconds']:.1f} s"),
    ]


def _ranking(r: dict[str, Any], verdict: dict[str, Any]) -> dict[str, Any]:
    """The ranked owners in rank order, then those left out of the ranking and why."""
    owners = {o["name"]: o for o in r["owners"]}
    judged = {o["name"]: o for o in verdict["owners"]}
    ranked = []
    for e in r["ranking"]:
        q = primary_request(owners[e["owner"]], r)
        j = judged[e["owner"]]
        ranked.append(
            {
                "rank": e["rank"],
                "owner": e["owner"],
                "dhard_gain": signed(e["dhard_gain_mean"]),
                "interval": interval(e["ci95"]),
                "test_change": signed(e["test_gain_mean"]),
                "received": f"{q['rows_received']} / {q['rows_requested']}" if q else DASH,
                "gain_per_row": signed(j["gain_per_row"], digits=2),
                "price": DASH if j["price"] is None else f"{j['price']:g}",
                "seeds": e["n"],
                "note": j["reason"] or "",
            }
        )
    unranked = []
    for o in r["owners"]:
        if o["status"] != "ok":
            note = f"failed ({o['error_code'] or 'error'})"
        elif o["rank"] is None:
            note = "not ranked: no result for the ranking setting"
        else:
            continue
        unranked.append({"owner": o["name"], "note": note})
    priced = any(o["price"] is not None for o in verdict["owners"])
    return {"priced": priced, "ranked": ranked, "unranked": unranked}


def _budget_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for o in r["owners"]:
        bud = o["budget"]
        ok = [q for q in o["requests"] if q["status"] == "ok"]
        cells = [bud["cap"], bud["used"], bud["left"]] if bud else [DASH] * 3
        cells += [
            f"{len(ok)} / {len(o['requests'])}",
            sum(q["rows_requested"] for q in o["requests"]),
            sum(q["rows_received"] for q in ok),
            *revealed_rows(o),
        ]
        short = sorted({c for q in o["requests"] for c in q["missing_classes"]})
        rows.append({"owner": o["name"], "cells": cells, "missing": ", ".join(short) or DASH})
    return rows


def _failures(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Every failed owner, request and training cell, owner by owner."""
    rows = []
    for o in r["owners"]:
        if o["status"] != "ok":
            rows.append(_failure_row(o, "whole owner", o))
        for q in o["requests"]:
            if q["status"] != "ok":
                rows.append(_failure_row(o, f"{q['method']} @ {q['budget']}", q))
        for f in o.get("evaluation_failures") or []:  # absent in older reports
            what = f"training {f['method']} @ {f['budget']}, {f['training_mode']} seed {f['seed']}"
            rows.append(_failure_row(o, what, {"error_code": "evaluation", "error": f["error"]}))
    return rows


def _failure_row(owner: dict[str, Any], what: str, failed: dict[str, Any]) -> dict[str, Any]:
    """`failed` is the owner or request record that failed."""
    return {
        "owner": owner["name"],
        "address": owner["address"],
        "what": what,
        "code": failed["error_code"] or DASH,
        "message": failed["error"] or "",
    }


def _agreement(r: dict[str, Any]) -> dict[str, Any] | None:
    fi = r["full_information"]
    if not fi:
        return None

    def corr(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    return {
        "mode": fi["training_mode"],
        "order": [{"owner": n, "gain": pct(fi["gains"].get(n), True)} for n in fi["ranking"]],
        "rows": [
            {
                "setting": f"{a['method']} @ {a['budget']}",
                "mode": a["training_mode"],
                "owners": a["n_owners"],
                "spearman": corr(a["spearman"]),
                "kendall": corr(a["kendall_tau"]),
            }
            for a in fi["agreement"]
        ],
    }


def _routing(r: dict[str, Any]) -> dict[str, Any]:
    after = plots.routing_after(r)
    return {
        "imbalance": f"{r['baseline']['routing']['max_routing_imbalance']:.2f}",
        "after": {"owner": after[0], "imbalance": f"{after[2]:.2f}"} if after else None,
    }


def page_context(report: dict[str, Any]) -> dict[str, Any]:
    """Every value report.html.j2 lays out, for a (schema-valid) report dict."""
    r = report
    verdict = compute_verdict(r)  # recomputed: older reports have none stored
    method, budget, mode = plots.primary(r)
    b = r["baseline"]
    return {
        "run_id": r["run_id"],
        "verdict": verdict_view(verdict),
        "versus": versus_random_view(r),
        "setting": {"method": method, "budget": budget, "mode": mode},
        "ranking": _ranking(r, verdict),
        "baseline": {"dhard_eval": pct(b["dhard_eval_accuracy"]), "test": pct(b["test_accuracy"])},
        "facts": _facts(r),
        "seeds": len(r["settings"]["seeds"]),
        "best": r["ranking"][0]["owner"] if r["ranking"] else None,
        "charts": {
            "gain": plots.gain_chart(r),
            "budget": plots.budget_chart(r),
            "per_class": plots.per_class_chart(r),
            "routing": plots.routing_chart(r),
            "budget_use": plots.budget_use_chart(r),
        },
        "routing": _routing(r),
        "budget_rows": _budget_rows(r),
        "failures": _failures(r),
        "agreement": _agreement(r),
    }


def render_html(report: dict[str, Any]) -> str:
    """The whole page for a (schema-valid) report dict."""
    return render(TEMPLATE, **page_context(report))


def write_html(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render and write atomically (temporary file in the same directory + rename)."""
    # 0o644: mkstemp makes it owner-only; a report is meant to be shared
    text = render_html(report)  # rendered first: a rendering error leaves no file behind
    return write_atomic(path, lambda f: f.write(text), mode=0o644)


def read_report(run_json: str | os.PathLike[str]) -> dict[str, Any]:
    """A report JSON checked against the schema; DataError naming the file (and JSON path)."""
    p = Path(run_json)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p}: report file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read the report: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{p}: not a Mycroft report (the top level is not an object)")
    version = obj.get("schema_version")
    if str(version).split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise DataError(
            f"{p}: schema_version {version!r} is not supported "
            f"(this mycroft reads {SCHEMA_VERSION.split('.')[0]}.x)"
        )
    try:
        import jsonschema
    except ImportError:  # a test extra in pyproject today; the CLI still must not traceback
        raise DataError(
            f"{p}: validating a report needs jsonschema (pip install jsonschema)"
        ) from None
    try:
        validate_report(obj)
    except jsonschema.ValidationError as err:
        msg = err.message if len(err.message) <= 200 else err.message[:200] + "…"
        raise DataError(f"{p}: invalid report at {err.json_path}: {msg}") from None
    return obj


def render_report_file(run_json: str, out: str | None = None) -> int:
    """CLI entry (`mycroft report RUN.json [--out X]`): validate, render, write; 0 on success."""
    report = read_report(run_json)
    path = write_html(report, out if out else Path(run_json).with_name(HTML_NAME))
    log.info("wrote %s", path)
    print(path)
    return 0
