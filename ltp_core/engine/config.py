"""Reading `ltp-train`'s settings: flags, `--config FILE.yaml` and Python keywords into one checked TrainConfig.

The flags, the YAML keys and the notebooks' parameters all name the same fields of `TrainConfig`.

    ltp-train --dataset imagenet --data-path /data/imagenet --model resnet50 --pretrained r50.pth ...
    ltp-train --config run.yaml --lr 0.01          # flags override the YAML, the YAML the defaults
    cfg = make_config(dataset="cifar10", model="resnet20", epochs=2)   # in Python (notebooks)

The flag names follow torchvision's `references/classification/train.py` (`--data-path`,
`-b/--batch-size`, `--wd`, `--lr-scheduler`, ...). A YAML file (or a notebook) uses the field
names (`batch_size`, `weight_decay`; dashes are accepted too); the `args.yaml` a run writes is
such a file, so `--config runs/x/args.yaml` repeats a run. Every value is checked the same way
whichever way it came in, and a bad one is a `UsageError` naming the value and what is allowed.

Dense training is `--method none`. The `--ltp-*` flags are shorthands for LTP's options
(`--ltp-lambda` -> `lambda_`, `--ltp-t0` -> `temperature`, `--ltp-exclude` -> `exclude`, where
the words `first` and `last` mean `exclude_first` / `exclude_last`); `--method-opt KEY=VALUE`
passes any option of any method (values are parsed as YAML: `0.5`, `true`, `[a, b]`).

The fields themselves (type, default, flags, help, check) are declared in
`ltp_core.engine.schema`. With `--resume`, `ltp-train` (`ltp_core.engine.train.parse_args`)
completes the settings given here with the resumed run's own, from its checkpoint
(`ltp_core.engine.resume.settings_from_checkpoint`); `parse_args` here reads the flags and
`--config` only.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import os
import re
from pathlib import Path
from typing import Any

from .schema import AMP_DTYPES, FIELDS, LR_SCHEDULERS, OPTIMIZERS, TrainConfig, flag_name, flags_of

__all__ = ["UsageError", "TrainConfig", "FIELDS", "make_config", "parse_args", "given_settings", "merge_settings",
           "convert", "build_parser", "load_yaml_config", "flag_name", "yaml_load", "method_options",
           "schedule_fixes_epochs", "config_to_dict", "output_folder", "LR_SCHEDULERS", "OPTIMIZERS", "AMP_DTYPES"]

PROG = "ltp-train"


class UsageError(Exception):
    """A bad flag, config value, path or file: reported as one line, no traceback."""


# -- value conversion: the same for flags, YAML and Python ---------------------------------

@functools.cache
def _yaml_loader() -> type:
    """PyYAML's SafeLoader, except that it reads 1e-4 (no dot) as a float, as YAML 1.2 does
    (YAML 1.1 reads it as a string). Strings stay strings: quoted '0' is a layer name."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # A copy of the resolver lists: adding to them in place would change every SafeLoader.
    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"[-+]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)[eE][-+]?\d+$"),
                                 list("-+0123456789."))
    return Loader


def yaml_load(text: str) -> Any:
    """YAML `text` as Python values, 1e-4 a float (see `_yaml_loader`)."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())


def _yaml_value(text: str) -> Any:
    import yaml

    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def convert(name: str, value: Any) -> Any:
    """`value` as field `name`'s type, checked; UsageError naming the flag otherwise."""
    meta = FIELDS[name].metadata
    kind, flag = meta["kind"], flags_of(name)[-1]

    def bad(what: str) -> UsageError:
        return UsageError(f"{flag} ({name}): {what}, got {value!r}")

    if kind.startswith("opt"):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        kind = kind[3:]
    if kind == "bool":
        if isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
            out = value.strip().lower() in ("true", "yes", "1")
        else:
            raise bad("expected true or false")
    elif kind == "int":
        if isinstance(value, bool):
            raise bad("expected an integer")
        try:
            out = int(value) if not isinstance(value, float) or value.is_integer() else None
        except (TypeError, ValueError):
            out = None
        if out is None:
            raise bad("expected an integer")
    elif kind == "float":
        if isinstance(value, bool):
            raise bad("expected a number")
        try:
            out = float(value)  # YAML reads 1e-3 as a string: accept it
        except (TypeError, ValueError):
            raise bad("expected a number") from None
        if not math.isfinite(out):
            raise bad("expected a finite number")
    elif kind == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad("expected a string")
        out = str(value)
    elif kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad("expected a list of names")
        out = [s.strip() for v in value for s in str(v).split(",") if s.strip()]
    elif kind == "dict":
        if value is None:
            value = {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad("expected a mapping of option names to values")
        out = dict(value)
    else:  # pragma: no cover - a schema bug
        raise AssertionError(kind)
    if meta["choices"] is not None and out not in meta["choices"]:
        raise UsageError(f"{flag} ({name}): invalid choice {out!r}; choose from {', '.join(meta['choices'])}")
    if meta["check"] is not None and out is not None:
        problem = meta["check"](out)
        if problem:
            raise UsageError(f"{flag} ({name}): {problem}, got {out!r}")
    return out


def _normalize_key(key: Any, source: str) -> str:
    name = str(key).replace("-", "_")
    aliases = {"wd": "weight_decay", "j": "workers", "b": "batch_size"}
    name = aliases.get(name, name)
    if name not in FIELDS:
        close = difflib.get_close_matches(name, list(FIELDS), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(f"{source}: unknown setting {key!r}{hint}")
    return name


def make_config(**values: Any) -> TrainConfig:
    """A checked TrainConfig from field values (unknown names and bad values raise
    UsageError). Fields not given keep their defaults."""
    clean = {}
    for key, value in values.items():
        name = _normalize_key(key, "config")
        clean[name] = convert(name, value)
    cfg = TrainConfig(**clean)
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: TrainConfig) -> None:
    from ..methods import method_names

    valid = [*method_names(), "none"]
    if cfg.method not in valid:
        raise UsageError(f"--method: unknown pruning method {cfg.method!r}; choose from {', '.join(valid)}")
    ltp_given = [flag_name(n) for n in ("ltp_lambda", "ltp_t0", "ltp_threshold_lr", "ltp_exclude", "target_sparsity")
                 if getattr(cfg, n) not in (None, [])]
    if ltp_given and cfg.method != "ltp":
        # Dense training has no options at all; another method takes its own through --method-opt.
        them = "it" if len(ltp_given) == 1 else "them"
        fix = (f"dense training prunes nothing: drop {them}, or choose --method ltp" if cfg.method == "none" else
               f"drop {them}, and pass that method's options with --method-opt KEY=VALUE")
        raise UsageError(f"{', '.join(ltp_given)}: options of --method ltp, but this run uses --method {cfg.method}; "
                         + fix)
    if cfg.method == "none" and cfg.method_opt:
        raise UsageError(f"--method none (dense training) takes no --method-opt, got {cfg.method_opt}")
    dev = cfg.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, got {dev!r}")
    if cfg.dataset in ("imagenet", "cifar10") and not cfg.data_path:
        raise UsageError(f"--dataset {cfg.dataset} needs --data-path (see data/README.md for the layout)")
    if cfg.dataset in ("synthetic", "digits") and cfg.data_path:
        raise UsageError(f"--data-path is not read with --dataset {cfg.dataset} (made in memory / bundled with "
                         "scikit-learn); drop it, or pick --dataset imagenet or cifar10")
    if cfg.test_only and not (cfg.resume or cfg.pretrained):
        raise UsageError("--test-only needs the network to evaluate: --resume [PATH] or --pretrained PATH "
                         "(without them it would evaluate a randomly initialized one)")


# Methods whose schedule ltp-train builds from --epochs (their total_steps).
EPOCH_SCHEDULED_METHODS = ("gmp", "lats", "greg", "gdp", "wgates")


def schedule_fixes_epochs(cfg: TrainConfig) -> bool:
    """Whether `cfg`'s learning-rate or pruning schedule is built for its --epochs (cosine
    annealing; the methods above without an explicit total_steps), so a run continued to more
    epochs would not be the run asked for."""
    return cfg.lr_scheduler == "cosineannealinglr" or (cfg.method in EPOCH_SCHEDULED_METHODS
                                                       and "total_steps" not in cfg.method_opt)


def method_options(cfg: TrainConfig) -> dict[str, Any]:
    """The keyword options `ltp_core.methods.build(cfg.method, model, **options)` gets: the
    --method-opt pairs plus, for LTP, the --ltp-* flags."""
    options = dict(cfg.method_opt)
    if cfg.method != "ltp":
        return options
    ltp: dict[str, Any] = {}
    if cfg.ltp_lambda is not None:
        ltp["lambda_"] = cfg.ltp_lambda
    if cfg.ltp_t0 is not None:
        ltp["temperature"] = cfg.ltp_t0
    if cfg.target_sparsity is not None:
        ltp["target_sparsity"] = cfg.target_sparsity
    names = [n for n in cfg.ltp_exclude if n not in ("first", "last")]
    if names:
        ltp["exclude"] = names
    if "first" in cfg.ltp_exclude:
        ltp["exclude_first"] = True
    if "last" in cfg.ltp_exclude:
        ltp["exclude_last"] = True
    both = sorted(set(ltp) & set(options))
    if both:
        raise UsageError(f"LTP option(s) {both} given both by --ltp-* flags and --method-opt; give each once")
    return {**options, **ltp}


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain values (str, int, float, bool, None, list, dict) for args.yaml and checkpoints."""
    return {f: getattr(cfg, f) if not isinstance(getattr(cfg, f), (list, dict)) else
            type(getattr(cfg, f))(getattr(cfg, f)) for f in FIELDS}


# -- argparse and YAML ---------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of the whole usage block
        raise UsageError(f"{message} (see {PROG} --help)")


class _KeyValue(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        if "=" not in values:
            raise UsageError(f"{option_string}: expected KEY=VALUE, got {values!r}")
        key, text = values.split("=", 1)
        if not key.strip():
            raise UsageError(f"{option_string}: expected KEY=VALUE, got {values!r}")
        current = dict(getattr(namespace, self.dest, None) or {})
        current[key.strip()] = _yaml_value(text)
        setattr(namespace, self.dest, current)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, argument_default=argparse.SUPPRESS,
                description="Train (and prune) an image classifier; runs unchanged under torchrun (DDP).",
                epilog="Flags override --config FILE.yaml, which overrides the defaults. "
                       "Set LTP_TRACEBACK=1 to see the traceback behind an error.")
    p.add_argument("--config", metavar="FILE.yaml", help="read settings from a YAML mapping (field names as keys, "
                   "e.g. an args.yaml written by an earlier run)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f in FIELDS.items():
        meta = f.metadata
        g = groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{meta['help']} (default: {default!r})" if default not in (None, "", [], {}) else meta["help"]
        if name == "method":
            from ..methods import method_names

            help_text += f"; one of: {', '.join(method_names())}, none"
        kw: dict[str, Any] = {"dest": name, "help": help_text}
        if meta["kind"] == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif meta["kind"] == "dict":
            kw["action"] = _KeyValue
            kw["metavar"] = meta["metavar"]
        elif meta["kind"] == "list":
            kw["nargs"] = "+"
            kw["metavar"] = meta["metavar"]
        else:
            if meta["choices"] is not None:
                kw["choices"] = meta["choices"]
            if meta["choices"] is None:
                kw["metavar"] = meta["metavar"] or {"int": "N", "float": "X", "optfloat": "X"}.get(meta["kind"], "NAME")
            if name == "resume":
                kw["nargs"] = "?"
                kw["const"] = "auto"
        g.add_argument(*flags_of(name), **kw)
    return p


def load_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    """{field name: raw value} from a YAML mapping file; UsageError when unreadable/unknown."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config: no such file {path}")
    try:
        data = yaml_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"--config: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config: {path} must hold a mapping of settings, got {type(data).__name__}")
    return {_normalize_key(k, f"--config {path}"): v for k, v in data.items()}


def output_folder(output_dir: str, dataset: str, model: str, method: str) -> Path:
    """Where a run writes: `output_dir`, or runs/<dataset>-<model>-<method> when it is empty."""
    return Path(output_dir or f"runs/{dataset}-{model}-{method}")


def merge_settings(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `base`; mappings (--method-opt, --model-opt) are merged key by key."""
    out = dict(base)
    for name, value in given.items():
        if FIELDS[name].metadata["kind"] == "dict" and isinstance(out.get(name), dict) and isinstance(value, dict):
            value = {**out[name], **value}
        out[name] = value
    return out


def given_settings(argv: list[str] | None = None) -> dict[str, Any]:
    """{field name: raw value} of the settings the flags and the `--config` YAML file give
    (flags over YAML), not yet checked. The parser leaves out the flags not given
    (argparse.SUPPRESS), so what the user set is known. Raises UsageError."""
    ns = vars(build_parser().parse_args(argv))
    config_file = ns.pop("config", None)
    values = load_yaml_config(config_file) if config_file is not None else {}
    return merge_settings(values, ns)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Flags (and --config YAML) -> a checked TrainConfig, the settings not given at their
    defaults. Raises UsageError. (`ltp-train` itself, `ltp_core.engine.train.parse_args`, also
    takes a resumed run's settings from its checkpoint.)"""
    return make_config(**given_settings(argv))
