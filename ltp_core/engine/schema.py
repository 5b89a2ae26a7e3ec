"""The settings of `ltp-train`, declared once: every `TrainConfig` field with its type, default,
command-line flags, help text and range check.

`ltp_core.engine.config` turns flags, YAML files and Python keywords into a checked
`TrainConfig` from these declarations; `ltp-train --help` is written from them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..data import DATASETS, INTERPOLATIONS

__all__ = ["TrainConfig", "FIELDS", "flag_name", "flags_of", "LR_SCHEDULERS", "WARMUP_METHODS", "OPTIMIZERS",
           "AMP_DTYPES"]
LR_SCHEDULERS = ("steplr", "cosineannealinglr", "exponentiallr", "constant")
WARMUP_METHODS = ("constant", "linear")
OPTIMIZERS = ("sgd", "sgd_nesterov", "adam", "adamw", "rmsprop")
AMP_DTYPES = ("bf16", "fp16")


def _opt(default: Any, help: str, *, kind: str, flags: tuple[str, ...] = (), choices=None, check=None,
         metavar: str | None = None, group: str = "run"):
    """A TrainConfig field. kind: int, float, str, bool, optint, optfloat, optstr, list, dict.
    check(value) -> error text or None, for range checks."""
    meta = {"help": help, "kind": kind, "flags": flags, "choices": choices, "check": check, "metavar": metavar,
            "group": group}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _positive(v):
    return None if v > 0 else "must be > 0"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _fraction(v):
    return None if 0 <= v < 1 else "must be in [0, 1)"


@dataclass
class TrainConfig:
    """Every setting of a training run (see `ltp-train --help` for each one)."""
    # data
    dataset: str = _opt("imagenet", "dataset", kind="str", choices=DATASETS, group="data")
    data_path: str | None = _opt(None, "dataset folder (imagenet: train/ and val/ of class folders; cifar10: the "
                                       "folder holding cifar-10-batches-py/); see data/README.md",
                                 kind="optstr", metavar="PATH", group="data")
    train_crop_size: int = _opt(224, "training crop size (imagenet; synthetic: the image size)", kind="int",
                                check=_positive, group="data")
    val_resize_size: int = _opt(256, "validation resize size (imagenet)", kind="int", check=_positive, group="data")
    val_crop_size: int = _opt(224, "validation crop size (imagenet)", kind="int", check=_positive, group="data")
    interpolation: str = _opt("bilinear", "resize interpolation (imagenet)", kind="str", choices=INTERPOLATIONS,
                              group="data")
    synthetic_size: int = _opt(1024, "synthetic: training images (validation: a quarter as many)", kind="int",
                               check=_positive, group="data")
    synthetic_classes: int = _opt(10, "synthetic: number of classes", kind="int",
                                  check=lambda v: None if v >= 2 else "must be >= 2", group="data")
    val_fraction: float = _opt(0.0, "hold out this stratified fraction of the training images as the validation "
                                    "split the trail is measured on (choices are made on it); the dataset's own "
                                    "held-out split is then the test split, reported as soft_test_*/hard_test_* "
                                    "(0: the trail is measured on the dataset's held-out split)", kind="float",
                                check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)", group="data")
    workers: int = _opt(4, "data loading worker processes per process (0: load in the main process)", kind="int",
                        flags=("-j", "--workers"), check=_non_negative, group="data")
    # model
    model: str = _opt("resnet18", "any torchvision classification model, resnet20/32/44/56/110 (CIFAR), "
                                  "mlp, small_cnn, or timm's mixnet_s (needs timm)", kind="str", group="model")
    model_opt: dict = _opt({}, "model constructor option, repeatable (e.g. shortcut=B for the CIFAR ResNets)",
                           kind="dict", metavar="KEY=VALUE", group="model")
    pretrained: str | None = _opt(None, "local weights file (a state_dict, a checkpoint holding 'model' or "
                                        "'state_dict', or an ltp-sparse file from ltp-pick --sparse); the head is "
                                        "replaced when the class count differs; nothing is downloaded; not read "
                                        "by --resume (the checkpoint holds the weights)",
                                  kind="optstr", metavar="PATH", group="model")
    # pruning method
    method: str = _opt("ltp", "pruning method from ltp_core.methods (none: dense training)", kind="str",
                       group="method")
    method_opt: dict = _opt({}, "method option, repeatable; values parsed as YAML", kind="dict",
                            metavar="KEY=VALUE", group="method")
    ltp_lambda: float | None = _opt(None, "LTP: weight of the soft-L0 term (lambda_; default: LTP's)",
                                    kind="optfloat", check=_non_negative, group="method")
    ltp_t0: float | None = _opt(None, "LTP: temperature T0, T_l = T0 * Var(|w_l|) (default: LTP's)",
                                kind="optfloat", check=_positive, group="method")
    ltp_exclude: list = _opt([], "LTP: layers left dense (module names; 'first', 'last' for the first/last "
                                 "prunable layer)", kind="list", metavar="NAME", group="method")
    ltp_threshold_lr: float | None = _opt(None, "LTP: learning rate of the thresholds (default: --lr); tau is in "
                                                "units of w**2 and its gradient scales like 1/T, so with SGD it is "
                                                "usually far below --lr (e.g. 1e-5)",
                                          kind="optfloat", check=_positive, group="method")
    target_sparsity: float | None = _opt(None, "LTP: the hard sparsity to reach and hold, a fraction in [0, 1); "
                                               "lambda_ then adapts (starting at --ltp-lambda) and the thresholds "
                                               "are held on course (see LTP.after_step)",
                                         kind="optfloat", check=_fraction, group="method")
    # optimization
    epochs: int = _opt(90, "number of epochs in total (a resumed run continues up to it; fixed by the checkpoint with "
                       "cosineannealinglr, gmp, lats and greg, whose schedules are built for it)", kind="int",
                       check=_non_negative, group="optimization")
    batch_size: int = _opt(32, "images per batch per process (the global batch is this times the number of "
                               "processes)", kind="int", flags=("-b", "--batch-size"), check=_positive,
                           group="optimization")
    opt: str = _opt("sgd", "optimizer", kind="str", choices=OPTIMIZERS, group="optimization")
    lr: float = _opt(0.1, "initial learning rate", kind="float", check=_positive, group="optimization")
    momentum: float = _opt(0.9, "momentum (sgd, rmsprop)", kind="float", check=_non_negative,
                           group="optimization")
    weight_decay: float = _opt(1e-4, "weight decay (thresholds never get any)", kind="float",
                               flags=("--wd", "--weight-decay"), check=_non_negative, group="optimization")
    lr_scheduler: str = _opt("steplr", "learning-rate schedule, stepped once per epoch", kind="str",
                             choices=LR_SCHEDULERS, group="optimization")
    lr_step_size: int = _opt(30, "steplr: epochs between decays", kind="int", check=_positive,
                             group="optimization")
    lr_gamma: float = _opt(0.1, "steplr/exponentiallr: decay factor", kind="float", check=_positive,
                           group="optimization")
    lr_min: float = _opt(0.0, "cosineannealinglr: final learning rate", kind="float", check=_non_negative,
                         group="optimization")
    lr_warmup_epochs: int = _opt(0, "warm-up epochs", kind="int", check=_non_negative, group="optimization")
    lr_warmup_method: str = _opt("constant", "warm-up shape", kind="str", choices=WARMUP_METHODS,
                                 group="optimization")
    lr_warmup_decay: float = _opt(0.01, "learning-rate factor at the start of the warm-up", kind="float",
                                  check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
                                  group="optimization")
    label_smoothing: float = _opt(0.0, "label smoothing of the cross-entropy", kind="float", check=_fraction,
                                  group="optimization")
    clip_grad_norm: float | None = _opt(None, "clip the gradient norm to this value", kind="optfloat",
                                        check=_positive, group="optimization")
    # hardware
    device: str = _opt("auto", "auto (cuda when available), cpu, cuda; under torchrun each process uses "
                               "cuda:LOCAL_RANK", kind="str", group="hardware")
    amp: bool = _opt(False, "automatic mixed precision (autocast; fp16 adds a gradient scaler)", kind="bool",
                     group="hardware")
    amp_dtype: str = _opt("bf16", "autocast dtype with --amp", kind="str", choices=AMP_DTYPES, group="hardware")
    channels_last: bool = _opt(False, "channels_last memory format (faster convolutions on recent GPUs)",
                               kind="bool", group="hardware")
    sync_bn: bool = _opt(False, "synchronized batch norm across processes", kind="bool", group="hardware")
    deterministic: bool = _opt(False, "torch.use_deterministic_algorithms(True)", kind="bool", group="hardware")
    # run
    output_dir: str = _opt("", "where trail.json, checkpoint.pth, trail/ and args.yaml go "
                               "(default: runs/<dataset>-<model>-<method>)", kind="str", metavar="DIR")
    resume: str | None = _opt(None, "continue from a checkpoint (a file, or a run folder; without a value: "
                                    "<output-dir>/checkpoint.pth) with its settings, except those given; a run "
                                    "folder continues in place unless --output-dir is given",
                              kind="optstr", metavar="PATH")
    seed: int = _opt(0, "random seed (initialization, data order, augmentation)", kind="int",
                     check=lambda v: None if 0 <= v < 2**32 else "must be in [0, 2**32)")
    test_only: bool = _opt(False, "only evaluate (the --resume or --pretrained network) and print the metrics",
                           kind="bool")
    eval_every: int = _opt(1, "evaluate (a trail record) every this many epochs and after the last; the "
                              "checkpoint is written after every epoch", kind="int", check=_positive)
    trail_checkpoints: bool = _opt(True, "save a hard-pruned checkpoint at every evaluation (trail/step_*.pt)",
                                   kind="bool")
    progress: bool = _opt(True, "tqdm progress bars", kind="bool")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def flags_of(name: str) -> tuple[str, ...]:
    return FIELDS[name].metadata["flags"] or ("--" + name.replace("_", "-"),)


def flag_name(name: str) -> str:
    """The long command-line flag of setting `name` (`weight_decay` -> `--weight-decay`)."""
    return flags_of(name)[-1]


