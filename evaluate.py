"""Evaluate checkpoints of a cbp-rl training run at fixed frictions: returns, and optionally unit health.

Each checkpoint runs ``--episodes`` deterministic episodes (seeds ``--seed``, ``--seed``+1, ...) at every
friction of the grid: ``--frictions`` plus the frictions the run trained on (read from its schedule and
run state, rounded to 4 significant digits). A RUN_DIR gives every complete checkpoint of the run, in
step order: a curve. ``--health`` adds the DESIGN §4 unit-health metrics of every site, probed on the
observations the checkpoint visited (all frictions pooled; at most 1000, UnitHealthCallback's default, evenly thinned).

Prints a table and writes ``evaluation.json`` (run metadata and one record per checkpoint × friction)
and ``evaluation.csv`` to ``--out`` (default: the run directory).

Usage::

    python evaluate.py runs/cbp_s0                                  # every checkpoint of the run
    python evaluate.py runs/cbp_s0/checkpoints/model_2000000_steps.zip --episodes 10 --health
    python evaluate.py model.zip --env SlipperyAnt --frictions 0.05 0.5 --out results
    python evaluate.py runs/sweeps/sant --episodes 3    # every run of a sweep, each into its own folder
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.save_util import json_to_data
from stable_baselines3.sac.policies import SACPolicy

import agents  # the CBP policy classes the checkpoints refer to
from agents.callbacks import evenly_spaced
from agents.evaluation import fixed_friction_env, run_episodes
from agents.config import ALGORITHMS
from agents.run import CLIParser, sweep_run_dirs
import envs  # registers the Slippery* ids
from cbp_rl import probe

DEFAULT_FRICTIONS = (0.02, 0.1, 0.5, 1.0, 2.0)
SUMMARY_METRICS = (("dead_frac", "dead%", 100.0), ("stable_rank_pct", "srank%", 1.0))


class InputError(Exception):
    """Bad input, reported by `main` as one ``evaluate.py: error: ...`` line (exit status 2)."""


@dataclass(frozen=True)
class Target:
    """One checkpoint to evaluate: its model zip, environment steps and run state (None if it has none)."""

    model: Path
    steps: int
    run_state: dict[str, Any] | None


@dataclass
class Run:
    """What the checkpoints were trained on, from the run's ``config.yaml`` (or the zip and ``--env``)."""

    root: Path
    env_id: str
    algo: str
    method: str | None
    seed: int | None
    env_kwargs: dict[str, Any]
    schedule: envs.FrictionSchedule | None
    targets: list[Target]


# ---------------------------------------------------------------- resolving the input


def _zip_data(path: Path) -> dict[str, Any]:
    """The JSON ``data`` of an SB3 zip (not deserialized), or InputError if ``path`` is not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("data"))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as err:
        raise InputError(f"{path} is not a readable SB3 checkpoint zip ({err}): expected a model_<steps>_steps.zip") from None


def _algo_of_zip(path: Path) -> str:
    """``ppo`` or ``sac``, from the policy class stored in the zip."""
    serialized = {"policy_class": _zip_data(path).get("policy_class")}  # deserialize only the class
    policy_class = json_to_data(json.dumps(serialized)).get("policy_class")
    if isinstance(policy_class, type) and issubclass(policy_class, SACPolicy):
        return "sac"
    if isinstance(policy_class, type) and issubclass(policy_class, ActorCriticPolicy):
        return "ppo"
    raise InputError(f"cannot tell the algorithm of {path} from its policy class: expected a PPO or SAC checkpoint")


def _run_state(checkpoint: agents.Checkpoint) -> dict[str, Any]:
    try:
        return checkpoint.load_run_state()
    except ValueError as err:
        raise InputError(str(err)) from None


def _targets_of_dir(path: Path) -> tuple[Path, list[Target]]:
    """A run directory (or its ``checkpoints`` folder): its root and every complete checkpoint."""
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    checkpoints = agents.list_checkpoints(folder)
    if not checkpoints:
        raise InputError(
            f"{path} has no complete checkpoint: expected a run directory whose checkpoints/ holds "
            "model_<steps>_steps.zip with model_run_state_<steps>_steps.json, or a checkpoint zip"
        )
    for checkpoint in checkpoints:
        _zip_data(checkpoint.model)  # a corrupt zip fails here, before any evaluation
    root = path if folder != path else path.parent
    return root, [Target(c.model, c.steps, _run_state(c)) for c in checkpoints]


def _target_of_zip(path: Path) -> tuple[Path, Target]:
    """A bare checkpoint zip: its run root (two folders up) and the checkpoint, with its run state if complete."""
    data = _zip_data(path)
    for checkpoint in agents.list_checkpoints(path.parent):
        if checkpoint.model.resolve() == path.resolve():
            return path.parent.parent, Target(path, checkpoint.steps, _run_state(checkpoint))
    return path.parent.parent, Target(path, int(data.get("num_timesteps", 0)), None)


def resolve_targets(paths: Sequence[Path]) -> tuple[Path, list[Target]]:
    """The run root and its checkpoints to evaluate, in step order, from RUN_DIR and CHECKPOINT arguments."""
    roots, targets = set(), {}
    for path in paths:
        if path.is_dir():
            root, found = _targets_of_dir(path)
        elif path.is_file():
            root, target = _target_of_zip(path)
            found = [target]
        else:
            raise InputError(f"{path} does not exist: expected a run directory or a checkpoint zip")
        roots.add(root.resolve())
        for target in found:
            targets.setdefault(target.model.resolve(), target)
    if len(roots) > 1:
        runs = ", ".join(map(str, sorted(roots)))
        raise InputError(f"the paths belong to {len(roots)} runs ({runs}): evaluate one run per call")
    return roots.pop(), sorted(targets.values(), key=lambda t: t.steps)


def _read_config(root: Path) -> dict[str, Any] | None:
    path = root / "config.yaml"
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{path} is unreadable ({' '.join(str(err).split())}): expected the YAML train.py writes") from None
    env = config.get("env") if isinstance(config, dict) else None
    if not (isinstance(env, dict) and env.get("id") and isinstance(env.get("kwargs") or {}, dict)):
        raise InputError(f"{path} is invalid: expected a mapping with algo and env: {{id: ..., kwargs: {{...}}}}")
    return config


def _resolve_env_id(name: str) -> str:
    try:
        return envs.resolve_env_id(name)
    except ValueError as err:
        raise InputError(str(err)) from None


def _schedule(kwargs: dict[str, Any]) -> envs.FrictionSchedule:
    try:
        return envs.FrictionSchedule(**{key: kwargs[key] for key in envs.SCHEDULE_KWARGS if key in kwargs})
    except (TypeError, ValueError) as err:
        raise InputError(f"env kwargs of config.yaml are invalid: {err}") from None


def resolve_run(paths: Sequence[Path], env_name: str | None) -> Run:
    """Checkpoints, env and algorithm of the run the paths belong to; ``env_name`` overrides the config's env."""
    root, targets = resolve_targets(paths)
    config = _read_config(root)
    if config is None:
        if env_name is None:
            raise InputError(
                f"no config.yaml in {root}: pass --env with the env id the checkpoint was trained on (e.g. SlipperyHopper)"
            )
        return Run(root, _resolve_env_id(env_name), _algo_of_zip(targets[0].model), None, None, {}, None, targets)
    algo = str(config.get("algo", "")).lower()
    if algo not in ALGORITHMS:
        raise InputError(f"{root / 'config.yaml'} has algo={config.get('algo')!r}: expected one of {', '.join(ALGORITHMS)}")
    kwargs = config["env"].get("kwargs") or {}
    env_id = _resolve_env_id(env_name or config["env"]["id"])
    return Run(root, env_id, algo, config.get("method"), config.get("seed"), kwargs, _schedule(kwargs), targets)


# ---------------------------------------------------------------- friction grid


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when inside it, so result files name no machine's folders."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def round_friction(friction: float) -> float:
    """A friction rounded to 4 significant digits (how the grid names it)."""
    return float(f"{friction:.4g}")


def trained_frictions(run: Run) -> list[float]:
    """Frictions of every segment the run's checkpoints reached, from its schedule (or the run states alone)."""
    states = [
        s
        for t in run.targets
        for s in ((t.run_state or {}).get("schedule_states") or [])
        if isinstance(s, dict) and {"segment", "friction"} <= s.keys()
    ]
    if not states:
        return []
    recorded = [float(s["friction"]) for s in states]
    if run.schedule is None:
        return recorded
    if not all(math.isclose(run.schedule.friction_at(int(s["segment"])), float(s["friction"])) for s in states):
        print("note: the schedule in config.yaml does not give the run states' frictions; using the recorded ones only")
        return recorded
    return [run.schedule.friction_at(k) for k in range(max(int(s["segment"]) for s in states) + 1)]


# ---------------------------------------------------------------- evaluation


def make_eval_envs(run: Run, frictions: Sequence[float], max_episode_steps: int | None) -> dict[float, gym.Env]:
    """One env per friction, its friction fixed for good."""
    made: dict[float, gym.Env] = {}
    for friction in frictions:
        try:
            made[friction] = fixed_friction_env(run.env_id, friction, run.env_kwargs, max_episode_steps)
        except Exception as err:  # gymnasium raises several types for bad kwargs
            close_envs(made)
            raise InputError(
                f"cannot make {run.env_id} at friction {friction} ({type(err).__name__}: {err}): "
                f"expected a Slippery* env ({', '.join(envs.SLIPPERY_ENVS)}) and valid env kwargs"
            ) from None
    return made


def close_envs(made: dict[float, gym.Env]) -> None:
    for env in made.values():
        env.close()


def load_model(path: Path, algo: str, device: str, env: gym.Env) -> BaseAlgorithm:
    """Load a checkpoint with ``PPO.load``/``SAC.load`` and check it fits the env."""
    try:
        model = ALGORITHMS[algo].load(path, device=device)
    except Exception as err:  # SB3 raises whatever the zip's contents trigger
        raise InputError(f"{path} could not be loaded as a {algo.upper()} checkpoint ({type(err).__name__}: {err})") from None
    if model.observation_space.shape != env.observation_space.shape or model.action_space.shape != env.action_space.shape:
        raise InputError(
            f"{path} does not fit {env.spec.id}: observations {model.observation_space.shape} and actions "
            f"{model.action_space.shape}, the env has {env.observation_space.shape} and {env.action_space.shape}"
        )
    return model


def unit_health(model: BaseAlgorithm, observations: list[np.ndarray], actions: list[np.ndarray]) -> dict[str, float]:
    """DESIGN §4 metrics of every site (``health/{network}/{site}/{metric}``) on at most 1000 visited states, evenly spaced."""
    rows = evenly_spaced(len(observations))
    policy = model.policy
    obs = policy.obs_to_tensor(np.stack(observations)[rows])[0]
    acts = None
    if isinstance(policy, SACPolicy):  # the critics read actions in the policy's [-1, 1] scale
        acts = torch.as_tensor(policy.scale_action(np.stack(actions)[rows]), dtype=torch.float32, device=model.device)
    sites = {f"{net}/{name}": site for net, network in agents.policy_sites(policy).items() for name, site in network.items()}
    return probe(lambda: agents.probe_forward(policy, obs, acts), sites, prefix="health/")


def evaluate_checkpoint(
    model: BaseAlgorithm, target: Target, eval_envs: dict[float, gym.Env], args: argparse.Namespace, trained: set[float]
) -> list[dict[str, Any]]:
    """One record per friction for this checkpoint; with ``args.health`` each carries the checkpoint's unit health."""
    records, observations, actions = [], [], []
    for friction, env in eval_envs.items():
        returns, obs, acts = run_episodes(model, env, args.episodes, args.seed)
        observations += obs
        actions += acts
        records.append(
            {
                "checkpoint": shown_path(target.model),
                "steps": target.steps,
                "friction": friction,
                "trained": friction in trained,
                "episodes": len(returns),
                "returns": returns,
                "mean_return": float(np.mean(returns)),
                "std_return": float(np.std(returns)),
            }
        )
    if args.health:
        health = unit_health(model, observations, actions)
        for record in records:
            record.update(health)
    return records


# ---------------------------------------------------------------- output


def health_summary(record: dict[str, Any]) -> dict[str, float]:
    """Per network, the mean over sites of the dead-unit % and stable rank % of a record (empty without health)."""
    summary: dict[str, list[float]] = {}
    for key, value in record.items():
        parts = key.split("/")
        for metric, label, scale in SUMMARY_METRICS:
            if len(parts) == 4 and parts[0] == "health" and parts[3] == metric:
                summary.setdefault(f"{label} {parts[1]}", []).append(scale * value)
    return {column: float(np.mean(values)) for column, values in summary.items()}


def print_table(records: Sequence[dict[str, Any]]) -> None:
    """One row per checkpoint × friction (``*``: a friction the run trained on)."""
    header = ["steps", "friction", "mean return", "std", "episodes", *health_summary(records[0])]
    rows = [
        [
            str(r["steps"]),
            f"{r['friction']:g}{'*' if r['trained'] else ''}",
            f"{r['mean_return']:.1f}",
            f"{r['std_return']:.1f}",
            str(r["episodes"]),
            *(f"{v:.1f}" for v in health_summary(r).values()),
        ]
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    print("* a friction the run trained on")


def write_outputs(out: Path, metadata: dict[str, Any], records: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """``evaluation.json`` (metadata and records) and ``evaluation.csv`` (one row per record, without the return lists)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / "evaluation.json", out / "evaluation.csv"
    json_path.write_text(json.dumps({**metadata, "records": list(records)}, indent=1))
    columns = [key for key in records[0] if key != "returns"]
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    return json_path, csv_path


# ---------------------------------------------------------------- CLI


def _positive(kind: type, what: str) -> Callable[[str], Any]:
    """An argparse ``type`` that accepts positive finite values of ``kind`` and names ``what`` in its error."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected a positive {what}")
        return value

    parse.__name__ = what
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="RUN_DIR|CHECKPOINT",
                        help="a run directory, checkpoint zips of one run, or a sweep's root (each of its runs)")
    parser.add_argument("--frictions", nargs="+", type=_positive(float, "friction coefficient"), default=list(DEFAULT_FRICTIONS),
                        help="frictions to evaluate at, besides those the run trained on")
    parser.add_argument("--episodes", type=_positive(int, "number of episodes"), default=5,
                        help="deterministic episodes per friction")
    parser.add_argument("--health", action="store_true", help="also probe the unit health of every site on the visited states")
    parser.add_argument("--out", type=Path, help="folder of evaluation.json/.csv (default: the run directory; "
                        "for a sweep's root, OUT/RUN_NAME)")
    parser.add_argument("--device", default="cpu", help="torch device of the models")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode; episode i uses seed + i")
    parser.add_argument("--max-episode-steps", type=_positive(int, "number of steps"), help="cap episodes at this many steps")
    parser.add_argument("--env", help="env id or short name (e.g. SlipperyAnt); required without config.yaml, "
                        "overrides its env id otherwise")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device {args.device!r} is invalid ({err}): expected e.g. cpu or cuda")
    runs = sweep_run_dirs(args.paths[0]) if len(args.paths) == 1 else []
    for run_dir in runs:
        if not agents.list_checkpoints(run_dir / "checkpoints"):
            print(f"note: {run_dir} has no complete checkpoint yet; left out", flush=True)
            continue
        print(f"== {run_dir}", flush=True)
        evaluate_run(parser, args, [run_dir], args.out / run_dir.name if args.out else None)
    if not runs:
        evaluate_run(parser, args, args.paths, args.out)


def evaluate_run(parser: argparse.ArgumentParser, args: argparse.Namespace, paths: Sequence[Path], out: Path | None) -> None:
    """Evaluate the checkpoints of one run (``paths``) and write its outputs to ``out`` (default: the run directory)."""
    eval_envs: dict[float, gym.Env] = {}
    try:
        run = resolve_run(paths, args.env)
        out = out or run.root
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file: expected a folder")
        trained = {round_friction(f) for f in trained_frictions(run)}
        frictions = sorted({round_friction(f) for f in args.frictions} | trained)
        eval_envs = make_eval_envs(run, frictions, args.max_episode_steps)
        records = []
        for target in run.targets:
            model = load_model(target.model, run.algo, args.device, next(iter(eval_envs.values())))
            records += evaluate_checkpoint(model, target, eval_envs, args, trained)
            print(f"evaluated {target.model} ({target.steps} steps) at {len(frictions)} frictions", flush=True)
    except InputError as err:
        parser.error(str(err))
    finally:
        close_envs(eval_envs)

    print_table(records)
    metadata = {
        "run_dir": shown_path(run.root),
        "env_id": run.env_id,
        "algo": run.algo,
        "method": run.method,
        "seed": run.seed,
        "episodes": args.episodes,
        "episode_seeds": [args.seed + i for i in range(args.episodes)],
        "max_episode_steps": args.max_episode_steps,
        "frictions": frictions,
        "trained_frictions": sorted(trained),
    }
    try:
        json_path, csv_path = write_outputs(out, metadata, records)
    except OSError as err:
        parser.error(f"cannot write to {out} ({err}): expected a writable folder")
    print(f"wrote {json_path} and {csv_path}")


if __name__ == "__main__":
    main()
