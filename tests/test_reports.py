"""The papermill runner `ltp-reports`, on two tiny notebooks made in a temporary folder, and
the parameters of the suite's own notebooks."""
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import papermill
import pytest

from ltp_core.teaching.reports import (
    REPO_ROOT,
    ReportError,
    _resolve_runs,
    find_notebooks,
    main,
    notebook_parameters,
    write_seed_site,
)

NOTEBOOKS = REPO_ROOT / "notebooks"

PARAMS = """seed = 0
scale = 1.0  # a factor (1.0 = unchanged)
output_dir = ""
from ltp_core.teaching.notebook import profile_parameters
globals().update(profile_parameters("{stem}"))"""

BODY = """from ltp_core.teaching.notebook import Claims
claims = Claims()
claims.check("scale is positive", scale, ">", 0)
claims.write_metrics({{"seed": seed, "scale": scale, "stem": "{stem}"}}, output_dir, "{stem}")
print(claims.report())"""


def _notebook(path, stem):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS.format(stem=stem))
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {stem}"), params, nbformat.v4.new_code_cell(BODY.format(stem=stem))]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path / f"{stem}.ipynb")


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    (folder / "params").mkdir(parents=True)
    _notebook(folder, "01_first")
    _notebook(folder, "02_second")
    (folder / "params" / "ci.yaml").write_text("01_first:\n  scale: 0.5\n")
    (folder / "params" / "full.yaml").write_text("02_second:\n  scale: 3\n")
    return folder


def _metrics(out, stem):
    return json.loads((out / stem / "metrics.json").read_text())


class _Links(HTMLParser):
    """Every href and src in a page."""

    def __init__(self):
        super().__init__()
        self.targets = []

    def handle_starttag(self, tag, attrs):
        self.targets += [value for name, value in attrs if name in ("href", "src") and value]


def _local_targets(page):
    from urllib.parse import unquote

    parser = _Links()
    parser.feed(page.read_text())
    return [page.parent / unquote(t.partition("#")[0]) for t in parser.targets
            if not t.startswith(("#", "data:")) and t.partition("#")[0]]


def test_runs_profile_with_overrides_and_writes_index(notebooks, tmp_path):
    out = tmp_path / "out"
    code = main(["--profile", "ci", "-p", "seed", "123", "--output-dir", str(out), "--notebooks-dir", str(notebooks)])
    assert code == 0
    first, second = _metrics(out, "01_first"), _metrics(out, "02_second")
    assert first["metrics"] == {"seed": 123, "scale": 0.5, "stem": "01_first"}
    assert second["metrics"]["scale"] == 1.0 and second["metrics"]["seed"] == 123
    assert first["claims"][0]["holds"] is True
    assert (out / "01_first" / "01_first.ipynb").is_file()
    index = (out / "README.md").read_text()
    assert "01_first" in index and "scale is positive" in index and "`scale` | 0.5" in index


def test_only_selects_notebooks(notebooks, tmp_path):
    out = tmp_path / "out"
    assert main(["--profile", "full", "--only", "02_second", "--output-dir", str(out),
                 "--notebooks-dir", str(notebooks)]) == 0
    assert _metrics(out, "02_second")["metrics"]["scale"] == 3
    assert not (out / "01_first").exists()


def test_failed_notebook_is_named_and_last_good_report_kept(notebooks, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--only", "01_first", "--output-dir", str(out), "--notebooks-dir", str(notebooks)]
    assert main(args) == 0
    assert main(args + ["-p", "scale", "-1"]) == 1  # the claim fails -> AssertionError in the notebook
    err = capsys.readouterr().err
    assert "01_first" in err and "AssertionError" in err
    assert _metrics(out, "01_first")["metrics"]["scale"] == 1.0  # the good report survives
    assert (out / "01_first.failed" / "01_first.ipynb").is_file()
    assert "failed" in (out / "README.md").read_text()
    index = (out / "index.html").read_text()  # the failed run's own claims, its page, the last good page
    assert '<td class="not-held">not held</td>' in index and "(last good run)" not in index
    assert 'href="01_first.failed/01_first.html"' in index and 'href="01_first/01_first.html"' in index
    # A run that stops before writing metrics.json: the index shows the last good run's claims, said so.
    nb = nbformat.read(notebooks / "01_first.ipynb", as_version=4)
    nb.cells[2].source = "raise ValueError('<no metrics>')\n" + nb.cells[2].source
    nbformat.write(nb, notebooks / "01_first.ipynb")
    assert main(args) == 1
    index = (out / "index.html").read_text()
    assert "failed: ValueError: &lt;no metrics&gt;" in index and "the last good run&#x27;s" in index
    assert '<td class="held">held</td>' in index and "1 of 1 (last good run)" in index
    assert all(t.is_file() for t in _local_targets(out / "index.html"))


@pytest.mark.parametrize("args, message", [
    (["--profile", "nope"], "unknown profile 'nope'; valid profiles: ['ci', 'default', 'full']"),
    (["--only", "03_missing"], "unknown notebook(s) ['03_missing']; valid: ['01_first', '02_second']"),
    (["-p", "sede", "1"], "unknown parameter(s) ['sede'] for notebook 01_first; valid: ['scale', 'seed']"),
])
def test_bad_input_is_a_clear_error(notebooks, tmp_path, capsys, args, message):
    assert main(args + ["--output-dir", str(tmp_path / "o"), "--notebooks-dir", str(notebooks)]) == 2
    assert message in capsys.readouterr().err


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "ltp_core.teaching.reports", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "--profile" in result.stdout and "--only" in result.stdout


def test_parameters_are_read_as_python_reads_them(tmp_path):
    cell = nbformat.v4.new_code_cell(
        'import math\nseed = 0  # the seed (0 = the default)\nsizes: list = [\n    1, 2,  # a = b\n]\n'
        'a = b = 2.5\nprint(seed)\nglobals().update({})')
    cell.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("seed = 9"), cell]
    nbformat.write(nb, tmp_path / "n.ipynb")
    assert notebook_parameters(tmp_path / "n.ipynb") == {"seed": "0", "sizes": "[\n    1, 2,  # a = b\n]",
                                                         "a": "2.5", "b": "2.5"}
    cell.source = "%matplotlib inline\nseed = 0"
    nbformat.write(nb, tmp_path / "n.ipynb")
    with pytest.raises(ReportError, match="not plain Python"):
        notebook_parameters(tmp_path / "n.ipynb")
    nb.cells = nb.cells[:1]
    nbformat.write(nb, tmp_path / "n.ipynb")
    assert notebook_parameters(tmp_path / "n.ipynb") == {}


@pytest.mark.parametrize("stem", list(find_notebooks(NOTEBOOKS)))
def test_papermill_reads_every_parameter_of_the_suites_notebooks(stem):
    # papermill skips a parameters-cell line with two '=' (and then warns "Passed unknown
    # parameter" when a run sets it): every parameter must be one it reads.
    path = NOTEBOOKS / f"{stem}.ipynb"
    declared = notebook_parameters(path)
    assert {"seed", "output_dir"} <= set(declared)
    assert set(papermill.inspect_notebook(str(path))) == set(declared)


@pytest.mark.parametrize("profile", ["ci", "default", "full"])
def test_every_profile_sets_only_parameters_the_notebooks_declare(profile):
    runs = _resolve_runs(profile, None, {}, NOTEBOOKS)
    assert list(runs) == list(find_notebooks(NOTEBOOKS)) and len(runs) == 8
    assert all(isinstance(path, Path) for path, _ in runs.values())


def test_a_claim_on_nan_or_a_tensor_fails_or_holds_and_never_raises(tmp_path):
    import numpy as np
    import torch

    from ltp_core.teaching.notebook import Claims

    claims = Claims()
    assert claims.check("accuracy above chance", float("nan"), ">=", 0.5) is False
    assert claims.check("tensor sparsity", torch.tensor(0.93), ">=", 0.9) is True
    assert claims.check("numpy gap", np.float64(0.02), "<=", torch.tensor(0.01)) is False
    assert [c["value"] for c in claims.items][0] == "nan"
    with pytest.raises(AssertionError, match="2 claim"):
        claims.write_metrics({"loss": float("inf")}, tmp_path, "nb")
    metrics = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["metrics"]["loss"] == "inf"


def test_seed_sweep_tables_every_metric_and_the_seeds_each_claim_held_at(notebooks, tmp_path, capsys):
    # The body's claim "scale is positive" fails when scale <= 0; make it depend on the seed.
    path = notebooks / "01_first.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace('scale, ">", 0', 'scale - seed, ">", 0')
    nbformat.write(nb, path)
    out = tmp_path / "seeds"
    code = main(["--seeds", "0-2", "--only", "01_first", "-p", "scale", "1.5", "--output-dir", str(out),
                 "--notebooks-dir", str(notebooks)])
    assert code == 1  # seed 2: 1.5 - 2 <= 0, the claim fails there
    data = json.loads((out / "01_first.json").read_text())
    claim = data["claims"][0]
    assert claim["held_at"] == [0, 1] and claim["failed_at"] == [2] and data["seeds"] == [0, 1, 2]
    scale = next(r for r in data["metrics"] if r["metric"] == "scale")
    assert scale["mean"] == 1.5 and scale["std"] == 0.0 and scale["n"] == 3
    assert not any(r["metric"] == "seed" for r in data["metrics"])
    table = (out / "01_first.md").read_text()
    assert "Not every claim held" in table and "| scale is positive | 0 1 | 2 |" in table
    assert "ltp-reports --seeds 0,1,2 --profile default --only 01_first" in table
    assert "01_first: 1 claim(s) failed" in capsys.readouterr().out
    assert (out / "runs" / "default" / "seed-2" / "01_first.failed" / "metrics.json").is_file()
    site = (out / "index.html").read_text()  # the tables, and each seed's page
    assert '<td class="held">0 1</td><td class="not-held">2</td>' in site
    assert 'href="runs/default/seed-2/01_first.failed/01_first.html">seed 2 (failed)' in site
    assert all(t.is_file() for t in _local_targets(out / "index.html")) and len(_local_targets(out / "index.html")) == 5
    # a sweep of other notebooks later keeps this one's table in the index
    (out / "02_second.json").write_text(json.dumps({**data, "notebook": "02_second"}))
    write_seed_site(out)
    site = (out / "index.html").read_text()
    assert '<section id="01_first">' in site and '<section id="02_second">' in site


@pytest.mark.parametrize("text, message", [("4-0", "runs backwards"), ("1", "at least two distinct"),
                                           ("a,b", "expected a range"), ("0-", "expected a range")])
def test_bad_seed_lists_are_refused_by_name(text, message):
    from ltp_core.teaching.reports import parse_seeds

    with pytest.raises(ReportError, match=message):
        parse_seeds(text)


def test_site_index_shows_claims_run_time_and_pages_and_escapes_text(notebooks, tmp_path):
    # 02_second makes a claim that fails, with markup in its text: the notebook fails after
    # writing metrics.json, and its row must say so, with its partial page.
    path = notebooks / "02_second.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace(
        "claims.write_metrics", 'claims.check("<b>bold</b> & x < 0", scale, "<", 0)\nclaims.write_metrics')
    nbformat.write(nb, path)
    out = tmp_path / "out"
    assert main(["--profile", "ci", "--output-dir", str(out), "--notebooks-dir", str(notebooks)]) == 1
    index = (out / "index.html").read_text()
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; x &lt; 0" in index and "<b>bold</b>" not in index
    first, second = index.split('<section id="01_first">')[1].split('<section id="02_second">')
    assert '<td class="held">held</td>' in first and "not held" not in first
    assert "failed: AssertionError: 1 claim(s) failed" in second
    assert '<td class="held">held</td>' in second and '<td class="not-held">not held</td>' in second
    assert 'href="01_first/01_first.html"' in index and 'href="02_second.failed/02_second.html"' in index
    assert re.search(r"<td class=\"num\">\d+\.\d s</td>", index)  # a run time
    assert '<td class="num">0.5</td>' in first  # the metric `scale` under the ci profile
    targets = _local_targets(out / "index.html")
    assert {out / "01_first" / "01_first.html", out / "02_second.failed" / "metrics.json"} <= set(targets)
    assert all(t.is_file() for t in targets), [t for t in targets if not t.is_file()]
    for page in (out / "01_first" / "01_first.html", out / "02_second.failed" / "02_second.html"):
        text = page.read_text()
        assert "<script" not in text and "scale is positive" in text  # no CDN script; the output is there
        assert all(t.is_file() for t in _local_targets(page)) and 'href="../index.html"' in text
    assert "index.html" in (out / "README.md").read_text()


def test_widget_outputs_are_drawn_from_their_saved_state_without_a_cdn(tmp_path):
    from ltp_core.teaching.site import render_notebook

    def model(name, **state):
        return {"model_name": name, "model_module": "@jupyter-widgets/controls", "state": state}

    nb = nbformat.v4.new_notebook()
    bar, other = nbformat.v4.new_code_cell("bar"), nbformat.v4.new_code_cell("other")
    view = "application/vnd.jupyter.widget-view+json"
    bar.outputs = [nbformat.v4.new_output("display_data", {view: {"model_id": "box"}, "text/plain": "0%|"})]
    other.outputs = [nbformat.v4.new_output("display_data", {view: {"model_id": "slider"}, "text/plain": "IntSlider"})]
    nb.cells = [bar, other]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {
        "box": model("HBoxModel", children=["IPY_MODEL_left", "IPY_MODEL_progress", "IPY_MODEL_right"]),
        "left": model("HTMLModel", value="epochs: 100%"), "right": model("HTMLModel", value="5/5 [00:01&lt;00:00]"),
        "progress": model("FloatProgressModel", min=0, max=5.0, value=5.0),
        "slider": model("IntSliderModel", value=3)}}}
    nbformat.write(nb, tmp_path / "w.ipynb")
    page = render_notebook(tmp_path / "w.ipynb", tmp_path / "w.html", title="w", index_href="index.html")
    text = page.read_text()
    assert '<progress max="5" value="5">' in text and "epochs: 100%" in text and "5/5 [00:01&lt;00:00]" in text
    assert "IntSlider" in text and "0%|" not in text  # an unknown widget falls back to its text
    assert "<script" not in text and "unpkg" not in text and "cdnjs" not in text
