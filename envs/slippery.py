"""The Slippery* environments: a MuJoCo env whose ground friction follows a `FrictionSchedule`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from envs.schedule import PAPER_CHANGE_EVERY, PAPER_FRICTION_RANGE, FrictionSchedule, check_positive_int

_STATE_KEYS = ("segment", "steps_since_change", "friction")


class SlipperyWrapper(gym.Wrapper):
    """
    Sets the sliding friction of every geom (``model.geom_friction[:, 0]``) to the schedule's current
    friction and moves to the next segment at the first reset after ``schedule.change_every`` steps
    since the last change, so a new friction never starts mid-episode. Every geom, not only the
    floor: MuJoCo takes the element-wise max of a contact's two geoms, so a floor alone below the
    bodies' friction would change nothing. Adds ``info["friction"]`` (float) and
    ``info["friction_segment"]`` (int, 0-based) to every step and reset.

    In a vector env of N copies, pass ``n_envs=N`` to every copy: each copy then counts N steps per
    own step, so ``change_every`` stays in total environment steps across the vector env, and copies
    built with the same schedule seed change to the same friction at their next episode end.

    :param env: a MuJoCo env (its ``unwrapped.model`` is modified in place)
    :param schedule: the friction schedule to follow
    :param n_envs: number of copies stepping in lockstep in the vector env this one belongs to
    """

    def __init__(self, env: gym.Env, schedule: FrictionSchedule, n_envs: int = 1) -> None:
        super().__init__(env)
        self._n_envs = check_positive_int("n_envs", n_envs, "environment copies")
        self._geom_friction = env.unwrapped.model.geom_friction
        self._use_schedule(schedule, segment=0, steps_since_change=0)

    @property
    def schedule(self) -> FrictionSchedule:
        """The schedule being followed."""
        return self._schedule

    @property
    def friction(self) -> float:
        """Sliding friction in effect now."""
        return self._friction

    @property
    def friction_segment(self) -> int:
        """Index of the current segment of the schedule (0-based)."""
        return self._segment

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._steps_since_change += self._n_envs
        info["friction"] = self._friction
        info["friction_segment"] = self._segment
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if self._steps_since_change >= self._schedule.change_every and not self._schedule.is_last(self._segment):
            self._segment += 1
            self._steps_since_change = 0
            self._apply(self._schedule.friction_at(self._segment))
        obs, info = self.env.reset(seed=seed, options=options)
        info["friction"] = self._friction
        info["friction_segment"] = self._segment
        return obs, info

    def get_schedule_state(self) -> dict[str, Any]:
        """Plain JSON-serialisable state from which `set_schedule_state` continues the same sequence."""
        return {
            "segment": self._segment,
            "steps_since_change": self._steps_since_change,
            "friction": self._friction,
        }

    def set_schedule_state(self, state: dict[str, Any]) -> None:
        """
        Continue from a state returned by `get_schedule_state` of an env with the same schedule.
        The segment's friction applies at once; call between episodes (the next reset starts an
        episode at it, or at the next segment's if a change was pending).

        :param state: the saved state
        """
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"schedule state {state!r} is invalid: missing keys {missing}, expected {list(_STATE_KEYS)}")
        segment, steps = state["segment"], state["steps_since_change"]
        if not (isinstance(segment, int) and segment >= 0 and isinstance(steps, int) and steps >= 0):
            raise ValueError(
                f"schedule state {state!r} is invalid: expected non-negative integers for segment and steps_since_change"
            )
        if self._schedule.num_segments is not None and segment >= self._schedule.num_segments:
            raise ValueError(
                f"schedule state segment={segment} is invalid: this schedule has {self._schedule.num_segments} segments"
            )
        expected = self._schedule.friction_at(segment)
        if not math.isclose(float(state["friction"]), expected, rel_tol=1e-9):
            raise ValueError(
                f"schedule state friction={state['friction']!r} is invalid: this schedule has friction "
                f"{expected!r} at segment {segment} (state saved from another schedule?)"
            )
        self._use_schedule(self._schedule, segment, steps)

    def set_friction(self, friction: float) -> None:
        """
        Switch to one fixed friction for good (evaluation); applies at once, call between episodes.

        :param friction: the sliding friction coefficient
        """
        self._use_schedule(FrictionSchedule(friction=friction), segment=0, steps_since_change=0)

    def _use_schedule(self, schedule: FrictionSchedule, segment: int, steps_since_change: int) -> None:
        self._schedule = schedule
        self._segment = segment
        self._steps_since_change = steps_since_change
        self._apply(schedule.friction_at(segment))

    def _apply(self, friction: float) -> None:
        self._friction = friction
        self._geom_friction[:, 0] = friction


def make_slippery_env(
    base_env_id: str,
    change_every: int = PAPER_CHANGE_EVERY,
    friction_range: tuple[float, float] = PAPER_FRICTION_RANGE,
    frictions: Sequence[float] | None = None,
    friction: float | None = None,
    schedule_seed: int = 0,
    n_envs: int = 1,
    **base_kwargs: Any,
) -> SlipperyWrapper:
    """
    Build the registered base env (e.g. ``Ant-v5``) without its wrappers and put a `SlipperyWrapper`
    on it; the entry point of the ``Slippery*-v0`` ids, whose ``gym.make`` adds the time limit.

    :param base_env_id: gymnasium id of the MuJoCo env to make slippery
    :param change_every: see `FrictionSchedule`
    :param friction_range: see `FrictionSchedule`
    :param frictions: see `FrictionSchedule`
    :param friction: see `FrictionSchedule`
    :param schedule_seed: see `FrictionSchedule`
    :param n_envs: see `SlipperyWrapper`
    :param base_kwargs: passed to the base env (``xml_file``, ``ctrl_cost_weight``, ``render_mode``, ...)
    """
    schedule = FrictionSchedule(change_every, friction_range, frictions, friction, schedule_seed)
    check_positive_int("n_envs", n_envs, "environment copies")
    base_spec = gym.spec(base_env_id)
    env = load_env_creator(base_spec.entry_point)(**{**base_spec.kwargs, **base_kwargs})
    return SlipperyWrapper(env, schedule, n_envs)

