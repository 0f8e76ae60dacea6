"""Continual backpropagation (Dohare et al., Nature 2024): generate-and-test on the hidden units of any torch MLP."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .init import check_init, uniform_bound

FRACTIONAL_MODES = ("accumulate", "bernoulli")
_FIRST_MOMENTS = ("exp_avg", "momentum_buffer")
_SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum")
_NONNEGATIVE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus)


@dataclass(frozen=True)
class Site:
    """One layer of hidden units.

    :param producer: the Linear whose outputs are the units' pre-activations (one unit per output row).
    :param activation: the module applied to them; its output is what the units emit.
        Must be its own instance (not shared with another layer).
    :param consumers: every Linear that reads the activations: the next hidden layer, or the head(s).
    """

    producer: nn.Linear
    activation: nn.Module
    consumers: tuple[nn.Linear, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "consumers", tuple(self.consumers))
        if not isinstance(self.producer, nn.Linear) or not self.consumers:
            raise ValueError("a Site needs an nn.Linear producer and at least one nn.Linear consumer")
        for consumer in self.consumers:
            if not isinstance(consumer, nn.Linear) or consumer.in_features != self.producer.out_features:
                raise ValueError(
                    f"consumer {consumer} does not read the {self.producer.out_features} units of {self.producer}"
                )

    @property
    def units(self) -> int:
        return self.producer.out_features


def sequential_sites(net: nn.Sequential, heads: Sequence[nn.Linear] = ()) -> dict[str, Site]:
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
        or not all(isinstance(m, nn.Linear) for m in linears)
        or any(isinstance(m, nn.Linear) or any(True for _ in m.parameters()) for m in activations)
    ):
        raise ValueError(
            "expected nn.Sequential(Linear, activation, ..., Linear) or an MLP body ending with an activation "
            f"plus its heads, with parameter-free activations; got {[type(m).__name__ for m in layers]}"
        )
    consumers = [(linear,) for linear in linears[1:]] + ([] if ends_with_linear else [tuple(heads)])
    return {f"l{i}": Site(linears[i], activations[i], consumers[i]) for i in range(len(activations))}


@dataclass
class _HostCounters:
    """Host mirror of a site's integer state: stepping it needs no device sync."""

    age: np.ndarray
    accumulator: float = 0.0
    replaced: int = 0


class _SiteState(nn.Module):
    """Per-site CBP state in buffers; ``host`` mirrors the counters and is written to them on ``state_dict()``."""

    def __init__(self, units: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("utility", torch.zeros(units, dtype=dtype, device=device))
        self.register_buffer("mean_activation", torch.zeros(units, dtype=dtype, device=device))
        self.register_buffer("age", torch.zeros(units, dtype=torch.long, device=device))
        self.register_buffer("accumulator", torch.zeros((), dtype=torch.float64, device=device))
        self.register_buffer("replaced", torch.zeros((), dtype=torch.long, device=device))
        self.host = _HostCounters(np.zeros(units, dtype=np.int64))
        self.register_state_dict_pre_hook(_SiteState._write_host_counters)
        self.register_load_state_dict_post_hook(_SiteState._read_host_counters)

    @staticmethod
    @torch.no_grad()
    def _write_host_counters(module: _SiteState, prefix: str, keep_vars: bool) -> None:
        module.age.copy_(torch.from_numpy(module.host.age))
        module.accumulator.fill_(module.host.accumulator)
        module.replaced.fill_(module.host.replaced)

    @staticmethod
    def _read_host_counters(module: _SiteState, incompatible_keys: object) -> None:
        module.host = _HostCounters(module.age.cpu().numpy().copy(), float(module.accumulator), int(module.replaced))


class ContinualBackprop(nn.Module):
    """Generate-and-test that runs after every optimizer step (DESIGN §3).

    Each step, every site ages by one, its units' contribution utility
    ``u = η·u + (1-η)·mean_out|W_out|·mean_batch|h|`` is updated from the activations of the latest
    grad-enabled forward pass, and then ``replacement_rate × #mature`` of the mature units
    (``age > maturity_threshold``) with the lowest bias-corrected utility ``u / (1 - η^age)`` are
    replaced: fresh input weights from the init scheme, zero input bias, zero outgoing weights. All
    utilities are computed before any site replaces units. The replaced units' mean contribution is
    folded into the consumers' biases, as in the reference implementation.

    The state (utility, mean activation, age, fractional accumulator, replacement counts) lives in
    buffers, so ``state_dict`` carries it. Activations are recorded by forward hooks on the sites'
    activation modules, only while ``torch.is_grad_enabled()``: ``no_grad`` forwards never count.

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
        (Zeroing both, with torch's per-tensor step count, makes them 3-17× larger.)
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
        super().__init__()
        named = dict(sites) if isinstance(sites, Mapping) else {f"l{i}": s for i, s in enumerate(sites)}
        if not named:
            raise ValueError("ContinualBackprop needs at least one Site")
        if len({id(s.activation) for s in named.values()}) != len(named):
            raise ValueError("each Site needs its own activation module instance (one is shared)")
        self._sites = list(named.values())
        self.names = list(named)
        self.states = nn.ModuleDict(
            {
                name: _SiteState(s.units, s.producer.weight.dtype, s.producer.weight.device)
                for name, s in named.items()
            }
        )
        self.configure(
            replacement_rate=replacement_rate,
            maturity_threshold=maturity_threshold,
            decay_rate=decay_rate,
            init=init,
            fractional=fractional,
            reset_optimizer_state=reset_optimizer_state,
        )
        self._out_rows = [sum(c.out_features for c in s.consumers) for s in self._sites]
        self._nonnegative = [isinstance(s.activation, _NONNEGATIVE_ACTIVATIONS) for s in self._sites]
        self.register_load_state_dict_pre_hook(ContinualBackprop._start_fresh_if_absent)
        self._features: list[torch.Tensor | None] = [None] * len(self._sites)
        self._feature_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._step_hook: torch.utils.hooks.RemovableHandle | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.record_features(True)
        if optimizer is not None:
            self.attach(optimizer)

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
        """Set every hyperparameter (see the class docstring); they are saved in ``state_dict`` too."""
        _check_settings(replacement_rate, maturity_threshold, decay_rate, fractional)
        self.replacement_rate = float(replacement_rate)
        self.maturity_threshold = int(maturity_threshold)
        self.decay_rate = float(decay_rate)
        self.init = check_init(init)
        self.fractional = fractional
        self.reset_optimizer_state = bool(reset_optimizer_state)
        self._bounds = [uniform_bound(init, s.producer, s.activation) for s in self._sites]

    @classmethod
    def default_settings(cls) -> dict[str, float | int | str | bool]:
        """The constructor's default hyperparameters."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}

    @property
    def settings(self) -> dict[str, float | int | str | bool]:
        """The hyperparameters in use, as keyword arguments of the constructor."""
        return {
            "replacement_rate": self.replacement_rate,
            "maturity_threshold": self.maturity_threshold,
            "decay_rate": self.decay_rate,
            "init": self.init,
            "fractional": self.fractional,
            "reset_optimizer_state": self.reset_optimizer_state,
        }

    def get_extra_state(self) -> dict[str, float | int | str | bool]:
        return self.settings

    def set_extra_state(self, state: dict[str, float | int | str | bool]) -> None:
        self.configure(**state)

    @staticmethod
    def _start_fresh_if_absent(module: ContinualBackprop, state_dict: dict, prefix: str, *args: object) -> None:
        """A state dict without any CBP entry (e.g. plain-backprop weights: a warm start) keeps the current state."""
        if not any(key.startswith(prefix) for key in state_dict):
            state_dict.update({prefix + key: value for key, value in module.state_dict().items()})

    @classmethod
    def from_sequential(
        cls, net: nn.Sequential, optimizer: torch.optim.Optimizer | None = None, **kwargs
    ) -> ContinualBackprop:
        """CBP on every hidden layer of ``nn.Sequential(Linear, act, Linear, act, ..., Linear)``."""
        return cls(sequential_sites(net), optimizer, **kwargs)

    @property
    def sites(self) -> dict[str, Site]:
        return dict(zip(self.names, self._sites))

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Run generate-and-test after every ``optimizer.step()`` (replacing any earlier attachment)."""
        self.detach()
        self.optimizer = optimizer
        self._step_hook = optimizer.register_step_post_hook(self._after_optimizer_step)

    def detach(self) -> None:
        if self._step_hook is not None:
            self._step_hook.remove()
        self._step_hook = None

    def is_attached(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether generate-and-test is registered on this very optimizer (a re-created optimizer lacks it)."""
        return (
            self.optimizer is optimizer
            and self._step_hook is not None
            and self._step_hook.id in optimizer._optimizer_step_post_hooks
        )

    def record_features(self, enabled: bool) -> None:
        """Attach (or remove) the forward hooks that record the sites' activations."""
        for handle in self._feature_hooks:
            handle.remove()
        self._feature_hooks = []
        self._features = [None] * len(self._sites)
        if enabled:
            self._feature_hooks = [
                site.activation.register_forward_hook(self._recorder(i)) for i, site in enumerate(self._sites)
            ]

    @property
    def recording(self) -> bool:
        return bool(self._feature_hooks)

    def _recorder(self, index: int):
        def record(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            if torch.is_grad_enabled():
                self._features[index] = output.detach()

        return record

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        self.step()

    @torch.no_grad()
    def step(self) -> None:
        """One generate-and-test on every site that has fresh activations since the last step."""
        features, self._features = self._features, [None] * len(self._sites)
        fresh = [i for i, h in enumerate(features) if h is not None]
        if not fresh:
            return
        self._update_utilities(fresh, [features[i] for i in fresh])
        if self.replacement_rate == 0:
            return
        counts = [(i, self._count_replacements(i)) for i in fresh]
        for i, count in counts:
            if count:
                self._replace(i, count)

    def _state(self, index: int) -> _SiteState:
        return self.states[self.names[index]]

    def _update_utilities(self, indices: list[int], features: list[torch.Tensor]) -> None:
        states = [self._state(i) for i in indices]
        mean_h, mean_abs_h = _batch_means(
            [h.reshape(-1, h.shape[-1]) for h in features], [self._nonnegative[i] for i in indices]
        )
        consumers = [c for i in indices for c in self._sites[i].consumers]
        column_sums = iter([w.sum(0) for w in torch._foreach_abs([c.weight for c in consumers])])
        out_magnitude = [sum(next(column_sums) for _ in self._sites[i].consumers) for i in indices]
        weight = 1.0 - self.decay_rate
        utilities = [s.utility for s in states]
        torch._foreach_lerp_([s.mean_activation for s in states], mean_h, weight)
        torch._foreach_mul_(utilities, self.decay_rate)
        torch._foreach_addcmul_(utilities, out_magnitude, mean_abs_h, [weight / self._out_rows[i] for i in indices])
        for state in states:
            state.host.age += 1

    def _count_replacements(self, index: int) -> int:
        state = self._state(index)
        mature = int(np.count_nonzero(state.host.age > self.maturity_threshold))
        if mature == 0:
            return 0
        expected = self.replacement_rate * mature
        if self.fractional == "accumulate":
            state.host.accumulator += expected
            count = int(state.host.accumulator)
            state.host.accumulator -= count
        else:
            count = int(expected)
            count += int(torch.rand(()).item() < expected - count)
        return min(count, mature)

    def _replace(self, index: int, count: int) -> None:
        site, state = self._sites[index], self._state(index)
        device = state.utility.device
        age = torch.from_numpy(state.host.age).to(device)
        correction = 1.0 - torch.pow(self.decay_rate, age.to(state.utility.dtype))
        score = torch.where(age > self.maturity_threshold, state.utility / correction, torch.inf)
        units = torch.topk(score, count, largest=False).indices

        producer = site.producer
        fresh = torch.empty(count, producer.in_features, dtype=producer.weight.dtype, device=device)
        producer.weight.index_copy_(0, units, fresh.uniform_(-self._bounds[index], self._bounds[index]))
        if producer.bias is not None:
            producer.bias.index_fill_(0, units, 0.0)
        mean_contribution = state.mean_activation[units] / correction[units]
        for consumer in site.consumers:
            if consumer.bias is not None:
                consumer.bias.add_(consumer.weight[:, units] @ mean_contribution)
            consumer.weight.index_fill_(1, units, 0.0)
        state.utility.index_fill_(0, units, 0.0)
        state.mean_activation.index_fill_(0, units, 0.0)
        state.host.age[units.cpu().numpy()] = 0
        state.host.replaced += count
        if self.reset_optimizer_state and self.optimizer is not None:
            self._reset_optimizer_state(site, units, count)

    def _reset_optimizer_state(self, site: Site, units: torch.Tensor, count: int) -> None:
        touched = [(site.producer.weight, 0), (site.producer.bias, 0)] + [(c.weight, 1) for c in site.consumers]
        for param, dim in touched:
            state = self.optimizer.state.get(param) if param is not None else None
            for key, moment in (state or {}).items():
                if not torch.is_tensor(moment) or moment.shape != param.shape:
                    continue
                if key in _FIRST_MOMENTS or count == moment.shape[dim]:
                    moment.index_fill_(dim, units, 0.0)
                elif key in _SECOND_MOMENTS:
                    kept_sum = moment.sum() - moment.index_select(dim, units).sum()
                    kept_entries = moment.numel() // moment.shape[dim] * (moment.shape[dim] - count)
                    moment.index_fill_(dim, units, kept_sum / kept_entries)

    def replacements(self) -> dict[str, int]:
        """Cumulative number of replaced units per site."""
        return {name: self.states[name].host.replaced for name in self.names}

    def ages(self) -> dict[str, np.ndarray]:
        """Age (optimizer steps since birth) of every unit, per site."""
        return {name: self.states[name].host.age.copy() for name in self.names}

    @torch.no_grad()
    def utilities(self) -> dict[str, torch.Tensor]:
        """Bias-corrected contribution utility ``u / (1 - η^age)`` of every unit, per site (0 for age 0)."""
        result = {}
        for name in self.names:
            state = self.states[name]
            age = torch.from_numpy(state.host.age).to(state.utility.device, state.utility.dtype)
            result[name] = torch.where(age > 0, state.utility / (1.0 - self.decay_rate**age), 0.0)
        return result

    def extra_repr(self) -> str:
        return f"sites={self.names}, " + ", ".join(f"{key}={value!r}" for key, value in self.settings.items())


def _batch_means(
    features: list[torch.Tensor], nonnegative: list[bool]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-unit batch means of ``h`` and ``|h|`` for several sites, in one reduction when the batches align."""
    if len({h.shape[0] for h in features}) == 1 and len(features) > 1:
        widths = [h.shape[1] for h in features]
        joined = torch.cat(features, dim=1)
        mean_h = list(joined.mean(0).split(widths))
        mean_abs_h = mean_h if all(nonnegative) else list(joined.abs().mean(0).split(widths))
    else:
        mean_h = [h.mean(0) for h in features]
        mean_abs_h = [h.abs().mean(0) for h in features]
    return mean_h, [m if pos else a for m, a, pos in zip(mean_h, mean_abs_h, nonnegative)]


def _check_settings(replacement_rate: float, maturity_threshold: int, decay_rate: float, fractional: str) -> None:
    if not 0.0 <= replacement_rate <= 1.0:
        raise ValueError(f"replacement_rate={replacement_rate!r} is invalid: expected a number in [0, 1]")
    if isinstance(maturity_threshold, bool) or not isinstance(maturity_threshold, int) or maturity_threshold < 0:
        raise ValueError(f"maturity_threshold={maturity_threshold!r} is invalid: expected an integer >= 0")
    if not 0.0 <= decay_rate < 1.0:
        raise ValueError(f"decay_rate={decay_rate!r} is invalid: expected a number in [0, 1)")
    if fractional not in FRACTIONAL_MODES:
        raise ValueError(f"fractional={fractional!r} is invalid: expected one of {', '.join(FRACTIONAL_MODES)}")
