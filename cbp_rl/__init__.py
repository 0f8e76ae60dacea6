"""cbp_rl: continual backpropagation and unit-health metrics for any torch MLP (imports torch and numpy only)."""

from .base import SiteIntervention
from .cbp import FRACTIONAL_MODES, ContinualBackprop
from .sites import Site, StackedLinear, reinitialize_units, sequential_sites
from .health import (
    dead_fraction,
    dormant_fraction,
    effective_rank,
    feature_norm,
    probe,
    singular_values,
    site_health,
    stable_rank,
    weight_magnitude,
)
from .interventions import INTERVENTIONS, L2Init, ReDo, ShrinkPerturb
from .init import INIT_SCHEMES, activation_gain, init_linear_, uniform_bound

__version__ = "0.1.0"

PLASTICITY_METHODS: dict[str, type[SiteIntervention]] = {"cbp": ContinualBackprop, **INTERVENTIONS}

__all__ = [
    "ContinualBackprop",
    "ShrinkPerturb",
    "ReDo",
    "L2Init",
    "PLASTICITY_METHODS",
    "Site",
    "SiteIntervention",
    "StackedLinear",
    "reinitialize_units",
    "sequential_sites",
    "FRACTIONAL_MODES",
    "INIT_SCHEMES",
    "activation_gain",
    "init_linear_",
    "uniform_bound",
    "dead_fraction",
    "dormant_fraction",
    "effective_rank",
    "feature_norm",
    "probe",
    "singular_values",
    "site_health",
    "stable_rank",
    "weight_magnitude",
]
