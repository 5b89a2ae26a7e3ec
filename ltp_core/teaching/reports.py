"""`ltp-reports`: execute the notebooks with papermill under a profile and index the results.

    ltp-reports --profile {ci,default,full} [--only STEM ...] [-p NAME VALUE ...] [--output-dir DIR]

For each notebook `notebooks/<stem>.ipynb` (in teaching order) it injects the profile's
parameters from `notebooks/params/<profile>.yaml` (`default`: none, the notebook's own
defaults), then the `-p` overrides, and `output_dir`; it writes `DIR/<stem>/<stem>.ipynb`
and `DIR/<stem>/metrics.json` (DIR defaults to `reports/<profile>/`) and `DIR/README.md`,
an index of every notebook's claims and key metrics.

Each notebook runs in a scratch folder first; only a successful run replaces
`DIR/<stem>/`, so a failure never destroys the last good report (the failed run is kept
as `DIR/<stem>.failed/`). The command exits 1 naming every notebook that failed.
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

__all__ = ["main", "find_notebooks", "notebook_parameters", "run_reports"]

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


def write_index(output_dir: Path, profile: str, results: dict[str, str]) -> Path:
    """`output_dir/README.md`: per notebook its status, claims and scalar metrics."""
    lines = [f"# Reports: profile `{profile}`", "",
             f"Made by `ltp-reports --profile {profile}`. Each folder holds the executed notebook "
             "and its `metrics.json`.", ""]
    for stem, status in results.items():
        lines += [f"## {stem} — {status}", ""]
        claims, metrics = _claims_and_metrics(output_dir / stem / "metrics.json")
        if status != "ok":
            lines += [f"Failed: see `{stem}.failed/{stem}.ipynb`. "
                      + ("The last good run is shown below." if claims or metrics else ""), ""]
        if claims:
            lines += ["| claim | holds | value | bound |", "|---|---|---|---|"]
            lines += [f"| {_cell(c['claim'])} | {'yes' if c['holds'] else '**no**'} | {_format_value(c.get('value'))} "
                      f"| {_cell(c.get('bound', ''))} |" for c in claims]
            lines.append("")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
        if scalars:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| `{k}` | {_format_value(v)} |" for k, v in scalars.items()]
            lines.append("")
    path = output_dir / "README.md"
    from ..io import atomic_write_bytes

    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


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
                failed = output_dir / f"{stem}.failed"
                shutil.rmtree(failed, ignore_errors=True)
                scratch.rename(failed)
                results[stem] = f"failed: {reason.splitlines()[0] if reason else 'error'}"
                continue
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltp-reports", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="default",
                   help="ci (seconds, CPU), default (the notebooks' own defaults), paper (GPU, real data)")
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
        results = run_reports(args.profile, args.only, overrides, args.output_dir, args.notebooks_dir)
    except ReportError as e:
        print(f"ltp-reports: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output_dir or REPO_ROOT / "reports" / args.profile)
    failed = {s: r for s, r in results.items() if r != "ok"}
    for stem, reason in failed.items():
        print(f"ltp-reports: notebook {stem} {reason} (executed copy: {out / (stem + '.failed')})", file=sys.stderr)
    print(f"{len(results) - len(failed)} of {len(results)} notebooks ok; index: {out / 'README.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
