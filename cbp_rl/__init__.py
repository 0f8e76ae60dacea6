"""cbp_rl: continual backpropagation and unit-health metrics for any torch MLP (imports torch and numpy only)."""

from .cbp import FRACTIONAL_MODES, ContinualBackprop, Site, sequential_sites
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
from .init import INIT_SCHEMES, activation_gain, init_linear_, uniform_bound

__version__ = "0.1.0"

__all__ = [
    "ContinualBackprop",
    "Site",
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
