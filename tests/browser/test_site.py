"""The report site in Chromium, opened from the file system: a site built by `ltp-reports`' own
code from two tiny notebooks with a matplotlib figure and a progress bar (one of them fails), then
every link is followed and every image must load, with no console error and no request that fails
or leaves the machine. A second test breaks an image and a link and checks the crawl notices.

Screenshots of the index and of one page go to reports/browser/site-*.png.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest

from ltp_core.teaching.reports import run_reports

SHOTS = Path(__file__).resolve().parents[2] / "reports" / "browser"

PARAMS = 'output_dir = ""\nfail = False'

FIGURE = """import matplotlib.pyplot as plt
from tqdm.auto import tqdm
for _ in tqdm(range(3), desc="steps"):
    pass
plt.plot([0, 1, 2], [0, 1, 4])
plt.title("a figure")
plt.show()"""

METRICS = """import json, pathlib
claims = [{"claim": "2 > 1 & <ok>", "holds": True, "value": 2, "bound": "> 1"},
          {"claim": "the run did not fail", "holds": not fail, "value": fail, "bound": "== False"}]
pathlib.Path(output_dir, "metrics.json").write_text(json.dumps({"metrics": {"area": 1.5}, "claims": claims}))
assert not fail, "a claim failed\""""


def _notebook(folder: Path, stem: str, fail: bool) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS.replace("False", str(fail)))
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {stem}\n\nA figure, then the [metrics](#Metrics)."), params,
                nbformat.v4.new_code_cell(FIGURE), nbformat.v4.new_markdown_cell("## Metrics"),
                nbformat.v4.new_code_cell(METRICS)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / f"{stem}.ipynb")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    notebooks = root / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks, "01_figure", fail=False)
    _notebook(notebooks, "02_fails", fail=True)
    results = run_reports("default", output_dir=root / "out", notebooks_dir=notebooks, progress=False)
    assert results["01_figure"] == "ok" and results["02_fails"].startswith("failed: AssertionError")
    return root / "out"


def crawl(page, index: Path) -> tuple[list[str], set[str], int]:
    """Open `index`, follow every link to a page of the site, and return (problems, pages seen,
    images checked). A problem is an image that does not load, a link to a missing file or
    anchor, a console error, an uncaught exception, a failed request or one leaving file://."""
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"uncaught exception: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:100]} ({r.failure})"))
    page.on("request", lambda r: r.url.startswith(("file:", "data:"))
            or problems.append(f"request off the machine: {r.url}"))
    todo, seen, images = [index.as_uri()], set(), 0
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        page.goto(url, wait_until="load")
        for src, loaded in page.eval_on_selector_all(
                "img", "els => els.map(e => [e.currentSrc || e.src, e.complete && e.naturalWidth > 0])"):
            images += 1
            if not loaded:
                problems.append(f"{url}: an image does not load: {src[:80]}")
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
            target, _, fragment = href.partition("#")
            if not target.startswith("file:"):
                continue  # a link to the web: not followed here (no network), and not a part of the site
            path = Path(unquote(urlparse(target).path))
            if not path.is_file():
                problems.append(f"{url}: a link to a missing file: {href}")
            elif target == url and fragment and not page.evaluate(  # as a browser does: as is, then decoded
                    "f => !!(document.getElementById(f) || document.getElementById(decodeURIComponent(f)))", fragment):
                problems.append(f"{url}: a link to a missing anchor: #{fragment}")
            elif path.suffix == ".html":
                todo.append(target)
    return problems, seen, images


def test_every_link_resolves_and_every_image_loads(site, page):
    problems, seen, images = crawl(page, site / "index.html")
    assert problems == []
    pages = {Path(unquote(urlparse(u).path)).relative_to(site).as_posix() for u in seen}
    assert pages == {"index.html", "01_figure/01_figure.html", "02_fails.failed/02_fails.html"}
    assert images == 2  # one figure on each notebook's page (the failed run drew its figure too)
    page.goto((site / "index.html").as_uri())
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "site-index.png"), full_page=True)
    assert page.locator("td.not-held").all_inner_texts() == ["not held"]
    assert "2 > 1 & <ok>" in page.locator("section#\\30 1_figure").inner_text()  # escaped text reads as written
    page.goto((site / "01_figure" / "01_figure.html").as_uri())
    assert page.locator("progress").get_attribute("value") == "3"  # the tqdm bar, drawn from its saved state
    page.screenshot(path=str(SHOTS / "site-page.png"), full_page=True)


def test_the_crawl_reports_a_broken_image_and_a_dangling_link(site, page, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(site, broken)
    first = broken / "01_figure" / "01_figure.html"
    text = first.read_text()
    start = text.index('src="data:image/png;base64,') + len('src="data:image/png;base64,')
    first.write_text(text[:start] + "AAAA" + text[start + 200:])  # a PNG whose header is gone
    (broken / "02_fails.failed" / "02_fails.html").unlink()
    problems, _, _ = crawl(page, broken / "index.html")
    assert any("01_figure.html: an image does not load" in p for p in problems), problems
    assert any("a link to a missing file" in p and p.endswith("02_fails.failed/02_fails.html") for p in problems), \
        problems
