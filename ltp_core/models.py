"""Networks for the notebooks, the tests and the training engine.

`mlp` and `small_cnn` are the toy ones a laptop CPU trains in seconds; `resnet20/32/44/56/110`
are the CIFAR ResNets of He et al. (2016); `get_model(name, num_classes)` builds any of these,
any torchvision classification model, or timm's MixNets, by name.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["mlp", "small_cnn", "CifarResNet", "cifar_resnet", "resnet20", "resnet32", "resnet44", "resnet56",
           "resnet110", "get_model", "model_names", "torchvision_models"]


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
    torchvision and timm models take 3-channel images of any reasonable size). `options` go to the model's constructor
    (e.g. `shortcut="B"` for the CIFAR ResNets, `dropout=0.3` for torchvision's EfficientNets).
    Raises ValueError for an unknown name, naming the close matches.
    """
    if not (isinstance(num_classes, int) and num_classes > 0):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
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
