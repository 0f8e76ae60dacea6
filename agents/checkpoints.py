"""Checkpoints that resume a run exactly: SB3 model zip, optional replay buffer, the envs' state, and the run state."""

from __future__ import annotations

import base64
import copy
import json
import os
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from .callbacks import next_multiple

_STATE_FILE = re.compile(r"^(?P<prefix>.+)_run_state_(?P<steps>\d+)_steps\.json$")


def schedule_states(env: VecEnv) -> list[dict[str, Any]] | None:
    """The friction-schedule state of every sub-env, or None for envs without a schedule."""
    return env.env_method("get_schedule_state") if env.has_attr("get_schedule_state") else None


def restore_schedule_states(env: VecEnv, states: list[dict[str, Any]] | None) -> None:
    """Put every sub-env back on its saved friction-schedule state."""
    if states is None:
        return
    if len(states) != env.num_envs:
        raise ValueError(f"the checkpoint has {len(states)} env states but the env has {env.num_envs} sub-envs: use the same --n-envs")
    for index, state in enumerate(states):
        env.env_method("set_schedule_state", state, indices=[index])


_EPISODE_COUNTERS = {
    TimeLimit: ("_elapsed_steps",),
    OrderEnforcing: ("_has_reset",),
    PassiveEnvChecker: ("checked_reset", "checked_step", "checked_data_reuse", "_previous_data"),
    Monitor: ("rewards", "needs_reset", "total_steps"),
}


class ResumableEnv(gym.Wrapper):
    """Outermost wrapper of a training env that can snapshot and restore the running episode.

    The snapshot holds the MuJoCo data (the state, and the derived quantities that a step reads before simulating,
    such as Ant's torso position), the episode counters of gymnasium's and SB3's standard wrappers below (time limit,
    order and env checks, ``Monitor``), and the env's random stream (reset noise). With it and SB3's ``_last_obs``, a
    resumed run steps on exactly as the run it continues. Add it with ``make_vec_env(..., wrapper_class=ResumableEnv)``;
    envs without MuJoCo data have no snapshot.
    """

    def get_env_state(self) -> dict[str, Any] | None:
        """The episode's state (None without MuJoCo data); picklable, so a subprocess env can return it."""
        base = self.env.unwrapped
        data = getattr(base, "data", None)
        if not isinstance(data, mujoco.MjData):
            return None
        return {
            "wrappers": [
                {name: copy.deepcopy(getattr(wrapper, name)) for name in _counters(wrapper)} for wrapper in self._chain()
            ],
            "mujoco": copy.copy(data),
            "np_random": base.np_random.bit_generator.state,
        }

    def set_env_state(self, state: dict[str, Any]) -> None:
        """Continue the episode of a state from `get_env_state` of an env built alike."""
        chain = self._chain()
        if len(chain) != len(state["wrappers"]):
            saved = len(state["wrappers"])
            raise ValueError(f"the saved env state has {saved} wrappers, this env {len(chain)}: it was built differently")
        for wrapper, counters in zip(chain, state["wrappers"]):
            for name, value in counters.items():
                setattr(wrapper, name, copy.deepcopy(value))
        base = self.env.unwrapped
        mujoco.mj_copyData(base.data, base.model, state["mujoco"])
        base.np_random.bit_generator.state = state["np_random"]

    def _chain(self) -> list[gym.Env]:
        chain, env = [], self.env
        while isinstance(env, gym.Wrapper):
            chain.append(env)
            env = env.env
        return chain


def _counters(wrapper: gym.Env) -> tuple[str, ...]:
    return next((names for kind, names in _EPISODE_COUNTERS.items() if isinstance(wrapper, kind)), ())


def env_states(env: VecEnv) -> list[dict[str, Any]] | None:
    """The running episode of every sub-env, or None unless they are MuJoCo envs wrapped in `ResumableEnv`."""
    states = env.env_method("get_env_state") if env.has_attr("get_env_state") else [None]
    return None if any(state is None for state in states) else states


def restore_env_states(env: VecEnv, states: list[dict[str, Any]]) -> None:
    """Put every sub-env back into its saved episode."""
    if len(states) != env.num_envs:
        raise ValueError(
            f"the checkpoint has {len(states)} env states but the env has {env.num_envs} sub-envs: use the same --n-envs"
        )
    for index, state in enumerate(states):
        env.env_method("set_env_state", state, indices=[index])


def random_states(model: BaseAlgorithm) -> dict[str, Any]:
    """The random streams an SB3 run draws from (torch, numpy, Python, the action space), as JSON values.

    ``load()`` re-seeds them all from the run's seed; restoring them instead continues the streams of the run.
    """
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    version, state, gauss = random.getstate()
    states = {
        "torch": _encode(torch.get_rng_state()),
        "numpy": numpy_state,
        "python": [version, list(state), gauss],
        "action_space": model.action_space.np_random.bit_generator.state,
    }
    if torch.cuda.is_initialized():
        states["cuda"] = [_encode(state) for state in torch.cuda.get_rng_state_all()]
    return states


def restore_random_states(model: BaseAlgorithm, states: dict[str, Any] | None) -> None:
    """Put the random streams back where :func:`random_states` found them (checkpoints without them: no-op)."""
    if states is None:
        return
    torch.set_rng_state(_decode(states["torch"]))
    if torch.cuda.is_available():
        for device, state in enumerate(states.get("cuda", [])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(_decode(state), device)
    numpy_state = dict(states["numpy"], state=dict(states["numpy"]["state"]))
    numpy_state["state"]["key"] = np.array(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    model.action_space.np_random.bit_generator.state = states["action_space"]


def pending_records(logger: Logger) -> dict[str, Any]:
    """What SB3's ``logger`` has recorded since its last dump, as JSON values (values JSON cannot hold, such as
    figures, are left out)."""
    records = {}
    for key, value in logger.name_to_value.items():
        if isinstance(value, torch.Tensor):
            value = {"tensor": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
        elif isinstance(value, np.ndarray):
            value = {"array": value.tolist(), "dtype": str(value.dtype)}
        elif isinstance(value, np.generic):
            value = value.item()
        record = {"value": value, "count": logger.name_to_count.get(key, 0), "exclude": list(logger.name_to_excluded[key])}
        try:
            json.dumps(record)
        except (TypeError, ValueError):
            continue
        records[key] = record
    return records


def restore_pending_records(logger: Logger, records: dict[str, Any] | None) -> None:
    """Record again what :func:`pending_records` found (checkpoints without them: no-op)."""
    for key, record in (records or {}).items():
        value = record["value"]
        if isinstance(value, dict) and "tensor" in value:
            value = torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
        elif isinstance(value, dict):
            value = np.array(value["array"], dtype=value["dtype"])
        logger.name_to_value[key] = value
        if record["count"]:
            logger.name_to_count[key] = record["count"]
        logger.name_to_excluded[key] = tuple(record["exclude"])


def _encode(rng_state: torch.Tensor) -> str:
    return base64.b64encode(rng_state.numpy().tobytes()).decode()


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


class RunCheckpointCallback(CheckpointCallback):
    """SB3's ``CheckpointCallback`` that saves between two rollouts, also the run state, and keeps the newest ``keep``.

    A checkpoint ``{prefix}_{steps}_steps.zip`` is complete once ``{prefix}_run_state_{steps}_steps.json``
    exists (it is written last, atomically); it holds ``num_timesteps``, the friction-schedule state of
    every sub-env, the state of the ``stateful`` callbacks, the random streams (:func:`random_states`) and what
    the logger has recorded but not yet written (:func:`pending_records`).
    Checkpoints are taken where a rollout starts (PPO: after the update; SAC: after the updates of its ``train_freq``
    steps) or where training ends, so nothing half-collected is lost: with envs wrapped in `ResumableEnv`, whose
    running episodes are saved in ``{prefix}_env_state_{steps}_steps.pkl``, a resumed run continues exactly as this
    one would have.

    :param save_freq: save every ``save_freq × n_envs`` steps: at the first rollout start at or after each multiple of
        that in ``num_timesteps``, so a resumed run keeps the grid of the run it continues.
    :param save_path: folder of the checkpoints.
    :param keep: number of newest checkpoints kept (older ones are deleted); 0 keeps all.
    :param save_replay_buffer: also save an off-policy algorithm's replay buffer (can be GBs); only the newest
        checkpoint keeps its buffer and env state, the ones a resume reads.
    :param stateful: callbacks with ``state_dict()``/``load_state_dict()`` whose state belongs to the run.
    """

    def __init__(
        self,
        save_freq: int,
        save_path: str | os.PathLike,
        name_prefix: str = "model",
        keep: int = 3,
        save_replay_buffer: bool = False,
        stateful: dict[str, Any] | None = None,
        verbose: int = 0,
    ):
        super().__init__(save_freq, str(save_path), name_prefix, save_replay_buffer=save_replay_buffer, verbose=verbose)
        self.keep = keep
        self.stateful = stateful or {}
        self.save_requested = False
        self.last_saved_step: int | None = None  # set it to a loaded checkpoint's step: that one is not saved again
        self._in_rollout = False

    def request_save(self) -> None:
        """Save at the next rollout start even if no checkpoint is due (safe to call from a signal handler)."""
        self.save_requested = True

    def _on_training_start(self) -> None:
        self._every = self.save_freq * self.training_env.num_envs
        self._next_save = next_multiple(self.num_timesteps, self._every)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        self._save_if_due()
        self._in_rollout = True

    def _on_rollout_end(self) -> None:
        self._in_rollout = False

    def _on_training_end(self) -> None:
        if not self._in_rollout:  # SB3 skips the rollout end of a rollout that a callback cut short
            self._save_if_due()

    def _save_if_due(self) -> None:
        steps = self.model.num_timesteps
        if steps >= self._next_save or self.save_requested:
            self._next_save = next_multiple(steps, self._every)
            self.save_requested = False
            if steps != self.last_saved_step:
                self.save_checkpoint()

    def save_checkpoint(self) -> Path:
        """Save model, replay buffer (if asked), env state and run state now; returns the model path."""
        self.num_timesteps = steps = self.model.num_timesteps
        model_path = Path(self._checkpoint_path(extension="zip"))
        self.model.save(model_path)
        if self.save_replay_buffer and hasattr(self.model, "replay_buffer") and self.model.replay_buffer is not None:
            self.model.save_replay_buffer(self._checkpoint_path("replay_buffer_", extension="pkl"))
        episodes = env_states(self.model.get_env())
        if episodes is not None:
            Path(self._checkpoint_path("env_state_", extension="pkl")).write_bytes(pickle.dumps(episodes))
        logger = getattr(self.model, "logger", None)  # SB3 makes it at the model's first learn()
        state = {
            "num_timesteps": steps,
            "schedule_states": schedule_states(self.model.get_env()),
            "callbacks": {name: callback.state_dict() for name, callback in self.stateful.items()},
            "random_states": random_states(self.model),
            "pending_records": pending_records(logger) if logger is not None else {},
        }
        state_path = Path(self._checkpoint_path("run_state_", extension="json"))
        temporary = state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=1))
        temporary.replace(state_path)
        if self.verbose:
            print(f"Saved checkpoint {model_path}")
        self.last_saved_step = steps
        self._prune()
        return model_path

    def _prune(self) -> None:
        checkpoints = list_checkpoints(self.save_path, self.name_prefix)
        for checkpoint in checkpoints[:-1]:
            for path in (checkpoint.replay_buffer, checkpoint.env_state):
                if path is not None:
                    path.unlink(missing_ok=True)
        for checkpoint in checkpoints[: -self.keep] if self.keep > 0 else []:
            for path in checkpoint.files():
                path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint on disk."""

    model: Path
    run_state: Path
    replay_buffer: Path | None
    steps: int
    env_state: Path | None = None

    def files(self) -> list[Path]:
        return [p for p in (self.run_state, self.model, self.replay_buffer, self.env_state) if p is not None]

    def load_run_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_state.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"run state {self.run_state} is unreadable ({error}): the checkpoint is corrupt") from None

    def load_env_states(self) -> list[dict[str, Any]] | None:
        """The running episodes of the sub-envs (see `ResumableEnv`), or None if this checkpoint has none."""
        if self.env_state is None:
            return None
        try:
            return pickle.loads(self.env_state.read_bytes())
        except Exception as error:  # unpickling raises many kinds on a damaged file
            problem = type(error).__name__
            raise ValueError(f"env state {self.env_state} is unreadable ({problem}): the checkpoint is corrupt") from None


def list_checkpoints(folder: str | os.PathLike, name_prefix: str = "model") -> list[Checkpoint]:
    """Complete checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    found = []
    for path in folder.glob(f"{name_prefix}_run_state_*_steps.json") if folder.is_dir() else []:
        match = _STATE_FILE.match(path.name)
        if not match or match["prefix"] != name_prefix:
            continue
        steps = int(match["steps"])
        model = folder / f"{name_prefix}_{steps}_steps.zip"
        buffer = folder / f"{name_prefix}_replay_buffer_{steps}_steps.pkl"
        episodes = folder / f"{name_prefix}_env_state_{steps}_steps.pkl"
        if model.is_file():
            found.append(Checkpoint(model, path, _existing(buffer), steps, _existing(episodes)))
    return sorted(found, key=lambda c: c.steps)


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None
