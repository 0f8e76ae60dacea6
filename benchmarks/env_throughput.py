"""Steps per second of SlipperyAnt-v0 against plain Ant-v5, to show the friction schedule costs (almost) nothing.

Run: python benchmarks/env_throughput.py --steps 5000 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the Slippery* ids)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="environment steps per env per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the two envs alternate within each")
    parser.add_argument(
        "--friction",
        type=float,
        default=1.0,
        help="fixed friction of SlipperyAnt; 1.0 is Ant-v5's own, so both simulate the same physics",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the actions and of the first reset")
    return parser.parse_args()


def steps_per_second(env: gym.Env, actions: np.ndarray, seed: int) -> float:
    """Time ``len(actions)`` steps of ``env`` (resets at episode ends included)."""
    env.reset(seed=seed)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return len(actions) / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    contenders = {
        "Ant-v5": gym.make("Ant-v5"),
        "SlipperyAnt-v0": gym.make("SlipperyAnt-v0", friction=args.friction),
    }
    space = contenders["Ant-v5"].action_space
    actions = np.random.default_rng(args.seed).uniform(space.low, space.high, (args.steps, *space.shape))
    actions = actions.astype(space.dtype)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(args.rounds):
        order = list(contenders) if round_index % 2 == 0 else list(reversed(contenders))
        for name in order:
            rates[name].append(steps_per_second(contenders[name], actions, args.seed))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{args.rounds} rounds x {args.steps} steps, SlipperyAnt friction={args.friction}")
    print(f"{'env':<16}{'median steps/s':>16}{'min':>10}{'max':>10}")
    for name, values in rates.items():
        print(f"{name:<16}{medians[name]:>16.0f}{min(values):>10.0f}{max(values):>10.0f}")
    print(f"ratio SlipperyAnt-v0 / Ant-v5 (medians): {medians['SlipperyAnt-v0'] / medians['Ant-v5']:.3f}")


if __name__ == "__main__":
    main()
