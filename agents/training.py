"""Train PPO or SAC with continual backprop on a non-stationary MuJoCo task, with the paper's settings by default.

The logic of ``train.py``; sweeps (`agents.sweep`) start one such process per run.

    python train.py --env SlipperyAnt                      # PPO+CBP, the paper's protocol (20M steps)
    python train.py --env SlipperyAnt --method std --seed 3
    python train.py --algo sac --env SlipperyHalfCheetah --method cbp --total-steps 1000000
    python train.py --resume runs/SlipperyAnt-v0_ppo_cbp_s0
    tensorboard --logdir runs
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

import envs  # registers the Slippery* ids

from .config import Config, build_config, build_model, check_resumable, is_slippery, make_env, read_yaml, set_dotted
from .run import CLIParser, ProgressLines, latest_checkpoint, load_checkpoint, make_callbacks, tensorboard_logger, write_run_files

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = CLIParser(prog="train.py", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", help="short name (SlipperyAnt, SlipperyHalfCheetah, ...) or any gymnasium id")
    parser.add_argument("--algo", choices=("ppo", "sac"), help="SB3 algorithm (default: ppo)")
    methods = ", ".join(sorted(p.stem for p in (CONFIGS / "ppo").glob("*.yaml") if p.stem != "base"))
    parser.add_argument("--method", help=f"config name in configs/{{algo}}/, e.g. {methods} (default: cbp)")
    parser.add_argument("--config", type=Path, help="a YAML config file instead of --method")
    parser.add_argument("--seed", type=int, help="seed of the networks, env resets and friction sequence")
    parser.add_argument("--total-steps", type=int, help="environment steps to train for (default: the config's)")
    parser.add_argument("--change-every", type=int, help="environment steps between friction changes")
    parser.add_argument("--n-envs", type=int, help="parallel environment copies")
    parser.add_argument("--device", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest for these small networks)")
    parser.add_argument("--checkpoint-every", type=int, help="environment steps between checkpoints")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. algo_kwargs.n_steps=256")
    parser.add_argument("--run-dir", type=Path, help="output folder (default: runs/{env}_{algo}_{method}_s{seed})")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    parser.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                        help="when stdout is not a terminal: seconds between plain progress lines, instead of a bar (default: 10)")
    return parser, parser.parse_args(argv)


def resolve_config(args: argparse.Namespace):
    if args.resume:
        given = [flag for flag in ("algo", "method", "config", "run_dir") if getattr(args, flag) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(f"--resume takes the algorithm, method, config and folder from the run: drop {flag}")
        data = recorded = read_yaml(args.resume / "config.yaml")
    else:
        algo, method = args.algo or "ppo", args.method or "cbp"
        path = args.config or CONFIGS / algo / f"{method}.yaml"
        if not path.is_file():
            methods = sorted(p.stem for p in (CONFIGS / algo).glob("*.yaml") if p.stem != "base")
            raise ValueError(f"method {method!r} is unknown for {algo}: expected one of {', '.join(methods)} or --config PATH")
        data = read_yaml(path)
    flags = {"env.id": args.env, "seed": args.seed, "total_steps": args.total_steps, "env.n_envs": args.n_envs,
             "env.kwargs.change_every": args.change_every, "device": args.device, "checkpoint.every": args.checkpoint_every, "torch_threads": args.threads}
    for key, value in flags.items():
        if value is not None:
            data = set_dotted(data, f"{key}={value}")
    for assignment in args.set:
        data = set_dotted(data, assignment)
    config = build_config(data)
    schedule_keys = {f"env.kwargs.{key}" for key in envs.SCHEDULE_KWARGS}
    scheduled = [f"--set {assignment}" for assignment in args.set if assignment.partition("=")[0] in schedule_keys]
    if args.change_every is not None:
        scheduled.insert(0, "--change-every")
    if scheduled and not is_slippery(config.env.id):
        raise ValueError(f"{scheduled[0]} needs a Slippery* env (it sets their friction), not {config.env.id!r}")
    if args.resume:
        check_resumable(build_config(recorded), config)
    return config


def prepare_run_dir(args: argparse.Namespace, config) -> Path:
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume and --overwrite exclude each other: resume keeps the run, overwrite deletes it")
        return args.resume
    run_dir = args.run_dir or Path("runs") / f"{config.env.id}_{config.algo}_{config.method}_s{config.seed}"
    if run_dir.exists() and any(run_dir.iterdir()) and not args.overwrite:
        raise ValueError(f"run directory {str(run_dir)!r} exists: pass --resume {run_dir} to continue it or --overwrite to replace it")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    try:
        if args.progress_every <= 0:
            raise ValueError(f"--progress-every {args.progress_every} is invalid: expected a positive number of seconds")
        if args.resume and not (args.resume / "config.yaml").is_file():
            raise ValueError(f"--resume {str(args.resume)!r} is not a run directory: it has no config.yaml")
        config = resolve_config(args)
        run_dir = prepare_run_dir(args, config)
        checkpoint = latest_checkpoint(run_dir) if args.resume else None
        env = make_env(config)
        callbacks, saver, stop = make_callbacks(config, run_dir)
        stop.install()
        model = load_checkpoint(config, checkpoint, env, saver) if checkpoint else build_model(config, env)
    except ValueError as error:
        parser.error(str(error))
    if stop.signal_number is not None:
        print(f"stopped by signal {stop.signal_number} before training began; nothing was written")
        return 128 + stop.signal_number
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    if args.overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    write_run_files(run_dir, config, checkpoint)
    remaining = config.total_steps - model.num_timesteps
    start = f"resuming at {model.num_timesteps:,} of" if checkpoint else "training for"
    print(f"{config.algo.upper()} {config.method} on {config.env.id}, seed {config.seed}: {start} {config.total_steps:,} steps -> {run_dir}")
    if remaining <= 0:
        print(f"the run already has {model.num_timesteps} of {config.total_steps} steps: nothing to do")
        return 0
    resumed = (checkpoint.steps, checkpoint.load_run_state().get("pending_records")) if checkpoint else (None, None)
    model.set_logger(tensorboard_logger(run_dir, *resumed))
    bar = sys.stdout.isatty()
    callbacks = callbacks if bar else [callbacks, ProgressLines(config.total_steps, args.progress_every)]
    model.learn(remaining, callback=callbacks, progress_bar=bar, reset_num_timesteps=checkpoint is None)
    if not stop.stopped and saver.last_saved_step != model.num_timesteps:
        saver.save_checkpoint()
    model.logger.dump_pending(model.num_timesteps)
    if stop.stopped:
        print(f"stopped by signal {stop.signal_number} at step {saver.last_saved_step}; continue with --resume {run_dir}")
        return 128 + stop.signal_number
    return 0


if __name__ == "__main__":
    sys.exit(main())
