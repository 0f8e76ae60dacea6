"""The run configuration: one typed schema with defaults, YAML loading with validation, and the env and model it builds.

A YAML file overrides the schema's defaults; ``base: other.yaml`` merges another file first (paths relative to
the file). Every key is checked: an unknown or mistyped one is an error naming it and what is accepted.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import signal
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
import yaml
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from torch import nn

import envs

from .callbacks import PROBE_SIZE, RANK_EVERY
from .checkpoints import ResumableEnv
from .policies import METHODS, CBPActorCriticPolicy, CBPSACPolicy, reinit_scheme, resolve_settings

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC}
POLICIES = {"ppo": CBPActorCriticPolicy, "sac": CBPSACPolicy}
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "silu": nn.SiLU}
VEC_ENVS = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}
_SET_BY_BUILDER = {"self", "policy", "env", "seed", "device", "policy_kwargs", "tensorboard_log", "verbose", "_init_setup_model"}


@dataclass
class EnvConfig:
    id: str = "SlipperyAnt"  # short name (SlipperyAnt, ...) or any gymnasium id
    n_envs: int = 1  # parallel copies; Slippery envs count change_every in total steps
    vec_env: str = "dummy"  # dummy | subproc
    kwargs: dict = field(default_factory=dict)  # gym.make kwargs: change_every, friction_range, schedule_seed, ...


@dataclass
class PolicyConfig:
    net_arch: list = field(default_factory=lambda: [256, 256])  # hidden sizes of each network (actor and critic separate)
    activation: str = "relu"  # one of ACTIVATIONS
    init: str = "lecun"  # orthogonal (PPO only) | lecun | kaiming | xavier | default
    log_std_init: typing.Optional[float] = None  # initial log std of the Gaussian policy; None: SB3's default
    optimizer: dict = field(default_factory=dict)  # Adam kwargs: betas, weight_decay, eps
    cbp: typing.Optional[dict] = None  # ContinualBackprop settings; None: off
    shrink_perturb: typing.Optional[dict] = None  # cbp_rl.ShrinkPerturb settings (shrink, noise_scale); None: off
    redo: typing.Optional[dict] = None  # cbp_rl.ReDo settings (reset_period, tau, init, ...); None: off
    l2_init: typing.Optional[dict] = None  # cbp_rl.L2Init settings (strength); None: off


@dataclass
class CheckpointConfig:
    every: int = 500_000  # environment steps between checkpoints
    keep: int = 0  # newest checkpoints kept; 0 keeps all
    replay_buffer: bool = True  # off-policy: save the replay buffer (GBs) with the newest checkpoint, for exact resume


@dataclass
class LoggingConfig:
    health: bool = True  # unit-health metrics (DESIGN §4)
    health_every: int = 10_000  # SAC: environment steps between health probes (PPO: every rollout)
    probe_size: int = PROBE_SIZE  # observations per health probe (the paper's 1000)
    rank_every: int = RANK_EVERY  # steps between two probes that compute the ranks (the paper's 10k); 1: all
    utility_histograms: bool = True  # CBP utility histograms in TensorBoard
    eval_frictions: list = field(default_factory=list)  # fixed frictions for eval/return_at_friction_{f}; empty: none
    eval_every: int = 500_000  # environment steps between two of those evaluations
    eval_episodes: int = 5  # deterministic episodes per friction and evaluation


@dataclass
class Config:
    algo: str = "ppo"  # ppo | sac
    method: str = "cbp"  # name of the method, used to group runs in plots
    seed: int = 0  # seeds torch, numpy, the env resets and (by default) the friction schedule
    total_steps: int = 20_000_000  # environment steps to train for
    device: str = "auto"  # auto | cpu | cuda
    torch_threads: typing.Optional[int] = None  # torch intra-op CPU threads; None: torch's default (1 is fastest here)
    env: EnvConfig = field(default_factory=EnvConfig)
    algo_kwargs: dict = field(default_factory=dict)  # keyword arguments of the SB3 algorithm (PPO / SAC)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Loader(yaml.SafeLoader):
    """YAML 1.1's safe loader that also reads exponents without a dot (``1e-4``) as floats, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping, with its ``base:`` files merged underneath (recursively)."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}
    except OSError as error:
        raise ValueError(f"config file {str(path)!r} cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} is invalid: expected a mapping of keys to values")
    _check_own_schedule(path, data)
    base = data.pop("base", None)
    return merge(read_yaml(path.parent / base), data) if base else data


def _check_own_schedule(path: Path, data: dict[str, Any]) -> None:
    """Refuse a file that names a non-Slippery env and sets a friction schedule for it (the shipped configs' schedule
    is dropped when another file or ``--env`` picks such an env: that is no contradiction within one file)."""
    env = data.get("env")
    if not (isinstance(env, dict) and isinstance(env.get("id"), str) and isinstance(env.get("kwargs"), dict)):
        return
    scheduled = [key for key in envs.SCHEDULE_KWARGS if key in env["kwargs"]]
    try:
        slippery = is_slippery(envs.resolve_env_id(env["id"]))
    except ValueError:
        return  # an unknown id: a file that inherits this one may name another, and build_config checks the last
    if scheduled and not slippery:
        raise ValueError(f"config file {str(path)!r} sets env.kwargs.{scheduled[0]}, which needs a Slippery* env "
                         f"(it sets their friction), not {env['id']!r}")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: ``override``'s leaves win; nested dicts are merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def set_dotted(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply ``key.sub=value`` (value parsed as YAML) to a nested dict, returning a new dict."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"--set {assignment!r} is invalid: expected key=value, e.g. algo_kwargs.n_steps=256")
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        value = raw
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return merge(data, nested)


def build_config(data: dict[str, Any]) -> Config:
    """Validate a nested dict against the schema and return the resolved config (plasticity settings complete)."""
    config = _build(Config, data, "")
    _check_choices(config)
    policy = config.policy
    for method in METHODS:
        setattr(policy, method, resolve_settings(method, getattr(policy, method), reinit_scheme(policy.init)))
    return config


RESUMABLE = ("total_steps", "device", "torch_threads", "checkpoint.", "logging.")
"""Settings (dotted keys, or prefixes ending in a dot) that a resumed run may change; the checkpoint fixes the rest."""


def check_resumable(recorded: Config, requested: Config) -> None:
    """``ValueError`` naming the first setting that differs between a run's recorded config and the one a resume
    asks for, unless it is in ``RESUMABLE``."""
    old, new = _flatten(recorded.to_dict()), _flatten(requested.to_dict())
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key) and not key.startswith(RESUMABLE):
            raise ValueError(
                f"--resume continues the run as recorded: {key!r} is {old.get(key)!r} there, not {new.get(key)!r} "
                "(a resumed run can change only total_steps, device, torch_threads, checkpoint.* and logging.*)"
            )


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def _build(schema: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}={data!r} is invalid: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    values = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"config key {prefix + str(key)!r} is unknown: expected one of {', '.join(fields)}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            values[key] = _build(kind, value, f"{prefix}{key}.")
        else:
            values[key] = _check_type(prefix + key, value, kind)
    return schema(**values)


def _check_type(key: str, value: Any, kind: Any) -> Any:
    optional = typing.get_origin(kind) is typing.Union
    base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    raise ValueError(f"config key {key!r}={value!r} is invalid: expected {base.__name__}{' or null' if optional else ''}")


def _choice(key: str, value: str, accepted: typing.Iterable[str]) -> None:
    if value not in accepted:
        raise ValueError(f"config key {key!r}={value!r} is invalid: expected one of {', '.join(accepted)}")


def _check_choices(config: Config) -> None:
    _choice("algo", config.algo, ALGORITHMS)
    _choice("env.vec_env", config.env.vec_env, VEC_ENVS)
    _choice("policy.activation", config.policy.activation, ACTIVATIONS)
    config.env.id = envs.resolve_env_id(config.env.id)
    if is_slippery(config.env.id):
        config.env.kwargs.setdefault("schedule_seed", config.seed)
    else:  # the configs' friction protocol: only Slippery envs have one
        config.env.kwargs = {k: v for k, v in config.env.kwargs.items() if k not in envs.SCHEDULE_KWARGS}
    try:
        if config.device != "auto":
            torch.device(config.device)
    except RuntimeError:
        raise ValueError(f"config key 'device'={config.device!r} is invalid: expected auto, cpu, cuda or cuda:N") from None
    if config.torch_threads is not None and config.torch_threads <= 0:
        raise ValueError(f"config key 'torch_threads'={config.torch_threads!r} is invalid: expected a positive integer or null")
    try:
        for friction in config.logging.eval_frictions:
            envs.check_friction("friction", friction)
    except ValueError:
        frictions = config.logging.eval_frictions
        raise ValueError(f"config key 'logging.eval_frictions'={frictions!r} is invalid: expected positive frictions") from None
    if config.logging.eval_frictions and not is_slippery(config.env.id):
        raise ValueError(f"config key 'logging.eval_frictions' needs a Slippery* env, not {config.env.id!r}")
    positive = ("total_steps", "checkpoint.every", "env.n_envs", "logging.health_every", "logging.probe_size",
                "logging.rank_every")
    for key in (*positive, "logging.eval_every", "logging.eval_episodes"):
        value = _get(config, key)
        if value <= 0:
            raise ValueError(f"config key {key!r}={value!r} is invalid: expected a positive integer")
    signature = inspect.signature(ALGORITHMS[config.algo].__init__).parameters
    for key, value in config.algo_kwargs.items():
        if key in _SET_BY_BUILDER or key not in signature:
            accepted = sorted(set(signature) - _SET_BY_BUILDER)
            raise ValueError(f"config key 'algo_kwargs.{key}' is unknown for {config.algo}: expected one of {', '.join(accepted)}")
        default = signature[key].default
        if isinstance(value, list) and "tuple" in str(signature[key].annotation):
            config.algo_kwargs[key] = value = tuple(value)  # e.g. SAC's train_freq: [1, episode]
            continue
        if isinstance(default, bool):
            valid = isinstance(value, bool)
        elif isinstance(default, int):
            if isinstance(value, float) and value.is_integer():
                config.algo_kwargs[key] = value = int(value)  # e.g. buffer_size: 1e6
            valid = isinstance(value, int) and not isinstance(value, bool)
        else:
            valid = not isinstance(default, (int, float)) or isinstance(value, (int, float)) and not isinstance(value, bool)
        if not valid:
            raise ValueError(f"config key 'algo_kwargs.{key}'={value!r} is invalid: expected {type(default).__name__}")


def _get(config: Config, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def is_slippery(env_id: str) -> bool:
    return env_id in {envs.resolve_env_id(name) for name in envs.SLIPPERY_ENVS}


def env_kwargs(config: Config) -> dict[str, Any]:
    """gym.make kwargs: the config's, plus ``n_envs`` for Slippery envs (they count steps across copies)."""
    kwargs = dict(config.env.kwargs)
    if is_slippery(config.env.id):
        kwargs["n_envs"] = config.env.n_envs
    return kwargs


def make_env(config: Config) -> VecEnv:
    """The training VecEnv: ``n_envs`` copies wrapped in ``Monitor`` and `ResumableEnv`, reset seeds ``seed, seed+1, ...``."""
    env_id, subproc = config.env.id, config.env.vec_env == "subproc"
    if subproc and is_slippery(env_id):
        env_id = f"envs:{env_id}"  # subprocesses import envs (and so register the ids) before making it
    return make_vec_env(
        env_id, n_envs=config.env.n_envs, seed=config.seed, env_kwargs=env_kwargs(config),
        vec_env_cls=VEC_ENVS[config.env.vec_env], wrapper_class=worker_env if subproc else ResumableEnv,
    )


def worker_env(env: gym.Env) -> ResumableEnv:
    """`ResumableEnv` for a ``SubprocVecEnv`` worker, which then ignores SIGINT and SIGTERM: a terminal's Ctrl-C or a
    job scheduler's signal reaches the whole process group, and the main process needs its workers until it has
    checkpointed and stopped (they exit when it closes them, or when their pipe breaks)."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    return ResumableEnv(env)


def policy_kwargs(config: Config) -> dict[str, Any]:
    policy = config.policy
    kwargs: dict[str, Any] = dict(net_arch=list(policy.net_arch), activation_fn=ACTIVATIONS[policy.activation], init=policy.init)
    kwargs |= {method: getattr(policy, method) for method in METHODS}
    optimizer = dict(policy.optimizer)
    if "betas" in optimizer:
        optimizer["betas"] = tuple(optimizer["betas"])
    if optimizer:
        kwargs["optimizer_kwargs"] = optimizer
    if policy.log_std_init is not None:
        kwargs["log_std_init"] = policy.log_std_init
    return kwargs


def build_model(config: Config, env: VecEnv) -> BaseAlgorithm:
    """The plain SB3 algorithm of ``config.algo`` with the CBP policy class and the config's settings."""
    algorithm = ALGORITHMS[config.algo]
    try:
        return algorithm(
            POLICIES[config.algo], env, seed=config.seed, device=config.device,
            policy_kwargs=policy_kwargs(config), **config.algo_kwargs,
        )
    except (TypeError, AssertionError) as error:
        raise ValueError(f"the {config.algo} settings are invalid: {' '.join(str(error).split())}") from None
