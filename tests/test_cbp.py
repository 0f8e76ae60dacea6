"""Every rule of DESIGN §3, checked on small MLPs."""

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from cbp_rl import ContinualBackprop, Site, StackedLinear, kernels, uniform_bound
from cbp_rl.cbp import _SETTLE_CHUNK, _HostCounters


def make_net(inputs=6, hidden=20, outputs=2, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


def train_step(net, optimizer, x=None, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    x = torch.randn(32, net[0].in_features) if x is None else x
    loss = (net(x) - x[:, :1]).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_replacements_follow_rate_times_mature_units():
    net = make_net(hidden=50)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.013, maturity_threshold=7)
    expected = {name: 0.0 for name in cbp.names}
    for step in range(400):
        ages_before = cbp.ages()
        train_step(net, optimizer)
        for name in cbp.names:
            expected[name] += 0.013 * np.count_nonzero(ages_before[name] + 1 > 7)
            assert cbp.replacements()[name] == math.floor(expected[name] + 1e-9), (step, name)
    assert all(count > 100 for count in cbp.replacements().values())


def test_pending_additions_settle_as_single_additions_across_chunks():
    host = _HostCounters(np.zeros((2, 4), np.int64), np.array([0.1, 0.2]), np.zeros(2, np.int64))
    host.expected = np.array([1e-7, 3.3e-8])
    accumulator = host.accumulator.copy()
    host.pending = 2 * _SETTLE_CHUNK + 5
    for _ in range(host.pending):
        accumulator += host.expected
    host.settle()
    assert host.pending == 0 and np.array_equal(host.accumulator, accumulator)


def test_rate_changes_take_effect_at_the_next_step_without_a_burst():
    net = make_net(hidden=50)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.01, maturity_threshold=0)
    for _ in range(30):
        train_step(net, optimizer)
    before = cbp.replacements()
    cbp.replacement_rate = 0.0
    for _ in range(200):
        train_step(net, optimizer)
    assert cbp.replacements() == before
    accumulator = cbp.state_dict()["states.l0.accumulator"].item()
    cbp.replacement_rate = 0.01
    for _ in range(20):
        train_step(net, optimizer)
    # 20 steps x 0.01 x 50 mature units = 10 more per site, plus what was carried when the rate went to 0
    assert all(cbp.replacements()[name] - before[name] == math.floor(10 + accumulator + 1e-9) for name in cbp.names)


def test_bernoulli_mode_carries_no_fraction():
    net = make_net(hidden=50)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.003, maturity_threshold=0, fractional="bernoulli")
    for _ in range(50):
        train_step(net, optimizer)
    assert cbp.state_dict()["states.l0.accumulator"].item() == 0.0


def test_bernoulli_fraction_matches_rate_on_average():
    net = make_net(hidden=40)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(
        net, optimizer, replacement_rate=0.005, maturity_threshold=0, fractional="bernoulli"
    )
    for _ in range(2000):
        train_step(net, optimizer)
    mean = 2000 * 0.005 * 40
    for count in cbp.replacements().values():
        assert abs(count - mean) < 4 * math.sqrt(mean)


def test_bernoulli_mode_replaces_the_whole_part_from_one_unit_up():
    net = make_net(hidden=50)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.03, maturity_threshold=0, fractional="bernoulli")
    for step in range(1, 101):
        train_step(net, optimizer)  # every unit is mature at its step: 0.03 x 50 = 1.5 due, as the reference: int(1.5)
        assert all(count == step for count in cbp.replacements().values())


def test_zero_rate_tracks_utility_and_replaces_nothing():
    net = make_net()
    before = copy.deepcopy(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.0, maturity_threshold=0)
    for _ in range(50):
        train_step(net, optimizer)
    assert cbp.replacements() == {"l0": 0, "l1": 0}
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), before.parameters()))
    assert all((u > 0).any() for u in cbp.utilities().values())
    assert all((age == 50).all() for age in cbp.ages().values())


@pytest.fixture(params=["kernel", "torch ops"])
def utility_update(request, monkeypatch):
    """Run a test with the running averages updated by the C kernel, then by torch ops; the kernel must have run."""
    if request.param == "torch ops":
        monkeypatch.setattr(kernels, "ENABLED", False)
        yield
        return
    if not kernels.ENABLED:
        pytest.skip("the C kernel is not built here (tests/test_kernels.py checks that it is where a compiler is)")
    calls = []
    update = kernels.update
    monkeypatch.setattr(kernels, "update", lambda *args: (calls.append(args), update(*args)))
    yield
    assert calls, "the C kernel never ran"


def test_utility_and_mean_activation_follow_the_formula_on_every_kind_of_site(utility_update):
    """u = η·u + (1-η)·mean_out|W_out|·mean_batch|h|, m = η·m + (1-η)·mean_batch h: a tanh site read by two heads,
    a ReLU site and a stacked site; steps where only some sites ran, batch sizes that change, a dtype conversion, and
    a step after two forwards (the latest counts). The recorded activations are referenced by CBP alone."""
    torch.manual_seed(0)
    tanh_in, heads = nn.Linear(4, 8), (nn.Linear(8, 2), nn.Linear(8, 3))
    relu_in, relu_out = nn.Linear(4, 6), nn.Linear(6, 1)
    stacked_in, stacked_out = StackedLinear(3, 4, 5), StackedLinear(3, 5, 2)
    sites = {
        "tanh": Site(tanh_in, nn.Tanh(), heads),
        "relu": Site(relu_in, nn.ReLU(), (relu_out,)),
        "stacked": Site(stacked_in, nn.ReLU(), (stacked_out,)),
    }
    modules = nn.ModuleList([tanh_in, *heads, relu_in, relu_out, stacked_in, stacked_out])
    decay = 0.9
    cbp = ContinualBackprop(sites, replacement_rate=0.0, decay_rate=decay)
    expected = {name: [torch.zeros_like(cbp.states[name].utility)] * 2 for name in sites}
    for step, (ran, batch) in enumerate([("tanh relu stacked", 7), ("tanh stacked", 7), ("relu", 5), ("tanh relu stacked", 9)]):
        if step == 2:
            modules.double()
            cbp.double()
            expected = {name: [v.double() for v in values] for name, values in expected.items()}
        dtype = tanh_in.weight.dtype
        for name in ran.split():
            site = sites[name]
            if step == 3:
                site.activation(site.producer(torch.randn(*((3,) if name == "stacked" else ()), 2, 4, dtype=dtype)))
            x = torch.randn(*((3,) if name == "stacked" else ()), batch, 4, dtype=dtype)
            h = site.activation(site.producer(x))
            sum(consumer(h).sum() for consumer in site.consumers)
            out = torch.cat([c.weight.detach() for c in site.consumers], -2).abs().mean(-2)
            utility, mean = expected[name]
            expected[name] = [decay * utility + (1 - decay) * out * h.detach().abs().mean(-2), decay * mean + (1 - decay) * h.detach().mean(-2)]
            del h
        cbp.step()
        for name in sites:
            torch.testing.assert_close(cbp.states[name].utility, expected[name][0], msg=f"{name} utility, step {step}")
            torch.testing.assert_close(cbp.states[name].mean_activation, expected[name][1], msg=f"{name} mean, step {step}")
    assert {name: int(age.max()) for name, age in cbp.ages().items()} == {"tanh": 3, "relu": 3, "stacked": 3}


def test_buffers_loaded_by_assignment_keep_being_updated():
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.0)
    train_step(net, optimizer)
    cbp.load_state_dict({k: v.clone() if torch.is_tensor(v) else v for k, v in cbp.state_dict().items()}, assign=True)
    before = cbp.states["l0"].utility.clone()
    train_step(net, optimizer)
    assert not torch.equal(cbp.states["l0"].utility, before)
    assert cbp.states["l0"].utility.data_ptr() != before.data_ptr()


def test_activations_under_bfloat16_autocast_update_float32_state():
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(8, 6))
    out.float().sum().backward()
    optimizer.step()
    assert cbp.states["l0"].utility.dtype == torch.float32 and (cbp.states["l0"].utility > 0).any()


def test_replaces_the_lowest_utility_mature_units():
    net = make_net(hidden=20)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.0, maturity_threshold=30)
    with torch.no_grad():
        net[2].weight[:, [4, 11]] = 0.0
    for _ in range(40):
        train_step(net, optimizer)
    assert set(torch.topk(cbp.utilities()["l0"], 2, largest=False).indices.tolist()) == {4, 11}
    cbp.replacement_rate = 0.1
    train_step(net, optimizer)
    assert np.flatnonzero(cbp.ages()["l0"] == 0).tolist() == [4, 11]

    # 4 and 11 now have zero utility but are immature; among the mature units, 2 is made the least useful
    with torch.no_grad():
        net[2].weight[:, 2] = 0.0
        cbp.states["l0"].utility[2] = 0.0
    train_step(net, optimizer)
    assert np.flatnonzero(cbp.ages()["l0"] == 0).tolist() == [2]
    assert cbp.ages()["l0"][[4, 11]].tolist() == [1, 1]


@pytest.mark.parametrize("init", ["lecun", "kaiming", "xavier", "default"])
def test_new_units_have_fresh_inputs_and_zero_outputs(init):
    net = make_net(hidden=30)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.1, maturity_threshold=2, init=init)
    for _ in range(2):
        train_step(net, optimizer)
    train_step(net, optimizer, seed=1)
    new = np.flatnonzero(cbp.ages()["l1"] == 0)
    assert len(new) == 3
    bound = uniform_bound(init, net[2], net[3])
    assert torch.all(net[2].weight[new].abs() <= bound)
    assert net[2].weight[new].abs().max() > 0.5 * bound
    assert torch.all(net[2].bias[new] == 0)
    assert torch.all(net[4].weight[:, new] == 0)
    assert torch.all(cbp.states["l1"].utility[new] == 0)
    assert torch.all(cbp.states["l1"].mean_activation[new] == 0)


def test_replaced_units_mean_contribution_moves_to_consumer_bias():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.0, maturity_threshold=0)
    x = torch.randn(256, 6)
    for _ in range(2000):
        train_step(net, optimizer, x=x)
    with torch.no_grad():
        before = net(x).mean(0)
    cbp.replacement_rate = 0.3
    train_step(net, optimizer, x=x)
    assert cbp.replacements()["l0"] == 3
    with torch.no_grad():
        after = net(x).mean(0)
    assert torch.allclose(before, after, atol=1e-4)


def test_no_grad_forward_between_training_forward_and_step_is_ignored():
    net = make_net()
    twin = copy.deepcopy(net)
    runs = []
    for model, probe in ((net, True), (twin, False)):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        cbp = ContinualBackprop.from_sequential(model, optimizer, replacement_rate=0.05, maturity_threshold=3)
        for step in range(20):
            torch.manual_seed(step)
            x = torch.randn(32, 6)
            loss = (model(x) - 1).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            if probe:
                with torch.no_grad():
                    model(torch.randn(500, 6, generator=torch.Generator().manual_seed(step)) * 10)
            optimizer.step()
        runs.append(cbp.state_dict())
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        if torch.is_tensor(runs[0][key]):
            assert torch.equal(runs[0][key], runs[1][key]), key


def test_sites_without_fresh_activations_do_not_age():
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(net, optimizer, maturity_threshold=0)
    train_step(net, optimizer)
    optimizer.step()
    assert all((age == 1).all() for age in cbp.ages().values())


def first_update_size(reset, betas=(0.9, 0.999)):
    """Mean |Δw| of the replaced rows and of the other rows in the first Adam step after a replacement."""
    net = make_net(hidden=40, seed=3)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=betas)
    cbp = ContinualBackprop.from_sequential(
        net, optimizer, replacement_rate=0.0, maturity_threshold=0, reset_optimizer_state=reset == "ours"
    )
    for step in range(300):
        train_step(net, optimizer, seed=step)
    cbp.replacement_rate = 0.1
    train_step(net, optimizer, seed=300)
    new = np.flatnonzero(cbp.ages()["l1"] == 0)
    if reset == "zero_both":
        for param, index in ((net[2].weight, (new,)), (net[2].bias, (new,)), (net[4].weight, (slice(None), new))):
            optimizer.state[param]["exp_avg"][index] = 0
            optimizer.state[param]["exp_avg_sq"][index] = 0
    cbp.replacement_rate = 0.0
    for _ in range(3):  # incoming weights get gradients only once the outgoing ones have moved
        before = net[4].weight.detach().clone()
        train_step(net, optimizer, seed=301)
    delta = (net[4].weight - before).abs()
    old = np.setdiff1d(np.arange(40), new)
    return delta[:, new].mean().item(), delta[:, old].mean().item()


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.99, 0.99)])
def test_optimizer_reset_keeps_new_units_updates_no_larger_than_neighbours(betas):
    new, old = first_update_size("ours", betas)
    assert new <= old
    naive_new, naive_old = first_update_size("zero_both", betas)
    if betas == (0.9, 0.999):
        assert naive_new > 2 * naive_old  # the trap the reset avoids


def test_optimizer_reset_zeroes_first_moment_and_averages_second():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 2))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.0, maturity_threshold=0)
    for step in range(20):
        train_step(net, optimizer, seed=step)
    cbp.replacement_rate = 0.2
    cbp.record_features(False)
    cbp.record_features(True)
    net(torch.randn(8, 6)).sum().backward()
    v_before = optimizer.state[net[2].weight]["exp_avg_sq"].clone()
    cbp.step()  # generate-and-test without an Adam update in between
    new = np.flatnonzero(cbp.ages()["l0"] == 0)
    kept = np.setdiff1d(np.arange(10), new)
    state = optimizer.state[net[0].weight]
    assert len(new) == 2
    assert torch.all(state["exp_avg"][new] == 0)
    assert torch.allclose(state["exp_avg_sq"][new], state["exp_avg_sq"][kept].mean().expand(2, 6))
    consumer = optimizer.state[net[2].weight]["exp_avg_sq"]
    assert torch.allclose(consumer[:, new], v_before[:, kept].mean().expand(2, 2))


def test_state_round_trips_and_continues_identically():
    def run(cbp_state=None, net_state=None, opt_state=None, steps=60, start=0):
        net = make_net(seed=7)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.01, maturity_threshold=10)
        if cbp_state is not None:
            net.load_state_dict(net_state)
            optimizer.load_state_dict(opt_state)
            cbp.load_state_dict(cbp_state)
        for step in range(start, start + steps):
            train_step(net, optimizer, seed=step)
        return net, optimizer, cbp

    net, optimizer, cbp = run(steps=60)
    saved = copy.deepcopy(cbp.state_dict())
    assert saved["states.l0.replaced"] > 0 and saved["states.l0.accumulator"] > 0
    net2, opt2, cbp2 = run(saved, copy.deepcopy(net.state_dict()), copy.deepcopy(optimizer.state_dict()), steps=0)
    for key, value in cbp2.state_dict().items():
        assert torch.equal(value, saved[key]) if torch.is_tensor(value) else value == saved[key], key
    assert cbp2.replacements() == cbp.replacements()
    for model, opt, c in ((net, optimizer, cbp), (net2, opt2, cbp2)):
        for step in range(60, 160):
            train_step(model, opt, seed=step)
    assert cbp2.replacements() == cbp.replacements()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters()))
    continued, restored = cbp.state_dict(), cbp2.state_dict()  # to the last bit, fractional accumulators included
    assert all(torch.equal(value, restored[key]) for key, value in continued.items() if torch.is_tensor(value))


def test_site_with_several_consumers_zeroes_every_consumer():
    torch.manual_seed(0)
    body, act = nn.Linear(4, 16), nn.Tanh()
    mu, log_std = nn.Linear(16, 2), nn.Linear(16, 2)
    params = [*body.parameters(), *mu.parameters(), *log_std.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    cbp = ContinualBackprop({"pi": Site(body, act, (mu, log_std))}, optimizer, replacement_rate=0.25, maturity_threshold=1)
    for _ in range(2):
        h = act(body(torch.randn(8, 4)))
        (mu(h).sum() + log_std(h).sum()).backward()
        optimizer.step()
    new = np.flatnonzero(cbp.ages()["pi"] == 0)
    assert len(new) == 4
    assert torch.all(mu.weight[:, new] == 0) and torch.all(log_std.weight[:, new] == 0)


def test_attach_moves_the_hook_to_a_recreated_optimizer():
    net = make_net()
    first = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(net, first, maturity_threshold=0)
    second = torch.optim.SGD(net.parameters(), lr=1e-2)
    assert cbp.is_attached(first) and not cbp.is_attached(second)
    cbp.attach(second)
    assert cbp.is_attached(second) and not cbp.is_attached(first)
    train_step(net, first)
    assert all((age == 0).all() for age in cbp.ages().values())
    train_step(net, second)
    assert all((age == 1).all() for age in cbp.ages().values())


def test_record_features_off_freezes_cbp():
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(net, optimizer, maturity_threshold=0)
    cbp.record_features(False)
    train_step(net, optimizer)
    assert not cbp.recording and all((age == 0).all() for age in cbp.ages().values())


def test_interventions_on_the_same_layers_record_independently():
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    first = ContinualBackprop.from_sequential(net, optimizer)
    second = ContinualBackprop.from_sequential(net, optimizer)
    x = torch.randn(5, 6)
    net(x)
    assert all(torch.equal(a, b) for a, b in zip(first.take_features(), second.take_features()))
    first.record_features(False)
    net(x)
    assert first.take_features() == [None, None] and all(h.shape == (5, 20) for h in second.take_features())
    second.record_features(False)
    assert not any("forward" in net[i].__dict__ for i in (1, 3))  # both off: the class's own forward again
    first.record_features(True)
    net(x)
    assert second.take_features() == [None, None] and all(h is not None for h in first.take_features())


def test_a_new_decay_rate_applies_from_the_next_step():
    net, optimizer, cbp = trained_bundle()
    cbp.decay_rate, cbp.replacement_rate = 0.5, 0.0
    before = cbp.states["l0"].mean_activation.clone()
    x = torch.randn(32, 6)  # the batch size of the steps before: the factors are not recomputed for a new one
    with torch.no_grad():
        mean = net[1](net[0](x)).mean(0)
    net(x).sum().backward()
    optimizer.step()
    torch.testing.assert_close(cbp.states["l0"].mean_activation, 0.5 * before + 0.5 * mean)


def test_converting_cbp_to_another_dtype_keeps_its_accumulator_exact():
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.0131, maturity_threshold=1)
    for step in range(7):
        train_step(net, optimizer, seed=step)
    exact = {key: value for key, value in cbp.state_dict().items() if key.endswith("accumulator")}
    assert all(value.half().double() != value for value in exact.values())  # half precision would round them
    cbp.half()
    converted = cbp.state_dict()
    assert cbp.states["l0"].utility.dtype == torch.float16
    assert all(converted[key].dtype == torch.float64 and torch.equal(converted[key], value) for key, value in exact.items())


def test_a_network_converted_to_another_dtype_than_its_cbp_keeps_replacing_units():
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.2, maturity_threshold=0)
    net.double()
    for step in range(5):
        train_step(net, optimizer, x=torch.randn(32, 6, dtype=torch.float64))
    assert all(count > 0 for count in cbp.replacements().values())
    assert all(p.dtype == torch.float64 and p.isfinite().all() for p in net.parameters())


def trained_bundle(steps=3):
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.05, maturity_threshold=1)
    for step in range(steps):
        train_step(net, optimizer, seed=step)
    return net, optimizer, cbp


@pytest.mark.parametrize(
    "between",
    [lambda cbp: cbp.to("cpu"), lambda cbp: cbp.load_state_dict(cbp.state_dict())], ids=["to", "load_state_dict"]
)
def test_a_forward_counts_when_the_state_is_moved_or_loaded_before_the_step(between):
    x = torch.randn(8, 6)
    states = []
    for intervene in (False, True):
        net, optimizer, cbp = trained_bundle()
        net(x).sum().backward()
        if intervene:
            between(cbp)
        optimizer.step()
        states.append(cbp.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0] if torch.is_tensor(states[0][k]))


def test_a_pickled_cbp_after_training_updates_the_state_it_saves():
    net, optimizer, cbp = trained_bundle()
    net(torch.randn(8, 6))  # recorded, stepped after the copy
    copies = [duplicate(nn.ModuleDict({"net": net, "cbp": cbp})) for duplicate in (copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m)))]
    for bundle in copies:
        bundle["cbp"].attach(torch.optim.SGD(bundle["net"].parameters(), lr=1e-2))
        torch.manual_seed(3)
        bundle["cbp"].optimizer.step()
        for step in range(3, 8):
            train_step(bundle["net"], bundle["cbp"].optimizer, seed=step)
    deep, pickled = (bundle.state_dict() for bundle in copies)
    assert not torch.equal(deep["cbp.states.l0.utility"], cbp.states["l0"].utility)
    assert all(torch.equal(deep[k], pickled[k]) for k in deep if torch.is_tensor(deep[k]))


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda module: pickle.loads(pickle.dumps(module))])
def test_a_copy_of_a_recording_network_feeds_its_own_cbp(duplicate):
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    original = nn.ModuleDict({"net": net, "cbp": ContinualBackprop.from_sequential(net, optimizer)})
    duplicate = duplicate(original)
    duplicate["cbp"].attach(torch.optim.SGD(duplicate["net"].parameters(), lr=1e-2))
    train_step(duplicate["net"], duplicate["cbp"].optimizer)
    assert all((age == 1).all() for age in duplicate["cbp"].ages().values())
    assert all((age == 0).all() for age in original["cbp"].ages().values())
    assert original["cbp"].take_features() == [None, None]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(replacement_rate=1.5), "replacement_rate=1.5"),
        (dict(maturity_threshold=-1), "maturity_threshold=-1"),
        (dict(maturity_threshold=2.5), "maturity_threshold=2.5"),
        (dict(decay_rate=1.0), "decay_rate=1.0"),
        (dict(init="he"), "init='he'"),
        (dict(fractional="round"), "fractional='round'"),
    ],
)
def test_bad_settings_raise_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as error:
        ContinualBackprop.from_sequential(make_net(), **kwargs)
    assert "\n" not in str(error.value)


def test_malformed_networks_are_rejected():
    with pytest.raises(ValueError, match="expected nn.Sequential"):
        ContinualBackprop.from_sequential(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    with pytest.raises(ValueError, match="expected nn.Sequential"):
        ContinualBackprop.from_sequential(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1)))
    with pytest.raises(ValueError, match="does not read"):
        Site(nn.Linear(3, 4), nn.ReLU(), (nn.Linear(5, 1),))
    act = nn.ReLU()
    with pytest.raises(ValueError, match="shared"):
        ContinualBackprop.from_sequential(nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 1)))


def test_init_bounds():
    layer = nn.Linear(48, 12)
    assert uniform_bound("lecun", layer) == pytest.approx(math.sqrt(3 / 48))
    assert uniform_bound("kaiming", layer, nn.ReLU()) == pytest.approx(math.sqrt(2) * math.sqrt(3 / 48))
    assert uniform_bound("xavier", layer, nn.Tanh()) == pytest.approx(5 / 3 * math.sqrt(6 / 60))
    assert uniform_bound("default", layer) == pytest.approx(1 / math.sqrt(48))


def test_settings_travel_in_the_state_dict():
    source = ContinualBackprop.from_sequential(make_net(), replacement_rate=0.3, maturity_threshold=7, init="xavier")
    target = ContinualBackprop.from_sequential(make_net())
    target.load_state_dict(source.state_dict())
    assert target.settings == source.settings
    assert target._bounds == source._bounds


def test_state_dict_without_cbp_entries_starts_cbp_fresh():
    net = make_net()
    model = nn.ModuleDict({"net": net, "cbp": ContinualBackprop.from_sequential(net, maturity_threshold=5)})
    plain = {k: v for k, v in model.state_dict().items() if k.startswith("net.")}
    model.load_state_dict(plain)  # strict: the CBP entries are filled in, not reported missing
    assert model["cbp"].replacements() == {"l0": 0, "l1": 0}
    assert model["cbp"].settings["maturity_threshold"] == 5


def stacked_net(members=4, hidden=20, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(StackedLinear(members, 6, hidden), nn.ReLU(), StackedLinear(members, hidden, 1))


def stacked_step(net, optimizer, members=4):
    x = torch.randn(members, 16, 6)
    loss = (net(x) - x[..., :1]).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_stacked_members_replace_their_own_lowest_utility_units():
    net = stacked_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.0, maturity_threshold=3)
    with torch.no_grad():
        for member in range(4):
            net[2].weight[member, :, member + 5] = 0.0  # member m's useless unit is m + 5
    for _ in range(10):
        stacked_step(net, optimizer)
    cbp.replacement_rate = 0.05
    stacked_step(net, optimizer)
    ages = cbp.ages()["l0"]
    assert ages.shape == (4, 20)
    assert [np.flatnonzero(ages[m] == 0).tolist() for m in range(4)] == [[m + 5] for m in range(4)]
    assert cbp.state_dict()["states.l0.replaced"].tolist() == [1, 1, 1, 1]
    assert torch.all(net[2].weight[0, :, 5] == 0) and torch.all(net[2].weight[1, :, 5] != 0)


def test_stacked_bernoulli_counts_differ_per_member_and_follow_the_rate():
    net = stacked_net(members=6, hidden=30)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.01, maturity_threshold=0, fractional="bernoulli")
    for _ in range(300):
        ages_before = cbp.ages()["l0"].copy()
        replaced_before = cbp.states["l0"].host.replaced.copy()
        stacked_step(net, optimizer, members=6)
        newborn = (cbp.ages()["l0"] == 0).sum(1)
        assert newborn.tolist() == (cbp.states["l0"].host.replaced - replaced_before).tolist()
        assert (ages_before >= 0).all()
    per_member = cbp.states["l0"].host.replaced
    assert len(set(per_member.tolist())) > 1
    assert abs(per_member.mean() - 300 * 0.01 * 30) < 4 * math.sqrt(90)


def test_stacked_state_round_trips():
    net = stacked_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    cbp = ContinualBackprop.from_sequential(net, optimizer, replacement_rate=0.05, maturity_threshold=2)
    for _ in range(30):
        stacked_step(net, optimizer)
    twin = ContinualBackprop.from_sequential(stacked_net())
    twin.load_state_dict(cbp.state_dict())
    assert twin.replacements() == cbp.replacements() and np.array_equal(twin.ages()["l0"], cbp.ages()["l0"])
    assert torch.equal(twin.state_dict()["states.l0.accumulator"], cbp.state_dict()["states.l0.accumulator"])
