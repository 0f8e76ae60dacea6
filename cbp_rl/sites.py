"""Sites (layers of hidden units) of torch MLPs, possibly stacked ensembles, and the re-initialization of units.

A layer's weight is ``[..., out, in]``: ``nn.Linear`` has no leading dims; `StackedLinear` holds ``members``
independent layers (e.g. one network per seed) trained as one batched computation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

_FIRST_MOMENTS = ("exp_avg", "momentum_buffer")
_SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum")


class StackedLinear(nn.Module):
    """``members`` independent Linear layers applied to ``[members, batch, in]`` inputs in one batched matmul.

    :param members: number of independent layers (e.g. seeds).
    :param in_features: inputs of each layer.
    :param out_features: outputs of each layer.
    """

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features)) if bias else None
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.bmm(x, self.weight.mT)
        return out if self.bias is None else out + self.bias.unsqueeze(1)

    def extra_repr(self) -> str:
        return f"members={self.weight.shape[0]}, in_features={self.in_features}, out_features={self.out_features}"


LINEAR_TYPES = (nn.Linear, StackedLinear)


@dataclass(frozen=True)
class Site:
    """One layer of hidden units.

    :param producer: the Linear (or `StackedLinear`) whose output rows are the units' pre-activations.
    :param activation: the module applied to them; its output is what the units emit.
        Must be its own instance (not shared with another layer).
    :param consumers: every Linear that reads the activations: the next hidden layer, or the head(s).
    """

    producer: nn.Module
    activation: nn.Module
    consumers: tuple[nn.Module, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "consumers", tuple(self.consumers))
        if not isinstance(self.producer, LINEAR_TYPES) or not self.consumers:
            raise ValueError("a Site needs a Linear producer and at least one Linear consumer")
        for consumer in self.consumers:
            if (
                not isinstance(consumer, LINEAR_TYPES)
                or consumer.weight.shape[-1] != self.units
                or consumer.weight.shape[:-2] != self.producer.weight.shape[:-2]
            ):
                raise ValueError(f"consumer {consumer} does not read the {self.units} units of {self.producer}")

    @property
    def units(self) -> int:
        return self.producer.weight.shape[-2]

    @property
    def members(self) -> int:
        """Independent copies of the layer (1 for ``nn.Linear``)."""
        return math.prod(self.producer.weight.shape[:-2])

    @property
    def member_shape(self) -> torch.Size:
        return self.producer.weight.shape[:-2]


def sequential_sites(net: nn.Sequential, heads: Sequence[nn.Module] = ()) -> dict[str, Site]:
    """Sites ``l0, l1, ...`` of an ``nn.Sequential`` alternating Linear and activation modules.

    The Sequential either ends with a Linear (a complete MLP) or with an activation whose output
    ``heads`` read (an MLP body, e.g. SB3's ``policy_net`` feeding ``action_net``).
    """
    layers = list(net)
    linears, activations = layers[0::2], layers[1::2]
    ends_with_linear = len(linears) == len(activations) + 1
    if (
        not activations
        or not (ends_with_linear or (len(linears) == len(activations) and heads))
        or not all(isinstance(m, LINEAR_TYPES) for m in linears)
        or any(isinstance(m, LINEAR_TYPES) or any(True for _ in m.parameters()) for m in activations)
    ):
        raise ValueError(
            "expected nn.Sequential(Linear, activation, ..., Linear) or an MLP body ending with an activation "
            f"plus its heads, with parameter-free activations; got {[type(m).__name__ for m in layers]}"
        )
    consumers = [(linear,) for linear in linears[1:]] + ([] if ends_with_linear else [tuple(heads)])
    return {f"l{i}": Site(linears[i], activations[i], consumers[i]) for i in range(len(activations))}


def _assign(target: torch.Tensor, dim: int, units: torch.Tensor, values: torch.Tensor | float, mask: torch.Tensor | None) -> None:
    """``target[m, ..., units[m, j], ...] = values`` along ``dim`` for every member ``m`` and pick ``j`` kept by ``mask``."""
    shape = list(target.shape)
    shape[dim] = units.shape[1]
    index = units.view(units.shape[0], *([1] * (dim - 1)), units.shape[1], *([1] * (target.dim() - dim - 1))).expand(shape)
    values = torch.as_tensor(values, dtype=target.dtype, device=target.device).expand(shape)
    if mask is not None:
        mask = mask.view(index.shape[0], *([1] * (dim - 1)), mask.shape[1], *([1] * (target.dim() - dim - 1)))
        values = torch.where(mask, values, target.gather(dim, index))
    target.scatter_(dim, index, values)


@torch.no_grad()
def reinitialize_units(
    site: Site,
    units: torch.Tensor,
    bound: float,
    mask: torch.Tensor | None = None,
    mean_contribution: torch.Tensor | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Give units of a site fresh input weights ~ U(-bound, bound), zero input bias and zero outgoing weights.

    :param units: ``[members, k]`` unit indices per member.
    :param mask: ``[members, k]``; False entries are left alone (members replacing fewer than ``k`` units).
    :param mean_contribution: ``[members, k]`` mean activation of the old units, added to the consumers' biases
        through their outgoing weights so the layer's mean output is unchanged.
    :param optimizer: if given, its state of the touched rows/columns is reset: first moments to 0, second
        moments to the mean of the rest of the member's tensor (so new units' first steps are no larger).
    """
    members, picks = units.shape
    producer = site.producer
    weight = producer.weight.view(members, site.units, -1)
    fresh = torch.empty(members, picks, weight.shape[-1], dtype=weight.dtype, device=weight.device).uniform_(-bound, bound)
    _assign(weight, 1, units, fresh, mask)
    touched = [(producer.weight, weight.shape, 1)]
    if producer.bias is not None:
        _assign(producer.bias.view(members, site.units), 1, units, 0.0, mask)
        touched.append((producer.bias, (members, site.units), 1))
    for consumer in site.consumers:
        out_weight = consumer.weight.view(members, -1, site.units)
        if consumer.bias is not None and mean_contribution is not None:
            outgoing = out_weight.gather(2, units.unsqueeze(1).expand(-1, out_weight.shape[1], -1))
            contribution = mean_contribution if mask is None else mean_contribution * mask
            consumer.bias.view(members, -1).add_((outgoing * contribution.unsqueeze(1)).sum(-1))
        _assign(out_weight, 2, units, 0.0, mask)
        touched.append((consumer.weight, out_weight.shape, 2))
    if optimizer is not None:
        for param, shape, dim in touched:
            _reset_moments(optimizer.state.get(param, {}), param, shape, dim, units, mask)


def _reset_moments(
    state: dict, param: torch.Tensor, shape: torch.Size, dim: int, units: torch.Tensor, mask: torch.Tensor | None
) -> None:
    for key, moment in state.items():
        if not torch.is_tensor(moment) or moment.shape != param.shape:
            continue
        view = moment.view(shape)
        if key in _FIRST_MOMENTS:
            _assign(view, dim, units, 0.0, mask)
        elif key in _SECOND_MOMENTS:
            _assign(view, dim, units, _mean_of_untouched(view, dim, units, mask), mask)


def _mean_of_untouched(moment: torch.Tensor, dim: int, units: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per member, the mean of the entries outside the replaced slices, shaped to broadcast over ``moment``."""
    members, width = moment.shape[0], moment.shape[dim]
    per_slice = moment.numel() // (members * width)
    replaced = torch.zeros(members, width, dtype=moment.dtype, device=moment.device)
    replaced.scatter_(1, units, 1.0 if mask is None else mask.to(moment.dtype))
    other_dims = [d for d in range(1, moment.dim()) if d != dim]
    slice_sums = moment.sum(dim=other_dims) if other_dims else moment
    kept_sum = (slice_sums * (1 - replaced)).sum(1)
    kept_entries = ((width - replaced.sum(1)) * per_slice).clamp_min(1)
    return (kept_sum / kept_entries).view(members, *([1] * (moment.dim() - 1)))
