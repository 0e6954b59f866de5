"""The HTML report of a real run (tests/conftest.py `real_report`): self-contained, escaped, and
loaded in headless Chromium with every image decoded and the owners in ranked order."""

from __future__ import annotations

import base64
import copy
import html
import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import pytest
from markupsafe import escape
from PIL import Image

from mycroft.cli import main as cli_main
from trainer_node.html_common import render
from trainer_node.html_report import (
    TEMPLATE,
    page_context,
    render_html,
    render_report_file,
    write_html,
)
from trainer_node.report import validate_report
from trainer_node.verdict import compute_verdict, primary_results

ROOT = Path(__file__).resolve().parent.parent
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "screenshot_report", ROOT / "scripts" / "screenshot_report.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shot = _load_script()
CHROMIUM = shot.find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)"
)


class _RankingRows(HTMLParser):
    """Owner names, in document order, of the rows of the table with id=ranking-table."""

    def __init__(self) -> None:
        super().__init__()
        self.owners: list[str] = []
        self._in_table = self._in_owner = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._in_table = a.get("id") == "ranking-table"
        elif tag == "td" and self._in_table and a.get("class") == "owner":
            self._in_owner = True
            self.owners.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_owner = False
        elif tag == "table":
            self._in_table = False

    def handle_data(self, data: str) -> None:
        if self._in_owner:
            self.owners[-1] += data


def _ranking_owners(page: str) -> list[str]:
    parser = _RankingRows()
    parser.feed(page)
    return parser.owners


@pytest.fixture(scope="module")
def html_path(real_report_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real run's JSON rendered through the CLI entry point, default output name."""
    run_json = tmp_path_factory.mktemp("html") / "run.json"
    shutil.copy(real_report_path, run_json)
    assert render_report_file(str(run_json)) == 0
    out = run_json.with_name("report.html")
    assert out.is_file()
    return out


def test_page_is_self_contained_with_every_section(
    html_path: Path, real_report: dict[str, Any]
) -> None:
    page = html_path.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert not re.search(r"(src|href)=\"(?!data:)", page), "only inline data URIs"
    assert "http://" not in page and "https://" not in page
    assert real_report["run_id"] in page
    for section in ("ranking", "gains", "per-class", "routing", "budget", "failures", "agreement"):
        assert f'id="{section}"' in page, section
    images = DATA_URI.findall(page)
    assert len(images) == 5  # gains, D_hard vs budget, per class, routing, budget use
    for b64 in images:
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        img.load()  # decodes the whole PNG: a truncated one raises
        assert img.size[0] > 200 and img.size[1] > 100
    ranked = [r["owner"] for r in real_report["ranking"]]
    assert _ranking_owners(page)[: len(ranked)] == ranked
    assert "dead" in _ranking_owners(page)  # failed owners are listed after the ranked ones
    assert "Connection refused" in page or "UNAVAILABLE" in page  # the failure and its cause


def test_strings_from_the_network_are_escaped(real_report: dict[str, Any], tmp_path: Path) -> None:
    r = copy.deepcopy(real_report)
    evil, old = "<b>x</b>$y&", r["ranking"][0]["owner"]  # '$' also must not start mathtext
    r["ranking"][0]["owner"] = evil
    for o in r["owners"]:
        if o["name"] == old:
            o["name"] = evil
        if o["status"] == "failed":
            o["error"] = '<img src=x onerror="alert(1)"> & "quoted"'
    page = write_html(r, tmp_path / "evil.html").read_text(encoding="utf-8")
    assert "<b>x</b>" not in page and "<img src=x" not in page
    assert "&lt;b&gt;x&lt;/b&gt;$y&amp;" in page
    assert escape('<img src=x onerror="alert(1)"> & "quoted"') in page
    assert _ranking_owners(page)[0] == evil  # the parser unescapes: the name round-trips


def _renamed(obj: Any, old: str, new: str) -> Any:
    """`obj` with every string value and key equal to `old` replaced: a name as a hostile owner
    or data set would have sent it in the first place."""
    if isinstance(obj, dict):
        return {(new if k == old else k): _renamed(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_renamed(v, old, new) for v in obj]
    return new if obj == old else obj


def _section(page: str, element_id: str) -> str:
    """The page from the element with `element_id` to the end of its table or box, or for a
    heading to the next heading."""
    start = page.index(f'id="{element_id}"')
    if element_id.endswith("-table"):
        end = "</table>"
    else:
        end = "</section>" if element_id in ("verdict", "versus-random") else "<h2"
    stop = page.find(end, start + 1)
    return page[start : stop if stop >= 0 else len(page)]


def test_hostile_names_and_messages_are_text_in_every_section(
    real_report: dict[str, Any],
) -> None:
    r, collapsed, _ = _decision_report(real_report)  # `rich`'s rows harm class `collapsed`
    owner = '<script>alert("owner")</script>"onmouseover=alert(1) x=$'
    r = _renamed(r, "rich", owner)
    for name in list(r["class_names"]):
        r = _renamed(r, name, f'<script>alert("{name}")</script>"onmouseover=c{name}')
    harmed = f'<script>alert("{collapsed}")</script>"onmouseover=c{collapsed}'
    hard = r["dhard"]["classes"][0]  # in the run facts and `useless`'s missing classes
    failure = '<script>alert("error")</script>"onmouseover=alert(3)'
    next(o for o in r["owners"] if o["status"] == "failed")["error"] = failure
    r["warnings"] = [f"{hard} has too few rows"]
    page = render_html(r)

    assert "<script" not in page and '"onmouseover=' not in page
    where = {
        owner: ["verdict", "versus-random", "ranking-table", "budget-table", "agreement"],
        harmed: ["verdict"],
        hard: ["verdict", "run", "budget-table"],
        failure: ["verdict", "failures-table"],
    }
    for text, element_ids in where.items():
        for element_id in element_ids:
            assert str(escape(text)) in _section(page, element_id), (text, element_id)
    assert _ranking_owners(page)[0] == owner  # escaped once, not twice: it reads back whole
    assert f'<b class="owner-name">{escape(owner)}</b>' in page  # the box still marks names up


def test_a_value_missing_from_the_page_is_an_error_not_an_empty_cell(
    real_report: dict[str, Any],
) -> None:
    context = page_context(copy.deepcopy(real_report))
    assert render(TEMPLATE, **context) == render_html(real_report)
    missing_top = {k: v for k, v in context.items() if k != "run_id"}
    with pytest.raises(jinja2.UndefinedError, match="run_id"):
        render(TEMPLATE, **missing_top)
    row = context["ranking"]["ranked"][0]
    del row["note"]
    with pytest.raises(jinja2.UndefinedError, match="note"):
        render(TEMPLATE, **context)


def test_report_without_ranked_owners_still_renders(real_report: dict[str, Any]) -> None:
    r = copy.deepcopy(real_report)
    r["ranking"] = []
    for o in r["owners"]:
        o["rank"] = None
    page = render_html(r)
    assert 'id="ranking-table"' in page and 'id="gains"' in page
    assert "No owner could be ranked" in page
    assert len(DATA_URI.findall(page)) == 2  # routing (baseline only) and budget use


def test_cli_report_command(
    real_report_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sub" / "page.html"
    assert cli_main(["report", str(real_report_path), "--out", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert cli_main(["report", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: report file not found" in capsys.readouterr().err


# The page itself has no JavaScript; this probe goes into a copy only, to read what Chromium
# actually decoded (naturalWidth is 0 for an image that failed to load or decode).
PROBE = """<script>
const imgs = Array.from(document.images);
const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
document.body.setAttribute('data-images', ok + '/' + imgs.length);
</script>"""


@needs_chromium
def test_chromium_loads_page_and_decodes_every_image(
    html_path: Path, real_report: dict[str, Any], tmp_path: Path
) -> None:
    probe = tmp_path / "probe.html"
    page = html_path.read_text(encoding="utf-8")
    probe.write_text(page.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    dom = shot.dump_dom(CHROMIUM, probe, width=1200)
    n = len(DATA_URI.findall(page))
    assert f'data-images="{n}/{n}"' in dom, re.search(r'data-images="[^"]*"', dom)
    ranked = [r["owner"] for r in real_report["ranking"]]
    assert _ranking_owners(dom)[: len(ranked)] == ranked
    assert f"Mycroft run {real_report['run_id']}" in dom


@needs_chromium
def test_screenshot_script(real_report_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "shot.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "screenshot_report.py"),
         str(real_report_path), str(out), "--width", "1000"],
        capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    img = Image.open(out)
    img.load()
    assert img.size[0] == 1000 and img.size[1] > 1500  # the whole page, not just the window


def test_trainer_run_writes_the_page_next_to_its_json(real_report_path: Path) -> None:
    page = real_report_path.with_name("report.html").read_text(encoding="utf-8")
    assert len(DATA_URI.findall(page)) == 5 and 'id="ranking-table"' in page


def _decision_report(real_report: dict[str, Any]) -> tuple[dict[str, Any], str, float]:
    """The real run with gains set so that `rich` and `mixed` tie and `useless` gains nothing,
    and with `rich`'s rows wiping out the class the baseline got most right. Returns the
    report, that class and its baseline accuracy."""
    r = copy.deepcopy(real_report)
    r.pop("verdict", None)  # stale after the edits below; the page recomputes it
    gains = {"rich": (0.30, [0.12, 0.48]), "mixed": (0.22, [0.06, 0.38]), "useless": (0.0, [0, 0])}
    entries = {e["owner"]: e for e in r["ranking"]}
    owners = {o["name"]: o for o in r["owners"]}
    r["ranking"] = []
    for rank, (name, (mean, ci)) in enumerate(gains.items(), start=1):
        entries[name].update(rank=rank, dhard_gain_mean=mean, ci95=ci)
        owners[name]["rank"] = rank
        r["ranking"].append(entries[name])
    base = r["baseline"]["per_class_accuracy"]
    best = max(range(len(base)), key=lambda c: base[c] or 0.0)
    for result in primary_results(owners["rich"], r):
        result["per_class_accuracy"][best] = 0.0
    validate_report({**r, "verdict": compute_verdict(r)})
    return r, r["class_names"][best], base[best]


# Where the verdict box lies on the page and what it says, as Chromium laid it out.
VERDICT_PROBE = """<script>
const box = document.getElementById('verdict'), table = document.getElementById('ranking-table');
const b = box.getBoundingClientRect(), t = table.getBoundingClientRect();
const shown = getComputedStyle(box).visibility === 'visible' && b.height > 0;
document.body.setAttribute('data-verdict-box', [b.top, b.bottom, t.top, shown].join(','));
document.body.setAttribute('data-verdict-text', box.innerText);
</script>"""


@needs_chromium
def test_verdict_is_on_the_first_screen_and_names_whom_to_pay(
    real_report: dict[str, Any], tmp_path: Path
) -> None:
    r, collapsed, before = _decision_report(real_report)
    page = render_html(r)
    probe = tmp_path / "verdict.html"
    probe.write_text(page.replace("</body>", VERDICT_PROBE + "</body>", 1), encoding="utf-8")
    dom = shot.dump_dom(CHROMIUM, probe, width=1200)
    box = re.search(r'data-verdict-box="([^"]*)"', dom)
    text = re.search(r'data-verdict-text="([^"]*)"', dom)
    assert box and text, "the probe did not run"
    top, bottom, table_top, shown = box.group(1).split(",")
    assert shown == "true"
    assert float(bottom) <= 900, f"verdict ends at {bottom}px, below the first screen"
    assert float(top) < float(table_top)  # before the ranking, the first thing after the title
    words = " ".join(html.unescape(text.group(1)).split())
    assert "rich and mixed are tied (their 95% intervals overlap); either is worth paying." in words
    assert "rich has the highest mean gain: +30.0 pp" in words
    assert (
        f"rich's rows took the trainer's class {collapsed} from {100 * before:.0f}% to 0%" in words
    )
    assert "Not worth paying: useless (+0.0 pp): holds none of the D_hard classes." in words


def test_ranking_shows_reasons_gain_per_row_and_price_and_the_box_warnings(
    real_report: dict[str, Any],
) -> None:
    r, _, _ = _decision_report(real_report)
    r["warnings"] = ["only <12> D_hard-eval rows & an undertrained baseline"]
    next(o for o in r["owners"] if o["name"] == "rich")["price"] = 2.5
    page = render_html(r)
    box = page[page.index('id="verdict"') : page.index('id="ranking"')]
    assert "Warning: only &lt;12&gt; D_hard-eval rows &amp; an undertrained baseline" in box
    table = page[
        page.index('id="ranking-table"') : page.index("</table>", page.index("ranking-table"))
    ]
    assert "gain per row, pp" in table and "price / row" in table
    assert '<td class="why">holds none of the D_hard classes</td>' in table  # useless's reason
    assert '<td class="num">2.5</td>' in table
    del r["warnings"]  # absent in older reports: no warnings item, no error
    assert 'class="warnings"' not in render_html(r)
