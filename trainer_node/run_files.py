"""Where a run's report goes: its own folder always, the run directory's "latest" only if good.

`<run_dir>/<run_id>/report.json` (+ report.html) is written for every run, so no run erases
another. `<run_dir>/report.json` (+ report.html), the file users, `mycroft simulate` and the docs
read, is replaced only by a run that ranked at least one owner: a failed re-run (every owner
down, every token refused) leaves the last good report in place. Every write is atomic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mycroft.files import write_atomic
from trainer_node.html_report import HTML_NAME, write_html
from trainer_node.report import write_report

REPORT_NAME = "report.json"


@dataclass(frozen=True)
class ReportFiles:
    run_json: Path  # this run's report
    run_html: Path
    latest_json: Path  # the run directory's latest good report
    latest_html: Path
    latest_updated: bool  # False: this run ranked no owner and the latest was left alone

    def kept_note(self) -> str:
        """What a failed run tells the user about the two reports."""
        kept = (
            f"the last good report {self.latest_json} is kept"
            if self.latest_json.exists()
            else f"there is no earlier good report at {self.latest_json}"
        )
        return f"no owner was ranked: this run's report is {self.run_json}; {kept}"


def write_run_reports(report: dict[str, Any], run_dir: Path, run_id: str) -> ReportFiles:
    """Write the run's report and page, then promote them to "latest" if it ranked anyone."""
    run_json = write_report(report, Path(run_dir) / run_id / REPORT_NAME)
    run_html = write_html(report, run_json.with_name(HTML_NAME))
    latest_json, latest_html = Path(run_dir) / REPORT_NAME, Path(run_dir) / HTML_NAME
    good = bool(report["ranking"])
    if good:  # copies: no second schema validation, serialisation or rendering of the plots
        for source, target, mode in ((run_json, latest_json, None), (run_html, latest_html, 0o644)):
            content = source.read_bytes()  # modes as write_report and write_html set them
            write_atomic(target, lambda f, c=content: f.write(c), mode=mode, binary=True)
    return ReportFiles(run_json, run_html, latest_json, latest_html, good)
