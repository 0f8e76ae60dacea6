"""Training throughput on SlipperyAnt-v0 of plain SB3 PPO/SAC against the CBP policies, with and without health logging.

Each variant is one model (seed 0, its own SlipperyAnt-v0 env seeded 0) built once and warmed up; then, round by round,
every variant learns the same number of steps in turn. The orders come from a Williams Latin square: over 4 rounds each
variant runs once in every slot and once right after every other variant, so neither the slot nor the variant run just
before can bias a ratio. The table gives each variant's median steps/s; the median over rounds of its steps/s over
plain's in the same round, with a distribution-free 95% interval for that median (from the order statistics of the
rounds' ratios: min-max below 6 rounds, where it covers less); and plain's total time over the variant's, with a
bootstrap interval. The variants differ only in the policy class (and the callback); no logger output is written,
but the health probe runs at its usual cadence. A second, identical plain model ("replica") shows the noise floor of
the ratios on the machine at hand. With ``--own-time``, the share of each CBP variant's time spent inside CBP's and
the callback's own code is timed too: a drift-free lower bound on their cost, where a noisy machine blurs the ratios.

Usage: python benchmarks/agent_overhead.py [--algo ppo|sac|both] [--rounds 8] [--ppo-steps 2048] [--sac-steps 1000]
                                           [--maturity 100] [--probe-size 1000] [--rank-every 10000]
                                           [--threads N] [--own-time]
Quick check (about 3 min on 2 cores): --rounds 2 --sac-steps 500 --threads 1
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import math
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from pathlib import Path

import stable_baselines3
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger

from agents import METHODS, UnitHealthCallback, init_policy_
from agents.callbacks import PROBE_SIZE, RANK_EVERY
from agents.config import ALGORITHMS, POLICIES, Config, build_config, build_model, make_env, policy_kwargs, read_yaml, set_dotted
from cbp_rl import ContinualBackprop, SiteIntervention
from cbp_rl.base import _Recorder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SEED = 0
SAC_LEARNING_STARTS = 1000
SAC_WARMUP_UPDATES = 200  # gradient steps past learning_starts before timing, so CBP units can mature
SAC_LOG_EVERY = 1000  # UnitHealthCallback cadence for SAC (env steps), as in a real run


def cbp_config(algo: str, maturity: int) -> Config:
    """``configs/{algo}/cbp.yaml`` (the paper's PPO / rl-zoo SAC), with a maturity short enough to replace units here."""
    data = read_yaml(CONFIGS / algo / "cbp.yaml")
    overrides = [f"policy.cbp.maturity_threshold={maturity}", f"seed={SEED}", "device=cpu"]
    if algo == "sac":
        overrides += [f"algo_kwargs.learning_starts={SAC_LEARNING_STARTS}", f"logging.health_every={SAC_LOG_EVERY}"]
    for assignment in overrides:
        data = set_dotted(data, assignment)
    return build_config(data)


class CountingHealthCallback(UnitHealthCallback):
    """`UnitHealthCallback` that counts its probes, to show the probe runs even though the logger writes nothing."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.probes = self.rank_probes = 0

    def log_health(self, observations: torch.Tensor, actions: torch.Tensor | None = None) -> dict[str, float]:
        scalars = super().log_health(observations, actions)
        self.probes += 1
        self.rank_probes += any(tag.endswith("/stable_rank") for tag in scalars)
        return scalars


class OwnTime:
    """Seconds spent inside CBP's own code (its step, switching recording on and off, recording activations) and inside
    the health callback, by wrappers on those methods. They are measured within the same rounds as the total, so
    machine speed drifts cancel from the share; what they cannot see is CBP's effect on the rest (keeping each
    recorded activation until the step, caches it evicts)."""

    TIMED = (
        (ContinualBackprop, "step", "cbp"),
        (SiteIntervention, "record_features", "cbp"),
        (_Recorder, "record", "cbp"),
        (UnitHealthCallback, "_on_step", "health"),
        (UnitHealthCallback, "_on_rollout_end", "health"),
    )

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        for owner, name, part in self.TIMED:
            setattr(owner, name, self._timed(getattr(owner, name), part))

    def _timed(self, method: Any, part: str) -> Any:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start

        return timed


@dataclass
class Variant:
    """One model under test and its timings."""

    name: str
    model: BaseAlgorithm
    callback: CountingHealthCallback | None
    steps_per_s: list[float]
    replacements_at_start: int = 0
    own_seconds: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0

    def replacements(self) -> int:
        return replacements(self.model.policy)

    def share(self, part: str) -> float:
        return self.own_seconds[part] / self.seconds

    def probes(self) -> str:
        return f"{self.callback.probes} ({self.callback.rank_probes} with ranks)" if self.callback is not None else "0"


def replacements(policy: torch.nn.Module) -> int:
    """Units CBP has replaced in the policy so far (0 without CBP)."""
    cbp = getattr(policy, "cbp", None) or {}
    return sum(sum(module.replacements().values()) for module in cbp.values())


def machine(threads: int) -> str:
    """The line that says where a benchmark ran."""
    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"threads {threads}, SB3 {stable_baselines3.__version__}"
    )


def build(algo: str, with_cbp: bool, maturity: int) -> BaseAlgorithm:
    """A model on its own env of the config, seeded alike; plain is SB3's MlpPolicy with the same network, init and
    Adam, so that every variant starts from the same weights (and takes the same steps until CBP first acts)."""
    config = cbp_config(algo, maturity)
    env = make_env(config)
    if with_cbp:
        model = build_model(config, env)
    else:
        kwargs = {k: v for k, v in policy_kwargs(config).items() if k not in ("init", *METHODS)}
        if algo == "ppo":
            kwargs["ortho_init"] = False
        model = ALGORITHMS[algo]("MlpPolicy", env, seed=SEED, device="cpu", policy_kwargs=kwargs, **config.algo_kwargs)
        if config.policy.init != POLICIES[algo].sb3_init:
            init_policy_(model.policy, config.policy.init)
    model.set_logger(Logger(folder=None, output_formats=[]))  # records in memory, writes nothing
    return model


def make_variants(algo: str, maturity: int, probe_size: int, rank_every: int) -> list[Variant]:
    health = CountingHealthCallback(log_every=SAC_LOG_EVERY, probe_size=probe_size, rank_every=rank_every)
    return [
        Variant("plain MlpPolicy", build(algo, False, maturity), None, []),
        Variant("plain MlpPolicy, replica", build(algo, False, maturity), None, []),
        Variant("CBP", build(algo, True, maturity), None, []),
        Variant("CBP + UnitHealthCallback", build(algo, True, maturity), health, []),
    ]


def learn(variant: Variant, steps: int, own: OwnTime | None = None) -> float:
    """Learn ``steps`` more environment steps; returns steps/s over the steps actually taken (and, with ``own``, adds
    the round's time and the time in CBP's and the callback's own code to the variant's)."""
    model = variant.model
    before = model.num_timesteps
    gc.collect()
    if own is not None:
        own.seconds.clear()
    start = time.perf_counter()
    model.learn(total_timesteps=steps, callback=variant.callback, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    if own is not None:
        variant.seconds += seconds
        variant.own_seconds.update(own.seconds)
    return (model.num_timesteps - before) / seconds


def run(
    algo: str, rounds: int, steps: int, maturity: int, probe_size: int, rank_every: int, own: OwnTime | None
) -> list[Variant]:
    variants = make_variants(algo, maturity, probe_size, rank_every)
    warmup = cbp_config(algo, maturity).algo_kwargs["n_steps"] if algo == "ppo" else SAC_LEARNING_STARTS + SAC_WARMUP_UPDATES
    for variant in variants:
        learn(variant, warmup)
        variant.replacements_at_start = variant.replacements()
        if variant.callback is not None:
            variant.callback.probes = variant.callback.rank_probes = 0
    orders = williams_orders(len(variants))
    for r in range(rounds):
        for index in orders[r % len(orders)]:
            variants[index].steps_per_s.append(learn(variants[index], steps, own))
    return variants


def williams_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` items in which each item takes every position, and directly follows every other item,
    equally often (Williams 1949): ``n`` orders for even ``n``, ``2n`` for odd."""
    first = [0]
    for k in range(1, n):
        first.append((k + 1) // 2 if k % 2 else n - k // 2)
    orders = [[(item + shift) % n for item in first] for shift in range(n)]
    return orders if n % 2 == 0 else orders + [order[::-1] for order in orders]


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median: the order statistics ``k`` and ``n + 1 - k`` with the largest
    ``k`` for which it covers the median with at least ``confidence`` (``[min, max]`` if none: fewer than 6 values)."""
    x, n = sorted(values), len(values)

    def outside(k: int) -> float:  # P(the interval of k misses the median) = 2·P(Binomial(n, 1/2) < k)
        return 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k < (n + 1) // 2 and outside(k + 1) <= 1 - confidence:
        k += 1
    return x[k - 1], x[n - k]


def ratio_of_totals(times: list[float], plain: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """Plain's total time over the variant's (rounds of equal steps), with a 95% percentile bootstrap interval
    over rounds resampled in pairs: it counts rare costs (a probe in one round of many) that a median skips."""
    rng = random.Random(0)
    pairs = list(zip(times, plain))
    estimates = []
    for _ in range(resamples):
        sample = rng.choices(pairs, k=len(pairs))
        estimates.append(sum(p for _, p in sample) / sum(t for t, _ in sample))
    estimates.sort()
    return sum(plain) / sum(times), estimates[int(0.025 * resamples)], estimates[int(0.975 * resamples) - 1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=("ppo", "sac", "both"), default="both", help="which algorithm(s) to time")
    parser.add_argument(
        "--rounds", type=int, default=8, help="rounds, each variant once per round (a multiple of 4 balances the orders)"
    )
    parser.add_argument(
        "--ppo-steps", type=int, default=2048, help="PPO env steps per variant per round (2048: one rollout + update)"
    )
    parser.add_argument("--sac-steps", type=int, default=1000, help="SAC env steps (= updates) per variant per round")
    parser.add_argument(
        "--maturity", type=int, default=100, help="CBP maturity_threshold (the paper's 10000 replaces nothing here)"
    )
    parser.add_argument(
        "--probe-size", type=int, default=PROBE_SIZE, help=f"observations per health probe (default: UnitHealthCallback's, {PROBE_SIZE})"
    )
    parser.add_argument(
        "--rank-every",
        type=int,
        default=RANK_EVERY,
        help=f"env steps between probes with ranks (default: UnitHealthCallback's, {RANK_EVERY}; 1: every probe)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch intra-op threads; on a machine shared with other jobs use 1 (oversubscribed: up to 10x slower)",
    )
    parser.add_argument(
        "--own-time",
        action="store_true",
        help="also time CBP's and the health callback's own code inside each round (adds a wrapper call to each)",
    )
    args = parser.parse_args()
    for flag in ("rounds", "ppo_steps", "sac_steps", "probe_size", "rank_every", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}={getattr(args, flag)} is invalid: expected an integer >= 1")
    if args.maturity < 0:
        parser.error(f"--maturity={args.maturity} is invalid: expected an integer >= 0")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    own = OwnTime() if args.own_time else None
    algos = ("ppo", "sac") if args.algo == "both" else (args.algo,)
    results = {}
    for algo in algos:
        steps = args.ppo_steps if algo == "ppo" else args.sac_steps
        start = time.perf_counter()
        results[algo] = run(algo, args.rounds, steps, args.maturity, args.probe_size, args.rank_every, own)
        print(f"[{algo}: {args.rounds} rounds x {steps} steps x 4 variants in {time.perf_counter() - start:.0f} s]")

    print(machine(args.threads))
    print(
        f"configs/{{ppo,sac}}/cbp.yaml (SlipperyAnt-v0, n_envs 1), seed {SEED}; CBP replacement_rate 1e-4, decay 0.99, maturity_threshold {args.maturity}"
        f"{' (paper: 10000)' if args.maturity != 10000 else ' (paper)'}; {args.rounds} rounds, PPO {args.ppo_steps} / "
        f"SAC {args.sac_steps} steps per round; warm-up excluded from every column"
    )
    print(
        f"PPO: paper hyperparameters (DESIGN §6); SAC: rl-zoo settings with learning_starts {SAC_LEARNING_STARTS}, "
        f"health log_every {SAC_LOG_EVERY}; health probe_size {args.probe_size}, rank_every {args.rank_every}"
    )
    print()
    print(
        "| algo | variant | median steps/s | ratio vs plain: median of rounds (95% interval) "
        "| ratio of total times (95% bootstrap) | CBP replacements | health probes |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for algo, variants in results.items():
        plain = variants[0].steps_per_s
        for variant in variants:
            ratios = [v / p for v, p in zip(variant.steps_per_s, plain)]
            low, high = median_interval(ratios)
            total, total_low, total_high = ratio_of_totals([1 / v for v in variant.steps_per_s], [1 / p for p in plain])
            replaced = variant.replacements() - variant.replacements_at_start
            print(
                f"| {algo.upper()} | {variant.name} | {statistics.median(variant.steps_per_s):.1f} "
                f"| {statistics.median(ratios):.3f} ({low:.3f}-{high:.3f}) | {total:.3f} ({total_low:.3f}-{total_high:.3f}) "
                f"| {replaced} | {variant.probes()} |"
            )
    if own is not None:
        print()
        print("| algo | variant | share of its rounds' time in CBP's own code | in the health callback | 1 - both |")
        print("|---|---|---:|---:|---:|")
        for algo, variants in results.items():
            for variant in variants[2:]:
                cbp, health = variant.share("cbp"), variant.share("health")
                print(f"| {algo.upper()} | {variant.name} | {cbp:.2%} | {health:.2%} | {1 - cbp - health:.3f} |")
    print()
    for algo, variants in results.items():
        for variant in variants:
            print(f"{algo} {variant.name}: steps/s per round {[round(v, 1) for v in variant.steps_per_s]}")


if __name__ == "__main__":
    main()
