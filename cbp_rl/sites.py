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


@torch.no_grad()
def reinitialize_units(
    site: Site,
    units: Sequence[torch.Tensor],
    bound: float,
    mean_contribution: Sequence[torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Give units of a site fresh input weights ~ U(-bound, bound), zero input bias and zero outgoing weights.

    :param units: per member, the 1-D indices of its units to re-initialize (any number, possibly none).
    :param mean_contribution: per member, the mean activation of those old units, added to the consumers'
        biases through their outgoing weights so the layer's mean output is unchanged.
    :param optimizer: if given, its state of the touched rows/columns is reset: first moments to 0, second
        moments to the mean of the rest of the member's tensor (so new units' first steps are no larger).
    """
    producer = site.producer
    weights, biases = _by_member(producer.weight, 2), _by_member(producer.bias, 1)
    outgoing = [_by_member(consumer.weight, 2) for consumer in site.consumers]
    consumer_biases = [_by_member(consumer.bias, 1) for consumer in site.consumers]
    touched = [(producer.weight, 2, 0), (producer.bias, 1, 0)] + [(c.weight, 2, 1) for c in site.consumers]
    touched = [(param, dims, dim) for param, dims, dim in touched if param is not None]
    for member, index in enumerate(units):
        if len(index) == 0:
            continue
        weight = weights[member]
        fresh = torch.empty(len(index), weight.shape[-1], dtype=weight.dtype, device=weight.device)
        weight.index_copy_(0, index, fresh.uniform_(-bound, bound))
        if biases:
            biases[member].index_fill_(0, index, 0.0)
        for out, consumer_bias in zip(outgoing, consumer_biases):
            if consumer_bias and mean_contribution is not None:
                consumer_bias[member].add_(out[member].index_select(1, index) @ mean_contribution[member].to(out[member].dtype))
            out[member].index_fill_(1, index, 0.0)
        if optimizer is not None:
            for param, dims, dim in touched:
                _reset_moments(optimizer.state.get(param, {}), param, dims, member, dim, index)


def _by_member(tensor: torch.Tensor | None, dims: int) -> Sequence[torch.Tensor]:
    """Views of each member's slice of a layer's ``tensor`` (its last ``dims`` dims); empty for None."""
    if tensor is None:
        return ()
    if tensor.dim() == dims:
        return (tensor,)
    return tensor.view(-1, *tensor.shape[-dims:]).unbind(0)


def _reset_moments(state: dict, param: torch.Tensor, dims: int, member: int, dim: int, index: torch.Tensor) -> None:
    """Zero the first moments of the touched slices of one member; set its second moments to the mean of the rest."""
    for key, moment in state.items():
        if not torch.is_tensor(moment) or moment.shape != param.shape:
            continue
        view = _by_member(moment, dims)[member]
        if key in _FIRST_MOMENTS:
            view.index_fill_(dim, index, 0.0)
        elif key in _SECOND_MOMENTS:
            untouched = view.numel() - len(index) * (view.numel() // view.shape[dim])
            view.index_fill_(dim, index, 0.0)
            view.index_fill_(dim, index, view.sum().div_(max(untouched, 1)))
