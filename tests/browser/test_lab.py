"""A learner's JupyterLab in Chromium: every notebook (under the `ci` profile's sizes) and a
released assignment are opened, run with Run > Run All Cells, and saved, then judged from the
saved file and the page: errors, execution counts, figures, progress bars, console errors.

One JupyterLab serves a temporary copy of notebooks/ with the outputs cleared, so saving never
touches the repository's notebooks and their metrics land in that copy's reports/. Screenshots of
each notebook's first and last screen go to reports/browser/<name>-first.png and -last.png (the
assignment also gets -error.png, its first unimplemented stub), with <name>.json: the run's seconds.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from lab import (
    LabServer,
    image_widths,
    open_notebook,
    run_all_cells,
    save,
    screenshot_top_and_bottom,
    start_lab,
    wait_for_run,
)

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
ASSIGNMENTS = ROOT / "notebooks" / "assignments"
ASSIGNMENT = "a1_soft_mask"       # the released assignment a student opens
SHOTS = ROOT / "reports" / "browser"
RUN_TIMEOUT = 1200                # seconds for one Run All: the slowest ci notebook took 298-445 s on 2 busy cores
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"   # an ipywidgets output's MIME type
PAGE_TIMEOUT = 120_000            # ms for one page action: JupyterLab's first load is slow on a busy CPU


def cleared_copy(source: Path, target: Path) -> None:
    """`source` without outputs or execution counts, so whatever the page shows is this run's."""
    notebook = nbformat.read(source, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, target)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> LabServer:
    """One JupyterLab for the module, serving <tmp>/notebooks (a cleared copy with params/), its
    kernels under LTP_PROFILE=ci; shut down at the end."""
    root = tmp_path_factory.mktemp("lab")
    (root / "notebooks").mkdir()
    for notebook in NOTEBOOKS:
        cleared_copy(notebook, root / "notebooks" / notebook.name)
    shutil.copytree(ROOT / "notebooks" / "params", root / "notebooks" / "params")
    server = start_lab(root, tmp_path_factory.mktemp("lab-state"), env={"LTP_PROFILE": "ci"})
    yield server
    server.stop()


@dataclass
class LearnerRun:
    """What one Run All left behind: the saved notebook, the page's last state, image widths per
    code cell, console errors, the run's seconds, the screenshots."""

    saved: dict[str, Any]
    state: dict[str, Any]
    images: list[list[int]]
    console_errors: list[str]
    seconds: float
    shots: list[Path]

    @property
    def code_cells(self) -> list[dict[str, Any]]:
        return [cell for cell in self.saved["cells"] if cell["cell_type"] == "code"]

    def errors(self) -> list[tuple[int, str, str]]:
        """(code cell index, exception name, value) of every `error` output in the saved file."""
        return [(i, out["ename"], out["evalue"]) for i, cell in enumerate(self.code_cells)
                for out in cell["outputs"] if out["output_type"] == "error"]

    def assert_figures_rendered(self) -> None:
        """Each saved image/png output is an <img> in the page that loaded (naturalWidth > 0)."""
        assert len(self.images) == len(self.code_cells), "the page and the file disagree on the code cells"
        for i, (cell, widths) in enumerate(zip(self.code_cells, self.images)):
            pngs = sum("image/png" in out.get("data", {}) for out in cell["outputs"])
            assert len(widths) >= pngs, f"code cell {i}: {pngs} figure(s) saved, {len(widths)} <img> in the page"
            assert all(width > 0 for width in widths), f"code cell {i}: an image did not load: widths {widths}"

    def assert_widgets_and_console_clean(self) -> None:
        assert self.state["mostWidgetErrors"] == 0, "a widget showed 'Error displaying widget'"
        # an ipywidgets view saved in the file must have been drawn as a bar while it ran
        widget_outputs = sum(WIDGET_VIEW in out.get("data", {}) for cell in self.code_cells for out in cell["outputs"])
        if widget_outputs:
            assert self.state["mostProgressBars"] > 0, f"{widget_outputs} widget output(s), no progress bar drawn"
        assert self.console_errors == [], "JavaScript console errors:\n" + "\n".join(self.console_errors)


def learner_run(server: LabServer, page, relpath: str, name: str) -> LearnerRun:
    """Opens `relpath` in a fresh workspace, waits for the idle kernel, Run > Run All Cells, waits
    for the run to end, saves; screenshots and ends the kernel whatever happened."""
    console_errors: list[str] = []
    page.on("console", lambda message: console_errors.append(f"console.error: {message.text}")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: console_errors.append(f"pageerror: {error}"))
    page.set_default_timeout(PAGE_TIMEOUT)
    page.set_viewport_size({"width": 1280, "height": 1000})
    path = server.root / relpath
    try:
        state = open_notebook(page, server, relpath)
        page.keyboard.press("Control+b")  # hide the file browser: the screenshots show more notebook
        in_file = sum(cell.cell_type == "code" for cell in nbformat.read(path, as_version=4).cells)
        assert len(state["prompts"]) == in_file, (
            f"{len(state['prompts'])} of {in_file} code cells in the page: windowingMode 'none' not applied?")
        start = time.monotonic()
        run_all_cells(page)
        state = wait_for_run(page, RUN_TIMEOUT)
        seconds = time.monotonic() - start
        saved = save(page, path)
        images, seen = image_widths(page), list(console_errors)
    finally:
        try:
            shots = screenshot_top_and_bottom(page, SHOTS, name)
        finally:
            server.shutdown_kernels()
    (SHOTS / f"{name}.json").write_text(json.dumps(
        {"notebook": relpath, "run_seconds": round(seconds, 1), "code_cells": in_file,
         "progress_bars_seen": state["mostProgressBars"], "console_errors": seen}, indent=2) + "\n")
    print(f"{name}: Run All Cells took {seconds:.1f} s; screenshots {', '.join(map(str, shots))}")
    return LearnerRun(saved, state, images, seen, seconds, shots)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(lab, page, notebook):
    run = learner_run(lab, page, f"notebooks/{notebook.name}", notebook.stem)
    assert run.errors() == [], f"error outputs in the saved notebook: {run.errors()}"
    counts = [cell["execution_count"] for cell in run.code_cells]
    assert counts == list(range(1, len(counts) + 1)), f"not every code cell ran, in order: {counts}"
    assert run.state["prompts"][-1] == f"[{len(counts)}]:", run.state["prompts"][-1]
    run.assert_figures_rendered()
    assert any(run.images), "no figure in the page"
    run.assert_widgets_and_console_clean()


def test_progress_bar_widget_renders(lab, page):
    """The notebooks turn their progress bars off, so a tqdm.auto loop (what ltp_core's training
    loops use) checks that an ipywidgets bar draws in this environment's JupyterLab."""
    folder = lab.root / "widgets"
    folder.mkdir(exist_ok=True)
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("A progress bar."),
        nbformat.v4.new_code_cell("import time\n\nfrom tqdm.auto import tqdm\n\n"
                                  "for _ in tqdm(range(5), desc=\"epochs\"):\n    time.sleep(0.2)"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(notebook, folder / "progress_bar.ipynb")
    run = learner_run(lab, page, "widgets/progress_bar.ipynb", "progress_bar")
    assert run.errors() == [] and [cell["execution_count"] for cell in run.code_cells] == [1]
    views = [out for out in run.code_cells[0]["outputs"] if WIDGET_VIEW in out.get("data", {})]
    assert views, f"tqdm.auto drew no widget: outputs {run.code_cells[0]['outputs']}"
    assert run.state["progressBars"] == 1, "the finished bar is not in the page"
    assert "epochs" in run.state["outputText"] and "5/5" in run.state["outputText"], run.state["outputText"]
    run.assert_widgets_and_console_clean()


def released_notebooks(course: Path) -> list[Path]:
    """nbgrader's student release of ASSIGNMENT, generated in `course` (a copy of the sources)."""
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    nbgrader = Path(sys.executable).parent / "nbgrader"
    done = subprocess.run([str(nbgrader), "generate_assignment", ASSIGNMENT, "--force"], cwd=course, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"nbgrader generate_assignment failed:\n{done.stdout}\n{done.stderr}"
    return sorted((course / "release" / ASSIGNMENT).glob("*.ipynb"))


def test_released_assignment_runs_in_jupyterlab(lab, page):
    """A student opens the release and runs it all: it stops at the first unimplemented stub
    with NotImplementedError, every cell before it ran, and the page shows no other failure."""
    assert (ASSIGNMENTS / "source" / ASSIGNMENT).is_dir(), f"no assignment source {ASSIGNMENTS / 'source' / ASSIGNMENT}"
    course = lab.root / "assignments"
    shutil.copytree(ASSIGNMENTS, course, ignore=shutil.ignore_patterns(
        "release", "submitted", "autograded", "feedback", "gradebook.db", ".ipynb_checkpoints"))
    released = released_notebooks(course)
    assert released, f"nbgrader released no notebook into {course / 'release' / ASSIGNMENT}"
    for notebook in released:
        relpath = notebook.relative_to(lab.root).as_posix()
        run = learner_run(lab, page, relpath, f"{ASSIGNMENT}-{notebook.stem}")
        errors = run.errors()
        assert errors, "the release ran without an error: are its solutions still in it?"
        assert [name for _, name, _ in errors] == ["NotImplementedError"], f"unexpected errors: {errors}"
        failed = errors[0][0]
        graded = run.code_cells[failed].get("metadata", {}).get("nbgrader", {})
        assert graded.get("grade") or graded.get("solution"), (
            f"code cell {failed} raised but is not one of nbgrader's solution or test cells")
        cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell").nth(failed)
        cell.evaluate("cell => cell.scrollIntoView({block: 'center'})")
        page.screenshot(path=str(SHOTS / f"{ASSIGNMENT}-{notebook.stem}-error.png"))  # what the student sees
        counts = [cell["execution_count"] for cell in run.code_cells]
        assert counts[: failed + 1] == list(range(1, failed + 2)), f"cells before the stub did not all run: {counts}"
        assert all(count is None for count in counts[failed + 1:]), f"cells ran after the error: {counts}"
        run.assert_figures_rendered()
        run.assert_widgets_and_console_clean()
