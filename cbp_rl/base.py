"""The machinery every plasticity intervention shares: named sites, activation recording, optimizer step hooks."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .sites import Site


def is_number(value: object) -> bool:
    """A real number, not a bool (a setting given as ``'1e-4'`` or ``True`` is not one)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class _Recorder:
    """Stands in for an activation module's ``forward`` while interventions record it, and hands the output of every
    grad-enabled call to each of them.

    It is set on the module instance, so torch keeps calling the module through its hook-free path: inside a PPO or
    SAC update a forward hook costs several times more per call.
    """

    def __init__(self, activation: nn.Module) -> None:
        self.activation = activation
        self.sinks: dict[SiteIntervention, int] = {}  # intervention -> index of the site in its features

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = type(self.activation).forward(self.activation, *args, **kwargs)
        if torch.is_grad_enabled():
            self.record(output)
        return output

    def record(self, output: torch.Tensor) -> None:
        """Hand the output of a grad-enabled call to every intervention recording this module, as emitted: whoever
        reads it as a tensor detaches it (`take_features`); CBP's C kernel reads only its memory."""
        for intervention, index in self.sinks.items():
            intervention._features[index] = output

    @staticmethod
    def installed(activation: nn.Module) -> _Recorder | None:
        recorder = activation.__dict__.get("forward")
        return recorder if isinstance(recorder, _Recorder) else None

    @staticmethod
    def subscribe(activation: nn.Module, intervention: SiteIntervention, index: int) -> None:
        recorder = _Recorder.installed(activation)
        if recorder is None:
            recorder = activation.__dict__["forward"] = _Recorder(activation)
        recorder.sinks[intervention] = index

    @staticmethod
    def unsubscribe(activation: nn.Module, intervention: SiteIntervention) -> None:
        recorder = _Recorder.installed(activation)
        if recorder is not None:
            recorder.sinks.pop(intervention, None)
            if not recorder.sinks:
                del activation.__dict__["forward"]


class SiteIntervention(nn.Module):
    """Acts on sites around every ``optimizer.step()``; subclasses implement :meth:`step` (and set ``when``).

    Activations of the sites are recorded (by a stand-in for each activation module's ``forward``, see
    :meth:`record_features`), only while ``torch.is_grad_enabled()``, and handed to :meth:`step` as
    ``self.take_features()``.

    :param sites: a sequence (named ``l0``, ``l1``, ...) or a mapping name → Site.
    :param optimizer: the optimizer that trains the sites; ``None``: call :meth:`step` yourself.
    :param record: record activations (interventions that need none pass False).
    """

    when = "post"

    def __init__(
        self, sites: Sequence[Site] | Mapping[str, Site], optimizer: torch.optim.Optimizer | None = None, record: bool = True
    ) -> None:
        super().__init__()
        named = dict(sites) if isinstance(sites, Mapping) else {f"l{i}": s for i, s in enumerate(sites)}
        if not named:
            raise ValueError(f"{type(self).__name__} needs at least one Site")
        if len({id(s.activation) for s in named.values()}) != len(named):
            raise ValueError("each Site needs its own activation module instance (one is shared)")
        self._sites = list(named.values())
        self.names = list(named)
        self._features: list[torch.Tensor | None] = [None] * len(self._sites)
        self._records = record
        self.record_features(record)
        self._step_hook: torch.utils.hooks.RemovableHandle | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.register_load_state_dict_pre_hook(SiteIntervention._start_fresh_if_absent)
        if optimizer is not None:
            self.attach(optimizer)

    @classmethod
    def default_settings(cls) -> dict[str, float | int | str | bool]:
        """The constructor's default hyperparameters."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}

    @staticmethod
    def _start_fresh_if_absent(module: SiteIntervention, state_dict: dict, prefix: str, *args: object) -> None:
        """A state dict without any entry of this module (e.g. plain-backprop weights: a warm start) keeps its state."""
        if not any(key.startswith(prefix) for key in state_dict):
            state_dict.update({prefix + key: value for key, value in module.state_dict().items()})

    def __getstate__(self) -> dict:
        """Pickle (and deep-copy) the recorded activations detached: they are kept as the network emitted them."""
        return super().__getstate__() | {"_features": [None if h is None else h.detach() for h in self._features]}

    @property
    def sites(self) -> dict[str, Site]:
        return dict(zip(self.names, self._sites))

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Run :meth:`step` around every ``optimizer.step()`` (replacing any earlier attachment)."""
        self.detach()
        self.optimizer = optimizer
        register = optimizer.register_step_post_hook if self.when == "post" else optimizer.register_step_pre_hook
        self._step_hook = register(self._on_optimizer_step)

    def detach(self) -> None:
        if self._step_hook is not None:
            self._step_hook.remove()
        self._step_hook = None

    def is_attached(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether :meth:`step` is registered on this very optimizer (a re-created optimizer lacks it)."""
        hooks = optimizer._optimizer_step_post_hooks if self.when == "post" else optimizer._optimizer_step_pre_hooks
        return self.optimizer is optimizer and self._step_hook is not None and self._step_hook.id in hooks

    def record_features(self, enabled: bool) -> None:
        """Start (or stop) recording the sites' activations; interventions that need none never record.

        Toggled every SAC step. While recording, each site activation's ``forward`` is, on the instance, a
        `_Recorder` shared by every intervention recording that module; stopping restores the class's ``forward``.
        """
        enabled = enabled and self._records
        if enabled == self.recording:
            return
        self._features[:] = [None] * len(self._sites)
        for index, site in enumerate(self._sites):
            if enabled:
                _Recorder.subscribe(site.activation, self, index)
            else:
                _Recorder.unsubscribe(site.activation, self)

    @property
    def recording(self) -> bool:
        recorder = _Recorder.installed(self._sites[0].activation)
        return recorder is not None and self in recorder.sinks

    def take_features(self) -> list[torch.Tensor | None]:
        """The activations recorded since the last call (None for sites not run with gradients since)."""
        features = [None if h is None else h.detach() for h in self._features]
        self._features[:] = [None] * len(features)
        return features

    def _on_optimizer_step(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        self.step()

    def step(self) -> None:
        raise NotImplementedError

    @property
    def settings(self) -> dict[str, float | int | str | bool]:
        """The hyperparameters in use, as constructor keyword arguments; saved in ``state_dict`` too."""
        raise NotImplementedError

    def get_extra_state(self) -> dict[str, float | int | str | bool]:
        return self.settings

    def set_extra_state(self, state: dict[str, float | int | str | bool]) -> None:
        self.configure(**state)

    def configure(self, **settings: float | int | str | bool) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"sites={self.names}, " + ", ".join(f"{key}={value!r}" for key, value in self.settings.items())
