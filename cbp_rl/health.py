"""Unit-health metrics of hidden layers (DESIGN §4): dead and dormant units, effective and stable rank, magnitudes."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from .sites import Site


def _flat(features: torch.Tensor) -> torch.Tensor:
    return features.reshape(-1, features.shape[-1])


def dead_fraction(features: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    """Fraction of units whose activation is > 0 on at most ``threshold`` of the inputs ``[batch, units]``."""
    active = _flat(features).sign().clamp_min_(0).mean(0)  # share of inputs with h > 0; a bool mask is 4x slower on CPU
    return (active <= threshold).float().mean()


def dormant_fraction(features: torch.Tensor, tau: float = 0.0) -> torch.Tensor:
    """ReDo's dormant fraction: units with ``mean|h_i| / mean_j mean|h_j| <= tau`` (all, if every unit is silent)."""
    return _dormant_fraction(_flat(features).abs().mean(0), tau)


def _dormant_fraction(magnitude: torch.Tensor, tau: float) -> torch.Tensor:
    layer_mean = magnitude.mean()
    score = torch.where(layer_mean > 0, magnitude / layer_mean, torch.zeros_like(magnitude))
    return (score <= tau).float().mean()


def singular_values(features: torch.Tensor) -> torch.Tensor:
    """Singular values, largest first, of ``[batch, units]`` features (or a stack ``[sites, batch, units]``).

    Computed from the eigenvalues of the smaller Gram matrix in float64, about as fast as a float32 SVD; values below
    ``sqrt(n·ε)·σ_max`` (float64's ε: about 2e-7·σ_max for n = 256) are within its rounding error and returned as 0.
    In float32 that floor would be 0.0055·σ_max: trained ReLU features, whose mean direction carries a dominant
    singular value, would lose much of their spectrum's tail and with it most of their stable rank.
    """
    return _singular_values_from_gram(_gram(features))


def _gram(features: torch.Tensor) -> torch.Tensor:
    """The smaller Gram matrix of ``features`` in float64; one off-diagonal block is mirrored, a quarter fewer flops."""
    h = features.detach()
    h = (h.cpu() if h.device.type == "mps" else h).double()  # MPS has no float64
    if h.shape[-2] < h.shape[-1]:
        h = h.mT
    half = h.shape[-1] // 2
    first, second = h[..., :half], h[..., half:]
    gram = h.new_empty(*h.shape[:-2], h.shape[-1], h.shape[-1])
    gram[..., :half, :half] = first.mT @ first
    gram[..., half:, half:] = second.mT @ second
    gram[..., half:, :half] = second.mT @ first
    gram[..., :half, half:] = gram[..., half:, :half].mT
    return gram


def _singular_values_from_gram(gram: torch.Tensor) -> torch.Tensor:
    eigenvalues = torch.linalg.eigvalsh(gram).flip(-1)
    floor = gram.shape[-1] * torch.finfo(gram.dtype).eps * eigenvalues[..., :1]
    return torch.where(eigenvalues > floor, eigenvalues, 0.0).sqrt()


def effective_rank(features: torch.Tensor | None = None, *, sigma: torch.Tensor | None = None) -> torch.Tensor:
    """``exp(-Σ p_k log p_k)`` with ``p_k = σ_k / Σσ`` (Roy & Vetterli 2007); 0 for an all-zero matrix."""
    sigma = singular_values(features) if sigma is None else sigma
    total = sigma.sum()
    p = sigma / total.clamp_min(torch.finfo(sigma.dtype).tiny)
    return torch.where(total > 0, torch.special.entr(p).sum().exp(), torch.zeros_like(total))


def stable_rank(
    features: torch.Tensor | None = None, prop: float = 0.99, *, sigma: torch.Tensor | None = None
) -> torch.Tensor:
    """Smallest ``k`` with ``Σ_{i<=k} σ_i >= prop·Σσ`` (the paper's stable rank); 0 for an all-zero matrix."""
    sigma = singular_values(features) if sigma is None else sigma
    total = sigma.sum()
    below = (sigma.cumsum(0) < prop * total * (1 - 1e-12)).sum() + 1
    return torch.where(total > 0, below, torch.zeros_like(below))


def weight_magnitude(layer: nn.Linear | torch.Tensor) -> torch.Tensor:
    """Mean absolute weight of a Linear layer (or of a tensor)."""
    weight = layer.weight if isinstance(layer, nn.Module) else layer
    return weight.detach().abs().mean()


def feature_norm(features: torch.Tensor) -> torch.Tensor:
    """Mean L2 norm of a feature vector."""
    return _flat(features).norm(dim=1).mean()


def site_health(
    features: torch.Tensor, site: Site, sigma: torch.Tensor | None = None, ranks: bool = True
) -> dict[str, torch.Tensor]:
    """Every DESIGN §4 metric of one site's probe features, as 0-dim tensors (no host sync).

    A `StackedLinear` site's members are independent layers: each is measured on its own features (``[members, batch,
    units]``) and the site's metrics are the means over its members.

    :param sigma: the features' singular values (``[members, k]`` for a stacked site), if already computed.
    :param ranks: also the rank metrics (``effective_rank``, ``stable_rank``, ``stable_rank_pct``); their float64 Gram
        matrix and its eigenvalues take about three quarters of a probe's time.
    """
    members = _member_features(features.detach(), site)
    sigmas = [None] * len(members) if sigma is None else sigma.reshape(len(members), -1)
    measured = [_member_health(h, member_sigma, ranks) for h, member_sigma in zip(members, sigmas)]
    if len(measured) == 1:
        metrics = measured[0]
    else:
        metrics = {key: torch.stack([m[key].double() for m in measured]).mean() for key in measured[0]}
    metrics = {"weight_mag": weight_magnitude(site.producer)} | metrics
    if ranks:
        metrics["stable_rank_pct"] = 100.0 * metrics["stable_rank"] / site.units
    return metrics


def _member_features(features: torch.Tensor, site: Site) -> torch.Tensor:
    """A site's features as ``[members, batch, units]`` (members 1 for ``nn.Linear``: every leading dim is batch)."""
    return features.reshape(site.members, -1, features.shape[-1])


def _member_health(features: torch.Tensor, sigma: torch.Tensor | None, ranks: bool) -> dict[str, torch.Tensor]:
    magnitude = features.abs().mean(0)
    metrics = {
        "dead_frac": dead_fraction(features),
        "dormant_frac": _dormant_fraction(magnitude, 0.0),
        "dormant_frac_0.1": _dormant_fraction(magnitude, 0.1),
        "feature_norm": feature_norm(features),
    }
    if ranks:
        sigma = singular_values(features) if sigma is None else sigma
        metrics["effective_rank"] = effective_rank(sigma=sigma)
        metrics["stable_rank"] = stable_rank(sigma=sigma)
    return metrics


def _stacked_singular_values(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Singular values of several sites, one batched eigendecomposition per Gram-matrix shape."""
    grams = {name: _gram(h) for name, h in features.items()}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, gram in grams.items():
        by_shape.setdefault(tuple(gram.shape), []).append(name)
    sigma = {}
    for names in by_shape.values():
        sigma.update(zip(names, _singular_values_from_gram(torch.stack([grams[n] for n in names]))))
    return sigma


@torch.no_grad()
def probe(
    forward: Callable[[], object], sites: Mapping[str, Site], prefix: str = "", ranks: bool = True
) -> dict[str, float]:
    """Run ``forward()`` once without gradients and return every site's metrics as ``{prefix+name/metric: float}``.

    :param forward: a call that pushes the probe batch through the network(s) holding ``sites``.
    :param sites: the layers to measure, by name.
    :param prefix: prepended to each tag, e.g. ``"health/actor/"``.
    :param ranks: also the rank metrics (see `site_health`).
    """
    if not sites:
        return {}
    captured: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def record(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            captured[name] = output

        return record

    handles = [site.activation.register_forward_hook(recorder(name)) for name, site in sites.items()]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    missing = set(sites) - set(captured)
    if missing:
        raise RuntimeError(f"the probe forward did not pass through sites {sorted(missing)}")
    features = {name: _member_features(captured[name], site).squeeze(0) for name, site in sites.items()}
    sigma = _stacked_singular_values(features) if ranks else {}
    tags, values = [], []
    for name, site in sites.items():
        for metric, value in site_health(features[name], site, sigma.get(name), ranks).items():
            tags.append(f"{prefix}{name}/{metric}")
            values.append(value.double())
    return dict(zip(tags, torch.stack(values).tolist()))
