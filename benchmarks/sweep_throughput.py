"""A 2-run sweep on this machine against one train.py run alone: aggregate steps/s, and the sweep's start-up cost.

Both train the same config (default: PPO + CBP on SlipperyAnt, one torch thread per run). For each, training steps/s
comes from the run's last progress line (steps since training began, over its time), so it leaves out the start of
each process; the wall-clock rate over the whole command is printed beside it. The start-up cost is how much later
the sweep's first run writes its config.yaml than train.py alone does (Ray's start, planning, dispatch).

Run: python benchmarks/sweep_throughput.py --steps 50000
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"^progress: [\d,]+ of [\d,]+ steps \([\d.]+%\), (?P<rate>[\d,]+) steps/s", re.MULTILINE)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000, help="environment steps of each run")
    parser.add_argument("--env", default="SlipperyAnt")
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--method", default="cbp")
    return parser.parse_args()


def timed(command: list[str], first_config: list[Path], log: Path) -> tuple[float, float]:
    """Wall time of ``command`` (its output into ``log``) and the time until the first of ``first_config`` exists."""
    first: float | None = None
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            if first is None and any(path.is_file() for path in first_config):
                first = time.perf_counter() - start
            time.sleep(0.05)
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} exited with {process.returncode}: see {log}")
    return time.perf_counter() - start, first if first is not None else float("nan")


def training_rate(log: Path) -> float:
    return float(RATE.findall(log.read_text())[-1].replace(",", ""))


def main() -> None:
    args = parse_args()
    common = ["--env", args.env, "--total-steps", str(args.steps)]
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        alone, log = Path(tmp) / "alone", Path(tmp) / "alone.log"
        alone_wall, alone_first = timed([sys.executable, "train.py", *common, "--algo", args.algo, "--method", args.method,
                                         "--threads", "1", "--run-dir", str(alone)], [alone / "config.yaml"], log)
        root = Path(tmp) / "sweep"
        runs = [root / f"{args.env}-v0_{args.algo}_{args.method}_s{seed}" for seed in (0, 1)]
        sweep_wall, sweep_first = timed([sys.executable, "sweep.py", *common, "--algo", args.algo, "--methods", args.method,
                                         "--seeds", "0-1", "--root", str(root)], [run / "config.yaml" for run in runs],
                                        Path(tmp) / "sweep.log")
        alone_rate = training_rate(log)
        sweep_rates = [training_rate(run / "train.log") for run in runs]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.algo} {args.method} on {args.env}, "
          f"{args.steps:,} steps per run")
    print(f"train.py alone: {alone_rate:,.0f} training steps/s; {args.steps / alone_wall:,.0f} steps/s over {alone_wall:.1f} s wall")
    print(f"2-run sweep: {' + '.join(f'{r:,.0f}' for r in sweep_rates)} = {sum(sweep_rates):,.0f} training steps/s; "
          f"{2 * args.steps / sweep_wall:,.0f} steps/s over {sweep_wall:.1f} s wall")
    print(f"aggregate ratio (sweep / alone): training {sum(sweep_rates) / alone_rate:.3f} (target >= 1.8), "
          f"wall clock {2 * args.steps / sweep_wall / (args.steps / alone_wall):.3f}")
    print(f"start-up: first run's config.yaml after {sweep_first:.1f} s in the sweep, {alone_first:.1f} s alone: "
          f"the sweep's start-up cost is {sweep_first - alone_first:.1f} s")


if __name__ == "__main__":
    main()
