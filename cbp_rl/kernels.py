"""CBP's per-step utility update in one pass of C (`_kernels.c`), built at install where a C compiler is present.

Set ``CBP_RL_KERNELS=0`` to make CBP use torch ops instead (the fallback, e.g. to compare the two).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

try:
    from . import _kernels
except ImportError:
    _kernels = None

ENABLED = _kernels is not None and os.environ.get("CBP_RL_KERNELS", "1") != "0"


class KernelSite:
    """A site as the kernel reads it: its consumers, its shape and its running averages (``[*members, units]``).

    :param nonnegative: the site's activation is never negative, so ``|h|`` is ``h``.
    """

    def __init__(
        self,
        consumers: Sequence[nn.Module],
        members: int,
        units: int,
        nonnegative: bool,
        utility: torch.Tensor,
        mean_activation: torch.Tensor,
    ) -> None:
        self.consumers, self.members, self.units = tuple(consumers), members, units
        self.fixed = (units, nonnegative, utility.data_ptr(), mean_activation.data_ptr(), len(self.consumers))

    @staticmethod
    def accepts(utility: torch.Tensor) -> bool:
        """Whether the kernel is built, enabled and can update running averages like ``utility`` (float32, CPU)."""
        return ENABLED and _plain(utility)

    def arguments(self, h: torch.Tensor) -> list[int] | None:
        """The kernel's arguments for one step on the recorded activations ``h`` ``[*members, batch, units]``, or
        None where ``h`` or a consumer's weight ``[*members, rows, units]`` is not as the kernel reads it."""
        members, units = self.members, self.units
        if not (_plain(h) and h.shape[-1] == units and 0 < h.numel() == members * h.shape[-2] * units):
            return None
        arguments = [h.data_ptr(), members, h.shape[-2], *self.fixed]
        for consumer in self.consumers:
            weight = consumer.weight
            if not (_plain(weight) and weight.shape[-1] == units and weight.numel() == members * weight.shape[-2] * units):
                return None
            arguments += (weight.data_ptr(), weight.shape[-2])
        return arguments


def update(decay_rate: float, arguments: list[int]) -> None:
    """Per member of every site whose `KernelSite.arguments` are concatenated in ``arguments``, in place:
    ``mean_activation = η·mean_activation + (1-η)·mean_batch(h)``, ``utility = η·utility + (1-η)·mean_out|W_out|·mean_batch|h|``."""
    _kernels.update(decay_rate, *arguments)


def _plain(tensor: torch.Tensor) -> bool:
    return tensor.dtype is torch.float32 and tensor.is_cpu and tensor.is_contiguous()
