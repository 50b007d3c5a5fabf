"""The networks of the paper, by name: ``get_model(name)``, ``list_models()``.

Exact variants (all max-pools are real max-pools):

* ``lenet`` (MNIST 1x28x28, 10 classes, 431,080 parameters):
  conv(1->20, 5x5) . ReLU . maxpool 2 . conv(20->50, 5x5) . ReLU . maxpool 2 .
  flatten . fc(800->500) . ReLU . fc(500->10).
* ``alexnet_cifar10`` (3x32x32, 10): the small common variant (docs/design.md §8):
  conv(3->64, 11x11, s4, p5) . ReLU . maxpool 2 . conv(64->192, 5x5, p2) . ReLU .
  maxpool 2 . conv(192->384, 3x3, p1) . ReLU . conv(384->256, 3x3, p1) . ReLU .
  conv(256->256, 3x3, p1) . ReLU . maxpool 2 . flatten . fc(256->10).
* ``alexnet_tinyimagenet`` (3x64x64, 200): the same features (they give
  256x2x2 on 64x64), then flatten . fc(1024->1024) . ReLU . fc(1024->1024) .
  ReLU . fc(1024->200) (the classifier widths CryptGPU used for Tiny ImageNet).
* ``alexnet_imagenet`` (3x224x224, 1000): torchvision's AlexNet: conv(3->64,
  11x11, s4, p2), maxpool 3/2, conv(64->192, 5x5, p2), maxpool 3/2, conv 384,
  256, 256 (3x3, p1), maxpool 3/2, adaptive avgpool 6x6 (identity at 224),
  dropout . fc(9216->4096) . ReLU . dropout . fc(4096->4096) . ReLU .
  fc(4096->1000); 61,100,840 parameters, torchvision parameter names.
* ``vgg16_cifar10`` (3x32x32, 10): the 13 conv 3x3 p1 layers of VGG-16
  (64,64,M,128,128,M,256x3,M,512x3,M,512x3,M) each followed by ReLU, with
  maxpool 2 for M; the 512x1x1 output is flattened into fc(512->10).
  ``vgg16_bn_cifar10`` adds BatchNorm2d after every conv.
  ``vgg16_cifar10_fc3`` uses the classifier of Falcon/Piranha/CryptGPU,
  fc(512->256) . ReLU . fc(256->256) . ReLU . fc(256->10) (with max-pool,
  where those systems substituted average pooling).
* ``vgg16_tinyimagenet`` (3x64x64, 200): the same features give 512x2x2;
  flatten . fc(2048->512) . ReLU . fc(512->512) . ReLU . fc(512->200).
* ``vgg16_imagenet`` (3x224x224, 1000): torchvision's VGG-16: adaptive avgpool
  7x7 (identity at 224), fc(25088->4096) . ReLU . dropout . fc(4096->4096) .
  ReLU . dropout . fc(4096->1000); 138,357,544 parameters.
* ``resnet50``/``resnet101``/``resnet152`` (3x224x224, 1000): torchvision's
  ResNet v1.5: stem conv 7x7 s2 p3 (no bias) . BN . ReLU . maxpool 3x3 s2 p1;
  bottleneck blocks [3,4,6,3] / [3,4,23,3] / [3,8,36,3] (1x1, 3x3 with the
  stride, 1x1 expanding 4x, BN after each, ReLU after the residual add;
  downsample = conv 1x1 with the stride + BN); adaptive avgpool 1x1;
  fc(2048->1000).  25,557,032 / 44,549,160 / 60,192,808 parameters.

Parameter names follow torchvision where the model is torchvision-shaped
(``features.N``, ``classifier.N``, ``conv1``, ``layerK.B.bn2``, ``fc``).
"""

from __future__ import annotations

from typing import Callable

from .spec import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    Model,
    ReLU,
    Residual,
    Sequential,
    SpecError,
)

_REGISTRY: dict[str, Callable[[], Model]] = {}


def register(name: str):
    """Decorator: make a zero-argument model builder available as ``get_model(name)``."""

    def deco(fn):
        if name in _REGISTRY:
            raise SpecError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str) -> Model:
    """The architecture spec registered under ``name`` (case-insensitive, '-' = '_')."""
    key = name.strip().lower().replace("-", "_")
    try:
        return _REGISTRY[key]()
    except KeyError:
        raise SpecError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


#: key of the architecture spec (``mpcgpu-spec/1`` JSON) in a weights file's root attrs
#: and in a model shard's ``/public`` group
SPEC_KEY = "spec"


def architecture(name: str, public=None) -> Model:
    """The architecture of a weights file or model shard set: the spec it carries
    (``public[SPEC_KEY]``, :mod:`mpcgpu.nn.spec_io`) when it has one, else the model
    registered as ``name``.  The one place jobs resolve what network to run."""
    text = (public or {}).get(SPEC_KEY)
    if text is not None:
        from .spec_io import from_json

        return from_json(text)
    try:
        return get_model(name)
    except SpecError:
        raise SpecError(
            f"model {name!r} carries no architecture spec and is not a registered model "
            f"({', '.join(list_models())}); import it with `mpcgpu import` to store its architecture"
        ) from None


def _top(features, classifier, pool=None) -> Sequential:
    pairs = [("features", features)]
    if pool is not None:
        pairs.append(("avgpool", pool))
    pairs += [("flatten", Flatten()), ("classifier", classifier)]
    return Sequential.named(*pairs)


# ---------------------------------------------------------------- LeNet
@register("lenet")
def lenet() -> Model:
    features = Sequential((Conv2d(1, 20, 5), ReLU(), MaxPool2d(2), Conv2d(20, 50, 5), ReLU(), MaxPool2d(2)))
    classifier = Sequential((Linear(800, 500), ReLU(), Linear(500, 10)))
    return Model(
        "lenet",
        (1, 28, 28),
        10,
        _top(features, classifier),
        "LeNet for MNIST (the reference variant, docs/design.md §8)",
    )


# ---------------------------------------------------------------- AlexNet
def _alexnet_small_features() -> Sequential:
    return Sequential(
        (
            Conv2d(3, 64, 11, stride=4, padding=5),
            ReLU(),
            MaxPool2d(2),
            Conv2d(64, 192, 5, padding=2),
            ReLU(),
            MaxPool2d(2),
            Conv2d(192, 384, 3, padding=1),
            ReLU(),
            Conv2d(384, 256, 3, padding=1),
            ReLU(),
            Conv2d(256, 256, 3, padding=1),
            ReLU(),
            MaxPool2d(2),
        )
    )


@register("alexnet_cifar10")
def alexnet_cifar10() -> Model:
    return Model(
        "alexnet_cifar10",
        (3, 32, 32),
        10,
        _top(_alexnet_small_features(), Sequential((Linear(256, 10),))),
        "AlexNet, small CIFAR-10 variant (the reference variant, docs/design.md §8)",
    )


@register("alexnet_tinyimagenet")
def alexnet_tinyimagenet() -> Model:
    cls = Sequential((Linear(1024, 1024), ReLU(), Linear(1024, 1024), ReLU(), Linear(1024, 200)))
    return Model(
        "alexnet_tinyimagenet",
        (3, 64, 64),
        200,
        _top(_alexnet_small_features(), cls),
        "AlexNet small-variant features on 64x64, 3-layer classifier",
    )


@register("alexnet_imagenet")
def alexnet_imagenet() -> Model:
    features = Sequential(
        (
            Conv2d(3, 64, 11, stride=4, padding=2),
            ReLU(),
            MaxPool2d(3, 2),
            Conv2d(64, 192, 5, padding=2),
            ReLU(),
            MaxPool2d(3, 2),
            Conv2d(192, 384, 3, padding=1),
            ReLU(),
            Conv2d(384, 256, 3, padding=1),
            ReLU(),
            Conv2d(256, 256, 3, padding=1),
            ReLU(),
            MaxPool2d(3, 2),
        )
    )
    cls = Sequential(
        (Dropout(0.5), Linear(9216, 4096), ReLU(), Dropout(0.5), Linear(4096, 4096), ReLU(), Linear(4096, 1000))
    )
    return Model(
        "alexnet_imagenet", (3, 224, 224), 1000, _top(features, cls, AdaptiveAvgPool2d(6)), "torchvision AlexNet"
    )


# ---------------------------------------------------------------- VGG-16
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg_features(cfg=VGG16_CFG, in_ch: int = 3, batch_norm: bool = False) -> Sequential:
    """VGG feature extractor: ints are conv 3x3 p1 (+BN) + ReLU, "M" is maxpool 2."""
    layers, c = [], in_ch
    for v in cfg:
        if v == "M":
            layers.append(MaxPool2d(2))
        else:
            layers.append(Conv2d(c, int(v), 3, padding=1))
            if batch_norm:
                layers.append(BatchNorm2d(int(v)))
            layers.append(ReLU())
            c = int(v)
    return Sequential(tuple(layers))


@register("vgg16_cifar10")
def vgg16_cifar10() -> Model:
    return Model(
        "vgg16_cifar10",
        (3, 32, 32),
        10,
        _top(vgg_features(), Sequential((Linear(512, 10),))),
        "VGG-16 for CIFAR-10: 13 conv + maxpool, fc 512->10",
    )


@register("vgg16_bn_cifar10")
def vgg16_bn_cifar10() -> Model:
    return Model(
        "vgg16_bn_cifar10",
        (3, 32, 32),
        10,
        _top(vgg_features(batch_norm=True), Sequential((Linear(512, 10),))),
        "VGG-16 with BatchNorm for CIFAR-10, fc 512->10",
    )


@register("vgg16_cifar10_fc3")
def vgg16_cifar10_fc3() -> Model:
    cls = Sequential((Linear(512, 256), ReLU(), Linear(256, 256), ReLU(), Linear(256, 10)))
    return Model(
        "vgg16_cifar10_fc3",
        (3, 32, 32),
        10,
        _top(vgg_features(), cls),
        "VGG-16 for CIFAR-10 with the Falcon/Piranha classifier 512-256-256-10",
    )


@register("vgg16_tinyimagenet")
def vgg16_tinyimagenet() -> Model:
    cls = Sequential((Linear(2048, 512), ReLU(), Linear(512, 512), ReLU(), Linear(512, 200)))
    return Model(
        "vgg16_tinyimagenet",
        (3, 64, 64),
        200,
        _top(vgg_features(), cls),
        "VGG-16 for Tiny ImageNet: 13 conv + maxpool, fc 2048-512-512-200",
    )


@register("vgg16_imagenet")
def vgg16_imagenet() -> Model:
    cls = Sequential(
        (Linear(25088, 4096), ReLU(), Dropout(0.5), Linear(4096, 4096), ReLU(), Dropout(0.5), Linear(4096, 1000))
    )
    return Model(
        "vgg16_imagenet", (3, 224, 224), 1000, _top(vgg_features(), cls, AdaptiveAvgPool2d(7)), "torchvision VGG-16"
    )


# ---------------------------------------------------------------- ResNet
def bottleneck(in_ch: int, width: int, stride: int = 1, expansion: int = 4) -> Residual:
    """Bottleneck block (v1.5: stride on the 3x3 conv), ReLU after the residual add."""
    out_ch = width * expansion
    body = Sequential.named(
        ("conv1", Conv2d(in_ch, width, 1, bias=False)),
        ("bn1", BatchNorm2d(width)),
        ("relu1", ReLU()),
        ("conv2", Conv2d(width, width, 3, stride=stride, padding=1, bias=False)),
        ("bn2", BatchNorm2d(width)),
        ("relu2", ReLU()),
        ("conv3", Conv2d(width, out_ch, 1, bias=False)),
        ("bn3", BatchNorm2d(out_ch)),
    )
    shortcut = None
    if stride != 1 or in_ch != out_ch:
        shortcut = Sequential((Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), BatchNorm2d(out_ch)))
    return Residual(body, shortcut, relu=True)


def resnet_bottleneck(name: str, blocks, num_classes: int = 1000, input_shape=(3, 224, 224)) -> Model:
    """A torchvision-shaped bottleneck ResNet (stage ``layerK`` holds ``Residual`` blocks)."""
    pairs = [
        ("conv1", Conv2d(3, 64, 7, stride=2, padding=3, bias=False)),
        ("bn1", BatchNorm2d(64)),
        ("relu", ReLU()),
        ("maxpool", MaxPool2d(3, 2, 1)),
    ]
    in_ch = 64
    for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
        stage = []
        for b in range(n):
            stride = 2 if (b == 0 and i > 0) else 1
            stage.append(bottleneck(in_ch, width, stride))
            in_ch = width * 4
        pairs.append((f"layer{i + 1}", Sequential(tuple(stage))))
    pairs += [("avgpool", AdaptiveAvgPool2d(1)), ("flatten", Flatten()), ("fc", Linear(in_ch, num_classes))]
    return Model(
        name,
        input_shape,
        num_classes,
        Sequential.named(*pairs),
        f"torchvision-style {name} (bottleneck blocks {list(blocks)})",
    )


def _resnet(name, blocks):
    return resnet_bottleneck(name, blocks)


@register("resnet50")
def resnet50() -> Model:
    return _resnet("resnet50", (3, 4, 6, 3))


@register("resnet101")
def resnet101() -> Model:
    return _resnet("resnet101", (3, 4, 23, 3))


@register("resnet152")
def resnet152() -> Model:
    return _resnet("resnet152", (3, 8, 36, 3))


__all__ = [
    "SPEC_KEY",
    "architecture",
    "register",
    "list_models",
    "get_model",
    "lenet",
    "alexnet_cifar10",
    "alexnet_tinyimagenet",
    "alexnet_imagenet",
    "vgg_features",
    "VGG16_CFG",
    "vgg16_cifar10",
    "vgg16_bn_cifar10",
    "vgg16_cifar10_fc3",
    "vgg16_tinyimagenet",
    "vgg16_imagenet",
    "bottleneck",
    "resnet_bottleneck",
    "resnet50",
    "resnet101",
    "resnet152",
]
