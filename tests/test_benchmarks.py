"""The speed benchmarks run end to end and print their numbers (tiny sizes; the timings themselves are not tested)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script, *args):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cbp_overhead_times_the_same_network_with_cbp_off_and_on():
    out = run("cbp_overhead.py", "--steps", "20", "--rounds", "1", "--threads", "1")
    assert "CBP overhead (median of pairs)" in out and "health probe, 4 sites, 1000 obs" in out
    replacements = ast.literal_eval(out.split("replacements during the benchmark: ")[1])
    assert set(replacements) == {"actor_l0", "actor_l1", "critic_l0", "critic_l1"} and min(replacements.values()) > 0


@pytest.mark.slow
def test_agent_overhead_prints_every_variant_with_replacements():
    out = run("agent_overhead.py", "--algo", "ppo", "--rounds", "1", "--ppo-steps", "64", "--threads", "1", "--own-time")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| PPO |")]
    throughput, own_time = rows[:4], rows[4:]
    assert [row[2].strip() for row in throughput] == [
        "plain MlpPolicy", "plain MlpPolicy, replica", "CBP", "CBP + UnitHealthCallback"
    ]
    assert [int(row[6]) for row in throughput][2:] == [int(rows[2][6])] * 2 and int(rows[2][6]) > 0
    shares = {row[2].strip(): (float(row[3].strip(" %")), float(row[4].strip(" %"))) for row in own_time}
    assert shares["CBP"][0] > 0 and shares["CBP"][1] == 0 and min(shares["CBP + UnitHealthCallback"]) > 0


def test_ratio_of_totals_weighs_rounds_by_their_time(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from agent_overhead import ratio_of_totals

    ratio, low, high = ratio_of_totals([1.0, 1.0, 4.0], [1.0, 1.0, 2.0])  # a median of round ratios would say 1
    assert ratio == pytest.approx(4 / 6) and low <= ratio <= high and low >= 0.5 and high == 1.0


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_williams_orders_balance_slots_and_predecessors(n, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from agent_overhead import williams_orders

    orders = williams_orders(n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    for slot in range(n):
        assert sorted(order[slot] for order in orders) == sorted(list(range(n)) * (len(orders) // n))
    pairs = [(a, b) for order in orders for a, b in zip(order, order[1:])]
    assert sorted(set(pairs)) == [(a, b) for a in range(n) for b in range(n) if a != b]
    assert len(pairs) == len(orders) // n * n * (n - 1)


def test_cbp_switch_runs_cbp_in_its_on_blocks_only(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from cbp_switch import SwitchCBP
    from stable_baselines3 import SAC

    import envs  # noqa: F401  (registers SlipperyHopper-v0)
    from agents import CBPSACPolicy
    from cbp_rl import ContinualBackprop

    kwargs = dict(net_arch=[16, 16], cbp=dict(maturity_threshold=1, replacement_rate=0.05))
    model = SAC(CBPSACPolicy, "SlipperyHopper-v0", learning_starts=10, buffer_size=500, batch_size=32, seed=0, policy_kwargs=kwargs)
    model.learn(20)
    switch, steps = SwitchCBP(block=3), []

    def step(module):
        steps.append(switch._cbp_on(switch.rollouts - 1))
        original(module)

    original = ContinualBackprop.step
    monkeypatch.setattr(ContinualBackprop, "step", step)
    replaced = sum(sum(module.replacements().values()) for module in model.policy.cbp.values())
    model.learn(2 * 2 * 3 + 1, callback=switch, reset_num_timesteps=False)  # two pairs, then the rollout that times the last
    assert steps == [True] * 2 * 7  # actor and critic, in the 3 + 3 rollouts of the on blocks and the last one
    assert [len(switch.seconds[on]) for on in (True, False)] == [2, 2] and min(switch.seconds[True] + switch.seconds[False]) > 0
    assert sum(sum(module.replacements().values()) for module in model.policy.cbp.values()) > replaced


def test_cbp_switch_times_each_rollout_for_its_side_but_not_the_first_after_a_switch(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cbp_switch

    switch, switched, clock = cbp_switch.SwitchCBP(block=3), [], [0.0]
    monkeypatch.setattr(switch, "_switch", switched.append)
    monkeypatch.setattr(cbp_switch.time, "perf_counter", lambda: clock[0])
    for rollout in range(2 * 2 * 3 + 1):
        switch._on_rollout_start()
        first = rollout % 3 == 0
        clock[0] += (100.0 if first else 1.0) * (10.0 if switch._cbp_on(rollout) else 1.0)
    assert switched == [True, False, False, True, True]  # pairs on-off, off-on, then the rollout timing the last
    assert switch.seconds == {True: [20.0, 20.0], False: [2.0, 2.0]}


def test_cbp_switch_prints_the_ratio_with_its_interval():
    out = run("cbp_switch.py", "--pairs", "2", "--block", "2", "--threads", "1")
    ratio, interval = out.split("steps/s with CBP over without: ")[1].split(" (95% bootstrap interval over pairs ")
    low, high = map(float, interval.rstrip(")\n").split("-"))
    assert low <= float(ratio) <= high and "2 rollouts timed per side" in out
