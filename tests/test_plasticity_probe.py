"""benchmarks/plasticity_probe.py: its data stream, its batched learners and its outputs."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "plasticity_probe.py"
spec = importlib.util.spec_from_file_location("plasticity_probe", SCRIPT)
probe = importlib.util.module_from_spec(spec)
sys.modules["plasticity_probe"] = probe
spec.loader.exec_module(probe)


@pytest.mark.parametrize("variant", ["redraw", "flip_one"])
def test_slow_bits_change_exactly_every_change_every_examples(variant):
    change_every, examples = 50, 400
    stream = probe.SlowlyChangingRegression([0, 1, 2], change_every, variant, examples)
    x1, y1 = stream.next_block(130)
    x2, y2 = stream.next_block(270)  # blocks need not align with the changes
    x, y = torch.cat([x1, x2], 1), torch.cat([y1, y2], 1)
    assert x.shape == (3, examples, probe.INPUTS) and y.shape == (3, examples, 1)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    slow, fast = x[..., : probe.SLOW_BITS], x[..., probe.SLOW_BITS :]
    changed = (slow[:, 1:] != slow[:, :-1]).any(-1)  # [seeds, examples - 1]: slow bits differ from the previous example
    boundaries = torch.arange(1, examples) % change_every == 0
    assert not changed[:, ~boundaries].any(), "slow bits changed inside a segment"
    assert changed[:, boundaries].all(), "slow bits did not change at a segment boundary"
    flipped = (slow[:, 1:] != slow[:, :-1]).sum(-1)[:, boundaries]
    if variant == "flip_one":
        assert (flipped == 1).all()
    else:
        assert flipped.float().mean() > 4  # all 15 redrawn: about 7.5 differ
    assert (fast[:, 1:] != fast[:, :-1]).any(-1).float().mean() > 0.9  # fresh every example
    assert not torch.equal(x[0], x[1]) and not torch.equal(y[0], y[1])  # each seed its own stream
    assert torch.equal(y, stream.targets(x)) and y.std() > 0.5


def test_teacher_is_the_papers_ltu_network():
    stream = probe.SlowlyChangingRegression([3], 10, "redraw", 10)
    w, b, threshold = stream.weight[0], stream.bias[0], stream.threshold[0]
    assert set(w.unique().tolist()) == {-1.0, 1.0} and w.shape == (probe.TEACHER_UNITS, probe.INPUTS)
    negatives = (probe.INPUTS - w.sum(1) + b) / 2
    assert torch.allclose(threshold, probe.BETA * (probe.INPUTS + 1) - negatives)
    x = torch.randint(0, 2, (1, 64, probe.INPUTS)).float()
    features = ((x[0] @ w.T + b) > threshold).float()
    expected = features @ stream.out_weight[0] + stream.out_bias[0]
    assert torch.equal(stream.targets(x)[0], expected)


def test_learner_step_is_online_sgd_on_the_squared_error():
    """The written-out gradient of one step equals autograd's, for every member, and the update is SGD's."""
    learners = probe.StackedLearners(["bp", "cbp"], [0, 1, 2], probe.resolve_settings(["bp", "cbp"], []), step_size=0.05)
    torch.manual_seed(0)
    with torch.no_grad():  # move away from the zero biases so every term of the gradient is exercised
        for t in (learners.b1, learners.b2):
            t.uniform_(-0.5, 0.5)
    before = [t.clone() for t in (learners.w1, learners.b1, learners.w2, learners.b2)]
    x = torch.randint(0, 2, (learners.members, 1, probe.INPUTS)).float()
    y = torch.randn(learners.members, 1, 1)
    error = torch.empty(learners.members, 1, 1)
    learners.step(x, y, error)
    params = [t.clone().requires_grad_(True) for t in before]
    w1, b1, w2, b2 = params
    prediction = torch.baddbmm(b2.unsqueeze(1), torch.relu(torch.baddbmm(b1.unsqueeze(1), x, w1.mT)), w2.mT)
    (prediction - y).pow(2).sum().backward()
    assert torch.allclose(error, (prediction - y).detach())
    after = (learners.w1, learners.b1, learners.w2, learners.b2)
    for p, new in zip(params, after):
        assert p.grad.abs().sum() > 0
        torch.testing.assert_close(new, p.detach() - 0.05 * p.grad)
    learners.check_aliasing()


def test_members_are_independent_and_the_methods_act_on_their_own_members():
    """A seed's curves in a batched run equal those of the seed run alone; without replacements CBP equals BP."""
    no_replacement = {"bp": {}, "cbp": dict(probe.METHODS["cbp"].settings, maturity_threshold=10**6)}
    kwargs = dict(examples=300, bin_size=50, methods=["bp", "cbp"], change_every=40, settings=no_replacement)
    both = probe.run(seeds=[0, 1], **kwargs)
    alone = probe.run(seeds=[1], **kwargs)
    for method in ("bp", "cbp"):
        np.testing.assert_allclose(both["mse"][method][1], alone["mse"][method][0], rtol=1e-5)
        assert both["mse"][method][0] != both["mse"][method][1]  # different seeds, different streams
    np.testing.assert_allclose(both["mse"]["cbp"], both["mse"]["bp"], rtol=1e-5)
    assert both["replacements"]["cbp"] == 0

    replacing = {"bp": {}, "cbp": dict(probe.METHODS["cbp"].settings, replacement_rate=0.02, maturity_threshold=5)}
    changed = probe.run(seeds=[0, 1], **dict(kwargs, settings=replacing))
    assert changed["replacements"]["cbp"] > 0
    np.testing.assert_allclose(changed["mse"]["bp"], both["mse"]["bp"], rtol=1e-5)  # CBP leaves BP's members alone
    assert not np.allclose(changed["mse"]["cbp"], both["mse"]["cbp"])


def test_verdict_is_computed_from_the_numbers():
    rising = {"mse": {"bp": [[1.0, 0.5, 0.8]] * 2, "cbp": [[1.0, 0.5, 0.5]] * 2}}
    assert "verdict: SHOWN" in probe.verdict(probe.summarize(rising, 0.1), 0.1, 2)
    flat = {"mse": {"bp": [[1.0, 0.5, 0.52]] * 2, "cbp": [[1.0, 0.5, 0.5]] * 2}}
    assert "verdict: NOT SHOWN (BP did not rise" in probe.verdict(probe.summarize(flat, 0.1), 0.1, 2)


def test_unknown_method_is_refused_in_the_users_words(capsys):
    with pytest.raises(SystemExit):
        probe.parse_args(["--methods", "bp,adam"])
    assert "--methods bp,adam is invalid" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_writes_finite_results(tmp_path):
    methods = [m for m in probe.METHODS if m == "bp" or hasattr(probe.cbp_rl, probe.METHODS[m].intervention)]
    argv = ["--seeds", "2", "--examples", "60000", "--bin", "10000", "--change-every", "5000",
            "--methods", ",".join(methods), "--out", str(tmp_path)]
    report = probe.main(argv)
    for name in ("table.md", "results.json", "mse.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["methods"] == methods and saved["bin_edges"][-1] == 60000
    for method in methods:
        values = np.asarray(saved["mse"][method])
        assert values.shape == (2, 6) and np.isfinite(values).all() and (values > 0).all()
        assert math.isfinite(saved["summary"][method]["rise"])
    assert saved["replacements"]["cbp"] > 0
    assert saved["verdict"].startswith("verdict: ") and report["verdict"] == saved["verdict"]
    assert (tmp_path / "table.md").read_text().count("\n| ") >= 6
