"""Claim: `dvc plots show` renders offline: the page loads no script from the network, and headless Chromium draws
every plot of dvc.yaml. Writes the page with `dvc plots show`, takes a screenshot with Debian's headless Chromium
(`apt-get install chromium-headless-shell`), and reports what the page holds.

    python bench/plots_page.py            # after `make demo`; writes bench/results/plots_page.{png,json}
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import write_result

RESULTS = Path(__file__).resolve().parent / "results"
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")


def page_scripts(html: str) -> dict[str, int]:
    """Scripts the page loads by URL versus inline ones: an offline page has no `src` to fetch."""
    return {"remote": len(re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']?https?:", html, re.I)),
            "by_src": len(re.findall(r"<script[^>]*\bsrc\s*=", html, re.I)),
            "inline": len(re.findall(r"<script(?![^>]*\bsrc\s*=)[^>]*>", html, re.I))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("dvc_plots"), help="where `dvc plots show` writes the page")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=3600)
    args = parser.parse_args()
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        sys.exit(f"no headless Chromium found ({', '.join(BROWSERS)}): apt-get install chromium-headless-shell")
    subprocess.run(["dvc", "plots", "show", "-o", str(args.out)], check=True, stdout=subprocess.DEVNULL)
    page = (args.out / "index.html").resolve()
    html = page.read_text(encoding="utf-8")
    RESULTS.mkdir(exist_ok=True)
    screenshot = RESULTS / "plots_page.png"
    started = time.perf_counter()
    # no network at all: a page that needed a CDN would render blank here
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                    f"--window-size={args.width},{args.height}", "--virtual-time-budget=15000",
                    f"--screenshot={screenshot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    seconds = time.perf_counter() - started
    plots = re.findall(r'<div id\s*=\s*"([^"]+)"', html)
    result = {"page": str(args.out / "index.html"), "page_bytes": len(html.encode()),
              "scripts": page_scripts(html), "plots": plots, "screenshot": "bench/results/plots_page.png",
              "render_seconds": round(seconds, 2)}
    write_result("plots_page", result)
    print(f"{'plots on the page':<28}{len(plots)}")
    print(f"{'scripts loaded by URL':<28}{result['scripts']['remote']} remote, {result['scripts']['by_src']} in all")
    print(f"{'inline scripts':<28}{result['scripts']['inline']}")
    print(f"{'screenshot':<28}{screenshot} ({seconds:.1f} s in headless Chromium, offline)")


if __name__ == "__main__":
    main()
