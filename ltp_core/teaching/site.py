"""The report site's HTML: each executed notebook as a self-contained page, and the index pages.

`ltp-reports` collects what to show (`reports.py`); this module only renders it. Every page
opens from the file system with no server and no network: figures are embedded as data URIs,
the CSS is inlined, and nothing is loaded from a CDN.
"""
from __future__ import annotations

import copy
import functools
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["Entry", "render_notebook", "run_time", "write_site_index", "write_seed_index"]

# nbconvert's `lab` template, less what it fetches from a CDN: require.js, the ipywidgets
# manager (widgets are drawn here from their saved state instead), MathJax (formulas stay as
# TeX source, readable to anyone who reads the paper) and mermaid.
_PAGE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style>
nav.ltp-site { font: 14px system-ui, sans-serif; padding: 0.5em 1em; border-bottom: 1px solid #ccc; }
.ltp-widget { display: flex; gap: 0.5em; align-items: center; font-family: var(--jp-code-font-family); }
</style>
{%- endblock extra_css -%}
{%- block body_header -%}
{{ super() }}
<nav class="ltp-site"><a href="{{ resources.ltp_index_href | escape_html }}">All reports</a>
 &middot; {{ resources.ltp_title | escape_html }}</nav>
{%- endblock body_header -%}
"""

_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _text(value: Any) -> str:
    return html.escape(str(value))


def _href(relative: str) -> str:
    """A relative file path as an attribute value: percent-encoded, then HTML-escaped."""
    return html.escape(quote(relative), quote=True)


def _widget_html(model_id: str, state: dict[str, Any], depth: int = 0) -> str | None:
    """Static HTML for a saved ipywidgets model (a tqdm bar is an HBox of HTML, FloatProgress,
    HTML), or None for a kind not drawn here."""
    model = state.get(model_id)
    if model is None or depth > 8:
        return None
    name, values = model.get("model_name", ""), model.get("state", {})
    if name in ("HBoxModel", "VBoxModel"):
        parts = [_widget_html(str(c).removeprefix("IPY_MODEL_"), state, depth + 1) for c in values.get("children", [])]
        if any(p is None for p in parts):
            return None
        direction = "row" if name == "HBoxModel" else "column"
        return f'<div class="ltp-widget" style="flex-direction: {direction}">{"".join(parts)}</div>'
    if name in ("HTMLModel", "HTMLMathModel", "LabelModel"):
        text = str(values.get("value", ""))
        if name != "LabelModel":  # the value is markup; keep its text only
            text = html.unescape(re.sub(r"<[^>]*>", "", text))
        return f"<span>{_text(text)}</span>"
    if name in ("FloatProgressModel", "IntProgressModel"):
        lo, hi, value = (float(values.get(k) or 0) for k in ("min", "max", "value"))
        label = f"<span>{_text(values['description'])}</span>" if values.get("description") else ""
        return f'{label}<progress max="{hi - lo:g}" value="{value - lo:g}">{value:g} / {hi:g}</progress>'
    return None


def _static_widgets(nb: Any) -> Any:
    """A copy of `nb` whose widget outputs are plain HTML drawn from the saved widget state (or
    their text fallback), and without the state itself."""
    nb = copy.deepcopy(nb)
    state = nb.metadata.pop("widgets", {}).get(_WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).pop(_WIDGET_VIEW, None)
            if view is not None:
                drawn = _widget_html(view.get("model_id", ""), state)
                if drawn is not None:
                    output["data"] = {"text/html": drawn}
    return nb


@functools.cache
def _exporter() -> Any:
    # One exporter a process: building one compiles its templates, a second or so each time.
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", embed_images=True, template_file="ltp_page.html.j2",
                        extra_loaders=[DictLoader({"ltp_page.html.j2": _PAGE_TEMPLATE})])


def render_notebook(ipynb: Path, page: Path, *, title: str, index_href: str, source_dir: Path | None = None) -> Path:
    """Write the executed notebook `ipynb` as the HTML page `page` (atomically).

    `index_href` is the page's link back to the index; `source_dir` is where a markdown cell's
    relative image paths are resolved (the folder the notebook ran in)."""
    import nbformat

    from ..io import atomic_write_bytes

    nb = _static_widgets(nbformat.read(ipynb, as_version=4))
    resources = {"metadata": {"name": title, "path": str(source_dir or ipynb.parent)},
                 "ltp_index_href": index_href, "ltp_title": title}
    body, _ = _exporter().from_notebook_node(nb, resources=resources)
    atomic_write_bytes(page, body.encode())
    return page


def run_time(ipynb: Path) -> float | None:
    """Seconds the notebook ran, as papermill recorded in it (None when it did not)."""
    try:
        duration = json.loads(ipynb.read_text())["metadata"]["papermill"]["duration"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(duration) if isinstance(duration, (int, float)) else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = v if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class Entry:
    """One notebook's row in the index. Hrefs are relative to the index; None where no file."""

    stem: str
    status: str  # "ok" or "failed: <reason>"
    claims: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    page: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # label -> href (executed notebook, metrics.json)
    note: str = ""  # where the claims come from, when not from this run
    last_good_page: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1a1a1a; margin: 2em auto;
       max-width: 68em; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.bound { white-space: nowrap; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.92em; }
.held { color: #116611; } .not-held, .failed { color: #b00020; font-weight: bold; } .ok { color: #116611; }
.note { color: #555; font-style: italic; }
"""


def _page(title: str, body: list[str]) -> bytes:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>{_text(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", *body,
                      "</body>", "</html>", ""]).encode()


def _claims_table(claims: list[dict[str, Any]]) -> list[str]:
    rows = ["<table class=\"claims\">", "<tr><th>claim</th><th>holds</th><th>value</th><th>bound</th></tr>"]
    for c in claims:
        held = bool(c.get("holds"))
        rows.append(f"<tr><td>{_text(c.get('claim', ''))}</td>"
                    f"<td class=\"{'held' if held else 'not-held'}\">{'held' if held else 'not held'}</td>"
                    f"<td class=\"num\">{_text(_value(c.get('value')))}</td>"
                    f"<td class=\"bound\">{_text(c.get('bound', ''))}</td></tr>")
    return rows + ["</table>"]


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
    if not scalars:
        return []
    rows = ["<table class=\"metrics\">", "<tr><th>metric</th><th>value</th></tr>"]
    rows += [f"<tr><td><code>{_text(k)}</code></td><td class=\"num\">{_text(_value(v))}</td></tr>"
             for k, v in scalars.items()]
    return rows + ["</table>"]


def _link(href: str | None, label: str) -> str:
    return f'<a href="{_href(href)}">{_text(label)}</a>' if href else ""


def write_site_index(path: Path, profile: str, entries: list[Entry]) -> Path:
    """`path` (index.html): a summary table, then per notebook its status, run time, links,
    claims (held or not) and scalar metrics."""
    from ..io import atomic_write_bytes

    n_ok = sum(e.ok for e in entries)
    claims = [c for e in entries if not e.note for c in e.claims]
    body = [f"<h1>Reports: profile <code>{_text(profile)}</code></h1>",
            f"<p>Made by <code>ltp-reports --profile {_text(profile)}</code>. {n_ok} of {len(entries)} "
            f"notebooks ran without error; {sum(bool(c.get('holds')) for c in claims)} of {len(claims)} "
            "claims held. Each notebook's page shows its code, text and figures as executed.</p>",
            '<table class="summary">',
            "<tr><th>notebook</th><th>status</th><th>claims held</th><th>run time</th><th>page</th></tr>"]
    for e in entries:
        held = sum(bool(c.get("holds")) for c in e.claims)
        count = (f"{held} of {len(e.claims)}" + (" (last good run)" if e.note else "")) if e.claims else "-"
        body.append(f"<tr><td><a href=\"#{_href(e.stem)}\">{_text(e.stem)}</a></td>"
                    f"<td class=\"{'ok' if e.ok else 'failed'}\">{'ok' if e.ok else 'failed'}</td>"
                    f"<td class=\"num\">{_text(count)}</td><td class=\"num\">{_duration(e.seconds)}</td>"
                    f"<td>{_link(e.page, 'page') or '-'}</td></tr>")
    body.append("</table>")
    for e in entries:
        body.append(f"<section id=\"{_text(e.stem)}\">")
        body.append(f"<h2>{_text(e.stem)} — <span class=\"{'ok' if e.ok else 'failed'}\">{_text(e.status)}</span></h2>")
        links = [_link(e.page, "the executed notebook as a page" if e.ok else "the failed run as a page")]
        links += [_link(href, label) for label, href in e.files.items()]
        links.append(_link(e.last_good_page, "the last good run's page"))
        body.append(f"<p>Run time: {_duration(e.seconds)}. " + " · ".join(x for x in links if x) + "</p>")
        if not e.ok and not e.page:
            body.append('<p class="note">No page: the run left no executed notebook to show.</p>')
        if e.note:
            body.append(f'<p class="note">{_text(e.note)}</p>')
        if e.claims:
            body += _claims_table(e.claims)
        body += _metrics_table(e.metrics)
        body.append("</section>")
    atomic_write_bytes(path, _page(f"Reports: {profile}", body))
    return path


def write_seed_index(path: Path, summaries: dict[str, dict[str, Any]], links: dict[str, dict[str, str]]) -> Path:
    """`path` (index.html) of seed sweeps: per notebook (`summaries`: {stem: its seed table's
    JSON}), the seeds each claim held and failed at, every metric's spread, and `links`
    ({stem: {label: href}}: the tables and each seed's page)."""
    from ..io import atomic_write_bytes

    body = ["<h1>Seed sweeps</h1>",
            "<p>Each notebook ran once per seed, with the command shown. A claim must hold at every seed.</p>",
            "<table>", "<tr><th>notebook</th><th>seeds</th><th>claims held at every seed</th></tr>"]
    for stem, data in summaries.items():
        n = len(data["claims"])
        steady = sum(not (r["failed_at"] or r["absent_at"]) for r in data["claims"]) if not data["missing_runs"] else 0
        body.append(f"<tr><td><a href=\"#{_href(stem)}\">{_text(stem)}</a></td>"
                    f"<td>{_text(' '.join(map(str, data['seeds'])))}</td>"
                    f"<td class=\"num {'ok' if steady == n else 'failed'}\">{steady} of {n}</td></tr>")
    body.append("</table>")
    for stem, data in summaries.items():
        bad = any(r["failed_at"] or r["absent_at"] for r in data["claims"]) or data["missing_runs"]
        body.append(f"<section id=\"{_text(stem)}\">")
        body.append(f"<h2>{_text(stem)} — <span class=\"{'failed' if bad else 'ok'}\">"
                    f"{'not every claim held at every seed' if bad else 'every claim held at every seed'}</span></h2>")
        body.append(f"<p>Made by <code>{_text(data['command'])}</code>. "
                    + " · ".join(_link(href, label) for label, href in links.get(stem, {}).items()) + "</p>")
        if data["missing_runs"]:
            body.append(f'<p class="failed">No metrics at seed(s) {_text(data["missing_runs"])}.</p>')
        body += ["<table>", "<tr><th>claim</th><th>held at seeds</th><th>failed at seeds</th><th>bound</th></tr>"]
        for r in data["claims"]:
            held, failed = " ".join(map(str, r["held_at"])), " ".join(map(str, r["failed_at"] + r["absent_at"]))
            body.append(f"<tr><td>{_text(r['claim'])}</td><td class=\"held\">{_text(held or '-')}</td>"
                        f"<td class=\"{'not-held' if failed else ''}\">{_text(failed or '-')}</td>"
                        f"<td>{_text(r['bound'])}</td></tr>")
        body += ["</table>", "<table>",
                 "<tr><th>metric</th><th>mean</th><th>std</th><th>min</th><th>max</th><th>n</th></tr>"]
        body += [f"<tr><td><code>{_text(r['metric'])}</code></td><td class=\"num\">{r['mean']:.4g}</td>"
                 f"<td class=\"num\">{r['std']:.2g}</td><td class=\"num\">{r['min']:.4g}</td>"
                 f"<td class=\"num\">{r['max']:.4g}</td><td class=\"num\">{r['n']}</td></tr>" for r in data["metrics"]]
        body += ["</table>", "</section>"]
    atomic_write_bytes(path, _page("Seed sweeps", body))
    return path
