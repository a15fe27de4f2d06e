"""The README's pictures of notebooks 01-04, taken in a real JupyterLab 4 after *Run All*.

    .venv/bin/python docs/screenshots.py            # writes docs/notebook_0{1,2,3,4}.png (a few minutes)
    .venv/bin/python docs/screenshots.py 04         # only the notebooks whose name starts with 04

Each notebook is copied to a temporary folder (JupyterLab saves what it runs; the checkout stays
clean), opened in JupyterLab on loopback in Debian's Chromium (the test extra installs JupyterLab and
Playwright; ``make browser`` installs Chromium), run with Run > Run All Cells on the bundled model,
and photographed whole. Before a picture is written it is checked as a reader would look at it: no
cell raised, no stats line starts or ends with a dangling separator, no button or label is cut; in
04 a token of the original reply is hovered, and its popup must show whole, off the stats line.
The PNGs are quantised to 256 colours to keep the repository small.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "notebook"))

from _jupyterlab import (  # noqa: E402 - the suite's JupyterLab driver, next to the browser tests
    CUT_LABELS_JS,
    DANGLING_SEPARATORS_JS,
    JupyterLab,
    launch_chromium,
)

NOTEBOOKS = ("01_quickstart", "02_prompt_formats", "03_demo_endpoint", "04_token_probabilities")
WIDTH = 1280

POPUP_JS = """() => {
  const pop = document.querySelector('.csl-pop');
  if (!pop || getComputedStyle(pop).display === 'none') return 'no popup';
  const r = pop.getBoundingClientRect();
  const vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
  if (r.left < 0 || r.top < 0 || r.right > vw || r.bottom > vh) return 'popup outside the page';
  for (const s of document.querySelectorAll('.csl-stats')) {
    const q = s.getBoundingClientRect();
    if (!(r.bottom <= q.top || r.top >= q.bottom || r.right <= q.left || r.left >= q.right))
      return 'popup over a stats line';
  }
  return 'ok';
}"""


def _collapse_left_sidebar(page) -> None:
    current = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if current.count():
        current.first.click()


def _fit_viewport_to_notebook(page) -> None:
    """A viewport as tall as the notebook, so the picture needs no scrolling."""
    scroller = "document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer')"
    height = page.evaluate(f"() => {scroller}.scrollHeight")
    page.set_viewport_size({"width": WIDTH, "height": int(height) + 200})
    page.wait_for_timeout(800)
    page.evaluate(f"() => {{ {scroller}.scrollTop = 0; }}")
    page.wait_for_timeout(300)


def _check(page, name: str) -> None:
    dangling = page.evaluate(DANGLING_SEPARATORS_JS, ".widget-html-content")
    assert not dangling, f"{name}: stats lines with a dangling separator: {dangling}"
    cut = page.evaluate(CUT_LABELS_JS)
    assert not cut, f"{name}: labels cut: {cut}"


def _hover_a_token(page) -> None:
    """04: hover a token of the original reply (the least likely one, where "branch at" starts)."""
    selected = page.locator(".csl-replyview").first.locator(".csl-tok.csl-selected")
    token = selected if selected.count() else page.locator(".csl-tok").first
    token.hover()
    page.wait_for_timeout(300)
    verdict = page.evaluate(POPUP_JS)
    assert verdict == "ok", f"04: {verdict}"


def _notebook_picture(page) -> bytes:
    """The notebook panel from its toolbar to the end of its last cell (not the scroll-past-end space)."""
    box = page.evaluate("""() => {
        const panel = document.querySelector('.jp-NotebookPanel').getBoundingClientRect();
        const cells = document.querySelectorAll('.jp-NotebookPanel .jp-Cell');
        const last = cells[cells.length - 1].getBoundingClientRect();
        return {x: panel.left, y: panel.top, width: panel.width, height: last.bottom - panel.top + 16};
    }""")
    return page.screenshot(clip=box)


def _save(png: bytes, path: Path) -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)


def take(names: list[str], out: Path, timeout: float) -> list[Path]:
    from playwright.sync_api import sync_playwright

    written = []
    with tempfile.TemporaryDirectory(prefix="csl-notebooks-") as tmp:
        root = Path(tmp)
        for name in names:
            shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", root)
        with JupyterLab(root) as lab, sync_playwright() as p:
            browser, page = launch_chromium(p, viewport=(WIDTH, 900))
            try:
                for name in names:
                    t0 = time.monotonic()
                    lab.open(page, f"{name}.ipynb")
                    _collapse_left_sidebar(page)
                    try:
                        lab.run_all(page, timeout)
                    except Exception:
                        page.screenshot(path=out / f"failed_{name[:2]}.png", full_page=True)
                        raise
                    page.wait_for_timeout(2500)  # the last redraws (dashboard, tables) arrive
                    _fit_viewport_to_notebook(page)
                    _check(page, name)
                    if name.startswith("04"):
                        _hover_a_token(page)
                    path = out / f"notebook_{name[:2]}.png"
                    _save(_notebook_picture(page), path)
                    written.append(path)
                    print(f"{path}: {time.monotonic() - t0:.0f} s", flush=True)
                    page.set_viewport_size({"width": WIDTH, "height": 900})
                    lab.shutdown_kernels()  # each notebook's Lab goes with its kernel
            finally:
                browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="notebook name prefixes (default: all four)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for one notebook's Run All")
    args = parser.parse_args()
    names = [n for n in NOTEBOOKS if not args.only or any(n.startswith(o) for o in args.only)]
    take(names, args.out, args.timeout)


if __name__ == "__main__":
    main()
