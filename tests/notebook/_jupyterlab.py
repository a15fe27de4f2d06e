"""A real JupyterLab 4 on loopback, driven by Debian's Chromium through Playwright.

Used by the browser tests of the widgets (what only a live page shows: Send while a reply streams,
Stop on a long reply, the hover popup inside the output area) and by ``docs/screenshots.py`` (the
README's pictures of the notebooks after Run All).

``JupyterLab(root)`` starts ``python -m jupyterlab`` from this interpreter (so the kernel is this
virtualenv's ``python3``) in a fresh temporary configuration: no news popup, no restored workspace,
every cell rendered (no windowing), ``PYTHONPATH`` pointing at this checkout so the kernel imports
the code under test. ``open(page, name)`` opens a notebook; ``run_all(page)`` runs it through the
Run menu and waits for every cell.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

# user settings of the temporary JupyterLab: nothing fetched, nothing virtualised away
_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/themes.jupyterlab-settings": {"theme": "JupyterLab Light"},
}


def jupyterlab_installed() -> bool:
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def notebook_json(cells: list[str]) -> str:
    """A notebook of code ``cells`` (markdown cells start with ``# md\\n``), for the venv's kernel."""
    def cell(source: str) -> dict[str, Any]:
        if source.startswith("# md\n"):
            return {"cell_type": "markdown", "metadata": {}, "source": source.removeprefix("# md\n")}
        return {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": source}

    return json.dumps({"cells": [cell(c) for c in cells], "nbformat": 4, "nbformat_minor": 5,
                       "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                   "name": "python3"}, "language_info": {"name": "python"}}})


class JupyterLab:
    """A JupyterLab server serving ``root`` on a free loopback port (stopped by ``stop()``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self._home = tempfile.TemporaryDirectory(prefix="csl-jupyterlab-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(self._home.name) / "jupyterlab.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> JupyterLab:
        home = Path(self._home.name)
        settings = home / "settings"
        for name, value in _SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep), JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
            JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
            TOKENIZERS_PARALLELISM="false", NO_PROXY="127.0.0.1,localhost")
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--LabApp.news_url=", "--ServerApp.open_browser=False", "--ServerApp.allow_root=True",
               "--LabApp.extension_manager=readonly"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited: {self.log.read_text()[-3000:]}")
                try:
                    if client.get(f"{self.url}/api/status", params={"token": self.token}).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer within {timeout} s: {self.log.read_text()[-3000:]}")

    def shutdown_kernels(self) -> None:
        """Stop every kernel (each notebook's Lab goes with its kernel)."""
        with httpx.Client(trust_env=False, timeout=10) as client:
            params = {"token": self.token}
            for kernel in client.get(f"{self.url}/api/kernels", params=params).json():
                client.delete(f"{self.url}/api/kernels/{kernel['id']}", params=params)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.shutdown_kernels()
            except httpx.HTTPError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._home.cleanup()

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the page ------------------------------------------------------------------------------------
    def open(self, page: Any, name: str, timeout: float = 60.0) -> None:
        """Open notebook ``name`` (relative to the root) and wait for its kernel to be idle."""
        page.goto(f"{self.url}/lab/tree/{name}?reset&token={self.token}")
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=timeout * 1000)
        wait_kernel_idle(page, timeout)

    def run_all(self, page: Any, timeout: float = 600.0) -> None:
        """Run > Run All Cells, then wait until every code cell has run (or one failed)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        for _ in range(3):  # a menu opened while the notebook is still settling may not take the click
            page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
            try:
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                    ".some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))", timeout=10_000)
                break
            except PlaywrightTimeout:  # nothing started: open the menu again
                page.keyboard.press("Escape")
        wait_all_ran(page, timeout)


def wait_kernel_idle(page: Any, timeout: float = 60.0) -> None:
    page.wait_for_function(
        "() => { const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
        " return s && s.getAttribute('data-status') === 'idle'; }", timeout=timeout * 1000)


def wait_all_ran(page: Any, timeout: float = 600.0) -> None:
    """Wait until no cell is running or queued (``[*]:``) and the kernel is idle; then every code
    cell must show ``[n]:`` (Run All stops at a cell that raised: its traceback is the error)."""
    page.wait_for_function(
        "() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];"
        " const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
        " return p.length > 0 && !p.some(e => e.textContent.includes('*'))"
        " && s && s.getAttribute('data-status') === 'idle'; }", timeout=timeout * 1000)
    prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
    if not all(re.search(r"\[\d+\]", p) for p in prompts):
        tracebacks = [t for t in page.locator(".jp-OutputArea-output").all_inner_texts() if "Traceback" in t
                      or "Error" in t]
        raise AssertionError(f"Run All stopped ({prompts}): {tracebacks[-1][-3000:] if tracebacks else 'no traceback'}")


_PROMPT_JS = ("([i, pattern]) => { const c = document.querySelectorAll('.jp-Notebook .jp-Cell')[i];"
              " const p = c && c.querySelector('.jp-InputPrompt');"
              " return p && new RegExp(pattern).test(p.textContent); }")


def run_cell(page: Any, index: int, *, wait: bool = True, timeout: float = 60.0) -> None:
    """Run cell ``index`` (0-based, among all cells) with Shift+Enter; with ``wait``, until its prompt
    shows ``[n]:``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    for _ in range(3):  # a notebook still settling may drop the first keystrokes
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        try:
            page.wait_for_function(_PROMPT_JS, arg=[index, "\\[(\\*|\\d+)\\]"], timeout=10_000)
            break
        except PlaywrightTimeout:
            continue
    if wait:
        page.wait_for_function(_PROMPT_JS, arg=[index, "\\[\\d+\\]"], timeout=timeout * 1000)


def wait_cell_done(page: Any, index: int, timeout: float = 60.0) -> None:
    page.wait_for_function(_PROMPT_JS, arg=[index, "\\[\\d+\\]"], timeout=timeout * 1000)


# Lines of the elements matching a selector whose visible text starts or ends with a separator "·":
# every visible non-blank character is measured (a Range per character), characters clipped by the
# element's box are left out, and the rest are grouped into lines by their vertical position.
DANGLING_SEPARATORS_JS = """
sel => {
  const bad = [];
  for (const box of document.querySelectorAll(sel)) {
    if (!box.textContent.includes('·')) continue;
    const clip = box.getBoundingClientRect();
    const chars = [];
    const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      for (let i = 0; i < n.data.length; i++) {
        if (!n.data[i].trim()) continue;
        const range = document.createRange();
        range.setStart(n, i); range.setEnd(n, i + 1);
        const r = range.getBoundingClientRect();
        if (r.width === 0 || r.right <= clip.left + 0.5 || r.left >= clip.right - 0.5) continue;
        chars.push({ c: n.data[i], mid: (r.top + r.bottom) / 2, left: r.left });
      }
    }
    const lines = [];
    for (const ch of chars.sort((a, b) => a.mid - b.mid)) {
      const line = lines.find(l => Math.abs(l.mid - ch.mid) < 4);
      if (line) line.chars.push(ch); else lines.push({ mid: ch.mid, chars: [ch] });
    }
    for (const line of lines) {
      const text = line.chars.sort((a, b) => a.left - b.left).map(c => c.c).join('');
      if (text.startsWith('·') || text.endsWith('·')) bad.push(text);
    }
  }
  return bad;
}
"""

# Labels (buttons, widget labels) whose text does not fit their box: cut, with or without an ellipsis.
CUT_LABELS_JS = """
() => [...document.querySelectorAll('.jupyter-button, .widget-label, .widget-label-basic')]
  .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
  .map(e => e.textContent.trim() || e.getAttribute('title') || e.className)
"""


def launch_chromium(playwright: Any, viewport: tuple[int, int] = (1280, 900)) -> tuple[Any, Any]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    return browser, page
