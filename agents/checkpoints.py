"""Checkpoints that resume a run exactly: SB3 model zip, optional replay buffer, and the run state beside them."""

from __future__ import annotations

import base64
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CheckpointCallback
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


def _encode(rng_state: torch.Tensor) -> str:
    return base64.b64encode(rng_state.numpy().tobytes()).decode()


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


class RunCheckpointCallback(CheckpointCallback):
    """SB3's ``CheckpointCallback`` that also writes the run state and keeps only the newest ``keep`` checkpoints.

    A checkpoint ``{prefix}_{steps}_steps.zip`` is complete once ``{prefix}_run_state_{steps}_steps.json``
    exists (it is written last, atomically); it holds ``num_timesteps``, the friction-schedule state of
    every sub-env, the state of the ``stateful`` callbacks and the random streams (:func:`random_states`).

    :param save_freq: save every ``save_freq`` calls of ``env.step()``, i.e. every ``save_freq × n_envs`` steps: whenever
        ``num_timesteps`` reaches a multiple of that, so a resumed run keeps the grid of the run it continues.
    :param save_path: folder of the checkpoints.
    :param keep: number of newest checkpoints kept (older ones are deleted); 0 keeps all.
    :param save_replay_buffer: also save an off-policy algorithm's replay buffer (can be GBs); only the newest
        checkpoint keeps its buffer, the one a resume reads.
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

    def _on_training_start(self) -> None:
        self._every = self.save_freq * self.training_env.num_envs
        self._next_save = next_multiple(self.num_timesteps, self._every)

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next_save:
            self._next_save = next_multiple(self.num_timesteps, self._every)
            self.save_checkpoint()
        return True

    def save_checkpoint(self) -> Path:
        """Save model, replay buffer (if asked) and run state now; returns the model path."""
        model_path = Path(self._checkpoint_path(extension="zip"))
        self.model.save(model_path)
        if self.save_replay_buffer and hasattr(self.model, "replay_buffer") and self.model.replay_buffer is not None:
            self.model.save_replay_buffer(self._checkpoint_path("replay_buffer_", extension="pkl"))
        state = {
            "num_timesteps": self.model.num_timesteps,
            "schedule_states": schedule_states(self.model.get_env()),
            "callbacks": {name: callback.state_dict() for name, callback in self.stateful.items()},
            "random_states": random_states(self.model),
        }
        state_path = Path(self._checkpoint_path("run_state_", extension="json"))
        temporary = state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=1))
        temporary.replace(state_path)
        if self.verbose:
            print(f"Saved checkpoint {model_path}")
        self._prune()
        return model_path

    def _prune(self) -> None:
        checkpoints = list_checkpoints(self.save_path, self.name_prefix)
        for checkpoint in checkpoints[:-1]:
            if checkpoint.replay_buffer is not None:
                checkpoint.replay_buffer.unlink(missing_ok=True)
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

    def files(self) -> list[Path]:
        return [p for p in (self.run_state, self.model, self.replay_buffer) if p is not None]

    def load_run_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_state.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"run state {self.run_state} is unreadable ({error}): the checkpoint is corrupt") from None


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
        if model.is_file():
            found.append(Checkpoint(model, path, buffer if buffer.is_file() else None, steps))
    return sorted(found, key=lambda c: c.steps)
