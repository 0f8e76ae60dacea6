"""Train a grid of runs (envs × algos × methods × seeds) as Ray tasks; rerun the same command to resume it.

    python sweep.py --env SlipperyAnt --algo ppo --methods std,ns,l2,cbp --seeds 0-4 --root runs/sweeps/sant
    python sweep.py --file configs/sweeps/slippery_ant_ppo.yaml            # a study in a file; flags override it
    python sweep.py --file configs/sweeps/slippery_ant_ppo.yaml --total-steps 12000000   # extend every run
    python sweep.py ... --address auto                                    # on a running Ray cluster
    tensorboard --logdir runs/sweeps/sant;  python plot.py runs/sweeps/sant
"""

from __future__ import annotations

import argparse
import shlex
import sys

from agents.config import read_yaml
from agents.run import CLIParser
from agents.sweep import GRID_KEYS, build_grid, run_sweep


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = CLIParser(prog="sweep.py", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", help="a sweep file (configs/sweeps/*.yaml) with the keys below")
    parser.add_argument("--root", help="folder of the sweep's runs, each {root}/{env}_{algo}_{method}_s{seed}")
    parser.add_argument("--env", "--envs", dest="envs", help="env short names or ids, comma-separated")
    parser.add_argument("--algo", "--algos", dest="algos", help="ppo, sac or ppo,sac (default: ppo)")
    parser.add_argument("--methods", help="configs of configs/{algo}/, comma-separated, e.g. std,ns,l2,cbp")
    parser.add_argument("--seeds", help="seeds and ranges, e.g. 0-4 or 0-2,7")
    parser.add_argument("--total-steps", type=int, help="environment steps of every run (default: the configs')")
    parser.add_argument("--change-every", type=int, help="environment steps between friction changes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key of every run, as train.py --set")
    parser.add_argument("--address", help="Ray cluster to run on: auto, HOST:PORT or ray://HOST:PORT (default: a local instance)")
    parser.add_argument("--cpus-per-run", type=float, help="Ray CPUs (and torch threads) of each run (default: 1)")
    parser.add_argument("--max-concurrent", type=int, help="runs trained at once (default: as many as the CPUs allow)")
    return parser, parser.parse_args(argv)


def grid_data(args: argparse.Namespace) -> dict:
    """The sweep file's keys with the flags given on top (``--set`` is added to every algorithm's overrides)."""
    data = read_yaml(args.file) if args.file else {}
    for key in GRID_KEYS:
        if key != "set" and getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    return data


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    try:
        grid = build_grid(grid_data(args), args.set)
        return run_sweep(grid, shlex.join(["python", "sweep.py", *(sys.argv[1:] if argv is None else argv)]))
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
