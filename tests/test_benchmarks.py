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
