"""`ltp-reports`: execute the notebooks with papermill under a profile and index the results.

    ltp-reports --profile {ci,default,full} [--only STEM ...] [-p NAME VALUE ...] [--output-dir DIR]
    ltp-reports --seeds 0-4 [--profile default] [--only STEM ...] [--output-dir DIR]

For each notebook `notebooks/<stem>.ipynb` (in teaching order) it injects the profile's
parameters from `notebooks/params/<profile>.yaml` (`default`: none, the notebook's own
defaults), then the `-p` overrides, and `output_dir`; it writes `DIR/<stem>/<stem>.ipynb`
and `DIR/<stem>/metrics.json` (DIR defaults to `reports/<profile>/`), `DIR/<stem>/<stem>.html` (the
executed notebook as a page with its figures), and two indexes of every notebook's claims, key
metrics and run time: `DIR/README.md` and `DIR/index.html`, the site's front page. The pages open
from the file system, with no server and no network.

Each notebook runs in a scratch folder first; only a successful run replaces
`DIR/<stem>/`, so a failure never destroys the last good report (the failed run is kept
as `DIR/<stem>.failed/`). The command exits 1 naming every notebook that failed.

With `--seeds`, each notebook runs once per seed (DIR defaults to `reports/seeds/`; the executed
copies go to `DIR/runs/<profile>/seed-<n>/`) and `DIR/<stem>.md` and `DIR/<stem>.json` give, for
every numeric metric, its mean, standard deviation, minimum and maximum over the seeds, and for
every claim the seeds at which it held; `DIR/index.html` shows every table in DIR (earlier
sweeps' too) and links each seed's page. The command exits 1 when any claim failed at any seed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from .notebook import PROFILE_ENV, load_profile
from .site import Entry, render_notebook, run_time, write_seed_index, write_site_index

__all__ = ["main", "find_notebooks", "notebook_parameters", "run_reports", "parse_seeds", "seed_table",
           "run_seed_sweep", "write_seed_site"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class ReportError(Exception):
    """A usage error: printed as one line, exit status 2."""


def find_notebooks(notebooks_dir: Path) -> dict[str, Path]:
    """{stem: path} of `NN_name.ipynb` files in `notebooks_dir`, in teaching (name) order."""
    return {p.stem: p for p in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))}


def notebook_parameters(path: Path) -> dict[str, str]:
    """{name: default's source text} for each top-level assignment in the notebook's cell tagged
    `parameters` ({} when it has none).

    Read with Python's own parser, not papermill's `inspect_notebook`, which skips every line
    holding two '=' (a comment such as `# T_l = T0 * Var(|w_l|)` is enough) and would reject
    those parameters as unknown.
    """
    import ast

    import nbformat

    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            try:
                tree = ast.parse(cell.source)
            except SyntaxError as e:
                raise ReportError(f"{path}: the parameters cell is not plain Python (line {e.lineno}: {e.msg})"
                                  ) from None
            declared = {}
            for node in tree.body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                    for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                        if isinstance(target, ast.Name):
                            declared[target.id] = ast.get_source_segment(cell.source, node.value)
            return declared
    return {}


def _parse_overrides(pairs: list[list[str]]) -> dict[str, Any]:
    # Values are YAML: `-p seed 123` is an int, `-p lambdas "[0.1, 1]"` a list, `-p name abc` a
    # string, `-p lr 1e-3` a float (YAML 1.2's reading, see config.yaml_load).
    from ..engine.config import yaml_load

    overrides = {}
    for name, value in pairs:
        try:
            overrides[name] = yaml_load(value)
        except yaml.YAMLError as e:
            raise ReportError(f"-p {name}: {value!r} is not a YAML value ({str(e).splitlines()[0]})") from None
    return overrides


def _resolve_runs(profile: str, only: list[str] | None, overrides: dict[str, Any],
                  notebooks_dir: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    notebooks = find_notebooks(notebooks_dir)
    if not notebooks:
        raise ReportError(f"no notebooks (NN_name.ipynb) in {notebooks_dir}")
    try:
        profile_params = load_profile(profile, notebooks_dir)
    except ValueError as e:
        raise ReportError(str(e)) from None
    stray = sorted(set(profile_params) - set(notebooks))
    if stray:
        raise ReportError(f"profile {profile!r} names unknown notebooks {stray}; valid: {sorted(notebooks)}")
    if only:
        unknown = [s for s in only if s not in notebooks]
        if unknown:
            raise ReportError(f"unknown notebook(s) {unknown}; valid: {sorted(notebooks)}")
        notebooks = {s: notebooks[s] for s in notebooks if s in only}
    runs = {}
    for stem, path in notebooks.items():
        declared = notebook_parameters(path)
        params = {**profile_params.get(stem, {}), **overrides}
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise ReportError(f"unknown parameter(s) {unknown} for notebook {stem}; "
                              f"valid: {sorted(n for n in declared if n != 'output_dir')}")
        runs[stem] = (path, params)
    return runs


def _claims_and_metrics(metrics_path: Path) -> tuple[list[dict], dict[str, Any]]:
    try:
        data = json.loads(metrics_path.read_text())
        return data.get("claims", []), data.get("metrics", {})
    except (OSError, json.JSONDecodeError):
        return [], {}


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (a '|' would end the cell)."""
    return str(text).replace("|", "\\|")


def _format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = json.dumps(v) if not isinstance(v, str) else v
    return _cell(text if len(text) <= 60 else text[:57] + "...")


def _entry(output_dir: Path, stem: str, status: str) -> Entry:
    """What the indexes show of one notebook. A failed run's claims are its own when it wrote
    metrics.json (a claim that failed), else the last good run's, said so."""
    good, failed = output_dir / stem, output_dir / f"{stem}.failed"
    run = good if status == "ok" else failed

    def href(path: Path) -> str | None:
        return path.relative_to(output_dir).as_posix() if path.is_file() else None

    claims, metrics = _claims_and_metrics(run / "metrics.json")
    note = ""
    if status != "ok" and href(run / "metrics.json") is None and (good / "metrics.json").is_file():
        claims, metrics = _claims_and_metrics(good / "metrics.json")
        note = "This run wrote no metrics.json; the claims and metrics shown are the last good run's."
    files = {"executed notebook": href(run / f"{stem}.ipynb"), "metrics.json": href(run / "metrics.json")}
    return Entry(stem, status, claims, metrics, seconds=run_time(run / f"{stem}.ipynb"),
                 page=href(run / f"{stem}.html"), files={label: h for label, h in files.items() if h}, note=note,
                 last_good_page=href(good / f"{stem}.html") if status != "ok" else None)


def write_index(output_dir: Path, profile: str, results: dict[str, str]) -> Path:
    """`output_dir/README.md` and `output_dir/index.html`: per notebook its status, run time,
    claims and scalar metrics (the HTML one links each notebook's page)."""
    from ..io import atomic_write_bytes

    entries = [_entry(output_dir, stem, status) for stem, status in results.items()]
    lines = [f"# Reports: profile `{profile}`", "",
             f"Made by `ltp-reports --profile {profile}`. Each folder holds the executed notebook, "
             "its `metrics.json` and its HTML page; open `index.html` in a browser for the site.", ""]
    for e in entries:
        lines += [f"## {e.stem} — {e.status}", ""]
        if e.seconds is not None:
            lines += [f"Run time: {e.seconds:.1f} s.", ""]
        if not e.ok:
            lines += [f"Failed: see `{e.stem}.failed/{e.stem}.ipynb`. "
                      + ("The last good run is shown below." if e.note else ""), ""]
        if e.claims:
            lines += ["| claim | holds | value | bound |", "|---|---|---|---|"]
            lines += [f"| {_cell(c['claim'])} | {'yes' if c['holds'] else '**no**'} | {_format_value(c.get('value'))} "
                      f"| {_cell(c.get('bound', ''))} |" for c in e.claims]
            lines.append("")
        scalars = {k: v for k, v in e.metrics.items() if isinstance(v, (int, float, str, bool))}
        if scalars:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| `{k}` | {_format_value(v)} |" for k, v in scalars.items()]
            lines.append("")
    path = output_dir / "README.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    write_site_index(output_dir / "index.html", profile, entries)
    return path


def _render_page(folder: Path, stem: str, notebooks_dir: Path) -> None:
    """`folder/<stem>.html` from the executed notebook there, if any. A page that cannot be
    made is a warning, never the loss of the run it shows."""
    ipynb = folder / f"{stem}.ipynb"
    if not ipynb.is_file():
        return
    try:
        render_notebook(ipynb, folder / f"{stem}.html", title=stem, index_href="../index.html",
                        source_dir=notebooks_dir)
    except Exception as e:  # nbconvert's and jinja's errors share no narrower base class
        print(f"ltp-reports: warning: no HTML page for {stem}: {type(e).__name__}: {e}", file=sys.stderr)


def run_reports(profile: str, only: list[str] | None = None, overrides: dict[str, Any] | None = None,
                output_dir: Path | None = None, notebooks_dir: Path | None = None,
                progress: bool = True) -> dict[str, str]:
    """Execute the selected notebooks; returns {stem: "ok" | "failed: <reason>"}."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebooks_dir = Path(notebooks_dir or REPO_ROOT / "notebooks").resolve()
    output_dir = Path(output_dir or REPO_ROOT / "reports" / profile).resolve()
    runs = _resolve_runs(profile, only, overrides or {}, notebooks_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, str] = {}
    env_before = os.environ.get(PROFILE_ENV)
    os.environ[PROFILE_ENV] = profile  # the kernel inherits it: in-notebook profile lookups agree
    try:
        for stem, (path, params) in tqdm(runs.items(), desc=f"notebooks ({profile})", disable=not progress):
            scratch = output_dir / f".{stem}.running"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            try:
                papermill.execute_notebook(
                    str(path), str(scratch / f"{stem}.ipynb"), parameters={**params, "output_dir": str(scratch)},
                    kernel_name="python3", cwd=str(notebooks_dir), progress_bar=False, log_output=False)
                if not (scratch / "metrics.json").is_file():
                    raise RuntimeError("the notebook wrote no metrics.json")
            except (PapermillExecutionError, RuntimeError) as e:
                reason = f"{e.ename}: {e.evalue}" if isinstance(e, PapermillExecutionError) else str(e)
                _render_page(scratch, stem, notebooks_dir)
                failed = output_dir / f"{stem}.failed"
                shutil.rmtree(failed, ignore_errors=True)
                scratch.rename(failed)
                results[stem] = f"failed: {reason.splitlines()[0] if reason else 'error'}"
                continue
            _render_page(scratch, stem, notebooks_dir)
            final = output_dir / stem
            old = output_dir / f".{stem}.old"
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            scratch.rename(final)
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(output_dir / f"{stem}.failed", ignore_errors=True)
            results[stem] = "ok"
    finally:
        if env_before is None:
            os.environ.pop(PROFILE_ENV, None)
        else:
            os.environ[PROFILE_ENV] = env_before
    write_index(output_dir, profile, results)
    return results


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,2,7' and '0-2,9' work too. At least two distinct seeds."""
    seeds: list[int] = []
    for part in str(text).split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise ReportError(f"--seeds {text!r}: expected a range like 0-4 or a list like 0,1,2 of "
                              "non-negative integers") from None
        if last < first:
            raise ReportError(f"--seeds {text!r}: the range {part.strip()} runs backwards")
        seeds += range(first, last + 1)
    if any(s < 0 for s in seeds) or len(set(seeds)) < 2:
        raise ReportError(f"--seeds {text!r}: give at least two distinct non-negative seeds, e.g. 0-4")
    return sorted(set(seeds))


def _numbers(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a metrics mapping, nested keys joined by '.' (booleans excluded)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_numbers(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def seed_table(stem: str, per_seed: dict[int, Path | None], profile: str = "default") -> tuple[str, dict[str, Any]]:
    """Markdown and JSON summaries of one notebook run at several seeds.

    `per_seed` maps each seed to its metrics.json (None when the run wrote none). Metrics are the
    numeric leaves of "metrics" other than `seed`; claims are matched by their text."""
    import statistics

    seeds = sorted(per_seed)
    values: dict[str, dict[int, float]] = {}
    claims: dict[str, dict[int, dict[str, Any]]] = {}
    missing = [s for s in seeds if per_seed[s] is None or not Path(per_seed[s]).is_file()]
    for seed in seeds:
        if seed in missing:
            continue
        found, metrics = _claims_and_metrics(Path(per_seed[seed]))
        for name, v in _numbers(metrics).items():
            if name != "seed":
                values.setdefault(name, {})[seed] = v
        for c in found:
            claims.setdefault(c["claim"], {})[seed] = c
    rows = []
    for name, by_seed in values.items():
        xs = list(by_seed.values())
        rows.append({"metric": name, "n": len(xs), "mean": statistics.fmean(xs),
                     "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "min": min(xs), "max": max(xs),
                     "per_seed": {str(k): v for k, v in by_seed.items()}})
    claim_rows = []
    for text, by_seed in claims.items():
        held = [s for s in seeds if s in by_seed and by_seed[s]["holds"]]
        failed = [s for s in seeds if s in by_seed and not by_seed[s]["holds"]]
        absent = [s for s in seeds if s not in by_seed and s not in missing]
        claim_rows.append({"claim": text, "held_at": held, "failed_at": failed, "absent_at": absent,
                           "bound": next(iter(by_seed.values())).get("bound", ""),
                           "values": {str(s): c.get("value") for s, c in by_seed.items()}})
    data = {"notebook": stem, "profile": profile, "seeds": seeds, "missing_runs": missing,
            "claims": claim_rows, "metrics": rows,
            "command": f"ltp-reports --seeds {','.join(map(str, seeds))} --profile {profile} --only {stem}"}
    all_held = not missing and all(not r["failed_at"] and not r["absent_at"] for r in claim_rows)
    lines = [f"# {stem}: {len(seeds)} seeds, profile `{profile}`", "",
             f"Made by `{data['command']}`. Seeds: {', '.join(map(str, seeds))}.",
             "Every claim held at every seed." if all_held else "**Not every claim held at every seed** (see below).",
             ""]
    if missing:
        lines += [f"No metrics.json at seed(s) {missing}: the run stopped before its last cell.", ""]
    lines += ["| claim | held at seeds | failed at seeds | bound | values (seed: value) |", "|---|---|---|---|---|"]
    for r in claim_rows:
        vals = ", ".join(f"{s}: {_format_value(v)}" for s, v in r["values"].items())
        lines.append(f"| {_cell(r['claim'])} | {' '.join(map(str, r['held_at'])) or '-'} | "
                     f"{' '.join(map(str, r['failed_at'] + r['absent_at'])) or '-'} | {_cell(r['bound'])} | {vals} |")
    lines += ["", "| metric | mean | std | min | max | n |", "|---|---|---|---|---|---|"]
    lines += [f"| `{_cell(r['metric'])}` | {r['mean']:.4g} | {r['std']:.2g} | {r['min']:.4g} | {r['max']:.4g} "
              f"| {r['n']} |" for r in rows]
    return "\n".join(lines) + "\n", data


def run_seed_sweep(seeds: list[int], profile: str = "default", only: list[str] | None = None,
                   overrides: dict[str, Any] | None = None, output_dir: Path | None = None,
                   notebooks_dir: Path | None = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run the selected notebooks at every seed and write `<output_dir>/<stem>.md` and `.json`
    (see `seed_table`); returns {stem: the JSON summary}."""
    from ..io import atomic_write_bytes, standard_json

    if "seed" in (overrides or {}):
        raise ReportError("give the seeds with --seeds, not -p seed")
    output_dir = Path(output_dir or REPO_ROOT / "reports" / "seeds").resolve()
    runs_dir = output_dir / "runs" / profile
    stems = list(_resolve_runs(profile, only, overrides or {}, Path(notebooks_dir or REPO_ROOT / "notebooks")))
    per_stem: dict[str, dict[int, Path | None]] = {stem: {} for stem in stems}
    for seed in seeds:
        results = run_reports(profile, stems, {**(overrides or {}), "seed": seed}, runs_dir / f"seed-{seed}",
                              notebooks_dir, progress)
        for stem, status in results.items():
            folder = runs_dir / f"seed-{seed}" / (stem if status == "ok" else f"{stem}.failed")
            per_stem[stem][seed] = folder / "metrics.json" if (folder / "metrics.json").is_file() else None
    summaries = {}
    for stem, per_seed in per_stem.items():
        text, data = seed_table(stem, per_seed, profile)
        atomic_write_bytes(output_dir / f"{stem}.md", text.encode())
        atomic_write_bytes(output_dir / f"{stem}.json", standard_json(data))
        summaries[stem] = data
    write_seed_site(output_dir)
    return summaries


def write_seed_site(output_dir: Path) -> Path:
    """`output_dir/index.html` over every seed table in `output_dir` (earlier sweeps' too, as
    sweeps often run a few notebooks at a time), linking each seed's page where it exists."""
    summaries: dict[str, dict[str, Any]] = {}
    links: dict[str, dict[str, str]] = {}
    for table in sorted(output_dir.glob("[0-9][0-9]_*.json")):
        try:
            data = json.loads(table.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or not {"notebook", "seeds", "claims", "metrics", "missing_runs"} <= set(data):
            continue
        stem = data["notebook"]
        summaries[stem] = data
        links[stem] = {label: name for label, name in (("table", f"{stem}.md"), ("JSON", f"{stem}.json"))
                       if (output_dir / name).is_file()}
        for seed in data["seeds"]:
            runs = output_dir / "runs" / str(data.get("profile", "default")) / f"seed-{seed}"
            # a run that succeeds removes `<stem>.failed`: one still there is the latest run at that seed
            for folder, label in ((f"{stem}.failed", f"seed {seed} (failed)"), (stem, f"seed {seed}")):
                if (runs / folder / f"{stem}.html").is_file():
                    links[stem][label] = (runs / folder / f"{stem}.html").relative_to(output_dir).as_posix()
                    break
    return write_seed_index(output_dir / "index.html", summaries, links)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltp-reports", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="default",
                   help="ci (seconds, CPU), default (the notebooks' own defaults), full (GPU, real data)")
    p.add_argument("--seeds", metavar="SEEDS",
                   help="run each notebook at these seeds (e.g. 0-4) and write a table per notebook to "
                        "DIR/<stem>.md (DIR defaults to reports/seeds/)")
    p.add_argument("--only", nargs="+", metavar="STEM", help="run only these notebooks, e.g. 02_toy_mlp")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a parameter (VALUE read as YAML), applied after the profile")
    p.add_argument("--output-dir", type=Path, help="where reports go (default reports/<profile>/)")
    p.add_argument("--notebooks-dir", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = _parse_overrides(args.parameter)
        if "output_dir" in overrides:
            raise ReportError("set the output folder with --output-dir, not -p output_dir")
        if args.seeds is not None:
            summaries = run_seed_sweep(parse_seeds(args.seeds), args.profile, args.only, overrides,
                                       args.output_dir, args.notebooks_dir)
            out = Path(args.output_dir or REPO_ROOT / "reports" / "seeds")
            bad = 0
            for stem, data in summaries.items():
                failed = [r for r in data["claims"] if r["failed_at"] or r["absent_at"]]
                bad += bool(failed or data["missing_runs"])
                state = "every claim held at every seed" if not (failed or data["missing_runs"]) else \
                    f"{len(failed)} claim(s) failed at some seed" + (
                        f", no metrics at seeds {data['missing_runs']}" if data["missing_runs"] else "")
                print(f"{stem}: {state}; table: {out / (stem + '.md')}")
            print(f"site: {out / 'index.html'}")
            return 1 if bad else 0
        results = run_reports(args.profile, args.only, overrides, args.output_dir, args.notebooks_dir)
    except ReportError as e:
        print(f"ltp-reports: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output_dir or REPO_ROOT / "reports" / args.profile)
    failed = {s: r for s, r in results.items() if r != "ok"}
    for stem, reason in failed.items():
        print(f"ltp-reports: notebook {stem} {reason} (executed copy: {out / (stem + '.failed')})", file=sys.stderr)
    print(f"{len(results) - len(failed)} of {len(results)} notebooks ok; index: {out / 'README.md'}; "
          f"site: {out / 'index.html'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
