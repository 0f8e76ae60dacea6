"""The comparison methods of the paper, on the same site machinery as CBP: Shrink & Perturb, ReDo and L2-Init."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .base import SiteIntervention, is_number
from .init import check_init, uniform_bound
from .sites import Site, reinitialize_units


def _site_parameters(sites: list[Site]) -> list[torch.nn.Parameter]:
    """Every weight and bias of the sites' producers and consumers, each once."""
    seen: dict[int, torch.nn.Parameter] = {}
    for site in sites:
        for layer in (site.producer, *site.consumers):
            for param in layer.parameters():
                seen.setdefault(id(param), param)
    return list(seen.values())


class ShrinkPerturb(SiteIntervention):
    """Shrink & Perturb (Ash & Adams, 2020) after every update: ``w ← shrink·w + noise_scale·ε``, ε ~ N(0, 1).

    Acts on every weight and bias of the sites' layers (heads included). ``shrink=1`` is the paper's
    perturb-only variant.

    :param shrink: multiplier λ of the weights, in (0, 1].
    :param noise_scale: standard deviation σ of the added Gaussian noise (>= 0).
    """

    def __init__(
        self,
        sites: Sequence[Site] | Mapping[str, Site],
        optimizer: torch.optim.Optimizer | None = None,
        *,
        shrink: float = 1.0 - 1e-4,
        noise_scale: float = 1e-4,
    ) -> None:
        super().__init__(sites, optimizer, record=False)
        self._parameters_to_perturb = _site_parameters(self._sites)
        self.configure(shrink=shrink, noise_scale=noise_scale)

    def configure(self, *, shrink: float, noise_scale: float) -> None:
        if not (is_number(shrink) and 0.0 < shrink <= 1.0):
            raise ValueError(f"shrink={shrink!r} is invalid: expected a number in (0, 1]")
        if not (is_number(noise_scale) and noise_scale >= 0.0):
            raise ValueError(f"noise_scale={noise_scale!r} is invalid: expected a number >= 0")
        self.shrink, self.noise_scale = float(shrink), float(noise_scale)

    @property
    def settings(self) -> dict[str, float]:
        return {"shrink": self.shrink, "noise_scale": self.noise_scale}

    @torch.no_grad()
    def step(self) -> None:
        params = self._parameters_to_perturb
        if self.shrink != 1.0:
            torch._foreach_mul_(params, self.shrink)
        if self.noise_scale:
            torch._foreach_add_(params, [torch.randn_like(p) for p in params], alpha=self.noise_scale)


class L2Init(SiteIntervention):
    """L2-Init (Kumar et al., 2023): before every update, adds ``strength·(w - w_0)`` to each gradient,
    i.e. the penalty ``strength/2·||w - w_0||²`` toward the initial weights.

    The initial weights are buffers, so they are saved with the model.

    :param strength: λ of the penalty (>= 0).
    """

    when = "pre"

    def __init__(
        self, sites: Sequence[Site] | Mapping[str, Site], optimizer: torch.optim.Optimizer | None = None, *, strength: float = 1e-2
    ) -> None:
        super().__init__(sites, optimizer, record=False)
        self._anchored = _site_parameters(self._sites)
        for i, param in enumerate(self._anchored):
            self.register_buffer(f"initial_{i}", param.detach().clone())
        self.configure(strength=strength)

    def configure(self, *, strength: float) -> None:
        if not (is_number(strength) and strength >= 0.0):
            raise ValueError(f"strength={strength!r} is invalid: expected a number >= 0")
        self.strength = float(strength)

    @property
    def settings(self) -> dict[str, float]:
        return {"strength": self.strength}

    @torch.no_grad()
    def step(self) -> None:
        pairs = [(p, getattr(self, f"initial_{i}")) for i, p in enumerate(self._anchored) if p.grad is not None]
        if pairs and self.strength:
            params, initial = zip(*pairs)
            torch._foreach_add_([p.grad for p in params], torch._foreach_sub(params, initial), alpha=self.strength)


class ReDo(SiteIntervention):
    """ReDo (Sokar et al., 2023): every ``reset_period`` updates, re-initialize the dormant units, those whose
    score ``mean|h_i| / mean_j mean|h_j|`` on the latest training batch is ``<= tau``: fresh input weights,
    zero outgoing weights (and optimizer state reset like CBP's).

    Dormancy is judged on the activations of the latest grad-enabled forward pass (a PPO minibatch, a SAC batch).
    With very small batches, e.g. online learning, feed a larger probe batch through the sites with gradients
    enabled just before the resetting step, or every silent unit looks dormant.

    :param reset_period: optimizer steps between two resets.
    :param tau: dormancy threshold τ (0: only units silent on the whole batch).
    :param init: scheme of the new input weights: ``lecun``, ``kaiming``, ``xavier`` or ``default``.
    :param reset_optimizer_state: reset the optimizer's state of re-initialized rows and columns.
    """

    def __init__(
        self,
        sites: Sequence[Site] | Mapping[str, Site],
        optimizer: torch.optim.Optimizer | None = None,
        *,
        reset_period: int = 1000,
        tau: float = 0.1,
        init: str = "lecun",
        reset_optimizer_state: bool = True,
    ) -> None:
        super().__init__(sites, optimizer)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("resets", torch.zeros(len(self._sites), dtype=torch.long))
        self._host_updates = 0
        self.register_state_dict_pre_hook(lambda module, *args: module.updates.fill_(module._host_updates))
        self.register_load_state_dict_post_hook(lambda module, *args: setattr(module, "_host_updates", int(module.updates)))
        self.configure(reset_period=reset_period, tau=tau, init=init, reset_optimizer_state=reset_optimizer_state)

    def configure(self, *, reset_period: int, tau: float, init: str, reset_optimizer_state: bool) -> None:
        if isinstance(reset_period, bool) or not isinstance(reset_period, int) or reset_period <= 0:
            raise ValueError(f"reset_period={reset_period!r} is invalid: expected a positive integer")
        if not (is_number(tau) and tau >= 0.0):
            raise ValueError(f"tau={tau!r} is invalid: expected a number >= 0")
        self.reset_period, self.tau, self.init = reset_period, float(tau), check_init(init)
        self.reset_optimizer_state = bool(reset_optimizer_state)
        self._bounds = [uniform_bound(init, s.producer, s.activation) for s in self._sites]

    @property
    def settings(self) -> dict[str, float | int | str | bool]:
        return {"reset_period": self.reset_period, "tau": self.tau, "init": self.init,
                "reset_optimizer_state": self.reset_optimizer_state}

    @torch.no_grad()
    def step(self) -> None:
        features = self.take_features()
        self._host_updates += 1
        if self._host_updates % self.reset_period:
            return
        for i, (site, h) in enumerate(zip(self._sites, features)):
            if h is None:
                continue
            magnitude = h.reshape(site.members, -1, site.units).abs().mean(1)
            score = magnitude / magnitude.mean(1, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)
            dormant = score <= self.tau
            units = [torch.nonzero(member).flatten() for member in dormant]
            reinitialize_units(site, units, self._bounds[i], optimizer=self.optimizer if self.reset_optimizer_state else None)
            self.resets[i] += dormant.sum()

    def replacements(self) -> dict[str, int]:
        """Cumulative number of re-initialized units per site."""
        return dict(zip(self.names, self.resets.tolist()))


INTERVENTIONS: dict[str, type[SiteIntervention]] = {"shrink_perturb": ShrinkPerturb, "l2_init": L2Init, "redo": ReDo}
