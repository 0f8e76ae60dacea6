"""SB3 policy classes with continual backprop, and the callbacks and checkpoints of a training run."""

from .callbacks import FrictionCallback, UnitHealthCallback
from .checkpoints import (
    Checkpoint,
    ResumableEnv,
    RunCheckpointCallback,
    list_checkpoints,
    restore_schedule_states,
    schedule_states,
)
from .evaluation import FrictionEvalCallback, fixed_friction_env, run_episodes
from .policies import METHODS, POLICY_INITS, CBPActorCriticPolicy, CBPSACPolicy, init_policy_, resolve_settings
from .sites import network_parameters, policy_heads, policy_sites, probe_forward

__all__ = [
    "CBPActorCriticPolicy",
    "CBPSACPolicy",
    "METHODS",
    "POLICY_INITS",
    "resolve_settings",
    "init_policy_",
    "UnitHealthCallback",
    "FrictionCallback",
    "FrictionEvalCallback",
    "fixed_friction_env",
    "run_episodes",
    "RunCheckpointCallback",
    "ResumableEnv",
    "Checkpoint",
    "list_checkpoints",
    "schedule_states",
    "restore_schedule_states",
    "policy_sites",
    "policy_heads",
    "network_parameters",
    "probe_forward",
]
