"""The HTML report of a real run (tests/conftest.py `real_report`): self-contained, escaped, and
loaded in headless Chromium with every image decoded and the owners in ranked order."""

from __future__ import annotations

import base64
import copy
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

import pytest
from PIL import Image

from mycroft.cli import main as cli_main
from trainer_node.html_report import render_html, render_report_file, write_html

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
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; &quot;quoted&quot;" in page
    assert _ranking_owners(page)[0] == evil  # the parser unescapes: the name round-trips


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
