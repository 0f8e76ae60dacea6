"""Gymnasium ids of the Slippery* environments and the mapping from the names users type to those ids."""

from __future__ import annotations

import gymnasium as gym

_BASE_ENV_IDS = {
    "SlipperyAnt": "Ant-v5",
    "SlipperyHalfCheetah": "HalfCheetah-v5",
    "SlipperyHopper": "Hopper-v5",
    "SlipperyWalker2d": "Walker2d-v5",
    "SlipperyHumanoid": "Humanoid-v5",
}
SLIPPERY_ENVS: tuple[str, ...] = tuple(_BASE_ENV_IDS)
_VERSION = "v0"


def register_slippery_envs() -> None:
    """Register ``Slippery*-v0`` for each of `SLIPPERY_ENVS` (once; repeated calls do nothing)."""
    for name, base_id in _BASE_ENV_IDS.items():
        env_id = f"{name}-{_VERSION}"
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="envs.slippery:make_slippery_env",
            max_episode_steps=gym.spec(base_id).max_episode_steps,
            kwargs={"base_env_id": base_id},
        )


def resolve_env_id(name: str) -> str:
    """
    Map a short name of `SLIPPERY_ENVS` to its gymnasium id; a registered gymnasium id passes through.

    :param name: e.g. ``"SlipperyAnt"``, ``"SlipperyAnt-v0"`` or ``"Ant-v5"``
    """
    if name in _BASE_ENV_IDS:
        return f"{name}-{_VERSION}"
    if isinstance(name, str) and name in gym.registry:
        return name
    raise ValueError(
        f"env {name!r} is invalid: expected a registered gymnasium id or one of {', '.join(SLIPPERY_ENVS)}"
    )
