"""The C kernel of CBP's utility update (cbp_rl/_kernels.c): built where a compiler is, and never handed tensors it
cannot read (those take the torch ops, with the same result)."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch
from torch import nn

from cbp_rl import ContinualBackprop, Site, kernels


def test_the_kernel_is_built_and_enabled_where_a_c_compiler_is():
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) here: CBP uses torch ops")
    assert kernels._kernels is not None, "cbp_rl._kernels was not built: reinstall with `pip install -e .`"
    assert kernels.ENABLED == (os.environ.get("CBP_RL_KERNELS", "1") != "0")


def test_cbp_rl_kernels_0_switches_the_kernel_off():
    code = "import cbp_rl.kernels as k; print(k.ENABLED)"
    env = os.environ | {"CBP_RL_KERNELS": "0"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout == "False\n"


def reference_step(site, h, utility, mean, decay):
    out = torch.cat([c.weight.detach() for c in site.consumers], -2).abs().mean(-2)
    return decay * utility + (1 - decay) * out * h.abs().mean(-2), decay * mean + (1 - decay) * h.mean(-2)


class StridedReLU(nn.ReLU):
    """ReLU whose output is a transposed view (not contiguous) while ``strided`` is set."""

    strided = False

    def forward(self, x):
        return super().forward(x.t().contiguous()).t() if self.strided else super().forward(x)


def kernel_site_units(arguments):
    """The units of each site in the arguments of one `kernels.update` call."""
    units, at = [], 0
    while at < len(arguments):
        units.append(arguments[at + 3])
        at += 8 + 2 * arguments[at + 7]
    return units


@pytest.mark.skipif(not kernels.ENABLED, reason="the C kernel is not built here")
def test_tensors_the_kernel_cannot_read_take_the_torch_ops(monkeypatch):
    """A consumer weight or recorded activations that are not contiguous send their site to the torch ops, step by
    step; the other site stays in the kernel, and both follow the formula."""
    torch.manual_seed(0)
    layers = [nn.Linear(3, 8), nn.Linear(8, 2), nn.Linear(3, 5), nn.Linear(5, 1)]
    sites = {"a": Site(layers[0], nn.Tanh(), (layers[1],)), "b": Site(layers[2], StridedReLU(), (layers[3],))}
    cbp = ContinualBackprop(sites, replacement_rate=0.0, decay_rate=0.8)
    in_kernel = []
    update = kernels.update
    monkeypatch.setattr(kernels, "update", lambda decay, arguments: (in_kernel.append(kernel_site_units(arguments)), update(decay, arguments)))
    expected = {name: (torch.zeros(s.units), torch.zeros(s.units)) for name, s in sites.items()}
    for step, strided in enumerate(["", "weight", "h", ""]):
        with torch.no_grad():
            weight = layers[1].weight.detach().contiguous()
            layers[1].weight.data = weight.t().contiguous().t() if strided == "weight" else weight
        sites["b"].activation.strided = strided == "h"
        for name, site in sites.items():
            h = site.activation(site.producer(torch.randn(6, 3)))
            expected[name] = reference_step(site, h.detach(), *expected[name], 0.8)
        cbp.step()
        assert in_kernel.pop() == {"": [8, 5], "weight": [5], "h": [8]}[strided]
        for name in sites:
            torch.testing.assert_close(cbp.states[name].utility, expected[name][0], msg=f"{name}, step {step}")
            torch.testing.assert_close(cbp.states[name].mean_activation, expected[name][1], msg=f"{name}, step {step}")
