"""A policy at fixed frictions: deterministic episodes, and a callback that logs them during training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

import envs

from .callbacks import next_multiple


def fixed_friction_env(
    env_id: str, friction: float, env_kwargs: dict[str, Any] | None = None, max_episode_steps: int | None = None
) -> gym.Env:
    """A Slippery env whose friction is ``friction`` for good; the schedule kwargs of ``env_kwargs`` are dropped."""
    kwargs = {key: value for key, value in (env_kwargs or {}).items() if key not in (*envs.SCHEDULE_KWARGS, "n_envs")}
    return gym.make(env_id, max_episode_steps=max_episode_steps, friction=friction, **kwargs)


def run_episodes(
    model: BaseAlgorithm, env: gym.Env, episodes: int, seed: int
) -> tuple[list[float], list[np.ndarray], list[np.ndarray]]:
    """Returns of ``episodes`` deterministic episodes seeded ``seed, seed+1, ...``, with the observations and actions."""
    returns, observations, actions = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            observations.append(obs)
            actions.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns, observations, actions


class FrictionEvalCallback(BaseCallback):
    """Every ``eval_every`` environment steps, the mean return of ``episodes`` deterministic episodes at each of
    ``frictions``, logged as ``eval/return_at_friction_{f}`` (DESIGN §4).

    The episodes run on envs of their own, seeded ``seed, seed+1, ...`` at every evaluation, and deterministic actions
    draw no random numbers, so evaluating leaves the training run unchanged. A resumed run keeps the cadence: it
    evaluates whenever ``num_timesteps`` passes a multiple of ``eval_every``. Like SB3's ``EvalCallback``, it dumps the
    logger at that step, so the values carry the step they were measured at.

    :param env_id: the training env's id (a Slippery* env).
    :param frictions: the fixed frictions to evaluate at.
    :param env_kwargs: the training env's kwargs; its schedule kwargs are dropped.
    """

    def __init__(
        self,
        env_id: str,
        frictions: Sequence[float],
        eval_every: int,
        episodes: int = 5,
        seed: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
    ):
        super().__init__(verbose)
        self.frictions = [envs.check_friction("frictions", friction) for friction in frictions]
        self.eval_every, self.episodes, self.seed = eval_every, episodes, seed
        self.envs = {friction: fixed_friction_env(env_id, friction, env_kwargs) for friction in self.frictions}
        self._next_eval = eval_every

    def _on_training_start(self) -> None:
        self._next_eval = next_multiple(self.num_timesteps, self.eval_every)

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next_eval:
            self._next_eval = next_multiple(self.num_timesteps, self.eval_every)
            for friction, env in self.envs.items():
                returns, _, _ = run_episodes(self.model, env, self.episodes, self.seed)
                self.logger.record(f"eval/return_at_friction_{friction:g}", float(np.mean(returns)))
            self.logger.dump(self.num_timesteps)
        return True
