"""Loss of plasticity on the paper's slowly-changing regression problem: BP vs CBP (and the other methods), per seed.

The problem (Dohare et al., Nature 2024, Fig. 1; reference code ``lop/slowly_changing_regression``): 20 input bits,
of which 15 hold their values for ``--change-every`` examples and then take new ones (``redraw``: all 15 drawn
afresh, as the reference does; ``flip_one``: one of them flips) and 5 are drawn afresh for every example. The target
is a fixed random teacher of 100 linear threshold units with ±1 weights (β = 0.7). The learner is a 20-5-1 ReLU
network trained online (one example per step) by SGD with step size 0.01; its error on each example is measured
before it learns from it. The table gives the mean squared error per ``--bin`` examples, mean ± std over seeds.

Every (method, seed) pair is one member of a single batched computation: the members' weights are slices of shared
``[members, ...]`` tensors, and each method's slice is also a `cbp_rl.StackedLinear` network that its intervention
(CBP, ...) acts on, attached to one ``torch.optim.SGD`` holding every member. Each seed has its own teacher and input
stream (all methods of a seed see the same stream and start from the same weights). For speed the forward pass and
the gradient of the squared error are written out for this 1-hidden-layer network (a test checks them against
autograd); the update itself is ``optimizer.step()``, so the interventions' optimizer hooks run as in any training.

Usage: python benchmarks/plasticity_probe.py [--seeds 5] [--examples 1000000] [--bin 100000] [--methods bp,cbp]
           [--variant redraw|flip_one] [--change-every 10000] [--out results/plasticity_probe] [--threads 1]
           [--step-size 0.01] [--set cbp.maturity_threshold=10 ...]
Quick check (about 20 s): --seeds 2 --examples 60000 --bin 10000 --change-every 5000 --out /tmp/probe
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import cbp_rl
from cbp_rl import StackedLinear, dead_fraction, sequential_sites, uniform_bound

INPUTS, SLOW_BITS, TEACHER_UNITS, BETA, HIDDEN = 20, 15, 100, 0.7, 5
STEP_SIZE = 0.01
BLOCK = 10_000  # examples generated (for all seeds at once) per block
VARIANTS = ("redraw", "flip_one")
REFERENCE = (
    "shibhansh/loss-of-plasticity, lop/slowly_changing_regression: cfg/prob.json (problem), cfg/sgd/bp/relu.json "
    "(learner, step size), cfg/sgd/cbp/relu.json (CBP), cfg/sgd/bp/relu_snp.json (shrink & perturb), expr.py and "
    "lop/nets/ffnn.py (init), slowly_changing_regression.py and lop/nets/fix_ltu_net.py (data, teacher)"
)


@dataclass
class Method:
    """A plasticity method as the benchmark runs it.

    :param intervention: name of the `cbp_rl` class (None: plain backprop).
    :param settings: its constructor keyword arguments for this problem.
    :param source: where the settings come from.
    :param probe_every: feed the intervention, every this many steps, the activations of the last ``probe_window``
        inputs (instead of those of the single training example): ReDo's dormancy test needs a batch.
    """

    intervention: str | None
    settings: dict[str, float | int | str | bool] = field(default_factory=dict)
    source: str = ""
    probe_window: int = 0


METHODS: dict[str, Method] = {
    "bp": Method(None, source="cfg/sgd/bp/relu.json: SGD, step size 0.01"),
    "cbp": Method(
        "ContinualBackprop",
        # replacement rate: the reference sweeps 1e-6..1e-2 (cfg/sgd/cbp/relu.json); 1e-4 is the paper's default.
        # maturity threshold: the cfg says 100 (its key is not read by expr.py, which then uses mt=10).
        # init: expr.py's default (kaiming); fractional: GnT(accumulate=False) replaces one unit with probability n.
        dict(replacement_rate=1e-4, maturity_threshold=100, decay_rate=0.99, init="kaiming", fractional="bernoulli"),
        source="cfg/sgd/cbp/relu.json, expr.py; contribution utility (the cfg's util_type is adaptable_contribution)",
    ),
    "shrink_perturb": Method(
        "ShrinkPerturb",
        # SGD weight decay 1e-2 at step size 0.01 shrinks by 1 - 1e-4 per step; noise: one value of the cfg's sweep.
        dict(shrink=1.0 - 1e-4, noise_scale=1e-3),
        source="cfg/sgd/bp/relu_snp.json: weight_decay 1e-2, perturb_scale swept 1e-6..1e-1 (1e-3 picked here)",
    ),
    "redo": Method(
        "ReDo",
        dict(reset_period=1000, tau=0.1, init="kaiming"),
        source="not in the reference for this problem; Sokar et al. 2023 (tau 0.1), dormancy on the last 1000 inputs",
        probe_window=1000,
    ),
    "l2_init": Method(
        "L2Init",
        # the same pull per step (step size x strength = 1e-4) as shrink & perturb's shrink, toward the initial weights
        dict(strength=1e-2),
        source="not in the reference for this problem; strength chosen to match shrink & perturb's 1e-4 pull per step",
    ),
}


def derived_seed(seed: int, stream: int) -> int:
    """An independent generator seed for one stream (0: data, 1: learner init) of one run seed."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


class SlowlyChangingRegression:
    """Every seed's input stream and teacher, generated block by block for all seeds at once.

    Teacher (per seed): ±1 input weights and biases of 100 linear threshold units, unit ``i`` firing (1, else 0)
    when its pre-activation exceeds ``β·(m+1) − S_i`` with ``S_i = (m − Σ_j w_ij + b_i)/2`` (the reference's
    count of its negative weights, m = 20 inputs), and ±1 output weights and bias.

    :param seeds: one independent stream per seed.
    :param change_every: examples between two changes of the slow bits.
    :param variant: ``redraw`` (all slow bits drawn afresh at a change) or ``flip_one`` (one of them flips).
    :param examples: length of the stream (sets the number of slow-bit segments).
    """

    def __init__(self, seeds: list[int], change_every: int, variant: str, examples: int) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is invalid: expected one of {', '.join(VARIANTS)}")
        self.change_every, self.variant, self.examples = change_every, variant, examples
        self.generators = [torch.Generator().manual_seed(derived_seed(s, 0)) for s in seeds]
        segments = math.ceil(examples / change_every)
        weights, biases, out_weights, out_biases, slow = [], [], [], [], []
        for g in self.generators:
            signs = torch.randint(0, 2, (TEACHER_UNITS * (INPUTS + 2) + 1,), generator=g).float() * 2 - 1
            weights.append(signs[: TEACHER_UNITS * INPUTS].view(TEACHER_UNITS, INPUTS))
            biases.append(signs[TEACHER_UNITS * INPUTS : TEACHER_UNITS * (INPUTS + 1)])
            out_weights.append(signs[TEACHER_UNITS * (INPUTS + 1) : -1])
            out_biases.append(signs[-1:])
            bits = torch.randint(0, 2, (segments, SLOW_BITS), generator=g).float()
            if variant == "flip_one" and segments > 1:
                flips = nn.functional.one_hot(torch.randint(0, SLOW_BITS, (segments - 1,), generator=g), SLOW_BITS)
                bits[1:] = (bits[0] + flips.cumsum(0)) % 2
            slow.append(bits)
        self.weight, self.bias = torch.stack(weights), torch.stack(biases)  # [S, 100, 20], [S, 100]
        self.out_weight = torch.stack(out_weights).unsqueeze(-1)  # [S, 100, 1]
        self.out_bias = torch.stack(out_biases)  # [S, 1]
        negatives = (INPUTS - self.weight.sum(-1) + self.bias) / 2
        self.threshold = BETA * (INPUTS + 1) - negatives  # [S, 100]
        self.slow_bits = torch.stack(slow)  # [S, segments, 15]
        self.position = 0

    def next_block(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``length`` examples of every seed: inputs ``[seeds, length, 20]`` and targets ``[seeds, length, 1]``.

        Blocks must be asked for in order (the fast bits come from each seed's generator in sequence)."""
        start = self.position
        if start + length > self.examples:
            raise ValueError(f"the stream holds {self.examples} examples; asked for {start}..{start + length}")
        segment = torch.arange(start, start + length) // self.change_every
        fast = torch.stack([torch.randint(0, 2, (length, INPUTS - SLOW_BITS), generator=g) for g in self.generators])
        x = torch.cat([self.slow_bits[:, segment], fast.float()], dim=2)
        self.position += length
        return x, self.targets(x)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's output for inputs ``[seeds, n, 20]``."""
        pre = torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.mT)
        features = (pre > self.threshold.unsqueeze(1)).float()
        return torch.baddbmm(self.out_bias.unsqueeze(1), features, self.out_weight)


class StackedLearners:
    """One 20-5-1 ReLU learner per (method, seed), as members ``k·seeds + i`` of shared weight tensors.

    Each method's members are also an ``nn.Sequential(StackedLinear, ReLU, StackedLinear)`` whose parameters alias
    its slice of the shared tensors (and whose ``.grad`` alias the shared gradient buffers), so the method's
    `cbp_rl` intervention, attached to the one SGD optimizer, acts on exactly its own members.
    """

    def __init__(
        self, methods: list[str], seeds: list[int], settings: dict[str, dict], step_size: float = STEP_SIZE
    ) -> None:
        self.methods, self.seeds = methods, seeds
        k, s = len(methods), len(seeds)
        self.members = k * s
        template = nn.Sequential(StackedLinear(1, INPUTS, HIDDEN), nn.ReLU(), StackedLinear(1, HIDDEN, 1))
        in_bound = uniform_bound("kaiming", template[0], template[1])  # reference FFNN: kaiming_uniform_, relu
        out_bound = uniform_bound("kaiming", template[2])  # kaiming_uniform_, linear; biases 0
        init = [torch.Generator().manual_seed(derived_seed(seed, 1)) for seed in seeds]
        w1 = torch.stack([torch.empty(HIDDEN, INPUTS).uniform_(-in_bound, in_bound, generator=g) for g in init])
        w2 = torch.stack([torch.empty(1, HIDDEN).uniform_(-out_bound, out_bound, generator=g) for g in init])
        self.w1, self.w2 = w1.repeat(k, 1, 1), w2.repeat(k, 1, 1)  # every method of a seed starts alike
        self.b1, self.b2 = torch.zeros(self.members, HIDDEN), torch.zeros(self.members, 1)
        shared = (self.w1, self.b1, self.w2, self.b2)
        self.grads = [torch.zeros_like(t) for t in shared]
        self.nets: dict[str, nn.Sequential] = {}
        self.slices: dict[str, slice] = {}
        for index, method in enumerate(methods):
            members = slice(index * s, (index + 1) * s)
            net = nn.Sequential(StackedLinear(s, INPUTS, HIDDEN), nn.ReLU(), StackedLinear(s, HIDDEN, 1))
            for (layer, name), tensor, grad in zip(
                [(net[0], "weight"), (net[0], "bias"), (net[2], "weight"), (net[2], "bias")], shared, self.grads
            ):
                param = nn.Parameter(tensor[members], requires_grad=False)  # a view: updates land in `tensor`
                param.grad = grad[members]
                setattr(layer, name, param)
            self.nets[method], self.slices[method] = net, members
        self._views = {m: [p.data_ptr() for p in net.parameters()] for m, net in self.nets.items()}
        params = [p for net in self.nets.values() for p in net.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=step_size, foreach=True)
        self.interventions: dict[str, cbp_rl.SiteIntervention] = {}
        self._record_every_step: list[tuple[slice, nn.Module]] = []
        self._probes: list[tuple[slice, nn.Module, int, int]] = []
        for method in methods:
            spec = METHODS[method]
            if spec.intervention is None:
                continue
            cls = getattr(cbp_rl, spec.intervention, None)
            if cls is None:
                raise RuntimeError(f"method {method!r} is not available: this cbp_rl has no {spec.intervention}")
            intervention = cls(sequential_sites(self.nets[method]), self.optimizer, **settings[method])
            self.interventions[method] = intervention
            activation = self.nets[method][1]
            if spec.probe_window:
                period = settings[method]["reset_period"]
                self._probes.append((self.slices[method], activation, spec.probe_window, period))
            elif intervention.recording:
                self._record_every_step.append((self.slices[method], activation))
        self._b1, self._b2 = self.b1.unsqueeze(1), self.b2.unsqueeze(1)
        self._gb1, self._gb2 = self.grads[1].unsqueeze(1), self.grads[3].unsqueeze(1)
        self.steps = 0

    def step(
        self, x: torch.Tensor, y: torch.Tensor, error: torch.Tensor, history: torch.Tensor | None = None, index: int = 0
    ) -> None:
        """One online SGD step of every member on its example.

        :param x: ``[members, 1, 20]`` inputs.
        :param y: ``[members, 1, 1]`` targets.
        :param error: ``[members, 1, 1]`` buffer; receives ``prediction - y`` from before the update.
        :param history: ``[n, members, 20]`` inputs whose row ``index`` is ``x``; the methods that probe a batch
            get the rows up to it (at most their window).
        """
        h = torch.baddbmm(self._b1, x, self.w1.mT).relu_()
        for members, activation in self._record_every_step:
            activation(h[members])  # grad mode is on: the intervention's forward hook records these features
        torch.baddbmm(self._b2, h, self.w2.mT, out=error).sub_(y)
        self.steps += 1
        for members, activation, window, period in self._probes:
            if self.steps % period == 0 and history is not None:
                inputs = history[max(0, index + 1 - window) : index + 1, members].transpose(0, 1)
                activation(torch.baddbmm(self.b1[members].unsqueeze(1), inputs, self.w1[members].mT))
        grad_out = error * 2.0  # d(prediction - y)² / d prediction
        torch.bmm(grad_out, h, out=self.grads[2])
        self._gb2.copy_(grad_out)
        grad_h = torch.bmm(grad_out, self.w2).mul_(h > 0)
        torch.bmm(grad_h.mT, x, out=self.grads[0])
        self._gb1.copy_(grad_h)
        self.optimizer.step()

    def check_aliasing(self) -> None:
        """Assert that every method's parameters still are views of the shared tensors (nothing replaced them)."""
        for method, net in self.nets.items():
            assert [p.data_ptr() for p in net.parameters()] == self._views[method], f"{method}'s weights were replaced"
            assert all(p.grad is not None for p in net.parameters()), f"{method}'s gradients were dropped"

    @torch.no_grad()
    def dead_fractions(self, x: torch.Tensor) -> torch.Tensor:
        """Per member, the fraction of hidden units active on at most 1% of the inputs ``[members, n, 20]``."""
        h = torch.baddbmm(self._b1, x, self.w1.mT).relu_()
        return torch.stack([dead_fraction(member) for member in h])


def resolve_settings(methods: list[str], overrides: list[str]) -> dict[str, dict]:
    """Each method's settings, with ``METHOD.KEY=VALUE`` overrides applied (values parsed as Python literals)."""
    settings = {m: dict(METHODS[m].settings) for m in methods}
    for item in overrides:
        target, _, value = item.partition("=")
        method, _, key = target.partition(".")
        if method not in settings or not key or not value:
            raise ValueError(f"--set {item!r} is invalid: expected METHOD.KEY=VALUE with METHOD one of {methods}")
        try:
            settings[method][key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[method][key] = value
    return settings


def run(
    seeds: list[int],
    examples: int,
    bin_size: int,
    methods: list[str],
    variant: str = "redraw",
    change_every: int = 10_000,
    step_size: float = STEP_SIZE,
    settings: dict[str, dict] | None = None,
    progress: bool = False,
) -> dict:
    """Train every (method, seed) learner on its stream; returns the per-bin MSE ``[methods][seeds][bins]`` and more."""
    settings = resolve_settings(methods, []) if settings is None else settings
    torch.manual_seed(seeds[0])  # the interventions' own randomness (CBP's Bernoulli draws, new weights, noise)
    stream = SlowlyChangingRegression(seeds, change_every, variant, examples)
    learners = StackedLearners(methods, seeds, settings, step_size)
    k, s, members = len(methods), len(seeds), learners.members
    bins = math.ceil(examples / bin_size)
    squared_sum, counts = torch.zeros(members, bins, dtype=torch.float64), torch.zeros(bins, dtype=torch.float64)
    block = min(BLOCK, examples)
    errors = torch.empty(block, members, 1, 1)
    start_time, done, next_report = time.perf_counter(), 0, bin_size
    while done < examples:
        length = min(block, examples - done)
        x, y = stream.next_block(length)
        inputs = x.transpose(0, 1).repeat(1, k, 1).unsqueeze(2).contiguous()  # [length, members, 1, 20]
        targets = y.transpose(0, 1).repeat(1, k, 1).unsqueeze(2).contiguous()  # [length, members, 1, 1]
        history = inputs.squeeze(2)
        for i in range(length):
            learners.step(inputs[i], targets[i], errors[i], history, i)
        bin_index = torch.arange(done, done + length) // bin_size
        squared_sum.index_add_(1, bin_index, errors[:length].view(length, members).double().pow(2).T)
        counts.index_add_(0, bin_index, torch.ones(length, dtype=torch.float64))
        done += length
        if progress and done >= next_report:
            elapsed = time.perf_counter() - start_time
            print(f"  {done:>9,d}/{examples:,d} examples {elapsed:7.1f} s ({done / elapsed:,.0f} steps/s)", flush=True)
            next_report += bin_size
    wall = time.perf_counter() - start_time
    learners.check_aliasing()
    mse = (squared_sum / counts).view(k, s, bins)
    last_inputs = x.repeat(k, 1, 1)  # the last block's inputs, every method's members
    dead = learners.dead_fractions(last_inputs).view(k, s)
    replaced = {
        m: int(sum(i.replacements().values())) for m, i in learners.interventions.items() if hasattr(i, "replacements")
    }
    return {
        "methods": methods,
        "seeds": seeds,
        "bin_edges": [min(b * bin_size, examples) for b in range(bins + 1)],
        "mse": {m: mse[j].tolist() for j, m in enumerate(methods)},
        "dead_fraction_end": {m: dead[j].tolist() for j, m in enumerate(methods)},
        "replacements": replaced,
        "wall_s": wall,
        "steps_per_s": examples / wall,
    }


def summarize(results: dict, margin: float) -> dict:
    """Per method: mean and std over seeds per bin, the best earlier bin, the last bin and the last's rise over it."""
    summary = {}
    for method, per_seed in results["mse"].items():
        values = np.asarray(per_seed)  # [seeds, bins]
        mean, std = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1])
        entry = {"mean": mean.tolist(), "std": std.tolist()}
        if values.shape[1] >= 2:
            best = float(mean[:-1].min())
            entry |= {
                "best_earlier": best,
                "best_earlier_bin": int(mean[:-1].argmin()),
                "last": float(mean[-1]),
                "rise": float(mean[-1] / best - 1.0),
                "seeds_risen": int((values[:, -1] > values[:, :-1].min(1) * (1 + margin)).sum()),
            }
        summary[method] = entry
    return summary


def verdict(summary: dict, margin: float, seeds: int) -> str:
    """Whether the run shows the paper's Fig. 1 pattern, in words computed from the numbers."""
    if "bp" not in summary or "cbp" not in summary or "rise" not in summary["bp"]:
        return "verdict: n/a (needs bp and cbp and at least two bins)"
    bp, cbp = summary["bp"], summary["cbp"]
    lost = bp["rise"] >= margin
    kept = cbp["rise"] < margin
    better = cbp["last"] < bp["last"]
    facts = (
        f"BP's last-bin MSE {bp['last']:.4f} is {100 * bp['rise']:+.1f}% vs its best earlier bin "
        f"{bp['best_earlier']:.4f} "
        f"({bp['seeds_risen']}/{seeds} seeds rose > {100 * margin:.0f}%); CBP's {cbp['last']:.4f} is "
        f"{100 * cbp['rise']:+.1f}% vs its best {cbp['best_earlier']:.4f} ({cbp['seeds_risen']}/{seeds} seeds rose)"
    )
    if lost and kept and better:
        return f"verdict: SHOWN (BP loses plasticity, CBP keeps it): {facts}"
    reasons = [
        text
        for bad, text in [
            (not lost, f"BP did not rise by {100 * margin:.0f}%"),
            (not kept, f"CBP rose by {100 * margin:.0f}% or more"),
            (not better, "CBP's last bin is not below BP's"),
        ]
        if bad
    ]
    return f"verdict: NOT SHOWN ({'; '.join(reasons)}): {facts}"


def format_table(results: dict, summary: dict) -> str:
    methods, edges = results["methods"], results["bin_edges"]
    header = "| examples | " + " | ".join(methods) + " |"
    lines = [header, "|" + "---|" * (len(methods) + 1)]
    for b in range(len(edges) - 1):
        cells = [f"{summary[m]['mean'][b]:.4f} ± {summary[m]['std'][b]:.4f}" for m in methods]
        lines.append(f"| {edges[b]:,}–{edges[b + 1]:,} | " + " | ".join(cells) + " |")
    if all("rise" in summary[m] for m in methods):
        rises = [f"{100 * summary[m]['rise']:+.1f}%" for m in methods]
        lines.append("| last vs best earlier bin | " + " | ".join(rises) + " |")
    dead = [f"{100 * np.mean(results['dead_fraction_end'][m]):.0f}%" for m in methods]
    lines.append("| dead units at the end | " + " | ".join(dead) + " |")
    replaced = [str(results["replacements"].get(m, "–")) for m in methods]
    lines.append("| units replaced (all seeds) | " + " | ".join(replaced) + " |")
    return "\n".join(lines)


def plot(results: dict, summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(results["bin_edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method in results["methods"]:
        mean, std = np.asarray(summary[method]["mean"]), np.asarray(summary[method]["std"])
        ax.plot(centers, mean, marker="o", markersize=3, label=method)
        ax.fill_between(centers, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("examples")
    ax.set_ylabel(f"mean squared error per {edges[1] - edges[0]:,} examples")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (independent teachers, streams, inits)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed+1, ...")
    parser.add_argument("--examples", type=int, default=1_000_000, help="examples (= online SGD steps) per learner")
    parser.add_argument("--bin", type=int, default=100_000, help="examples per row of the MSE table")
    parser.add_argument("--methods", default="bp,cbp", help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--variant", choices=VARIANTS, default="redraw", help="how the 15 slow bits change")
    parser.add_argument("--change-every", type=int, default=10_000, help="examples between changes of the slow bits")
    parser.add_argument("--step-size", type=float, default=STEP_SIZE, help="SGD step size of every learner")
    parser.add_argument(
        "--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
        help="override a method's setting (repeatable), e.g. cbp.maturity_threshold=10"
    )
    parser.add_argument("--margin", type=float, default=0.10, help="rise of the last bin that counts as a loss (0.1: 10%%)")
    parser.add_argument(
        "--out", type=Path, default=Path("results/plasticity_probe"), help="folder for table.md, results.json, mse.png"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the tensors are tiny)")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods or len(set(args.methods)) != len(args.methods):
        parser.error(f"--methods {','.join(args.methods)} is invalid: expected distinct names from {', '.join(METHODS)}")
    counts = {"--seeds": args.seeds, "--examples": args.examples, "--bin": args.bin, "--change-every": args.change_every}
    for name, value in counts.items():
        if value < 1:
            parser.error(f"{name} {value} is invalid: expected a positive integer")
    missing = [m for m in args.methods if METHODS[m].intervention and not hasattr(cbp_rl, METHODS[m].intervention)]
    if missing:
        classes = ", ".join(f"cbp_rl.{METHODS[m].intervention}" for m in missing)
        parser.error(f"method(s) {', '.join(missing)} not available: this cbp_rl has no {classes}")
    try:
        args.settings = resolve_settings(args.methods, args.set)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}")
    print(
        f"slowly-changing regression ({args.variant}, slow bits change every {args.change_every:,}), 20-5-1 ReLU, "
        f"SGD {args.step_size}; {len(seeds)} seeds x {args.examples:,} examples x {{{', '.join(args.methods)}}}"
    )
    for method in args.methods:
        print(f"  {method}: {args.settings[method] or 'plain SGD'}")
    results = run(
        seeds, args.examples, args.bin, args.methods, args.variant, args.change_every, args.step_size, args.settings,
        progress=True,
    )
    summary = summarize(results, args.margin)
    table = format_table(results, summary)
    conclusion = verdict(summary, args.margin, len(seeds))
    timing = (
        f"wall time: {results['wall_s']:.1f} s for {len(args.methods) * len(seeds)} learners x {args.examples:,} "
        f"examples "
        f"({results['steps_per_s']:,.0f} batched steps/s)"
    )
    print(f"\nMSE per {args.bin:,} examples, mean ± std over {len(seeds)} seeds\n{table}\n{timing}\n{conclusion}")
    args.out.mkdir(parents=True, exist_ok=True)
    config = {
        "seeds": seeds, "examples": args.examples, "bin": args.bin, "variant": args.variant,
        "change_every": args.change_every, "step_size": args.step_size, "margin": args.margin, "threads": args.threads,
        "settings": args.settings, "sources": {m: METHODS[m].source for m in args.methods}, "reference": REFERENCE,
        "problem": {
            "inputs": INPUTS, "slow_bits": SLOW_BITS, "teacher_units": TEACHER_UNITS, "beta": BETA, "hidden": HIDDEN
        },
        "command": " ".join(["python benchmarks/plasticity_probe.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
    }
    report = {"config": config, **results, "summary": summary, "verdict": conclusion}
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    (args.out / "table.md").write_text(
        f"# Slowly-changing regression: MSE per {args.bin:,} examples (mean ± std over {len(seeds)} seeds)\n\n"
        f"`{config['command']}`\n\n{table}\n\n{timing}\n\n{conclusion}\n"
    )
    title = f"slowly-changing regression ({args.variant}), {len(seeds)} seeds, band: ± std"
    plot(results, summary, args.out / "mse.png", title)
    print(f"wrote {args.out / 'table.md'}, {args.out / 'results.json'}, {args.out / 'mse.png'}")
    return report


if __name__ == "__main__":
    main()
