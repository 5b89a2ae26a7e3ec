"""JupyterLab for the browser tests: a private server, and a learner's steps in the page (open a
notebook, wait for its kernel, Run All Cells from the Run menu, save).

The server runs from this Python environment (so its `python3` kernel is this environment's
Python) with its own workspace, settings, config and runtime folders, so nothing a person's own
JupyterLab remembers leaks in: every notebook opens with `?reset`, all cells stay in the page
(`windowingMode: none`), the notebook's kernel starts by itself, and no news is fetched.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

# plugin id -> settings, written to the server's own user-settings folder
LAB_SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}

# One poll of the open notebook: the code cells' prompts ("[3]:", "[*]:" running or queued,
# "[ ]:" never run), the status bar's kernel text, how many ipywidgets progress bars and
# "Error displaying widget" texts are in the page.
_STATE_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const cells = [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  return {
    prompts: cells.map(c => (c.querySelector('.jp-InputPrompt')?.textContent || '').trim()),
    status: document.querySelector('#jp-main-statusbar')?.innerText || '',
    progressBars: panel.querySelectorAll('.widget-hprogress').length,
    outputText: [...panel.querySelectorAll('.jp-OutputArea')].map(area => area.innerText).join('\\n'),
    widgetErrors: (panel.innerText.match(/Error displaying widget/g) || []).length,
    dirty: document.querySelectorAll('#jp-main-dock-panel .lm-TabBar-tab.jp-mod-current.jp-mod-dirty').length > 0,
  };
}"""

# Per code cell of the open notebook: [naturalWidth of each <img> in its outputs].
_IMAGES_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  return [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')].map(cell =>
    [...cell.querySelectorAll('.jp-OutputArea-output img')].map(img => img.complete ? img.naturalWidth : 0));
}"""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabServer:
    """A running JupyterLab: its base URL, token, served folder, process and log file."""

    url: str
    token: str
    root: Path
    process: subprocess.Popen
    log: Path

    def api(self, method: str, path: str) -> Any:
        """One REST call with the token; the decoded JSON answer (None when empty)."""
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            body = answer.read()
        return json.loads(body) if body else None

    def lab_url(self, relpath: str) -> str:
        """The page of the notebook at `relpath` (under `root`), with a fresh workspace."""
        return f"{self.url}/lab/tree/{quote(relpath)}?reset&token={self.token}"

    def shutdown_kernels(self) -> None:
        """Ends every session and its kernel, so the next notebook has the CPU to itself."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def stop(self, timeout: float = 30) -> None:
        """Asks the server to shut down (kernels included); terminates it if it does not."""
        if self.process.poll() is None:
            try:
                self.api("POST", "/api/shutdown")
                self.process.wait(timeout=timeout)
            except (OSError, urllib.error.URLError, subprocess.TimeoutExpired):
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()


def start_lab(root: Path, state: Path, env: dict[str, str] | None = None, timeout: float = 180) -> LabServer:
    """Starts JupyterLab on a free loopback port serving `root`, with a random token, keeping its
    workspaces, settings, config, runtime files and log under `state`; waits until it answers.

    `env` adds to the server's environment, which its kernels inherit (e.g. LTP_PROFILE)."""
    for name, values in LAB_SETTINGS.items():
        package, plugin = name.split(":")
        path = state / "settings" / package / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2))
    for folder in ("workspaces", "config", "runtime"):
        (state / folder).mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    server_env = {**os.environ, "JUPYTER_CONFIG_DIR": str(state / "config"),
                  "JUPYTER_RUNTIME_DIR": str(state / "runtime"), "PYTHONUNBUFFERED": "1",
                  # the environment's tools (jupyter, torchrun, ...) first, for the kernels' subprocesses too
                  "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]), **(env or {})}
    port, token = free_port(), secrets.token_hex(16)
    log = state / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={state / 'workspaces'}",
               f"--LabApp.user_settings_dir={state / 'settings'}"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=root, env=server_env, stdout=out, stderr=subprocess.STDOUT)
    server = LabServer(f"http://127.0.0.1:{port}", token, root, process, log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{server.log_tail()}")
        try:
            server.api("GET", "/api/status")
            return server
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                server.stop()
                raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{server.log_tail()}") from None
            time.sleep(0.5)


def notebook_state(page) -> dict[str, Any] | None:
    """The open notebook's prompts, kernel status text, progress bars, outputs' text, widget
    errors, dirty flag."""
    return page.evaluate(_STATE_JS)


def image_widths(page) -> list[list[int]]:
    """Per code cell, the naturalWidth of every image in its outputs (0: not loaded)."""
    return page.evaluate(_IMAGES_JS)


def kernel_idle(state: dict[str, Any] | None) -> bool:
    """The status bar reads "<kernel name> | Idle"."""
    return state is not None and "| Idle" in state["status"]


def open_notebook(page, server: LabServer, relpath: str, timeout: float = 180) -> dict[str, Any]:
    """Opens the notebook with a fresh workspace and waits until its cells are in the page and
    its kernel is idle: a Run All clicked while the kernel starts runs nothing."""
    page.goto(server.lab_url(relpath), timeout=timeout * 1000)
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while True:
        state = notebook_state(page)
        if kernel_idle(state):
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"{relpath}: the kernel was not idle after {timeout:.0f} s; status bar: "
                               f"{state and state['status']!r}\n{server.log_tail()}")
        time.sleep(0.5)


def run_all_cells(page) -> None:
    """Run > Run All Cells (by its exact name: "Restart Kernel and Run All Cells" also matches)."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def wait_for_run(page, timeout: float, poll: float = 1.0) -> dict[str, Any]:
    """Waits until no cell is running or queued, some cell has run and the kernel is idle, twice
    in a row (a run stops at the first error, leaving the rest unrun). Returns the last state
    plus the most progress bars and "Error displaying widget" texts seen at any poll: tqdm's
    bars close when done, so the page at the end need not show them."""
    deadline = time.monotonic() + timeout
    most_bars = most_errors = settled = 0
    while True:
        state = notebook_state(page)
        if state is None:
            raise RuntimeError("the notebook is no longer open in the page")
        most_bars = max(most_bars, state["progressBars"])
        most_errors = max(most_errors, state["widgetErrors"])
        prompts = state["prompts"]
        busy = any("*" in p for p in prompts) or not any(any(ch.isdigit() for ch in p) for p in prompts)
        settled = 0 if busy or not kernel_idle(state) else settled + 1
        if settled >= 2:
            return {**state, "mostProgressBars": most_bars, "mostWidgetErrors": most_errors}
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run did not finish within {timeout:.0f} s; prompts {prompts}, "
                               f"status bar {state['status']!r}")
        time.sleep(poll)


def save(page, path: Path, timeout: float = 60) -> dict[str, Any]:
    """Ctrl+S in the notebook, then waits until the tab is clean and the file on disk is newer;
    returns the saved notebook's JSON."""
    before = path.stat().st_mtime_ns
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + timeout
    while notebook_state(page)["dirty"] or path.stat().st_mtime_ns == before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} was not saved within {timeout:.0f} s")
        time.sleep(0.5)
    return json.loads(path.read_text())


def screenshot_top_and_bottom(page, folder: Path, name: str) -> list[Path]:
    """The first and the last screen of the open notebook, as <name>-first.png and -last.png."""
    folder.mkdir(parents=True, exist_ok=True)
    cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")
    shots = []
    for cell, block, suffix in ((cells.first, "start", "first"), (cells.last, "end", "last")):
        cell.evaluate(f"cell => cell.scrollIntoView({{block: '{block}'}})")
        page.wait_for_timeout(500)  # let the scroll settle before the picture
        shot = folder / f"{name}-{suffix}.png"
        page.screenshot(path=str(shot))
        shots.append(shot)
    return shots
