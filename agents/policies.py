"""SB3 policy classes whose actor and critic keep their plasticity with continual backprop (DESIGN §2).

``PPO(CBPActorCriticPolicy, env, policy_kwargs=dict(cbp=dict(replacement_rate=1e-4, ...)))`` and
``SAC(CBPSACPolicy, env, ...)`` train with the plain SB3 algorithms; ``PPO.load`` restores CBP state.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.sac.policies import SACPolicy
from torch import nn

from cbp_rl import PLASTICITY_METHODS, init_linear_

from .sites import policy_heads, policy_sites

POLICY_INITS = ("orthogonal", "lecun", "kaiming", "xavier", "default")
METHODS = tuple(PLASTICITY_METHODS)


PAPER_RL_SETTINGS = {"cbp": {"maturity_threshold": 10_000}}
"""Where the paper's RL runs (DESIGN §3) differ from the core classes' defaults (ContinualBackprop's maturity: 100)."""


def resolve_settings(method: str, settings: dict[str, Any] | None, default_init: str) -> dict[str, Any] | None:
    """Full settings of a plasticity method: the class's defaults with the paper's RL ones (`PAPER_RL_SETTINGS`),
    the policy's init scheme, then the user's values."""
    if settings is None:
        return None
    defaults = PLASTICITY_METHODS[method].default_settings() | PAPER_RL_SETTINGS.get(method, {})
    if not isinstance(settings, dict):
        raise ValueError(f"{method}={settings!r} is invalid: expected None (off) or a dict of {', '.join(defaults)}")
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"{method} key {unknown[0]!r} is unknown: expected some of {', '.join(defaults)}")
    if "init" in defaults:
        defaults["init"] = default_init
    return defaults | settings


def reinit_scheme(init: str) -> str:
    """The uniform scheme of re-initialized units under a policy's ``init`` (orthogonal: the variance-matched kaiming)."""
    return init if init != "orthogonal" else "kaiming"


def _check_policy_kwargs(init: str, kwargs: dict[str, Any]) -> None:
    if init not in POLICY_INITS:
        raise ValueError(f"init={init!r} is invalid: expected one of {', '.join(POLICY_INITS)}")
    if kwargs.get("use_sde"):
        raise ValueError(
            "use_sde=True is not supported by the CBP policies: gSDE reads the last hidden layer through a "
            "non-Linear noise matrix that CBP cannot reset; use use_sde=False"
        )


@torch.no_grad()
def init_policy_(policy: BasePolicy, init: str) -> None:
    """Re-initialize every hidden layer and head of a PPO or SAC policy with a uniform scheme and zero biases
    (SAC's ``critic_target`` copies the new critic)."""
    for network in policy_sites(policy).values():
        for site in network.values():
            init_linear_(site.producer, init, site.activation)
    for heads in policy_heads(policy).values():
        for head in heads.values():
            init_linear_(head, init)
    if isinstance(policy, SACPolicy):
        policy.critic_target.load_state_dict(policy.critic.state_dict())


class _PlasticityMixin:
    """Plasticity methods on every network of an SB3 policy: one module per method and optimizer, holding the
    sites of the networks that optimizer trains (named ``{network}/{layer}``), in ``self.plasticity[method][group]``."""

    plasticity: nn.ModuleDict

    def _setup_plasticity(self, methods: dict[str, dict[str, Any] | None], init: str, reinit_uniform: bool) -> None:
        self.init = init
        sites = policy_sites(self)
        if reinit_uniform:
            init_policy_(self, init)
        self.plasticity_settings = {method: resolve_settings(method, value, reinit_scheme(init)) for method, value in methods.items()}
        groups = {
            group: {f"{network}/{name}": site for network in networks for name, site in sites.get(network, {}).items()}
            for group, networks in self._network_groups(list(sites)).items()
        }
        self.plasticity = nn.ModuleDict(
            {
                method: nn.ModuleDict(
                    {
                        group: PLASTICITY_METHODS[method](group_sites, self._optimizer_of(group), **settings)
                        for group, group_sites in groups.items()
                        if group_sites
                    }
                )
                for method, settings in self.plasticity_settings.items()
                if settings is not None
            }
        )
        self._plasticity_modules = [(group, module) for modules in self.plasticity.values() for group, module in modules.items()]

    def _network_groups(self, networks: list[str]) -> dict[str, list[str]]:
        """The networks each optimizer trains, by optimizer name."""
        raise NotImplementedError

    @property
    def cbp(self) -> nn.ModuleDict | None:
        """The ContinualBackprop module of each optimizer (sites ``{network}/{layer}``), or None without CBP."""
        return self.plasticity["cbp"] if "cbp" in self.plasticity else None

    def _optimizer_of(self, group: str) -> torch.optim.Optimizer:
        raise NotImplementedError

    def set_training_mode(self, mode: bool) -> None:
        """Also switch activation recording: on while training, off for rollouts and evaluation."""
        super().set_training_mode(mode)
        for group, module in self._plasticity_modules:
            module.record_features(mode)
            if mode:
                optimizer = self._optimizer_of(group)
                if not module.is_attached(optimizer):
                    module.attach(optimizer)

    def _plasticity_constructor_parameters(self) -> dict[str, Any]:
        live = {method: next(iter(modules.values())).settings for method, modules in self.plasticity.items() if modules}
        return {"init": self.init, **self.plasticity_settings, **live}  # a loaded state dict's settings win


class CBPActorCriticPolicy(_PlasticityMixin, ActorCriticPolicy):
    """SB3's ``ActorCriticPolicy`` (for ``PPO``/``A2C``) with continual backprop on the actor and critic MLPs.

    Sites: every hidden layer of ``mlp_extractor.policy_net`` (the last one read by ``action_net``) and of
    ``mlp_extractor.value_net`` (the last one read by ``value_net``), named ``actor/l0``, ``critic/l1``, ...,
    in one module per method on the shared optimizer (``policy.cbp["policy"]``). CBP runs after every
    optimizer step, i.e. once per PPO minibatch.

    :param cbp: ContinualBackprop settings (``replacement_rate``, ``maturity_threshold``, ``decay_rate``,
        ``init``, ``fractional``, ``reset_optimizer_state``); missing keys take the paper's RL settings
        (``replacement_rate=1e-4``, ``maturity_threshold=10000``, ``decay_rate=0.99``) and ``init`` the policy's
        scheme. ``None`` (default): no CBP, plain backprop on the same network.
    :param shrink_perturb: likewise for `cbp_rl.ShrinkPerturb` (``shrink``, ``noise_scale``); ``redo`` for
        `cbp_rl.ReDo` (``reset_period``, ``tau``, ...); ``l2_init`` for `cbp_rl.L2Init` (``strength``).
        Methods combine: each given one runs on every network.
    :param init: weight init of the MLPs and heads: ``orthogonal`` (SB3's default, gains √2 / 0.01 / 1) or a
        uniform scheme ``lecun`` (the paper's), ``kaiming``, ``xavier``, ``default`` with zero biases.
        Re-initialized units use the same scheme; with ``orthogonal``, the variance-matched ``kaiming`` bound.
    :param kwargs: everything ``ActorCriticPolicy`` takes (``net_arch``, ``activation_fn``, ``optimizer_kwargs``
        ...). ``use_sde=True`` is rejected.
    """

    sb3_init = "orthogonal"  # what SB3's ActorCriticPolicy does itself; any other init re-initializes

    def __init__(self, *args: Any, init: str = "orthogonal", **kwargs: Any):
        methods = {method: kwargs.pop(method, None) for method in METHODS}
        _check_policy_kwargs(init, kwargs)
        if init != self.sb3_init:
            kwargs["ortho_init"] = False
        super().__init__(*args, **kwargs)
        self._setup_plasticity(methods, init, reinit_uniform=init != self.sb3_init)

    def _network_groups(self, networks: list[str]) -> dict[str, list[str]]:
        return {"policy": networks}

    def _optimizer_of(self, group: str) -> torch.optim.Optimizer:
        return self.optimizer

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return super()._get_constructor_parameters() | self._plasticity_constructor_parameters()


class CBPSACPolicy(_PlasticityMixin, SACPolicy):
    """SB3's ``SACPolicy`` with continual backprop on the actor and on every critic Q-network.

    Sites: every hidden layer of ``actor.latent_pi`` (the last one read by ``mu`` and ``log_std``), CBP
    stepping with ``actor.optimizer`` (``policy.cbp["actor"]``); every hidden layer of each ``critic.qf{i}``
    (sites ``critic0/l0`` ...), stepping with ``critic.optimizer`` (``policy.cbp["critic"]``). ``critic_target`` gets no CBP: it follows the critic by Polyak averaging.

    :param cbp: as for `CBPActorCriticPolicy` (so are ``shrink_perturb``, ``redo``, ``l2_init``).
    :param init: ``default`` (SB3's SAC: torch's nn.Linear init) or ``lecun``, ``kaiming``, ``xavier``.
    :param kwargs: everything ``SACPolicy`` takes; ``use_sde=True`` is rejected.
    """

    sb3_init = "default"  # SB3's SACPolicy keeps torch's nn.Linear init

    def __init__(self, *args: Any, init: str = "default", **kwargs: Any):
        methods = {method: kwargs.pop(method, None) for method in METHODS}
        _check_policy_kwargs(init, kwargs)
        if init == "orthogonal":
            raise ValueError("init='orthogonal' is invalid for SAC: expected one of lecun, kaiming, xavier, default")
        super().__init__(*args, **kwargs)
        self._setup_plasticity(methods, init, reinit_uniform=init != self.sb3_init)

    def _network_groups(self, networks: list[str]) -> dict[str, list[str]]:
        return {"actor": ["actor"], "critic": [n for n in networks if n != "actor"]}

    def _optimizer_of(self, group: str) -> torch.optim.Optimizer:
        return self.actor.optimizer if group == "actor" else self.critic.optimizer

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return super()._get_constructor_parameters() | self._plasticity_constructor_parameters()
