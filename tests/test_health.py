"""DESIGN §4 metrics on matrices whose answers are known."""

import math

import pytest
import torch
from torch import nn

from cbp_rl import (
    ContinualBackprop,
    dead_fraction,
    dormant_fraction,
    effective_rank,
    feature_norm,
    StackedLinear,
    probe,
    sequential_sites,
    singular_values,
    stable_rank,
    weight_magnitude,
)


def test_identity_has_full_ranks():
    eye = torch.eye(100)
    assert effective_rank(eye).item() == pytest.approx(100, rel=1e-6)
    assert stable_rank(eye).item() == 99
    assert stable_rank(eye, prop=1.0).item() == 100
    assert dead_fraction(eye).item() == 1.0  # each unit fires on exactly 1% of the inputs: dead
    assert dead_fraction(torch.eye(50)).item() == 0.0
    assert dormant_fraction(eye).item() == 0.0


def test_rank_one_matrix():
    features = torch.outer(torch.rand(500) + 0.1, torch.rand(64) + 0.1)
    assert effective_rank(features).item() == pytest.approx(1.0, abs=1e-3)
    assert stable_rank(features).item() == 1


def test_singular_values_match_svd():
    features = torch.randn(300, 40) @ torch.diag(torch.linspace(0.1, 5, 40))
    assert torch.allclose(singular_values(features).float(), torch.linalg.svdvals(features), rtol=1e-3)
    wide = torch.randn(20, 60)
    assert torch.allclose(singular_values(wide).float(), torch.linalg.svdvals(wide), rtol=1e-3)
    stacked_odd = torch.randn(3, 50, 7)  # the Gram matrix is built from blocks of 3 and 4 columns
    assert torch.allclose(singular_values(stacked_odd).float(), torch.linalg.svdvals(stacked_odd), rtol=1e-3)


def test_ranks_of_features_with_a_dominant_mean_direction_match_a_float64_svd():
    torch.manual_seed(0)
    features = torch.relu(torch.randn(1000, 256)) * torch.logspace(0, -2, 256) + 3.0  # like trained ReLU features
    sigma = torch.linalg.svdvals(features.double())
    assert (sigma < 0.0055 * sigma[0]).sum() > 100  # below the rounding error of a float32 Gram matrix
    assert stable_rank(features).item() == stable_rank(sigma=sigma).item()
    assert effective_rank(features).item() == pytest.approx(effective_rank(sigma=sigma).item(), rel=1e-6)


def test_dead_and_dormant_columns():
    torch.manual_seed(0)
    features = torch.rand(1000, 10) + 0.5
    features[:, :4] = 0.0
    features[:5, 3] = 1.0  # active on 0.5% of inputs: still dead
    features[:, 4] *= 0.02  # alive but dormant at tau=0.1 (score ~0.04)
    assert dead_fraction(features).item() == pytest.approx(0.4)
    assert dormant_fraction(features, 0.0).item() == pytest.approx(0.3)
    assert dormant_fraction(features, 0.1).item() == pytest.approx(0.5)
    assert effective_rank(features).item() < 7
    assert dormant_fraction(torch.zeros(5, 4)).item() == 1.0


def test_zero_matrix_ranks_are_zero():
    assert effective_rank(torch.zeros(10, 5)).item() == 0.0
    assert stable_rank(torch.zeros(10, 5)).item() == 0


def test_magnitudes():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [0.0, -1.0, 5.0]]))
    assert weight_magnitude(layer).item() == pytest.approx(2.0)
    assert feature_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]])).item() == pytest.approx(3.0)


def test_probe_reports_every_site_and_metric_without_side_effects():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        net[2].weight[:2] = 0.0
        net[2].bias[:2] = -1.0  # units 0 and 1 of the second layer never fire
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    cbp = ContinualBackprop.from_sequential(net, optimizer, maturity_threshold=0)
    x = torch.randn(2048, 5)
    stats = probe(lambda: net(x), cbp.sites, "health/actor/")
    metrics = {"dead_frac", "dormant_frac", "dormant_frac_0.1", "effective_rank", "stable_rank",
               "stable_rank_pct", "weight_mag", "feature_norm"}
    assert set(stats) == {f"health/actor/{site}/{m}" for site in ("l0", "l1") for m in metrics}
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert stats["health/actor/l1/dead_frac"] == pytest.approx(2 / 8)
    assert stats["health/actor/l1/stable_rank_pct"] == pytest.approx(100 * stats["health/actor/l1/stable_rank"] / 8)
    assert stats["health/actor/l0/weight_mag"] == pytest.approx(net[0].weight.abs().mean().item())
    optimizer.step()
    assert all((age == 0).all() for age in cbp.ages().values())  # the probe forward fed no activations to CBP


def test_probe_without_ranks_leaves_out_only_the_rank_metrics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))
    sites = ContinualBackprop.from_sequential(net).sites
    x = torch.randn(256, 5)
    full, cheap = probe(lambda: net(x), sites), probe(lambda: net(x), sites, ranks=False)
    assert set(full) - set(cheap) == {"l0/effective_rank", "l0/stable_rank", "l0/stable_rank_pct"}
    assert cheap == {tag: value for tag, value in full.items() if tag in cheap}


def test_probe_names_sites_it_did_not_reach():
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    sites = ContinualBackprop.from_sequential(net).sites
    with pytest.raises(RuntimeError, match="l0"):
        probe(lambda: None, sites)


def test_a_stacked_site_is_measured_member_by_member():
    torch.manual_seed(0)
    members, units = 3, 16
    net = nn.Sequential(StackedLinear(members, 5, units), nn.ReLU(), StackedLinear(members, units, 1))
    with torch.no_grad():
        net[0].bias[0] = -100.0  # member 0: every unit dead; the others mostly alive
        net[0].bias[1, :4] = -100.0  # member 1: 4 of 16 dead
    x = torch.randn(members, 300, 5)
    stacked = probe(lambda: net(x), sequential_sites(net))
    alone = []
    for m in range(members):
        single = nn.Sequential(nn.Linear(5, units), nn.ReLU(), nn.Linear(units, 1))
        with torch.no_grad():
            single[0].weight.copy_(net[0].weight[m])
            single[0].bias.copy_(net[0].bias[m])
        alone.append(probe(lambda: single(x[m]), sequential_sites(single)))
    assert stacked["l0/dead_frac"] == pytest.approx((1 + 4 / 16 + alone[2]["l0/dead_frac"]) / 3)
    for metric in ("dead_frac", "dormant_frac", "dormant_frac_0.1", "feature_norm", "effective_rank", "stable_rank"):
        assert stacked[f"l0/{metric}"] == pytest.approx(sum(a[f"l0/{metric}"] for a in alone) / members), metric
