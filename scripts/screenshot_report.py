"""Screenshot a run's HTML report with headless Chromium: `screenshot_report.py RUN.json OUT.png`.

Renders RUN.json to HTML (validated against the report schema) in a temporary directory and
captures the full page. The flags keep Chromium off the network: without them it hangs trying to
reach Google services on a closed network. `chromium_command` is shared with the HTML test.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",  # containers and CI run as root, where the sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """A Chromium binary: $CHROMIUM if set, else the first known name on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def chromium_command(binary: str, profile: Path, *args: str) -> list[str]:
    return [binary, *HEADLESS_FLAGS, f"--user-data-dir={profile}", *args]


MEASURE_SCRIPT = (
    "<script>document.body.setAttribute('data-page-height',"
    " document.documentElement.scrollHeight)</script>"
)


def dump_dom(binary: str, html_path: Path, width: int, timeout: float = 60) -> str:
    """The page's DOM after load (and after any inline script ran)."""
    with tempfile.TemporaryDirectory(prefix="mycroft-chromium-") as profile:
        cmd = chromium_command(
            binary,
            Path(profile),
            f"--window-size={width},900",
            "--virtual-time-budget=5000",
            "--dump-dom",
            html_path.resolve().as_uri(),
        )
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    return done.stdout


def page_height(binary: str, html_path: Path, width: int) -> int:
    """The full page height at `width`: --screenshot only captures the window, so measure it
    with a one-line script in a throwaway copy (the report itself has no JavaScript)."""
    probe = html_path.with_name(f".measure-{html_path.name}")
    text = html_path.read_text(encoding="utf-8")
    probe.write_text(text.replace("</body>", MEASURE_SCRIPT + "</body>", 1), encoding="utf-8")
    try:
        dom = dump_dom(binary, probe, width)
    finally:
        probe.unlink(missing_ok=True)
    match = re.search(r'data-page-height="(\d+)"', dom)
    if match is None:
        raise SystemExit("screenshot_report: could not measure the page in Chromium")
    return int(match.group(1))


def screenshot(html_path: Path, out: Path, width: int = 1200, timeout: float = 60) -> Path:
    binary = find_chromium()
    if binary is None:
        raise SystemExit("screenshot_report: Chromium not found (install Debian's `chromium`)")
    height = page_height(binary, html_path, width)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mycroft-chromium-") as profile:
        cmd = chromium_command(
            binary,
            Path(profile),
            f"--window-size={width},{height}",
            f"--screenshot={out.resolve()}",
            "--virtual-time-budget=5000",
            html_path.resolve().as_uri(),
        )
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
    if not out.is_file() or out.stat().st_size == 0:
        raise SystemExit(f"screenshot_report: Chromium wrote no screenshot to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_json", type=Path, help="a run's report.json")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--width", type=int, default=1200, help="window width in px")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mycroft.errors import MycroftError
    from trainer_node.html_report import read_report, write_html

    try:
        report = read_report(args.run_json)
    except MycroftError as err:
        print(f"screenshot_report: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mycroft-report-") as tmp:
        page = write_html(report, Path(tmp) / "report.html")
        screenshot(page, args.out, width=args.width)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
