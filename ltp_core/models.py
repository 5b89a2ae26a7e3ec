"""Networks for the notebooks, the tests and the training engine.

`mlp` and `small_cnn` are the toy ones a laptop CPU trains in seconds; `resnet20/32/44/56/110`
are the CIFAR ResNets of He et al. (2016); `get_model(name, num_classes)` builds any of these,
any torchvision classification model, or timm's MixNets, by name.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

from torch import nn

__all__ = ["mlp", "small_cnn", "CifarResNet", "cifar_resnet", "resnet20", "resnet32", "resnet44", "resnet56",
           "resnet110", "get_model", "model_names", "model_options", "torchvision_models", "MIN_INPUT_SIZES",
           "min_input_size", "check_input_size"]


def mlp(in_features: int = 64, hidden: Sequence[int] = (256, 128), num_classes: int = 10,
        batch_norm: bool = False) -> nn.Sequential:
    """Linear -> [BatchNorm1d] -> ReLU blocks, then a Linear head. Input (N, in_features)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn(in_channels: int = 1, channels: Sequence[int] = (16, 32), num_classes: int = 10,
              batch_norm: bool = True) -> nn.Sequential:
    """3x3 Conv -> [BatchNorm2d] -> ReLU blocks (the second onwards with stride 2), global
    average pooling and a Linear head. Input (N, in_channels, H, W), e.g. 8x8 digits."""
    layers: list[nn.Module] = []
    width = in_channels
    for i, c in enumerate(channels):
        layers.append(nn.Conv2d(width, c, 3, stride=1 if i == 0 else 2, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c))
        layers.append(nn.ReLU())
        width = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


# -- CIFAR ResNets (He et al. 2016, section 4.2) -------------------------------------------

class _ShortcutA(nn.Module):
    """Option A: the identity, subsampled by `stride` and zero-padded to `planes` channels
    (no parameters, so nothing on the shortcut is pruned)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, planes - in_planes

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        if self.pad:
            half = self.pad // 2
            x = nn.functional.pad(x, (0, 0, 0, 0, half, self.pad - half))
        return x


class BasicBlock(nn.Module):
    """Two 3x3 Conv-BN layers and a shortcut: option A (zero-padding identity) or B (1x1
    Conv-BN projection) where the shape changes, the identity elsewhere."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = _ShortcutA(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                              nn.BatchNorm2d(planes))

    def forward(self, x):
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nn.functional.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): a 3x3 conv with 16 channels, three stages of n
    basic blocks with 16, 32, 64 channels (stride 2 at the start of stages 2 and 3), global
    average pooling and a Linear head; depth = 6n + 2. Input (N, in_channels, 32, 32)
    (any size works: the pooling is global)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, shortcut: str = "A", in_channels: int = 3) -> None:
        super().__init__()
        if not (isinstance(depth, int) and depth >= 8 and (depth - 2) % 6 == 0):
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth!r}")
        shortcut = str(shortcut).upper()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-padding identity) or 'B' (1x1 projection), got {shortcut!r}")
        n = (depth - 2) // 6
        self.depth, self.shortcut_option = depth, shortcut
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, width = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            layer = []
            for i in range(n):
                layer.append(BasicBlock(width, planes, 2 if (stage > 0 and i == 0) else 1, shortcut))
                width = planes
            blocks.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3 = blocks
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out" if isinstance(m, nn.Conv2d) else "fan_in",
                                        nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = nn.functional.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def cifar_resnet(depth: int = 20, num_classes: int = 10, shortcut: str = "A", in_channels: int = 3) -> CifarResNet:
    """A CIFAR ResNet of `depth` = 6n + 2 layers (20: 0.27M, 32: 0.46M, 56: 0.85M parameters)."""
    return CifarResNet(depth, num_classes, shortcut, in_channels)


def resnet20(num_classes: int = 10, shortcut: str = "A", in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, num_classes, shortcut, in_channels)


def resnet32(num_classes: int = 10, shortcut: str = "A", in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, num_classes, shortcut, in_channels)


def resnet44(num_classes: int = 10, shortcut: str = "A", in_channels: int = 3) -> CifarResNet:
    return CifarResNet(44, num_classes, shortcut, in_channels)


def resnet56(num_classes: int = 10, shortcut: str = "A", in_channels: int = 3) -> CifarResNet:
    return CifarResNet(56, num_classes, shortcut, in_channels)


def resnet110(num_classes: int = 10, shortcut: str = "A", in_channels: int = 3) -> CifarResNet:
    return CifarResNet(110, num_classes, shortcut, in_channels)


# -- every model by name -------------------------------------------------------------------

def _flat_mlp(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kwargs) -> nn.Sequential:
    # The engine feeds images: flatten them first. Layer names shift by one ("1", "3", ...).
    return nn.Sequential(nn.Flatten(), *mlp(in_features=in_channels * image_size * image_size,
                                            num_classes=num_classes, **kwargs))


def _small_cnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kwargs) -> nn.Sequential:
    return small_cnn(in_channels=in_channels, num_classes=num_classes, **kwargs)


def _cifar(depth: int):
    def build(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kwargs) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_channels=in_channels, **kwargs)
    build.__doc__ = f"CIFAR ResNet-{depth} (options: shortcut='A' or 'B')"
    return build


# The project's own models: name -> builder(num_classes, in_channels, image_size, **options).
# `in_channels`/`image_size` describe the input; models that cannot use them ignore them.
PROJECT_MODELS = {
    "mlp": _flat_mlp,
    "small_cnn": _small_cnn,
    **{f"resnet{d}": _cifar(d) for d in (20, 32, 44, 56, 110)},
}

TIMM_MODELS = ("mixnet_s", "mixnet_m", "mixnet_l", "mixnet_xl")

# What each project builder passes its options on to (the CIFAR ResNets' depth is their name's).
_PROJECT_CONSTRUCTORS = {"mlp": mlp, "small_cnn": small_cnn,
                         **{name: CifarResNet for name in PROJECT_MODELS if name.startswith("resnet")}}
# Constructor arguments get_model fills in itself, from the dataset and the model's name.
_SET_BY_GET_MODEL = {"num_classes", "in_channels", "in_features", "image_size", "depth"}


def model_options(name: str) -> list[str] | None:
    """The option names `get_model(name, ..., **options)` passes on to model `name`'s
    constructor: its keyword arguments with a default, less those get_model sets itself
    (torchvision's architecture arguments, without a default, are fixed by the model's name).
    None where the constructor is not known from the name (timm, unknown models)."""
    import inspect
    import typing

    constructor = _PROJECT_CONSTRUCTORS.get(name)
    if constructor is None and name in torchvision_models():
        import torchvision

        # torchvision's builders take **kwargs for their model class, named by the return annotation.
        with contextlib.suppress(Exception):
            constructor = typing.get_type_hints(torchvision.models.get_model_builder(name)).get("return")
    if not callable(constructor):
        return None
    try:
        params = inspect.signature(constructor).parameters.values()
    except (TypeError, ValueError):
        return None
    return [p.name for p in params if p.default is not p.empty and p.name not in _SET_BY_GET_MODEL
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


# -- input sizes ---------------------------------------------------------------------------
#
# Below these sizes a model's strided layers shrink the image below a kernel or pooling
# window and its forward fails deep inside with a shape error. Measured with torchvision 0.29:
# forwards of a (2, 3, s, s) batch in eval and train mode for every s up to the first that
# works, with spot checks above it (on the meta device; CPU agrees, checked for each family;
# tests/test_train.py re-measures the table). Models not listed (ResNets, MobileNets,
# EfficientNets, RegNets, ShuffleNets, MNASNets, the project's models, timm's MixNets) run on
# any size: their convolutions are padded and their pooling is global.
MIN_INPUT_SIZES: dict[str, int] = {
    "alexnet": 63, "googlenet": 15, "inception_v3": 75, "squeezenet1_0": 21, "squeezenet1_1": 17,
    **{f"convnext_{v}": 32 for v in ("tiny", "small", "base", "large")},
    **{f"densenet{d}": 29 for d in (121, 161, 169, 201)},
    **{f"swin_{v}": 4 for v in ("t", "s", "b", "v2_t", "v2_s", "v2_b")},
    **{f"vgg{d}{bn}": 32 for d in (11, 13, 16, 19) for bn in ("", "_bn")},
}
# In training mode Inception v3's auxiliary classifier (aux_logits=True, torchvision's
# default) pools a 17x17 map with a 5x5 window at stride 3: it needs the full 299x299 input.
_MIN_TRAIN_SIZES_WITH_AUX = {"inception_v3": 299}
# A ViT is built for one image size (get_model passes image_size), a multiple of its patch.
_VIT_PATCHES = {"vit_b_16": 16, "vit_b_32": 32, "vit_l_16": 16, "vit_l_32": 32, "vit_h_14": 14}
# MaxViT is built for 224x224 (its 7x7 attention windows tile that size at every stage).
_FIXED_SIZES = {"maxvit_t": 224}


def min_input_size(name: str, *, train: bool = False, aux_logits: bool = True) -> int:
    """The smallest image side (pixels) model `name` runs on, in training mode when `train`
    (Inception v3's auxiliary classifier needs more, unless built with `aux_logits=False`);
    1 for the models that take any size. See MIN_INPUT_SIZES."""
    if train and aux_logits and name in _MIN_TRAIN_SIZES_WITH_AUX:
        return _MIN_TRAIN_SIZES_WITH_AUX[name]
    return _VIT_PATCHES.get(name) or _FIXED_SIZES.get(name) or MIN_INPUT_SIZES.get(name, 1)


def check_input_size(name: str, size: int, *, train: bool = False, image_size: int | None = None,
                     aux_logits: bool = True) -> None:
    """Raise ValueError, naming the model, `size` and what is allowed, when model `name` (a
    ViT built for `image_size`; Inception v3 with or without `aux_logits`) cannot run on
    size x size images (in training mode when `train`), which would otherwise fail deep
    inside its forward."""
    got = f"got {size}x{size}"
    if name in _FIXED_SIZES and size != _FIXED_SIZES[name]:
        fixed = _FIXED_SIZES[name]
        raise ValueError(f"{name} takes {fixed}x{fixed} images only (it is built for that size), {got}")
    if name in _VIT_PATCHES:
        patch = _VIT_PATCHES[name]
        if size % patch:
            raise ValueError(f"{name} needs an image side that is a multiple of its {patch}-pixel patches, {got}")
        if image_size is not None and size != image_size:
            raise ValueError(f"{name} is built for one image size, {image_size}x{image_size} here, {got}")
    least = min_input_size(name, train=train, aux_logits=aux_logits)
    if size < least:
        plain = min_input_size(name)
        why = "" if least == plain else \
            f" in training (its auxiliary classifier; {plain}x{plain} with aux_logits=False)"
        raise ValueError(f"{name} needs images of at least {least}x{least}{why}, {got}")


def torchvision_models() -> list[str]:
    """The classification models torchvision builds by name (detection, segmentation, video
    and quantized models excluded)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def model_names() -> list[str]:
    """Every name `get_model` accepts (the timm ones need `pip install timm`)."""
    return sorted(set(PROJECT_MODELS) | set(torchvision_models()) | set(TIMM_MODELS))


def get_model(name: str, num_classes: int, *, in_channels: int = 3, image_size: int = 224,
              **options) -> nn.Module:
    """A randomly initialized classification network with a `num_classes`-way head.

    `name` is one of the project's models (`mlp`, `small_cnn`, the CIFAR ResNets `resnet20`,
    `resnet32`, `resnet44`, `resnet56`, `resnet110`), any torchvision classification model
    (`torchvision.models.get_model(name, weights=None, num_classes=...)`; nothing is
    downloaded) or timm's MixNets (`mixnet_s`, ...; needs `pip install timm`). `in_channels`
    and `image_size` describe the input for the project's models and torchvision's ViTs (other
    torchvision and timm models take 3-channel images of any size from `min_input_size(name)`).
    `options` go to the model's constructor
    (e.g. `shortcut="B"` for the CIFAR ResNets, `dropout=0.3` for torchvision's EfficientNets).
    Raises ValueError for an unknown name, naming the close matches, and for an `image_size`
    the model cannot run on (`check_input_size`, eval mode).
    """
    if not (isinstance(num_classes, int) and num_classes > 0):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    check_input_size(name, image_size)
    if name in PROJECT_MODELS:
        return PROJECT_MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                                    **options)
    if name in torchvision_models():
        import torchvision

        if name.startswith("vit_"):  # a ViT is built for one image size (its position embedding)
            options = {"image_size": image_size, **options}
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    try:
        import timm
    except ImportError:
        timm = None
    if timm is not None and timm.is_model(name):
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **options)
    if name in TIMM_MODELS:
        raise ValueError(f"model {name!r} comes from timm, which is not installed: pip install timm")
    import difflib

    close = difflib.get_close_matches(name, model_names(), n=4, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"unknown model {name!r}{hint}; valid: {', '.join(sorted(PROJECT_MODELS))}, "
                     f"{', '.join(TIMM_MODELS)} (timm) or any torchvision classification model "
                     f"(torchvision.models.list_models(module=torchvision.models))")
