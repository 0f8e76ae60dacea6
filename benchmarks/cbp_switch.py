"""The marginal cost of CBP inside one training run on SlipperyAnt-v0: a single CBP model (the config of
`agent_overhead.py`) learns with CBP switched on and off every few rollouts, and each rollout with its update is timed.

`agent_overhead.py` compares separate models round by round, so a machine whose speed drifts by more than CBP costs
blurs its ratios; its ``--own-time`` share is drift-free but sees only CBP's own code, not what that code costs the
rest of the update (caches it evicts or warms). Here both sides share the model, its weights, replay buffer and
memory, and alternate within seconds: drifts cancel and every effect of CBP is counted. A rollout is SAC's
``train_freq`` env steps (1) or PPO's ``n_steps`` (2048), each with the update after it; the first rollout after each
switch is not timed. Switched off, the policy records no activations and its optimizers run no CBP step, as a plain
``MlpPolicy`` of the same network (CBP's state just waits). The blocks come in pairs, on-off and off-on in turn; the
ratio is the total time off over the total time on (steps/s with CBP over without), with a 95% bootstrap interval
over pairs.

Usage: python benchmarks/cbp_switch.py [--algo sac|ppo] [--pairs N] [--block N] [--maturity 100] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from stable_baselines3.common.callbacks import BaseCallback

from agent_overhead import SAC_LEARNING_STARTS, SAC_WARMUP_UPDATES, build, cbp_config, machine, ratio_of_totals, replacements

DEFAULTS = {"sac": {"pairs": 600, "block": 4}, "ppo": {"pairs": 24, "block": 2}}


class SwitchCBP(BaseCallback):
    """Switches CBP on and off every ``block`` rollouts and times each rollout with its update (not the first of a
    block); ``seconds[on]`` lists, per pair of blocks, the timed rollouts' seconds with CBP ``on`` or off."""

    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = block
        self.seconds: dict[bool, list[float]] = {True: [], False: []}
        self.rollouts = 0
        self.started: float | None = None

    def _on_training_start(self) -> None:
        self.modules = self.model.policy._plasticity_modules

    def _on_rollout_start(self) -> None:
        now = time.perf_counter()
        if self.started is not None:
            self._add(self.rollouts - 1, now - self.started)
        if self.rollouts % self.block == 0:
            self._switch(self._cbp_on(self.rollouts))
        self.rollouts += 1
        self.started = time.perf_counter()

    def _on_step(self) -> bool:
        return True

    def _cbp_on(self, rollout: int) -> bool:
        pair, second = divmod(rollout // self.block, 2)
        return second == pair % 2  # on-off, then off-on

    def _add(self, rollout: int, seconds: float) -> None:
        if rollout % self.block == 0:
            return
        on, pair = self._cbp_on(rollout), rollout // (2 * self.block)
        totals = self.seconds[on]
        if len(totals) <= pair:
            totals.append(0.0)
        totals[pair] += seconds

    def _switch(self, on: bool) -> None:
        policy = self.model.policy
        if on:
            policy._plasticity_modules = self.modules  # its next set_training_mode(True) re-attaches and records
            return
        for _, module in self.modules:
            module.record_features(False)
            module.detach()
        policy._plasticity_modules = []


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=("sac", "ppo"), default="sac", help="which algorithm to time")
    parser.add_argument("--pairs", type=int, help="pairs of blocks, one on and one off (default: SAC 600, PPO 24)")
    parser.add_argument("--block", type=int, help="rollouts per block, the first not timed (default: SAC 4, PPO 2)")
    parser.add_argument("--maturity", type=int, default=100, help="CBP maturity_threshold (the paper's 10000 replaces nothing here)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    for flag, default in DEFAULTS[args.algo].items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    for flag, least in (("pairs", 2), ("block", 2), ("threads", 1), ("maturity", 0)):
        if getattr(args, flag) < least:
            parser.error(f"--{flag}={getattr(args, flag)} is invalid: expected an integer >= {least}")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.algo, True, args.maturity)
    steps_per_rollout = (model.n_steps if args.algo == "ppo" else model.train_freq.frequency) * model.n_envs
    model.learn(steps_per_rollout if args.algo == "ppo" else SAC_LEARNING_STARTS + SAC_WARMUP_UPDATES)
    switch = SwitchCBP(args.block)
    replaced = replacements(model.policy)
    start = time.perf_counter()
    rollouts = 2 * args.pairs * args.block + 1  # the one more times the last of the final block
    model.learn(rollouts * steps_per_rollout, callback=switch, reset_num_timesteps=False)
    minutes = (time.perf_counter() - start) / 60
    replaced = replacements(model.policy) - replaced
    on, off = switch.seconds[True][: args.pairs], switch.seconds[False][: args.pairs]

    config = cbp_config(args.algo, args.maturity)
    print(machine(args.threads))
    print(
        f"configs/{args.algo}/cbp.yaml on {config.env.id}, seed {config.seed}, CBP maturity_threshold {args.maturity}; "
        f"{args.pairs} pairs of blocks of {args.block} rollouts of {steps_per_rollout} env steps with their updates "
        f"({len(on) * (args.block - 1)} rollouts timed per side, {minutes:.1f} min); CBP replaced {replaced} units"
    )
    per_rollout = {side: statistics.mean(seconds) / (args.block - 1) for side, seconds in (("on", on), ("off", off))}
    total, low, high = ratio_of_totals(on, off)  # time off over time on, bootstrap over pairs
    print(f"mean seconds per rollout with its update: CBP on {per_rollout['on']:.5f}, off {per_rollout['off']:.5f}")
    print(f"steps/s with CBP over without: {total:.4f} (95% bootstrap interval over pairs {low:.4f}-{high:.4f})")


if __name__ == "__main__":
    main()
