"""What every notebook of the suite shares: its profile's parameters, its claims, metrics.json.

A notebook's `parameters` cell (tagged for papermill) holds laptop-CPU defaults and ends with

    globals().update(profile_parameters("02_toy_mlp"))

which is a no-op unless the environment variable LTP_PROFILE names a profile (the test
suite sets LTP_PROFILE=ci): then that profile's values from `notebooks/params/<profile>.yaml`
replace the defaults, so the test run and `ltp-reports --profile ci` use the same sizes.
Papermill injects its own parameters after that cell, so explicit `-p` values still win.

Claims a notebook teaches are checked with `Claims`; its last cell calls
`claims.write_metrics(metrics, output_dir, stem)`, which writes metrics.json and raises
AssertionError when any claim does not hold, so a regression fails the run.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["PROFILE_ENV", "params_dir", "load_profile", "profile_parameters", "Claims", "metrics_dir"]

PROFILE_ENV = "LTP_PROFILE"


def params_dir(start: str | os.PathLike | None = None) -> Path:
    """The `notebooks/params` folder: searched from `start` (default: the working directory)
    upwards, as `params/` beside a notebook or `notebooks/params/` under the repository."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        for candidate in (folder / "params", folder / "notebooks" / "params"):
            if (candidate / "ci.yaml").is_file():
                return candidate
    packaged = Path(__file__).resolve().parents[2] / "notebooks" / "params"
    if packaged.is_dir():
        return packaged
    raise FileNotFoundError(f"no notebooks/params folder with ci.yaml above {here}")


def load_profile(profile: str, start: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """{notebook stem: {parameter: value}} of `notebooks/params/<profile>.yaml`.

    `default` is the notebooks' own defaults, i.e. no overrides; a missing file for
    another name is a ValueError listing the profiles that exist."""
    from ..engine.config import yaml_load

    if profile == "default":
        return {}
    folder = params_dir(start)
    path = folder / f"{profile}.yaml"
    if not path.is_file():
        known = sorted({"default", *(p.stem for p in folder.glob("*.yaml"))})
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {known}")
    data = yaml_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
        raise ValueError(f"{path} must map notebook stems to {{parameter: value}} mappings")
    return {stem: dict(values or {}) for stem, values in data.items()}


def profile_parameters(stem: str) -> dict[str, Any]:
    """The overrides for notebook `stem` under the profile named by $LTP_PROFILE ({} if unset)."""
    profile = os.environ.get(PROFILE_ENV, "").strip()
    if not profile or profile == "default":
        return {}
    return load_profile(profile).get(stem, {})


def metrics_dir(stem: str, output_dir: str | os.PathLike | None = None) -> Path:
    """Where a notebook writes metrics.json: `output_dir` when given (papermill runs pass the
    folder of the executed notebook), else `reports/<stem>/` of the repository."""
    if output_dir:
        return Path(output_dir)
    here = Path.cwd().resolve()
    root = here.parent if here.name == "notebooks" else here
    return root / "reports" / stem


def _plain(value: Any) -> Any:
    """JSON-friendly: tensors and numpy scalars to Python numbers, non-finite floats to str."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _number(value: Any) -> Any:
    """A one-element tensor or numpy scalar as a Python number; anything else as it is."""
    try:
        return value.item() if hasattr(value, "item") else value
    except (ValueError, RuntimeError):  # more than one element: compared as it is
        return value


class Claims:
    """The claims a notebook makes, each checked against a measurement.

        claims = Claims()
        claims.check("LTP keeps >= 90% of weights pruned", sparsity, ">=", 0.90)
        claims.check("within 1 point of dense", dense - acc, "<=", 0.01)

    `check` records {"claim", "holds", "value", "bound"} and returns whether it held; it
    never raises, so one notebook reports every failed claim at once in `write_metrics`.
    """

    OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
           "<": lambda a, b: a < b, "==": lambda a, b: a == b}

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def check(self, claim: str, value: Any, op: str, bound: Any) -> bool:
        if op not in self.OPS:
            raise ValueError(f"unknown comparison {op!r}; use one of {sorted(self.OPS)}")
        # Compared before _plain turns a NaN into the string 'nan': a NaN claim fails, it never raises.
        holds = bool(self.OPS[op](_number(value), _number(bound)))
        value, bound = _plain(value), _plain(bound)
        self.items.append({"claim": claim, "holds": holds, "value": value, "bound": f"{op} {bound}"})
        return holds

    def report(self) -> str:
        """One line a claim, '[ok]' or '[FAILED]' first: deterministic text for nbval."""
        return "\n".join(f"[{'ok' if c['holds'] else 'FAILED'}] {c['claim']}" for c in self.items)

    def write_metrics(self, metrics: dict[str, Any], output_dir: str | os.PathLike | None, stem: str) -> Path:
        """Write `{"metrics": ..., "claims": [...]}` to `<metrics_dir>/metrics.json`
        (atomically), then raise AssertionError listing the claims that failed, if any."""
        from ..io import atomic_write_bytes

        path = metrics_dir(stem, output_dir) / "metrics.json"
        payload = {"metrics": _plain(metrics), "claims": self.items}
        atomic_write_bytes(path, json.dumps(payload, indent=1).encode())
        failed = [c for c in self.items if not c["holds"]]
        if failed:
            lines = "; ".join(f"{c['claim']} (value {c['value']}, bound {c['bound']})" for c in failed)
            raise AssertionError(f"{len(failed)} claim(s) failed: {lines}")
        return path
