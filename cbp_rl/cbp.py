"""Continual backpropagation (Dohare et al., Nature 2024): generate-and-test on the hidden units of any torch MLP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .base import SiteIntervention
from .init import check_init, uniform_bound
from .sites import Site, reinitialize_units, sequential_sites

FRACTIONAL_MODES = ("accumulate", "bernoulli")
_NONNEGATIVE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus)


@dataclass
class _HostCounters:
    """Host mirror of a site's integer state, ``[members, ...]``: stepping it needs no device sync."""

    age: np.ndarray
    accumulator: np.ndarray
    replaced: np.ndarray
    mature: np.ndarray | None = None  # units past maturity, per member; None: count again
    steps_until_recount: int = 0  # steps until the oldest immature unit matures

    def age_one_step(self) -> None:
        self.age += 1
        self.steps_until_recount -= 1

    def mature_units(self, maturity_threshold: int) -> np.ndarray:
        """Units older than the threshold, per member; recounted only when some unit can have crossed it."""
        if self.mature is None or self.steps_until_recount <= 0:
            young = self.age <= maturity_threshold
            self.mature = self.age.shape[1] - np.count_nonzero(young, axis=1)
            self.steps_until_recount = int(maturity_threshold + 1 - self.age[young].max()) if young.any() else 1 << 62
        return self.mature


class _SiteState(nn.Module):
    """Per-site CBP state in buffers; ``host`` mirrors the counters and is written to them on ``state_dict()``."""

    def __init__(self, site: Site) -> None:
        super().__init__()
        weight = site.producer.weight
        shape, device = (*site.member_shape, site.units), weight.device
        self.register_buffer("utility", torch.zeros(shape, dtype=weight.dtype, device=device))
        self.register_buffer("mean_activation", torch.zeros(shape, dtype=weight.dtype, device=device))
        self.register_buffer("age", torch.zeros(shape, dtype=torch.long, device=device))
        self.register_buffer("accumulator", torch.zeros(site.member_shape, dtype=torch.float64, device=device))
        self.register_buffer("replaced", torch.zeros(site.member_shape, dtype=torch.long, device=device))
        members = site.members
        self.host = _HostCounters(np.zeros((members, site.units), np.int64), np.zeros(members), np.zeros(members, np.int64))
        self.register_state_dict_pre_hook(_SiteState._write_host_counters)
        self.register_load_state_dict_post_hook(_SiteState._read_host_counters)

    @staticmethod
    @torch.no_grad()
    def _write_host_counters(module: _SiteState, prefix: str, keep_vars: bool) -> None:
        for name in ("age", "accumulator", "replaced"):
            buffer = getattr(module, name)
            buffer.copy_(torch.from_numpy(getattr(module.host, name)).view(buffer.shape))

    @staticmethod
    def _read_host_counters(module: _SiteState, incompatible_keys: object) -> None:
        members = module.host.age.shape[0]
        host = [getattr(module, name).cpu().numpy().reshape(members, -1).copy() for name in ("age", "accumulator", "replaced")]
        module.host = _HostCounters(host[0], host[1][:, 0], host[2][:, 0])


class ContinualBackprop(SiteIntervention):
    """Generate-and-test that runs after every optimizer step (DESIGN §3).

    Each step, every site ages by one, its units' contribution utility
    ``u = η·u + (1-η)·mean_out|W_out|·mean_batch|h|`` is updated from the activations of the latest
    grad-enabled forward pass, and then ``replacement_rate × #mature`` of the mature units
    (``age > maturity_threshold``) with the lowest bias-corrected utility ``u / (1 - η^age)`` are
    replaced: fresh input weights from the init scheme, zero input bias, zero outgoing weights. All
    utilities are computed before any site replaces units. The replaced units' mean contribution is
    folded into the consumers' biases, as in the reference implementation.

    The state (utility, mean activation, age, fractional accumulator, replacement counts) lives in
    buffers, so ``state_dict`` carries it, with the settings. Activations are recorded by forward hooks
    on the sites' activation modules, only while ``torch.is_grad_enabled()``: ``no_grad`` forwards never
    count. Sites of `StackedLinear` layers are independent networks (e.g. seeds), each replacing its own units.

    :param sites: the hidden layers to maintain, as a sequence (named ``l0``, ``l1``, ...) or a mapping name → Site.
    :param optimizer: the optimizer that trains the sites; generate-and-test runs as its step post-hook.
        ``None``: call :meth:`step` yourself after each optimizer step (and :meth:`attach` for state resets).
    :param replacement_rate: fraction of the mature units replaced per step (0 tracks utility, replaces nothing).
    :param maturity_threshold: steps a unit is protected from replacement after its birth.
    :param decay_rate: η, the decay of the utility and mean-activation running averages.
    :param init: scheme of the new input weights: ``lecun``, ``kaiming``, ``xavier`` or ``default``.
    :param fractional: ``accumulate`` carries the fractional part of ``replacement_rate × #mature`` to the
        next step (deterministic); ``bernoulli`` rounds it up with probability equal to the fraction,
        as the reference code does.
    :param reset_optimizer_state: reset the optimizer's state of replaced rows/columns. First moments
        (``exp_avg``, momentum) are zeroed; second moments (``exp_avg_sq`` ...) are set to the mean of the
        rest of the tensor, so a new unit's first Adam updates are no larger than its neighbours'.
        (Zeroing both, with torch's per-tensor step count, makes them several times larger.)
    """

    def __init__(
        self,
        sites: Sequence[Site] | Mapping[str, Site],
        optimizer: torch.optim.Optimizer | None = None,
        *,
        replacement_rate: float = 1e-4,
        maturity_threshold: int = 100,
        decay_rate: float = 0.99,
        init: str = "lecun",
        fractional: str = "accumulate",
        reset_optimizer_state: bool = True,
    ) -> None:
        super().__init__(sites, optimizer)
        self.states = nn.ModuleDict({name: _SiteState(site) for name, site in self.sites.items()})
        self._shapes = [(s.members, s.units) for s in self._sites]
        self._out_rows = [sum(c.weight.shape[-2] for c in s.consumers) for s in self._sites]
        self._nonnegative = [isinstance(s.activation, _NONNEGATIVE_ACTIVATIONS) for s in self._sites]
        self.configure(
            replacement_rate=replacement_rate,
            maturity_threshold=maturity_threshold,
            decay_rate=decay_rate,
            init=init,
            fractional=fractional,
            reset_optimizer_state=reset_optimizer_state,
        )

    def configure(
        self,
        *,
        replacement_rate: float,
        maturity_threshold: int,
        decay_rate: float,
        init: str,
        fractional: str,
        reset_optimizer_state: bool,
    ) -> None:
        """Set every hyperparameter (see the class docstring)."""
        _check_settings(replacement_rate, maturity_threshold, decay_rate, fractional)
        self.replacement_rate = float(replacement_rate)
        self.maturity_threshold = int(maturity_threshold)
        self.decay_rate = float(decay_rate)
        self.init = check_init(init)
        self.fractional = fractional
        self.reset_optimizer_state = bool(reset_optimizer_state)
        self._bounds = [uniform_bound(init, s.producer, s.activation) for s in self._sites]
        for state in self.states.values():
            state.host.mature = None

    @property
    def settings(self) -> dict[str, float | int | str | bool]:
        return {
            "replacement_rate": self.replacement_rate,
            "maturity_threshold": self.maturity_threshold,
            "decay_rate": self.decay_rate,
            "init": self.init,
            "fractional": self.fractional,
            "reset_optimizer_state": self.reset_optimizer_state,
        }

    @classmethod
    def from_sequential(
        cls, net: nn.Sequential, optimizer: torch.optim.Optimizer | None = None, **kwargs
    ) -> ContinualBackprop:
        """CBP on every hidden layer of ``nn.Sequential(Linear, act, Linear, act, ..., Linear)``."""
        return cls(sequential_sites(net), optimizer, **kwargs)

    @torch.no_grad()
    def step(self) -> None:
        """One generate-and-test on every site that has fresh activations since the last step."""
        features = self.take_features()
        fresh = [i for i, h in enumerate(features) if h is not None]
        if not fresh:
            return
        self._update_utilities(fresh, [features[i] for i in fresh])
        if self.replacement_rate == 0:
            return
        counts = [(i, self._count_replacements(i)) for i in fresh]
        for i, count in counts:
            if count.any():
                self._replace(i, count)

    def _state(self, index: int) -> _SiteState:
        return self.states[self.names[index]]

    def _update_utilities(self, indices: list[int], features: list[torch.Tensor]) -> None:
        magnitudes = iter(torch._foreach_abs([c.weight for i in indices for c in self._sites[i].consumers]))
        mean_activations, utilities, mean_h, mean_abs_h, out_magnitudes, scales = [], [], [], [], [], []
        for i, h in zip(indices, features):
            consumers, state, shape = self._sites[i].consumers, self._state(i), self._shapes[i]
            h = h.reshape(shape[0], -1, shape[1])
            mean_h.append(h.mean(1))
            mean_abs_h.append(mean_h[-1] if self._nonnegative[i] else h.abs().mean(1))
            out_magnitude = next(magnitudes).sum(-2)
            for _ in consumers[1:]:
                out_magnitude += next(magnitudes).sum(-2)
            out_magnitudes.append(out_magnitude.view(shape))
            mean_activations.append(state.mean_activation.view(shape))
            utilities.append(state.utility.view(shape))
            scales.append((1.0 - self.decay_rate) / self._out_rows[i])
            state.host.age_one_step()
        torch._foreach_lerp_(mean_activations, mean_h, 1.0 - self.decay_rate)
        torch._foreach_mul_(utilities, self.decay_rate)
        torch._foreach_addcmul_(utilities, out_magnitudes, mean_abs_h, scales)

    def _count_replacements(self, index: int) -> np.ndarray:
        """Units to replace now in each member of the site."""
        host = self._state(index).host
        mature = host.mature_units(self.maturity_threshold)
        expected = self.replacement_rate * mature
        if self.fractional == "accumulate":
            host.accumulator += expected
            count = np.floor(host.accumulator + 1e-12).astype(np.int64)
            host.accumulator -= count
        else:
            count = np.floor(expected).astype(np.int64)
            count += torch.rand(len(expected)).numpy() < expected - count
        return np.minimum(count, mature)

    def _replace(self, index: int, count: np.ndarray) -> None:
        site, state = self._sites[index], self._state(index)
        utility = state.utility.view(site.members, site.units)
        age = torch.from_numpy(state.host.age).to(utility.device)
        correction = 1.0 - torch.pow(self.decay_rate, age.to(utility.dtype))
        score = torch.where(age > self.maturity_threshold, utility / correction, torch.inf)
        picks = int(count.max())
        units = torch.topk(score, picks, largest=False).indices
        uneven = np.arange(picks) < count[:, None]
        mask = None if uneven.all() else torch.from_numpy(uneven).to(utility.device)
        mean_activation = state.mean_activation.view(site.members, site.units)
        reinitialize_units(
            site, units, self._bounds[index], mask,
            mean_contribution=mean_activation.gather(1, units) / correction.gather(1, units),
            optimizer=self.optimizer if self.reset_optimizer_state else None,
        )
        for buffer in (utility, mean_activation):
            buffer.scatter_(1, units, buffer.gather(1, units) * (0 if mask is None else ~mask))
        picked = units.cpu().numpy()
        np.put_along_axis(state.host.age, picked, np.where(uneven, 0, np.take_along_axis(state.host.age, picked, 1)), 1)
        state.host.replaced += count
        state.host.mature = None

    def replacements(self) -> dict[str, int]:
        """Cumulative number of replaced units per site (summed over members)."""
        return {name: int(self.states[name].host.replaced.sum()) for name in self.names}

    def ages(self) -> dict[str, np.ndarray]:
        """Age (optimizer steps since birth) of every unit, per site, shaped like the site's units."""
        return {name: self.states[name].host.age.reshape(self.states[name].age.shape).copy() for name in self.names}

    @torch.no_grad()
    def utilities(self) -> dict[str, torch.Tensor]:
        """Bias-corrected contribution utility ``u / (1 - η^age)`` of every unit, per site (0 for age 0)."""
        result = {}
        for name, age in self.ages().items():
            utility = self.states[name].utility
            age = torch.from_numpy(age).to(utility.device, utility.dtype)
            result[name] = torch.where(age > 0, utility / (1.0 - self.decay_rate**age), 0.0)
        return result


def _check_settings(replacement_rate: float, maturity_threshold: int, decay_rate: float, fractional: str) -> None:
    if not 0.0 <= replacement_rate <= 1.0:
        raise ValueError(f"replacement_rate={replacement_rate!r} is invalid: expected a number in [0, 1]")
    if isinstance(maturity_threshold, bool) or not isinstance(maturity_threshold, int) or maturity_threshold < 0:
        raise ValueError(f"maturity_threshold={maturity_threshold!r} is invalid: expected an integer >= 0")
    if not 0.0 <= decay_rate < 1.0:
        raise ValueError(f"decay_rate={decay_rate!r} is invalid: expected a number in [0, 1)")
    if fractional not in FRACTIONAL_MODES:
        raise ValueError(f"fractional={fractional!r} is invalid: expected one of {', '.join(FRACTIONAL_MODES)}")
