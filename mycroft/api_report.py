"""`mycroft.Report`: a trainer run's report (report.json, schema in docs/REPORT_SCHEMA.md) as an
object for notebooks: the ranking, whom to pay, a table per owner and setting, the HTML page.

The object holds the report's JSON dict and nothing else: the verdict and the page are computed
by the trainer's own code (trainer_node.verdict, trainer_node.html_report), so what a notebook
shows is what `mycroft trainer run` and `mycroft report` show.
"""

from __future__ import annotations

import copy
import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mycroft.errors import MycroftError

REPORT_NAME = "report.json"  # as trainer_node.run_files writes it

# `Report.to_dataframe()`: one row per owner and budgeted setting (method, budget, training
# mode) the owner was evaluated at, gains averaged over the seeds. Gains and accuracies are
# fractions (0.12 = 12 points); gains are measured against a control run on the trainer's own
# rows, on D_hard-eval (dhard_*) and on the test set (test_*).
DATAFRAME_COLUMNS = (
    "owner",
    "method",
    "budget",
    "training_mode",
    "rank",  # the owner's rank among owners at this setting (1 = best)
    "ranking_setting",  # True on the setting the report ranks owners by
    "dhard_gain",  # mean over seeds
    "dhard_gain_std",
    "dhard_gain_ci_low",  # 95% interval of the mean; NaN with one seed
    "dhard_gain_ci_high",
    "test_gain",
    "dhard_accuracy",  # after training with the owner's rows, mean over seeds
    "test_accuracy",
    "seeds",  # seeds the means are over
    "rows_received",  # rows the owner returned for this request
)


class Report:
    """A trainer run's report. `path` is its report.json (None for one not saved yet).

    `ranking`: owner names, best first. `verdict`: whom to pay and why the others gained
    nothing (`pay`, `summary` for short). `to_dataframe()`: one row per owner and setting.
    `html()`: the page `mycroft report` renders. In Jupyter the object shows a summary table.
    """

    def __init__(self, report: Mapping[str, Any], path: str | os.PathLike[str] | None = None):
        self._report = dict(report)
        self.path = Path(path) if path is not None else None
        self._computed_verdict: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Report:
        """A report.json (or a run folder holding one), checked against the report schema."""
        from trainer_node.html_report import read_report

        p = Path(path)
        if p.is_dir():
            p = p / REPORT_NAME
        return cls(read_report(p), p)

    @property
    def run_id(self) -> str:
        return self._report["run_id"]

    @property
    def ranking(self) -> list[str]:
        """The ranked owners' names, best first (owners that failed are not ranked)."""
        return [entry["owner"] for entry in self._report["ranking"]]

    @property
    def verdict(self) -> dict[str, Any]:
        """Whom to pay (`decision`, `pay`, `best_value`), each owner's gain and the reason it is
        not worth paying (`owners`), harms, and a `summary` in words. Computed from the report
        as `mycroft report` does when the report predates stored verdicts."""
        verdict = self._report.get("verdict") or self._computed_verdict
        if verdict is None:
            from trainer_node.verdict import compute_verdict

            verdict = self._computed_verdict = compute_verdict(self._report)
        return copy.deepcopy(verdict)

    @property
    def pay(self) -> list[str]:
        """The owners worth paying: gain's 95% interval above zero (ties: all of them)."""
        return list(self.verdict["pay"])

    @property
    def summary(self) -> str:
        """The verdict in a few sentences, as the terminal summary prints it."""
        return self.verdict["summary"]

    @property
    def failed_owners(self) -> dict[str, str]:
        """Owners that took no part, and why (unreachable, token refused, ...)."""
        return {
            o["name"]: o["error"] or "failed" for o in self._report["owners"] if o["status"] != "ok"
        }

    @property
    def warnings(self) -> list[str]:
        """Why the ranking may not be trusted (small D_hard-eval, undertrained baseline...)."""
        return list(self._report.get("warnings") or [])

    def to_dict(self) -> dict[str, Any]:
        """A copy of the report's JSON dict."""
        return copy.deepcopy(self._report)

    def to_dataframe(self) -> Any:
        """A pandas DataFrame with DATAFRAME_COLUMNS: one row per owner and budgeted setting,
        ordered by setting then rank. Failed owners have no rows (see `failed_owners`)."""
        try:
            import pandas as pd
        except ImportError:
            raise MycroftError("to_dataframe needs pandas: pip install 'mycroft[pandas]'") from None
        from trainer_node.verdict import primary, setting_request

        ranked_by = primary(self._report)
        rows = []
        for owner in self._report["owners"]:
            for u in owner["utility"]:
                setting = (u["method"], u["budget"], u["training_mode"])
                request = setting_request(owner, u["method"], u["budget"])
                ci = u["dhard_gain"]["ci95"] or [None, None]
                rows.append(
                    {
                        "owner": owner["name"],
                        "method": u["method"],
                        "budget": u["budget"],
                        "training_mode": u["training_mode"],
                        "rank": u["rank"],
                        "ranking_setting": setting == ranked_by,
                        "dhard_gain": u["dhard_gain"]["mean"],
                        "dhard_gain_std": u["dhard_gain"]["std"],
                        "dhard_gain_ci_low": ci[0],
                        "dhard_gain_ci_high": ci[1],
                        "test_gain": u["test_gain_mean"],
                        "dhard_accuracy": u["dhard_accuracy_mean"],
                        "test_accuracy": u["test_accuracy_mean"],
                        "seeds": u["dhard_gain"]["n"],
                        "rows_received": request["rows_received"] if request else 0,
                    }
                )
        frame = pd.DataFrame(rows, columns=list(DATAFRAME_COLUMNS))
        frame = frame.astype({"dhard_gain_ci_low": float, "dhard_gain_ci_high": float})
        order = ["method", "budget", "training_mode", "rank", "owner"]
        return frame.sort_values(order, na_position="last", kind="stable").reset_index(drop=True)

    def html(self) -> str:
        """The report's self-contained HTML page, as `mycroft report` writes it."""
        from trainer_node.html_report import render_html

        return render_html(self._report)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report: the HTML page when `path` ends in .html, else the JSON (checked
        against the schema). Written atomically; returns the path."""
        from trainer_node.html_report import write_html
        from trainer_node.report import write_report

        p = Path(path)
        if p.suffix.lower() in (".html", ".htm"):
            return write_html(self._report, p)
        return write_report(self._report, p)

    def _repr_html_(self) -> str:
        """Jupyter's view: the verdict and one row per owner; `html()` is the whole page."""
        v = self.verdict
        setting = v["setting"]
        rows = []
        for o in v["owners"]:
            ci = o["ci95"]
            cells = [
                "" if o["rank"] is None else str(o["rank"]),
                html.escape(o["name"]) + (" ✔" if o["worth_paying"] else ""),
                _points(o["gain"]),
                "" if ci is None else f"{_points(ci[0])} to {_points(ci[1])}",
                str(o["rows_received"]),
                html.escape(o["reason"] or ""),
            ]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        head = ("rank", "owner", "D_hard gain (pp)", "95% CI (pp)", "rows", "why not worth paying")
        where = f"<br><small>{html.escape(str(self.path))}</small>" if self.path else ""
        return (
            f"<div><b>Mycroft report {html.escape(self.run_id)}</b>: ranked by "
            f"{html.escape(setting['method'])} @ {setting['budget']} rows, "
            f"{html.escape(setting['training_mode'])}{where}"
            f"<p>{html.escape(v['summary'])}</p><table><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in head)
            + f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )

    def __repr__(self) -> str:
        ranking = " > ".join(self.ranking) or "no owner ranked"
        where = f", {self.path}" if self.path else ""
        return f"<mycroft.Report {self.run_id}: {ranking}{where}>"


def _points(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"
