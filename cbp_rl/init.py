"""Uniform weight-initialization schemes shared by network construction and CBP's unit re-initialization."""

from __future__ import annotations

import math

import torch
from torch import nn

INIT_SCHEMES = ("lecun", "kaiming", "xavier", "default")

_GAIN_NAMES = {
    nn.ReLU: "relu",
    nn.ELU: "relu",
    nn.SiLU: "relu",
    nn.GELU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.SELU: "selu",
}


def activation_gain(activation: nn.Module | None) -> float:
    """Recommended gain of ``torch.nn.init.calculate_gain`` for an activation module (1 if unknown or None)."""
    if isinstance(activation, nn.LeakyReLU):
        return nn.init.calculate_gain("leaky_relu", activation.negative_slope)
    for cls, name in _GAIN_NAMES.items():
        if isinstance(activation, cls):
            return nn.init.calculate_gain(name)
    return 1.0


def check_init(init: str) -> str:
    if init not in INIT_SCHEMES:
        raise ValueError(f"init={init!r} is not supported: expected one of {', '.join(INIT_SCHEMES)}")
    return init


def uniform_bound(init: str, layer: nn.Linear, activation: nn.Module | None = None) -> float:
    """Bound ``b`` such that the scheme draws ``layer``'s weights from U(-b, b).

    :param init: ``lecun`` (sqrt(3/fan_in)), ``kaiming`` (gain·sqrt(3/fan_in)),
        ``xavier`` (gain·sqrt(6/(fan_in+fan_out))) or ``default`` (torch's nn.Linear: 1/sqrt(fan_in)).
    :param activation: the activation applied to the layer's output; sets the gain.
    """
    fan_in, fan_out = layer.in_features, layer.out_features
    if check_init(init) == "lecun":
        return math.sqrt(3.0 / fan_in)
    if init == "kaiming":
        return activation_gain(activation) * math.sqrt(3.0 / fan_in)
    if init == "xavier":
        return activation_gain(activation) * math.sqrt(6.0 / (fan_in + fan_out))
    return 1.0 / math.sqrt(fan_in)


@torch.no_grad()
def init_linear_(layer: nn.Linear, init: str, activation: nn.Module | None = None, bias: float = 0.0) -> nn.Linear:
    """Draw ``layer.weight`` from U(-b, b) of the scheme and set its bias to ``bias``."""
    bound = uniform_bound(init, layer, activation)
    layer.weight.uniform_(-bound, bound)
    if layer.bias is not None:
        layer.bias.fill_(bias)
    return layer
