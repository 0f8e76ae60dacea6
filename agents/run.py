"""A training run on disk: its folder, metadata, callbacks, TensorBoard logger, resume and clean stop on signals."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import typing
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import safe_mean
from torch.utils.tensorboard import SummaryWriter

from .callbacks import FrictionCallback, UnitHealthCallback
from .checkpoints import (
    Checkpoint,
    RunCheckpointCallback,
    list_checkpoints,
    restore_env_states,
    restore_pending_records,
    restore_random_states,
    restore_schedule_states,
)
from .config import ALGORITHMS, Config
from .evaluation import FrictionEvalCallback

PACKAGES = ("cbp-rl", "torch", "stable-baselines3", "gymnasium", "mujoco", "numpy", "tensorboard")


class CLIParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr, ``{prog}: error: ...``, with exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


class StopOnSignal(BaseCallback):
    """Turns SIGINT/SIGTERM into a clean stop of ``learn()`` right after ``saver`` has checkpointed the next rollout start
    (PPO: once the current rollout and its update are done; SAC: once the current ``train_freq`` steps and their
    updates are), so that a resumed run continues exactly. A second signal stops at once. ``signal_number`` says
    which signal; ``stopped``, whether ``learn()`` was cut short by it."""

    def __init__(self, saver: RunCheckpointCallback) -> None:
        super().__init__()
        self.saver = saver
        self.signal_number: int | None = None
        self.stopped = False

    def install(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._request_stop)

    def _request_stop(self, number: int, frame: object) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt
        self.signal_number = number
        self.saver.request_save()

    def _on_step(self) -> bool:
        self.stopped = self.signal_number is not None and not self.saver.save_requested
        return not self.stopped


class ProgressLines(BaseCallback):
    """Progress as plain lines on stdout, for logs (nohup, a batch scheduler, a sweep's ``train.log``) where a progress
    bar would be noise: at a rollout's end once ``every_s`` seconds have passed since the last line, and when learning
    ends. Each reads ``progress: STEP of TOTAL steps (P%), R steps/s, ETA H:MM:SS, mean return X`` (`PROGRESS_LINE`)."""

    def __init__(self, total_steps: int, every_s: float) -> None:
        super().__init__()
        self.total_steps, self.every_s = total_steps, every_s

    def _on_training_start(self) -> None:
        self.start_time = self.last_time = time.monotonic()
        self.start_step = self.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if time.monotonic() - self.last_time >= self.every_s:
            self._print()

    def _on_training_end(self) -> None:
        self._print()

    def _print(self) -> None:
        self.last_time = now = time.monotonic()
        rate = (self.num_timesteps - self.start_step) / max(now - self.start_time, 1e-9)
        left = max(self.total_steps - self.num_timesteps, 0)
        eta = format_duration(left / rate) if rate > 0 else "?"
        episodes = self.model.ep_info_buffer
        mean_return = f"{safe_mean([e['r'] for e in episodes]):.1f}" if episodes else "-"
        print(f"progress: {self.num_timesteps:,} of {self.total_steps:,} steps ({100 * self.num_timesteps / self.total_steps:.1f}%), "
              f"{rate:,.0f} steps/s, ETA {eta}, mean return {mean_return}", flush=True)


def format_duration(seconds: float) -> str:
    """``H:MM:SS``, with ``Nd`` in front from a day on."""
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    return f"{days}d {hour:02}:{minute:02}:{second:02}" if days else f"{hour}:{minute:02}:{second:02}"


PROGRESS_LINE = re.compile(r"^progress: (?P<steps>[\d,]+) of (?P<total>[\d,]+) steps")
"""Matches a `ProgressLines` line; ``steps`` and ``total`` carry thousands separators."""


def sweep_run_dirs(path: Path) -> list[Path]:
    """The run directories in a sweep's root (a folder without ``config.yaml`` whose subfolders have one), sorted;
    empty for anything else, a run directory included."""
    if not path.is_dir() or (path / "config.yaml").is_file():
        return []
    return sorted(p for p in path.iterdir() if (p / "config.yaml").is_file())


def write_run_files(run_dir: Path, config: Config, resumed_from: Checkpoint | None) -> None:
    """``config.yaml`` (fully resolved) and ``metadata.json`` (command, seed, commit, versions; appended on resume)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    path = run_dir / "metadata.json"
    record = {
        "command": sys.argv,
        "seed": config.seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "resumed_from": str(resumed_from.model) if resumed_from else None,
    }
    history = json.loads(path.read_text()) if resumed_from and path.exists() else []
    _write_atomically(path, json.dumps(history + [record], indent=1))


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so that a run killed meanwhile leaves the old file whole."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


PENDING_EVENTS = ".pending"  # suffix of the events file that takes what a run leaves unwritten when it ends or stops


class _TensorBoardEvents(TensorBoardOutputFormat):
    """SB3's TensorBoard output on a ``SummaryWriter`` made with ``writer_kwargs`` (a purge step, a file suffix)."""

    def __init__(self, folder: Path, **writer_kwargs: Any) -> None:
        self.writer = SummaryWriter(log_dir=str(folder), **writer_kwargs)
        self._is_closed = False


class RunLogger(Logger):
    """SB3's ``Logger`` writing TensorBoard events to ``events``."""

    def __init__(self, events: Path, purge_step: int | None = None) -> None:
        super().__init__(folder=str(events.parent), output_formats=[_TensorBoardEvents(events, purge_step=purge_step)])
        self.events = events

    def dump_pending(self, step: int) -> None:
        """Write what was recorded since the last dump at ``step``, e.g. when ``learn()`` ended between two of SB3's
        dumps, to an events file of its own: a run that resumes deletes that file, as its checkpoint carries these
        values and it writes them where an uninterrupted run would have."""
        if not self.name_to_value:
            return
        formats, self.output_formats = self.output_formats, [_TensorBoardEvents(self.events, filename_suffix=PENDING_EVENTS)]
        try:
            self.dump(step)
        finally:
            self.output_formats[0].close()
            self.output_formats = formats


def tensorboard_logger(run_dir: Path, resume_step: int | None, pending: dict[str, Any] | None = None) -> RunLogger:
    """SB3 logger writing TensorBoard events to ``run_dir/tb``. A resumed run purges the events logged after the step
    of its checkpoint (those at that step stay: the resumed run logs from a later step on), deletes what the run
    before it wrote when it ended or stopped (see `RunLogger.dump_pending`) and starts with the checkpoint's ``pending`` records."""
    events = run_dir / "tb"
    if resume_step is None:
        return RunLogger(events)
    for path in events.glob(f"*{PENDING_EVENTS}"):
        path.unlink()
    logger = RunLogger(events, purge_step=resume_step + 1)
    restore_pending_records(logger, pending)
    return logger


def make_callbacks(config: Config, run_dir: Path) -> tuple[CallbackList, RunCheckpointCallback, StopOnSignal]:
    """Friction, health and fixed-friction evaluation logging, checkpoints, and the stop on signals, in that order."""
    logging = config.logging
    stateful: dict[str, BaseCallback] = {"friction": FrictionCallback()}
    if logging.health:
        stateful["health"] = UnitHealthCallback(
            logging.health_every, logging.probe_size, logging.utility_histograms, logging.rank_every
        )
    saver = RunCheckpointCallback(
        save_freq=max(1, config.checkpoint.every // config.env.n_envs),
        save_path=run_dir / "checkpoints",
        keep=config.checkpoint.keep,
        save_replay_buffer=config.checkpoint.replay_buffer,
        stateful=stateful,
    )
    stop = StopOnSignal(saver)
    callbacks: list[BaseCallback] = list(stateful.values())
    if logging.eval_frictions:
        callbacks.append(
            FrictionEvalCallback(
                config.env.id, logging.eval_frictions, logging.eval_every, logging.eval_episodes, config.seed, config.env.kwargs
            )
        )
    return CallbackList([*callbacks, saver, stop]), saver, stop


def latest_checkpoint(run_dir: Path) -> Checkpoint:
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if not checkpoints:
        raise ValueError(f"run directory {str(run_dir)!r} has no complete checkpoint to resume from")
    return checkpoints[-1]


def load_checkpoint(config: Config, checkpoint: Checkpoint, env: Any, saver: RunCheckpointCallback) -> BaseAlgorithm:
    """The model of a checkpoint on ``env``, with the env's friction schedules and running episodes and the callbacks'
    state restored; a checkpoint without env state restarts the episodes (noted on stderr)."""
    state = checkpoint.load_run_state()
    episodes = checkpoint.load_env_states()
    try:
        model = ALGORITHMS[config.algo].load(checkpoint.model, env=env, device=config.device, force_reset=episodes is None)
    except Exception as error:  # SB3 raises many kinds on a damaged zip
        raise ValueError(f"checkpoint {str(checkpoint.model)!r} cannot be loaded ({type(error).__name__}: {error})") from None
    if checkpoint.replay_buffer is not None:
        model.load_replay_buffer(checkpoint.replay_buffer)
    elif isinstance(model, OffPolicyAlgorithm):
        _refill_before_updates(model, checkpoint, _learning_starts(config))
    restore_schedule_states(env, state.get("schedule_states"))
    if episodes is not None and model._last_obs is not None:
        restore_env_states(env, episodes)
    else:
        model._last_obs = None
        print(f"note: {checkpoint.model.name} has no env state: the running episodes restart", file=sys.stderr)
    restore_random_states(model, state.get("random_states"))
    saver.last_saved_step = checkpoint.steps
    for name, callback in saver.stateful.items():
        if name in state.get("callbacks", {}):
            callback.load_state_dict(state["callbacks"][name])
    return model


def _learning_starts(config: Config) -> int:
    """The off-policy warm-up of ``config``: its ``learning_starts``, or SB3's default."""
    default = inspect.signature(ALGORITHMS[config.algo].__init__).parameters["learning_starts"].default
    return config.algo_kwargs.get("learning_starts", default)


def _refill_before_updates(model: OffPolicyAlgorithm, checkpoint: Checkpoint, warmup: int) -> None:
    """Hold back the updates of a model resumed without its replay buffer until ``warmup`` steps have refilled it."""
    model.learning_starts = model.num_timesteps + warmup
    print(
        f"note: {checkpoint.model.name} has no replay buffer: the resumed run takes {warmup} random-action steps to "
        "refill it before updating again, so it is not an exact resume (checkpoint.replay_buffer: true keeps one)",
        file=sys.stderr,
    )
