"""The model zoo: the classic XNOR-Net architectures, written from the papers.

- `lenet5`: LeNet-5 for MNIST-sized input (LeCun et al. 1998, in the layer sizes XNOR-Net
  experiments use: conv 20@5x5, conv 50@5x5, fc 500, fc num_classes).
- `nin`: Network in Network for CIFAR-10 (Lin et al. 2014), as trained in XNOR-Net.
- `alexnet`: AlexNet for ImageNet (Krizhevsky et al. 2012), the XNOR-Net paper's
  main model, 224 or 227 input.

Binary blocks follow XNOR-Net section 3.3: BatchNorm -> BinActive -> (Dropout) ->
Conv/Linear -> ReLU. The first and the last layer stay full precision (BinOp skips them
by default). `binary_activations=False` swaps BinActive for the identity, giving a
binary-weight network (BWN) once BinOp is attached, or a full-precision one without it.
`act_scale="K"` (or `"channel_mean"`) scales each binary layer's output by XNOR-Net's
activation scale K (section 3.2; `activations.activation_scale`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from .activations import ACTIVATION_SCALES, BinActive, activation_scale

# BatchNorm as in the XNOR-Net reference models: affine inside the binary blocks (its shift
# is a learned threshold for BinActive), without affine parameters after the first conv.
_BN_EPS, _BN_MOMENTUM = 1e-4, 0.1


def _bn(channels: int, dims: int = 2, affine: bool = False) -> nn.Module:
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return norm(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM, affine=affine)


def binary_conv(c_in: int, c_out: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
                dropout: float = 0.0, binary_activations: bool = True, act_scale: str = "none") -> BinaryBlock:
    """BatchNorm -> BinActive -> (Dropout) -> Conv2d (-> * K) -> ReLU, the conv named `conv`."""
    conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding)
    return BinaryBlock(_bn(c_in, affine=True), conv, "conv", dropout, binary_activations, act_scale)


def binary_linear(f_in: int, f_out: int, *, dropout: float = 0.0, binary_activations: bool = True,
                  act_scale: str = "none") -> BinaryBlock:
    """BatchNorm -> BinActive -> (Dropout) -> Linear (-> * K) -> ReLU, the linear layer named `linear`."""
    linear = nn.Linear(f_in, f_out)
    return BinaryBlock(_bn(f_in, dims=1, affine=True), linear, "linear", dropout, binary_activations, act_scale)


class BinaryBlock(nn.Module):
    """XNOR-Net's binary block: norm -> act -> (dropout) -> conv/linear (-> * K) -> relu.

    `act_scale` ("none", "channel_mean" or "K", see `activations.activation_scale`) scales the
    layer's output by K computed from the normalized input, as in XNOR-Net section 3.2.
    """

    def __init__(self, norm: nn.Module, layer: nn.Module, layer_name: str, dropout: float,
                 binary_activations: bool, act_scale: str = "none"):
        super().__init__()
        if act_scale not in ACTIVATION_SCALES:
            raise ValueError(f"act_scale {act_scale!r} is not one of {', '.join(ACTIVATION_SCALES)}")
        if act_scale != "none" and not binary_activations:
            raise ValueError(f"act_scale {act_scale!r} scales binary activations: it needs binary_activations=True")
        self.act_scale, self.layer_name = act_scale, layer_name
        self.norm = norm
        self.act = BinActive() if binary_activations else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout else None
        self.add_module(layer_name, layer)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        layer = getattr(self, self.layer_name)
        k = activation_scale(x, self.act_scale, layer)
        x = self.act(x)
        if self.dropout is not None:
            x = self.dropout(x)
        x = layer(x)
        return self.relu(x if k is None else x * k)

    def extra_repr(self) -> str:
        return f"act_scale={self.act_scale!r}" if self.act_scale != "none" else ""


def lenet5(num_classes: int = 10, in_channels: int = 1, binary_activations: bool = True,
           act_scale: str = "none") -> nn.Module:
    """LeNet-5 for 28x28 input: conv 20@5x5, conv 50@5x5, fc 500, BatchNorm, fc num_classes."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 20, 5)),  # full precision
        ("bn1", _bn(20)),
        ("relu1", nn.ReLU(inplace=True)),
        ("pool1", nn.MaxPool2d(2)),  # (20, 12, 12)
        ("block2", binary_conv(20, 50, 5, binary_activations=binary_activations, act_scale=act_scale)),
        ("pool2", nn.MaxPool2d(2)),  # (50, 4, 4)
        ("flatten", nn.Flatten()),
        ("block3", binary_linear(50 * 4 * 4, 500, binary_activations=binary_activations, act_scale=act_scale)),
        ("bn4", _bn(500, dims=1)),  # as NIN and AlexNet: keeps fc4's input scale steady at high learning rates
        ("fc4", nn.Linear(500, num_classes)),  # full precision
    ]))


def nin(num_classes: int = 10, in_channels: int = 3, binary_activations: bool = True,
        act_scale: str = "none") -> nn.Module:
    """Network in Network for 32x32 input, with XNOR-Net's binary blocks."""
    def block(c_in, c_out, k, padding=0, dropout=0.0):
        return binary_conv(c_in, c_out, k, padding=padding, dropout=dropout,
                           binary_activations=binary_activations, act_scale=act_scale)

    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 192, 5, padding=2)),  # full precision
        ("bn1", _bn(192)),
        ("relu1", nn.ReLU(inplace=True)),
        ("block2", block(192, 160, 1)),
        ("block3", block(160, 96, 1)),
        ("pool3", nn.MaxPool2d(3, stride=2, padding=1)),  # (96, 16, 16)
        ("block4", block(96, 192, 5, padding=2, dropout=0.5)),
        ("block5", block(192, 192, 1)),
        ("block6", block(192, 192, 1)),
        ("pool6", nn.AvgPool2d(3, stride=2, padding=1)),  # (192, 8, 8)
        ("block7", block(192, 192, 3, padding=1, dropout=0.5)),
        ("block8", block(192, 192, 1)),
        ("bn9", _bn(192)),
        ("conv9", nn.Conv2d(192, num_classes, 1)),  # full precision
        ("relu9", nn.ReLU(inplace=True)),
        ("pool9", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
    ]))


def alexnet(num_classes: int = 1000, in_channels: int = 3, binary_activations: bool = True,
            act_scale: str = "none") -> nn.Module:
    """AlexNet as binarized in XNOR-Net, for 224x224 or 227x227 input."""
    def conv(c_in, c_out, k, padding=0):
        return binary_conv(c_in, c_out, k, padding=padding, binary_activations=binary_activations,
                           act_scale=act_scale)

    def fc(f_in, f_out):
        return binary_linear(f_in, f_out, dropout=0.5, binary_activations=binary_activations, act_scale=act_scale)

    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 96, 11, stride=4)),  # full precision
        ("bn1", _bn(96)),
        ("relu1", nn.ReLU(inplace=True)),
        ("pool1", nn.MaxPool2d(3, stride=2)),
        ("block2", conv(96, 256, 5, padding=2)),
        ("pool2", nn.MaxPool2d(3, stride=2)),
        ("block3", conv(256, 384, 3, padding=1)),
        ("block4", conv(384, 384, 3, padding=1)),
        ("block5", conv(384, 256, 3, padding=1)),
        ("pool5", nn.MaxPool2d(3, stride=2)),
        ("pool6", nn.AdaptiveAvgPool2d(6)),  # (256, 6, 6) for 224 and 227 input alike
        ("flatten", nn.Flatten()),
        ("block6", fc(256 * 6 * 6, 4096)),
        ("block7", fc(4096, 4096)),
        ("bn8", _bn(4096, dims=1)),
        ("fc8", nn.Linear(4096, num_classes)),  # full precision
    ]))


ZOO: dict[str, Callable[..., nn.Module]] = {"lenet5": lenet5, "nin": nin, "alexnet": alexnet}


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a zoo model by name; the error lists the valid names."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}: choose one of {', '.join(sorted(ZOO))}")
    return ZOO[name](**kwargs)
