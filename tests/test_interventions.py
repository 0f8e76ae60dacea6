"""Shrink & Perturb, L2-Init and ReDo act as their papers define them, on plain and stacked MLPs."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from cbp_rl import L2Init, ReDo, ShrinkPerturb, StackedLinear, sequential_sites


def make_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


def sgd_step(net, optimizer, x=None):
    x = torch.randn(32, 6) if x is None else x
    loss = net(x).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_shrink_perturb_scales_and_adds_noise_of_the_given_size():
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    ShrinkPerturb(sequential_sites(net), optimizer, shrink=0.9, noise_scale=0.01)
    before = [p.detach().clone() for p in net.parameters()]
    sgd_step(net, optimizer)
    noise = torch.cat([(p - 0.9 * b).flatten() for p, b in zip(net.parameters(), before)])
    assert len(noise) == sum(p.numel() for p in net.parameters())  # every layer, heads included
    assert abs(noise.mean().item()) < 1e-3 and noise.std().item() == pytest.approx(0.01, rel=0.05)


def test_shrink_perturb_identity_settings_change_nothing():
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    ShrinkPerturb(sequential_sites(net), optimizer, shrink=1.0, noise_scale=0.0)
    before = copy.deepcopy(net.state_dict())
    sgd_step(net, optimizer)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_l2_init_pulls_weights_back_to_their_initial_values():
    net = make_net()
    initial = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    L2Init(sequential_sites(net), optimizer, strength=0.1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    optimizer.zero_grad()
    (0.0 * net(torch.randn(4, 6)).sum()).backward()  # zero task gradient: only the penalty acts
    optimizer.step()
    for p, p0 in zip(net.parameters(), initial):
        assert torch.allclose(p, p0 + 1.0 - 0.5 * 0.1 * 1.0)


def test_l2_init_keeps_its_anchor_in_the_state_dict():
    net = make_net()
    anchor = L2Init(sequential_sites(net), strength=0.3)
    state = anchor.state_dict()
    other = L2Init(sequential_sites(make_net(seed=1)), strength=0.1)
    other.load_state_dict(state)
    assert other.strength == 0.3 and torch.equal(other.initial_0, net[0].weight)


def test_redo_reinitializes_exactly_the_dormant_units_every_period():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 2))
    with torch.no_grad():
        net[0].weight[:5] = 0.0
        net[0].bias[:5] = -1.0  # units 0..4 of layer 0 never fire
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    redo = ReDo(sequential_sites(net), optimizer, reset_period=3, tau=0.0)
    for _ in range(2):
        sgd_step(net, optimizer)
    assert redo.replacements()["l0"] == 0 and torch.all(net[0].weight[:5] == 0)
    weights = net[0].weight.detach().clone()
    sgd_step(net, optimizer)
    assert redo.replacements()["l0"] == 5
    assert torch.all(net[0].weight[:5] != 0) and torch.all(net[0].bias[:5] == 0)
    assert torch.all(net[2].weight[:, :5] == 0)
    assert torch.all((net[0].weight[5:] - weights[5:]).abs() < 0.01)  # live units only took the Adam step
    restored = ReDo(sequential_sites(nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 2))), reset_period=3)
    restored.load_state_dict(redo.state_dict())
    assert restored._host_updates == 3 and restored.replacements() == redo.replacements()


def test_redo_on_stacked_members_uses_each_members_own_dormancy():
    torch.manual_seed(0)
    net = nn.Sequential(StackedLinear(3, 6, 16), nn.ReLU(), StackedLinear(3, 16, 1))
    with torch.no_grad():
        for member in range(3):
            net[0].weight[member, member] = 0.0
            net[0].bias[member, member] = -1.0
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    redo = ReDo(sequential_sites(net), optimizer, reset_period=1, tau=0.0)
    x = torch.randn(3, 64, 6)
    net(x).sum().backward()
    optimizer.step()
    assert redo.replacements()["l0"] == 3
    zero_columns = [np.flatnonzero((net[2].weight[m] == 0).all(0).numpy()).tolist() for m in range(3)]
    assert zero_columns == [[0], [1], [2]]


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (ShrinkPerturb, dict(shrink=0.0), "shrink=0.0"),
        (ShrinkPerturb, dict(noise_scale=-1.0), "noise_scale=-1.0"),
        (L2Init, dict(strength=-0.1), "strength=-0.1"),
        (ReDo, dict(reset_period=0), "reset_period=0"),
        (ReDo, dict(tau=-1.0), "tau=-1.0"),
        (ReDo, dict(init="he"), "init='he'"),
    ],
)
def test_bad_settings_raise_one_line_errors(cls, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        cls(sequential_sites(make_net()), **kwargs)
