"""The model zoo: the classic XNOR-Net architectures and a ResNet for small images, written
from the papers.

- `lenet5`: LeNet-5 for MNIST-sized input (LeCun et al. 1998, in the layer sizes XNOR-Net
  experiments use: conv 20@5x5, conv 50@5x5, fc 500, fc num_classes).
- `nin`: Network in Network for CIFAR-10 (Lin et al. 2014), as trained in XNOR-Net.
- `alexnet`: AlexNet for ImageNet (Krizhevsky et al. 2012), the XNOR-Net paper's
  main model, 224 or 227 input.
- `resnet`: He et al.'s ResNet for CIFAR (depth 6n + 2, widths w, 2w, 4w), 28x28 or
  32x32 input, in three flavours (see `resnet`).

The models are full precision: BinOp makes them binary. ``BinOp(model)`` binarizes the
weights of every conv/linear but the first and the last (a binary-weight network, BWN);
``BinOp(model, activations="sign")`` binarizes their inputs too (XNOR-Net). The XNOR-Net
blocks follow section 3.3 of the paper: BatchNorm -> [sign] -> (Dropout) -> Conv/Linear ->
ReLU, the sign being BinOp's input quantizer and the dropout the layer's own input dropout,
which runs after it, so a dropped binary input reads 0 as in the paper's models.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from .layers import RPReLU

# BatchNorm as in the XNOR-Net reference models: affine inside the binary blocks (its shift
# is a learned threshold for the sign), without affine parameters after the first conv.
_BN_EPS, _BN_MOMENTUM = 1e-4, 0.1


def _bn(channels: int, dims: int = 2, affine: bool = False) -> nn.Module:
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return norm(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM, affine=affine)


def xnor_conv(c_in: int, c_out: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
              dropout: float = 0.0) -> nn.Sequential:
    """XNOR-Net's conv block: BatchNorm -> [sign] -> (Dropout) -> Conv2d -> ReLU, the conv named `conv`."""
    conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding)
    return _xnor_block(_bn(c_in, affine=True), "conv", conv, dropout)


def xnor_linear(f_in: int, f_out: int, *, dropout: float = 0.0) -> nn.Sequential:
    """XNOR-Net's fully connected block: BatchNorm -> [sign] -> (Dropout) -> Linear -> ReLU, the layer named
    `linear`."""
    return _xnor_block(_bn(f_in, dims=1, affine=True), "linear", nn.Linear(f_in, f_out), dropout)


def _xnor_block(norm: nn.Module, layer_name: str, layer: nn.Module, dropout: float) -> nn.Sequential:
    if dropout:
        _drop_input(layer, dropout)
    return nn.Sequential(OrderedDict([("norm", norm), (layer_name, layer), ("relu", nn.ReLU(inplace=True))]))


def _drop_input(layer: nn.Module, p: float) -> None:
    """Dropout on what `layer` receives, as its child `input_dropout` and a forward pre-hook.

    BinOp's input quantizer is a forward pre-hook put before the layer's own, so the dropout
    acts on sign(x): a dropped input is 0 and a kept one +-1 / (1 - p), as in XNOR-Net's
    BinActive -> Dropout -> Conv. Without binary inputs it is plain dropout on x."""
    layer.input_dropout = nn.Dropout(p)
    layer.register_forward_pre_hook(_apply_input_dropout)


def _apply_input_dropout(layer: nn.Module, args: tuple) -> tuple:
    return (layer.input_dropout(args[0]), *args[1:])


def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """LeNet-5 for 28x28 input: conv 20@5x5, conv 50@5x5, fc 500, BatchNorm, fc num_classes."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 20, 5)),  # full precision
        ("bn1", _bn(20)),
        ("relu1", nn.ReLU(inplace=True)),
        ("pool1", nn.MaxPool2d(2)),  # (20, 12, 12)
        ("block2", xnor_conv(20, 50, 5)),
        ("pool2", nn.MaxPool2d(2)),  # (50, 4, 4)
        ("flatten", nn.Flatten()),
        ("block3", xnor_linear(50 * 4 * 4, 500)),
        ("bn4", _bn(500, dims=1)),  # as NIN and AlexNet: keeps fc4's input scale steady at high learning rates
        ("fc4", nn.Linear(500, num_classes)),  # full precision
    ]))


def nin(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Network in Network for 32x32 input, with XNOR-Net's blocks."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 192, 5, padding=2)),  # full precision
        ("bn1", _bn(192)),
        ("relu1", nn.ReLU(inplace=True)),
        ("block2", xnor_conv(192, 160, 1)),
        ("block3", xnor_conv(160, 96, 1)),
        ("pool3", nn.MaxPool2d(3, stride=2, padding=1)),  # (96, 16, 16)
        ("block4", xnor_conv(96, 192, 5, padding=2, dropout=0.5)),
        ("block5", xnor_conv(192, 192, 1)),
        ("block6", xnor_conv(192, 192, 1)),
        ("pool6", nn.AvgPool2d(3, stride=2, padding=1)),  # (192, 8, 8)
        ("block7", xnor_conv(192, 192, 3, padding=1, dropout=0.5)),
        ("block8", xnor_conv(192, 192, 1)),
        ("bn9", _bn(192)),
        ("conv9", nn.Conv2d(192, num_classes, 1)),  # full precision
        ("relu9", nn.ReLU(inplace=True)),
        ("pool9", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
    ]))


def alexnet(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """AlexNet as binarized in XNOR-Net, for 224x224 or 227x227 input."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 96, 11, stride=4)),  # full precision
        ("bn1", _bn(96)),
        ("relu1", nn.ReLU(inplace=True)),
        ("pool1", nn.MaxPool2d(3, stride=2)),
        ("block2", xnor_conv(96, 256, 5, padding=2)),
        ("pool2", nn.MaxPool2d(3, stride=2)),
        ("block3", xnor_conv(256, 384, 3, padding=1)),
        ("block4", xnor_conv(384, 384, 3, padding=1)),
        ("block5", xnor_conv(384, 256, 3, padding=1)),
        ("pool5", nn.MaxPool2d(3, stride=2)),
        ("pool6", nn.AdaptiveAvgPool2d(6)),  # (256, 6, 6) for 224 and 227 input alike
        ("flatten", nn.Flatten()),
        ("block6", xnor_linear(256 * 6 * 6, 4096, dropout=0.5)),
        ("block7", xnor_linear(4096, 4096, dropout=0.5)),
        ("bn8", _bn(4096, dims=1)),
        ("fc8", nn.Linear(4096, num_classes)),  # full precision
    ]))


RESNET_FLAVOURS = ("float", "xnor", "bireal", "reactnet")


class BasicBlock(nn.Module):
    """He et al.'s basic block of two 3x3 convs, `conv1` (with `stride`) and `conv2`, in a flavour:

    float:   out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))
    xnor:    out = relu(conv2(bn2(relu(conv1(bn1(x))))) + shortcut(x))    BatchNorm before each
             conv, so that BinOp's sign sees a centred input (XNOR-Net's order)
    bireal:  h = bn1(conv1(x)) + shortcut(x);  out = bn2(conv2(h)) + h    a real-valued
             shortcut around each conv (Bi-Real Net, Liu et al. 2018)
    reactnet: h = act1(bn1(conv1(x)) + shortcut(x));  out = act2(bn2(conv2(h)) + h)    Bi-Real
             with an RPReLU after each sum (ReActNet, Liu et al. 2020; with
             ``activations="rsign"`` its signs get learnable thresholds too); the BatchNorm
             after each binary conv is its learned per-channel scale

    `shortcut` is the identity where the shape stays; where it changes it is a 1x1 conv with
    the stride and a BatchNorm (float: conv -> BN; xnor: BN -> conv, binarized with the rest),
    or for bireal and reactnet AvgPool2d(stride) -> 1x1 conv -> BN, real-valued downsampling
    (exclude it from BinOp with the pattern ``*.shortcut.*``)."""

    def __init__(self, c_in: int, c_out: int, stride: int, flavour: str):
        super().__init__()
        self.flavour = flavour
        self.bn1 = nn.BatchNorm2d(c_in if flavour == "xnor" else c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else _downsample(c_in, c_out, stride, flavour)
        if flavour == "reactnet":
            self.act1, self.act2 = RPReLU(c_out), RPReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flavour == "float":
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(out + self.shortcut(x))
        if self.flavour == "xnor":
            out = self.conv2(self.bn2(torch.relu(self.conv1(self.bn1(x)))))
            return torch.relu(out + self.shortcut(x))
        if self.flavour == "bireal":
            h = self.bn1(self.conv1(x)) + self.shortcut(x)
            return self.bn2(self.conv2(h)) + h
        h = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.act2(self.bn2(self.conv2(h)) + h)

    def extra_repr(self) -> str:
        return f"flavour={self.flavour!r}"


def _downsample(c_in: int, c_out: int, stride: int, flavour: str) -> nn.Sequential:
    real_valued = flavour in ("bireal", "reactnet")
    conv = nn.Conv2d(c_in, c_out, 1, stride=1 if real_valued else stride, bias=False)
    if flavour == "xnor":
        return nn.Sequential(OrderedDict([("norm", nn.BatchNorm2d(c_in)), ("conv", conv)]))
    parts = [("conv", conv), ("norm", nn.BatchNorm2d(c_out))]
    return nn.Sequential(OrderedDict([("pool", nn.AvgPool2d(stride)), *parts] if real_valued else parts))


def resnet(num_classes: int = 10, in_channels: int = 3, depth: int = 20, width: int = 16,
           flavour: str = "float") -> nn.Module:
    """He et al.'s ResNet for CIFAR ("Deep residual learning for image recognition", 2016,
    section 4.2): a 3x3 stem conv of `width` channels, three stages of (depth - 2) / 6 basic
    blocks of width, 2 * width and 4 * width channels (the second and third starting with
    stride 2), global average pooling and a linear classifier. For 32x32 and 28x28 input.

    `flavour` ("float", "xnor", "bireal" or "reactnet", see `BasicBlock`) orders the blocks
    for a full-precision network, for XNOR-Net (binary weights and inputs in every block
    conv, with ``BinOp(model, activations="sign")``), for Bi-Real Net (with
    ``BinOp(model, activations="approx_sign", exclude=["*.shortcut.*"])``) or for ReActNet
    (the same with ``activations="rsign"``). The stem and the classifier stay full
    precision (BinOp skips the first and last layer); the stem ends with a ReLU for float
    and xnor, and with its BatchNorm for bireal and reactnet, whose first sign reads it."""
    if flavour not in RESNET_FLAVOURS:
        raise ValueError(f"flavour {flavour!r} is not one of {', '.join(RESNET_FLAVOURS)}")
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth {depth} is not 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)")
    blocks, stages, c_in = (depth - 2) // 6, [], width
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        layers = [BasicBlock(c_in if i == 0 else c_out, c_out, 2 if stage and i == 0 else 1, flavour)
                  for i in range(blocks)]
        stages.append((f"layer{stage + 1}", nn.Sequential(*layers)))
        c_in = c_out
    stem = [("conv", nn.Conv2d(in_channels, width, 3, padding=1, bias=False)), ("norm", nn.BatchNorm2d(width)),
            *([] if flavour in ("bireal", "reactnet") else [("relu", nn.ReLU(inplace=True))])]
    return nn.Sequential(OrderedDict([
        ("stem", nn.Sequential(OrderedDict(stem))),  # full precision
        *stages,
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(4 * width, num_classes)),  # full precision
    ]))


ZOO: dict[str, Callable[..., nn.Module]] = {"lenet5": lenet5, "nin": nin, "alexnet": alexnet, "resnet": resnet}


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a zoo model by name; the error lists the valid names."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}: choose one of {', '.join(sorted(ZOO))}")
    return ZOO[name](**kwargs)
