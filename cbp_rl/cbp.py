"""Continual backpropagation (Dohare et al., Nature 2024): generate-and-test on the hidden units of any torch MLP."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import kernels
from .base import SiteIntervention, is_number
from .init import check_init, uniform_bound
from .sites import Site, reinitialize_units, sequential_sites

FRACTIONAL_MODES = ("accumulate", "bernoulli")
_NONNEGATIVE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus)
_MARGIN = 1e-12  # an accumulator this close below a whole number counts as reaching it
_SETTLE_CHUNK = 4096  # pending additions made at once (bounds the memory of a rare, very late settle)


class _HostCounters:
    """Host mirror of a site's integer state, per member ``[members, ...]``: stepping it needs no device sync.

    Units store their birth step, so aging is one increment. The fractional accumulator grows by
    ``expected = replacement_rate × #mature`` every step, one addition at a time: its value after any step is the
    same whether or not the run was saved and restored in between (a lazy ``k × expected`` would round differently).
    The additions wait in ``pending`` until the accumulator is read or ``expected`` changes, and are then made in
    order (`settle`).
    Everything else waits for events (a unit can mature, a replacement may be due).
    """

    def __init__(self, age: np.ndarray, accumulator: np.ndarray, replaced: np.ndarray) -> None:
        self.steps = 0
        self.birth = -age
        self.pending = 0  # steps whose addition of ``expected`` to the accumulator is still to be made
        self._accumulator, self.replaced = accumulator, replaced
        self._expected = np.zeros_like(accumulator)
        self.mature = np.zeros_like(replaced)
        self.next_recount = 0  # the step at which the oldest immature unit matures
        self.next_event = 0

    @property
    def accumulator(self) -> np.ndarray:
        self.settle()
        return self._accumulator

    @accumulator.setter
    def accumulator(self, value: np.ndarray) -> None:
        self.settle()
        self._accumulator = value

    @property
    def expected(self) -> np.ndarray:
        return self._expected

    @expected.setter
    def expected(self, value: np.ndarray) -> None:
        self.settle()
        self._expected = value

    def settle(self) -> None:
        """Make the pending additions, one per step, as running sums (rounded exactly as single additions)."""
        while self.pending:
            chunk = min(self.pending, _SETTLE_CHUNK)
            additions = np.broadcast_to(self._expected, (chunk, len(self._expected)))
            self._accumulator[:] = np.add.accumulate(np.vstack([self._accumulator, additions]))[-1]
            self.pending -= chunk

    def ages(self) -> np.ndarray:
        return self.steps - self.birth

    def recount_mature(self, maturity_threshold: int, replacement_rate: float) -> None:
        ages = self.ages()
        young = ages <= maturity_threshold
        self.mature = ages.shape[1] - np.count_nonzero(young, axis=1)
        self.expected = replacement_rate * self.mature
        self.next_recount = self.steps + int(maturity_threshold + 1 - ages[young].max()) if young.any() else 1 << 62

    def record_births(self, units: list[np.ndarray], maturity_threshold: int, replacement_rate: float) -> None:
        """Each member's ``units`` were replaced (are age 0) now."""
        for member, index in enumerate(units):
            self.birth[member, index] = self.steps
        count = np.array([len(index) for index in units])
        self.replaced += count
        self.mature -= count
        self.expected = replacement_rate * self.mature
        self.next_recount = min(self.next_recount, self.steps + maturity_threshold + 1)

    def steps_until_whole(self) -> int:
        """Steps until some member's accumulator may reach a whole unit to replace: one early, as the additions to
        come can round onto the other side of the estimate."""
        growing = self.expected > 0
        if not growing.any():
            return 1 << 62
        needed = (1.0 - _MARGIN - self.accumulator[growing]) / self.expected[growing]
        return max(1, int(np.ceil(needed.min())) - 1)


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

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> _SiteState:
        """Convert or move the buffers; the fractional accumulator stays float64 (``.float()`` would round it)."""
        super()._apply(fn, recurse)
        self.accumulator = self.accumulator.double()
        return self

    @staticmethod
    @torch.no_grad()
    def _write_host_counters(module: _SiteState, prefix: str, keep_vars: bool) -> None:
        host = module.host
        values = {"age": host.ages(), "accumulator": host.accumulator, "replaced": host.replaced}
        for name, value in values.items():
            buffer = getattr(module, name)
            buffer.copy_(torch.from_numpy(value).view(buffer.shape))

    @staticmethod
    def _read_host_counters(module: _SiteState, incompatible_keys: object) -> None:
        members = module.host.birth.shape[0]
        host = [getattr(module, name).cpu().numpy().reshape(members, -1).copy() for name in ("age", "accumulator", "replaced")]
        module.host = _HostCounters(host[0], host[1][:, 0], host[2][:, 0])


class _SiteUpdate(NamedTuple):
    """What one site's utility update reads and writes, resolved once per `_FlatUnits`."""

    state: _SiteState
    consumers: tuple[nn.Module, ...]
    rows: int  # outgoing weights per unit
    batched_dims: int  # dims of a recorded batch of activations that needs no reshape
    member_shape: torch.Size
    nonnegative: bool
    sum_h: torch.Tensor
    sum_abs_h: torch.Tensor | None  # None: shared with ``sum_h`` (every site's activation is nonnegative)
    out_magnitude: torch.Tensor
    kernel: kernels.KernelSite | None  # None: updated by torch ops


class _FlatUnits:
    """The per-unit vectors of all sites of a module laid end to end, so a step updates every site in three ops.

    Row 0 of ``state`` holds the utilities, row 1 the mean activations; the sites' buffers are views of it. With
    batch size ``B`` and ``rows`` outgoing weights per unit, a step does ``state = η·state + factor·sums`` where
    ``factor = [Σ_out|W_out|·(1-η)/(rows·B); (1-η)/B]`` and ``sums = [Σ_batch|h|; Σ_batch h]`` (a single row,
    broadcast, when every site's activation is nonnegative). Where the C kernel is built, it updates the views of
    the sites whose tensors it can read in one pass each instead (`kernels.KernelSite`).
    """

    def __init__(self, sites: list[Site], states: list[_SiteState]) -> None:
        self.bounds = np.cumsum([0, *(state.utility.numel() for state in states)]).tolist()
        flat = [torch.cat([getattr(state, name).reshape(-1) for state in states]) for name in ("utility", "mean_activation")]
        self.state = torch.stack(flat)
        for state, utility, mean in zip(states, self._views(self.state[0], states), self._views(self.state[1], states)):
            state.utility, state.mean_activation = utility, mean
        self.factor = torch.zeros_like(self.state)
        self.utility_factor = self.factor[0]
        self.utility_scale = torch.zeros_like(self.state[0])
        nonnegative = [isinstance(site.activation, _NONNEGATIVE_ACTIVATIONS) for site in sites]
        shared_sums = all(nonnegative)
        self.sums = torch.zeros_like(self.state[0] if shared_sums else self.state)
        sum_h = self._views(self.sums if shared_sums else self.sums[1], states)
        sum_abs_h = [None] * len(states) if shared_sums else self._views(self.sums[0], states)
        out_magnitude = self._views(self.utility_factor, states)
        in_kernel = kernels.KernelSite.accepts(self.state)
        self.sites = []
        for site, state, positive, *sums in zip(sites, states, nonnegative, sum_h, sum_abs_h, out_magnitude):
            rows = sum(consumer.weight.shape[-2] for consumer in site.consumers)
            shape = site.member_shape
            averages = (state.utility, state.mean_activation)
            kernel = kernels.KernelSite(site.consumers, site.members, site.units, positive, *averages) if in_kernel else None
            self.sites.append(_SiteUpdate(state, site.consumers, rows, len(shape) + 2, shape, positive, *sums, kernel))
        self.batch = [0] * len(states)

    def _views(self, row: torch.Tensor, states: list[_SiteState]) -> list[torch.Tensor]:
        return [row[a:b].view(state.utility.shape) for state, a, b in zip(states, self.bounds, self.bounds[1:])]

    def set_batch(self, index: int, batch: int, decay_rate: float) -> None:
        segment = slice(self.bounds[index], self.bounds[index + 1])
        self.utility_scale[segment] = (1.0 - decay_rate) / (self.sites[index].rows * batch)
        self.factor[1, segment] = (1.0 - decay_rate) / batch
        self.batch[index] = batch

    def runs(self, indices: list[int]) -> list[slice]:
        """The flat segments of the sites ``indices`` (ascending), merged where consecutive."""
        runs, first = [], indices[0]
        for previous, index in zip(indices, indices[1:] + [None]):
            if index != previous + 1:
                runs.append(slice(self.bounds[first], self.bounds[previous + 1]))
                first = index
        return runs

    def update(self, indices: list[int], decay_rate: float) -> None:
        """Fold the sums of the sites ``indices`` (ascending) into their running averages."""
        if len(indices) == len(self.sites):
            self.utility_factor.mul_(self.utility_scale)
            self.state.mul_(decay_rate).addcmul_(self.factor, self.sums)
            return
        for run in self.runs(indices):
            state, factor, sums = self.state[:, run], self.factor[:, run], self.sums[..., run]
            factor[0].mul_(self.utility_scale[run])
            state.mul_(decay_rate).addcmul_(factor, sums)


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
    buffers, so ``state_dict`` carries it, with the settings. Activations are recorded as the sites' activation
    modules emit them, only while ``torch.is_grad_enabled()``: ``no_grad`` forwards never count, and of several
    forwards before a step the latest counts. Sites of
    `StackedLinear` layers are independent networks (e.g. seeds), each replacing its own units.

    :param sites: the hidden layers to maintain, as a sequence (named ``l0``, ``l1``, ...) or a mapping name → Site.
    :param optimizer: the optimizer that trains the sites; generate-and-test runs as its step post-hook.
        ``None``: call :meth:`step` yourself after each optimizer step (and :meth:`attach` for state resets).
    :param replacement_rate: fraction of the mature units replaced per step (0 tracks utility, replaces nothing).
    :param maturity_threshold: steps a unit is protected from replacement after its birth.
    :param decay_rate: η, the decay of the utility and mean-activation running averages.
    :param init: scheme of the new input weights: ``lecun``, ``kaiming``, ``xavier`` or ``default``.
    :param fractional: ``accumulate`` carries the fractional part of ``replacement_rate × #mature`` to the
        next step (deterministic); ``bernoulli``, as the reference code does, replaces one unit with probability
        ``replacement_rate × #mature`` while that is below 1, and its whole part from 1 up.
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
        self._site_states = list(self.states.values())
        self._flat: _FlatUnits | None = None
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
        self._decay_rate = float(decay_rate)
        self.init = check_init(init)
        self.fractional = fractional
        self.reset_optimizer_state = bool(reset_optimizer_state)
        self._bounds = [uniform_bound(init, s.producer, s.activation) for s in self._sites]
        self._flat = None  # rebuilt at the next step: also after load_state_dict, which calls configure
        self._replacement_rate = float(replacement_rate)
        self.maturity_threshold = int(maturity_threshold)

    @property
    def replacement_rate(self) -> float:
        return self._replacement_rate

    @replacement_rate.setter
    def replacement_rate(self, value: float) -> None:
        _check_settings(value, self.maturity_threshold, self.decay_rate, self.fractional)
        self._replacement_rate = float(value)
        self._reschedule()

    @property
    def decay_rate(self) -> float:
        return self._decay_rate

    @decay_rate.setter
    def decay_rate(self, value: float) -> None:
        _check_settings(self.replacement_rate, self.maturity_threshold, value, self.fractional)
        self._decay_rate = float(value)
        self._flat = None  # its batch factors hold 1 - decay_rate

    @property
    def maturity_threshold(self) -> int:
        return self._maturity_threshold

    @maturity_threshold.setter
    def maturity_threshold(self, value: int) -> None:
        _check_settings(self.replacement_rate, value, self.decay_rate, self.fractional)
        self._maturity_threshold = int(value)
        self._reschedule()

    def _reschedule(self) -> None:
        """Count mature units again at every site's next step (the settings the schedule came from changed)."""
        for state in self._site_states:
            host = state.host
            host.expected = self.replacement_rate * host.mature
            host.next_recount = host.next_event = host.steps + 1

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

    def __getstate__(self) -> dict:
        """Pickle without the flat buffer: pickling stores each view's storage apart, so the copy's views would not
        share it (it is rebuilt at the next step)."""
        return super().__getstate__() | {"_flat": None}

    def step(self) -> None:
        """One generate-and-test on every site that has fresh activations since the last step."""
        fresh = self._update_utilities(self._features)
        if not fresh or self._replacement_rate == 0:
            return
        for i in fresh:
            host = self._site_states[i].host
            if host.steps >= host.next_event:
                self._generate_and_test(i)
            else:
                host.pending += 1

    def _update_utilities(self, features: list[torch.Tensor | None]) -> list[int]:
        """Take the recorded ``features`` (left None) into the running averages of their sites; returns those sites.

        Runs once per optimizer step inside SB3's update, where each Python operation costs several times its
        isolated time (caches cold after Adam), so the per-site work is resolved once, in `_FlatUnits`, the C kernel
        takes every site it can read in one call, and nothing here needs ``no_grad`` (entering it costs there about
        as much as a batch sum).
        """
        flat = self._flat
        if flat is None:
            flat = self._flat = _FlatUnits(self._sites, self._site_states)
        fresh, summed, fused = [], [], []
        for i, (h, site) in enumerate(zip(features, flat.sites)):
            if h is None:
                continue
            fresh.append(i)
            site.state.host.steps += 1
            arguments = site.kernel and site.kernel.arguments(h)
            if arguments:
                fused += arguments
                continue
            summed.append(i)
            h = h.detach()
            if h.dim() != site.batched_dims:
                h = h.reshape(*site.member_shape, -1, h.shape[-1])
            if h.shape[-2] != flat.batch[i]:
                flat.set_batch(i, h.shape[-2], self.decay_rate)
            torch.sum(h, -2, out=site.sum_h)
            if not site.nonnegative:
                torch.sum(h.abs(), -2, out=site.sum_abs_h)
            elif site.sum_abs_h is not None:
                site.sum_abs_h.copy_(site.sum_h)
            consumers = site.consumers
            if len(consumers) == 1:
                weight = consumers[0].weight.detach()
            else:
                weight = torch.cat([consumer.weight.detach() for consumer in consumers], -2)
            torch.sum(weight.abs(), -2, out=site.out_magnitude)
        if fused:
            kernels.update(self.decay_rate, fused)  # before the features, which hold its memory, are let go
        if summed:
            flat.update(summed, self.decay_rate)
        for i in fresh:
            features[i] = None
        return fresh

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> ContinualBackprop:
        self._flat = None  # moved or converted buffers are no longer views of it
        return super()._apply(fn, recurse)

    def _generate_and_test(self, index: int) -> None:
        """Replace the units due now in each member of the site and schedule its next event."""
        host = self._site_states[index].host
        count = self._count_replacements(host)
        if count.any():
            self._replace(index, count)
        if self.fractional == "accumulate":
            host.next_event = host.steps + min(host.next_recount - host.steps, host.steps_until_whole())
        else:
            host.next_event = host.steps + 1

    def _count_replacements(self, host: _HostCounters) -> np.ndarray:
        """Units to replace now in each member of a site."""
        if host.steps >= host.next_recount:
            host.recount_mature(self.maturity_threshold, self.replacement_rate)
        if self.fractional == "accumulate":
            host.accumulator += host.expected
            count = np.floor(host.accumulator + _MARGIN).astype(np.int64)
            host.accumulator -= count
        else:
            count = np.floor(host.expected).astype(np.int64)
            count += (count == 0) & (torch.rand(len(count)).numpy() < host.expected)
        return np.minimum(count, host.mature)

    def _replace(self, index: int, count: np.ndarray) -> None:
        """Replace each member's ``count`` mature units of lowest bias-corrected utility (chosen on the host: a few
        hundred numbers, where each torch op would cost more than its work)."""
        site, state = self._sites[index], self._site_states[index]
        utility = state.utility.view(site.members, site.units)
        mean_activation = state.mean_activation.view(site.members, site.units)
        ages = state.host.ages()
        correction = 1.0 - self.decay_rate**ages
        score = np.where(ages > self.maturity_threshold, _host(utility) / correction, np.inf)
        lowest = np.argsort(score, axis=1, kind="stable")
        units = [lowest[member, :n] for member, n in enumerate(count.tolist())]
        mean = _host(mean_activation) / correction
        contribution = [torch.from_numpy(mean[member, u]).to(utility.device) for member, u in enumerate(units)]
        indices = [torch.from_numpy(u).to(utility.device) for u in units]
        optimizer = self.optimizer if self.reset_optimizer_state else None
        reinitialize_units(site, indices, self._bounds[index], contribution, optimizer)
        for member, unit in enumerate(indices):
            utility[member].index_fill_(0, unit, 0.0)
            mean_activation[member].index_fill_(0, unit, 0.0)
        state.host.record_births(units, self.maturity_threshold, self.replacement_rate)

    def replacements(self) -> dict[str, int]:
        """Cumulative number of replaced units per site (summed over members)."""
        return {name: int(state.host.replaced.sum()) for name, state in self.states.items()}

    def ages(self) -> dict[str, np.ndarray]:
        """Age (optimizer steps since birth) of every unit, per site, shaped like the site's units."""
        return {name: state.host.ages().reshape(state.age.shape) for name, state in self.states.items()}

    @torch.no_grad()
    def utilities(self) -> dict[str, torch.Tensor]:
        """Bias-corrected contribution utility ``u / (1 - η^age)`` of every unit, per site (0 for age 0)."""
        result = {}
        for name, age in self.ages().items():
            utility = self.states[name].utility
            age = torch.from_numpy(age).to(utility.device, utility.dtype)
            result[name] = torch.where(age > 0, utility / (1.0 - self.decay_rate**age), 0.0)
        return result


def _host(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float64).numpy()


def _check_settings(replacement_rate: float, maturity_threshold: int, decay_rate: float, fractional: str) -> None:
    if not (is_number(replacement_rate) and 0.0 <= replacement_rate <= 1.0):
        raise ValueError(f"replacement_rate={replacement_rate!r} is invalid: expected a number in [0, 1]")
    if isinstance(maturity_threshold, bool) or not isinstance(maturity_threshold, int) or maturity_threshold < 0:
        raise ValueError(f"maturity_threshold={maturity_threshold!r} is invalid: expected an integer >= 0")
    if not (is_number(decay_rate) and 0.0 <= decay_rate < 1.0):
        raise ValueError(f"decay_rate={decay_rate!r} is invalid: expected a number in [0, 1)")
    if fractional not in FRACTIONAL_MODES:
        raise ValueError(f"fractional={fractional!r} is invalid: expected one of {', '.join(FRACTIONAL_MODES)}")
