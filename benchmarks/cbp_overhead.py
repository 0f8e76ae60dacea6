"""Cost of CBP per optimizer step and of one unit-health probe, on a PPO-sized actor-critic MLP pair.

One network pair is trained throughout; rounds alternate between CBP switched off (detached from the optimizer,
not recording) and on, so both columns time the same weights and optimizer state (two separately trained copies
drift apart numerically, e.g. in how many Adam moments decay into slow denormal floats).

Usage: python benchmarks/cbp_overhead.py [--steps 2000] [--rounds 7] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from cbp_rl import ContinualBackprop, probe

OBS, ACT, HIDDEN, BATCH = 105, 8, 256, 128
PROBE_SIZES = (2048, 1000)  # a whole PPO rollout; the paper's sample, UnitHealthCallback's default


def mlp(out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(OBS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, out))


def make_setup():
    torch.manual_seed(0)
    actor, critic = mlp(ACT), mlp(1)
    optimizer = torch.optim.Adam([*actor.parameters(), *critic.parameters()], lr=1e-4, betas=(0.99, 0.99))
    sites = {f"actor_{k}": s for k, s in ContinualBackprop.from_sequential(actor).sites.items()}
    sites |= {f"critic_{k}": s for k, s in ContinualBackprop.from_sequential(critic).sites.items()}
    cbp = ContinualBackprop(sites, optimizer, replacement_rate=1e-4, maturity_threshold=100)
    return actor, critic, optimizer, cbp


def switch_cbp(setup, on: bool) -> None:
    _, _, optimizer, cbp = setup
    cbp.record_features(on)
    if on:
        cbp.attach(optimizer)
    else:
        cbp.detach()


def time_updates(setup, steps: int) -> float:
    actor, critic, optimizer, _ = setup
    obs, target = torch.randn(BATCH, OBS), torch.randn(BATCH, 1)
    start = time.perf_counter()
    for _ in range(steps):
        loss = actor(obs).pow(2).mean() + (critic(obs) - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e3


def time_probe(setup, repeats: int, observations: int) -> float:
    actor, critic, _, cbp = setup
    obs = torch.randn(observations, OBS)
    start = time.perf_counter()
    for _ in range(repeats):
        probe(lambda: (actor(obs), critic(obs)), cbp.sites, "health/")
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per timing round")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = make_setup()
    time_updates(setup, 200)
    plain_ms, cbp_ms = [], []
    probe_ms: dict[int, list[float]] = {size: [] for size in PROBE_SIZES}
    for _ in range(args.rounds):
        switch_cbp(setup, False)
        plain_ms.append(time_updates(setup, args.steps))
        switch_cbp(setup, True)
        cbp_ms.append(time_updates(setup, args.steps))
        for size, times in probe_ms.items():
            times.append(time_probe(setup, 10, size))
    p, c = statistics.median(plain_ms), statistics.median(cbp_ms)
    overheads = [b - a for a, b in zip(plain_ms, cbp_ms)]
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}")
    print(f"actor+critic 105-256-256-(8|1) ReLU, batch {BATCH}, Adam; {args.rounds} rounds x {args.steps} steps")
    print(f"{'update (fwd+bwd+Adam)':<34}{p:8.3f} ms/step")
    print(f"{'update + CBP (4 sites)':<34}{c:8.3f} ms/step")
    print(f"{'CBP overhead (median of pairs)':<34}{statistics.median(overheads):8.3f} ms/step  ({c / p:.3f}x)")
    for size, times in probe_ms.items():
        print(f"{f'health probe, 4 sites, {size} obs':<34}{statistics.median(times):8.3f} ms/probe")
    print(f"replacements during the benchmark: {setup[3].replacements()}")


if __name__ == "__main__":
    main()
