"""The trainer's report as one self-contained HTML page (`mycroft report RUN.json`).

Everything is inline: CSS in a <style> block, charts as base64 PNG data URIs (trainer_node.plots),
no scripts and no external URLs, so the file can be mailed or archived and opens offline. Every
string taken from the report goes through `esc`: owner names and error messages come from the
network and must not become markup.
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
from trainer_node.html_common import esc, figure, pct, signed_cell, table
from trainer_node.html_verdict import VERDICT_CSS, verdict_box, versus_random_table
from trainer_node.report import SCHEMA_VERSION, validate_report
from trainer_node.verdict import compute_verdict, primary_request, revealed_rows

log = logging.getLogger("mycroft.report")

HTML_NAME = "report.html"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933;
       margin: 0 auto; padding: 1.5em 2em 3em; max-width: 1100px; }
h1 { font-size: 1.5em; margin: 0 0 .2em; } h2 { font-size: 1.15em; margin: 1.8em 0 .5em;
     border-bottom: 1px solid #d9e2ec; padding-bottom: .2em; }
.sub { color: #52606d; margin: 0 0 1em; }
table { border-collapse: collapse; margin: .4em 0 .8em; }
th, td { border-bottom: 1px solid #e4e7eb; padding: .3em .7em; text-align: left;
         vertical-align: top; }
th { background: #f5f7fa; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { color: #8a1c1c; }
.pos { color: #1d6b3a; } .neg { color: #a11d2a; }
.kv { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr));
      gap: .25em 2em; }
.kv div { overflow-wrap: anywhere; }
.kv b { color: #52606d; font-weight: 500; }
.err { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px;
       white-space: pre-wrap; word-break: break-word; max-width: 700px; }
figure { margin: .6em 0 1.2em; } figure img { max-width: 100%; height: auto; }
figcaption { color: #52606d; font-size: 12.5px; max-width: 900px; }
.note { color: #52606d; font-size: 12.5px; }
h2 .setting { color: #52606d; font-weight: 400; font-size: .8em; margin-left: .5em; }
td.why { color: #52606d; max-width: 260px; }
#budget-table th { white-space: normal; }
"""


def _header(r: dict[str, Any]) -> str:
    d, m, s, b = r["data"], r["model"], r["settings"], r["baseline"]
    method, budget, mode = plots.primary(r)
    items = [
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
    kv = "".join(f"<div><b>{esc(k)}:</b> {esc(v)}</div>" for k, v in items)
    return f'<h2 id="run">Run</h2><div class="kv">{kv}</div>'


def _title(r: dict[str, Any]) -> str:
    return (
        f"<h1>Mycroft run {esc(r['run_id'])}</h1>"
        '<p class="sub">Owners ranked by how much their budgeted rows fix the trainer\'s '
        "failures (utility gain on the held-out part of D_hard).</p>"
    )


def _ranking(r: dict[str, Any], verdict: dict[str, Any]) -> str:
    method, budget, mode = plots.primary(r)
    owners = {o["name"]: o for o in r["owners"]}
    judged = {o["name"]: o for o in verdict["owners"]}
    priced = any(o["price"] is not None for o in verdict["owners"])
    rows = []
    for e in r["ranking"]:
        ci = e["ci95"]
        ci_text = f" [{pct(ci[0], True)}, {pct(ci[1], True)}]" if ci else ""
        q = primary_request(owners[e["owner"]], r)
        got = f"{q['rows_received']} / {q['rows_requested']}" if q else "–"
        j = judged[e["owner"]]
        price = "–" if j["price"] is None else f"{j['price']:g}"
        rows.append(
            f'<tr class="ranked" data-rank="{e["rank"]}"><td class="num">{e["rank"]}</td>'
            f'<td class="owner">{esc(e["owner"])}</td>'
            + signed_cell(e["dhard_gain_mean"], esc(ci_text))
            + signed_cell(e["test_gain_mean"])
            + f'<td class="num">{got}</td>'
            + signed_cell(j["gain_per_row"], digits=2)
            + (f'<td class="num">{price}</td>' if priced else "")
            + f'<td class="num">{e["n"]}</td><td class="why">{esc(j["reason"] or "")}</td></tr>'
        )
    head = ["rank", "owner", "D_hard gain, pp [95% CI]", "test change, pp"]
    head += ["rows received / asked", "gain per row, pp"] + (["price / row"] if priced else [])
    head += ["seeds", "note"]
    for o in r["owners"]:
        if o["status"] != "ok":
            note = f"failed ({o['error_code'] or 'error'})"
        elif o["rank"] is None:
            note = "not ranked: no result for the ranking setting"
        else:
            continue
        rows.append(
            f'<tr class="failed"><td class="num">–</td><td class="owner">{esc(o["name"])}'
            f'</td><td colspan="{len(head) - 2}">{esc(note)}</td></tr>'
        )
    b = r["baseline"]
    return (
        f'<h2 id="ranking">Ranking <span class="setting">{esc(method)} @ {budget}, '
        f"{esc(mode)}</span></h2>"
        + table(head, rows, set(range(len(head) - 1)) - {1}, table_id="ranking-table")
        + '<p class="note">Gains are percentage points over a <b>control</b>: the same training '
        "schedule and seed with the owner's rows replaced by as many of the trainer's own rows "
        "(D_hard is the baseline's own mistakes, so any further training fixes some of them). "
        f"Baseline before training: D_hard-eval {pct(b['dhard_eval_accuracy'])}%, test "
        f"{pct(b['test_accuracy'])}%. Mean over seeds; the 95% CI is over seeds. Gain per row: "
        "the D_hard gain divided by the rows received.</p>"
    )


def _budget_table(r: dict[str, Any]) -> str:
    rows = []
    for o in r["owners"]:
        bud = o["budget"]
        ok = [q for q in o["requests"] if q["status"] == "ok"]
        cells = [bud["cap"], bud["used"], bud["left"]] if bud else ["–"] * 3
        cells += [
            f"{len(ok)} / {len(o['requests'])}",
            sum(q["rows_requested"] for q in o["requests"]),
            sum(q["rows_received"] for q in ok),
            *revealed_rows(o),
        ]
        short = sorted({c for q in o["requests"] for c in q["missing_classes"]})
        rows.append(
            f"<tr><td>{esc(o['name'])}</td>"
            + "".join(f'<td class="num">{esc(c)}</td>' for c in cells)
            + f"<td>{esc(', '.join(short)) or '–'}</td></tr>"
        )
    head = [
        "owner",
        "cap",
        "used",
        "left",
        "requests ok",
        "rows asked",
        "rows received",
        "revealed, budgeted",
        "revealed, full run",
        "D_hard classes missing",
    ]
    return table(head, rows, set(range(1, 9)), table_id="budget-table")


def _failures(r: dict[str, Any]) -> str:
    rows = []
    for o in r["owners"]:
        if o["status"] != "ok":
            rows.append(_failure_row(o["name"], o["address"], "whole owner", o))
        for q in o["requests"]:
            if q["status"] != "ok":
                what = f"{q['method']} @ {q['budget']}"
                rows.append(_failure_row(o["name"], o["address"], what, q))
        for f in o.get("evaluation_failures") or []:  # absent in older reports
            what = f"training {f['method']} @ {f['budget']}, {f['training_mode']} seed {f['seed']}"
            failed = {"error_code": "evaluation", "error": f["error"]}
            rows.append(_failure_row(o["name"], o["address"], what, failed))
    if not rows:
        return '<h2 id="failures">Failures</h2><p class="note">No owner or request failed.</p>'
    head = ["owner", "address", "what failed", "code", "message"]
    return (
        '<h2 id="failures">Failures</h2>'
        + table(head, rows, table_id="failures-table")
        + '<p class="note">Failed owners are left out of the ranking; the run went on '
        "without them. A failed training cell leaves its owner's gain resting on fewer seeds."
        "</p>"
    )


def _failure_row(name: str, address: str, what: str, failed: dict[str, Any]) -> str:
    """One row of the failures table; `failed` is the owner or request record that failed."""
    return (
        f'<tr class="failed"><td>{esc(name)}</td><td>{esc(address)}</td><td>{esc(what)}</td>'
        f"<td>{esc(failed['error_code'] or '–')}</td>"
        f'<td class="err">{esc(failed["error"] or "")}</td></tr>'
    )


def _agreement(r: dict[str, Any]) -> str:
    fi = r["full_information"]
    if not fi:
        return ""
    corr = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    rows = [
        f"<tr><td>{esc(a['method'])} @ {a['budget']}</td><td>{esc(a['training_mode'])}</td>"
        f'<td class="num">{a["n_owners"]}</td><td class="num">{corr(a["spearman"])}</td>'
        f'<td class="num">{corr(a["kendall_tau"])}</td></tr>'
        for a in fi["agreement"]
    ]
    order = ", ".join(f"{esc(n)} ({pct(fi['gains'].get(n), True)} pp)" for n in fi["ranking"])
    return (
        '<h2 id="agreement">Agreement with full information</h2>'
        f'<p class="note">Full-information ranking ({esc(fi["training_mode"])}, every row of '
        f"each owner; evaluation only): {order or '–'}. n/a: undefined when all gains tie.</p>"
        + table(["budgeted setting", "mode", "owners", "Spearman ρ", "Kendall τ"], rows, {2, 3, 4})
    )


def render_html(report: dict[str, Any]) -> str:
    """The whole page for a (schema-valid) report dict."""
    r = report
    verdict = compute_verdict(r)  # recomputed: older reports have none stored
    method, budget, mode = plots.primary(r)
    best = r["ranking"][0]["owner"] if r["ranking"] else None
    after = plots.routing_after(r)
    mri = f"{r['baseline']['routing']['max_routing_imbalance']:.2f}"
    mri_after = f" → {after[2]:.2f} with {esc(after[0])}'s rows" if after else ""
    parts = [
        _title(r),
        verdict_box(verdict),
        versus_random_table(r),
        _ranking(r, verdict),
        _header(r),
        '<h2 id="gains">Utility gain per owner</h2>',
        figure(
            plots.gain_chart(r),
            "utility gain per owner",
            f"{esc(method)} @ {budget}, {esc(mode)}: bars are means over "
            f"{len(r['settings']['seeds'])} seeds; error bars the 95% CI (D_hard) and "
            "± one std (test set).",
            empty="No owner could be ranked, so there is no gain to plot.",
        ),
        figure(
            plots.budget_chart(r),
            "D_hard accuracy against budget",
            "D_hard-eval accuracy after training with each budgeted subset; dashed: the "
            "owner's full data, dotted: the baseline.",
        ),
        '<h2 id="per-class">Per-class accuracy</h2>' if best else "",
        figure(
            plots.per_class_chart(r),
            "per-class accuracy",
            f"Test-set accuracy per class, baseline vs with the top owner "
            f"({esc(best)})'s rows at {esc(method)} @ {budget}.",
        ),
        '<h2 id="routing">Routing balance</h2>',
        figure(
            plots.routing_chart(r),
            "routing balance",
            f"Maximum Routing Imbalance {mri}{mri_after}; 1.00 is perfectly balanced.",
        ),
        '<h2 id="budget">Rows revealed per owner</h2>',
        figure(
            plots.budget_use_chart(r),
            "rows revealed against budget",
            "Rows each owner revealed to this trainer's budgeted requests, against its cap. "
            "The evaluation-only <i>full</i> run (every row of an owner, to measure the "
            "full-information ceiling) is counted apart: it is not part of any purchase. "
            "Replayed requests are not charged again.",
        ),
        _budget_table(r),
        _failures(r),
        _agreement(r),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Mycroft report {esc(r['run_id'])}</title><style>{CSS}{VERDICT_CSS}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


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
