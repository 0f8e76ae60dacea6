"""Where the hidden units of SB3's PPO and SAC policies are: sites per network, heads, and a probe forward."""

from __future__ import annotations

import torch
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.sac.policies import SACPolicy
from torch import nn

from cbp_rl import Site, sequential_sites


def policy_sites(policy: BasePolicy) -> dict[str, dict[str, Site]]:
    """Hidden-unit sites of each network of a PPO (``actor``, ``critic``) or SAC (``actor``, ``critic0``, ...) policy.

    Networks without a hidden layer (``net_arch`` ``[]``) have none and are left out; SAC's ``critic_target`` is never
    included.
    """
    if isinstance(policy, ActorCriticPolicy):
        extractor = policy.mlp_extractor
        networks = {
            "actor": (extractor.policy_net, (policy.action_net,)),
            "critic": (extractor.value_net, (policy.value_net,)),
        }
    elif isinstance(policy, SACPolicy):
        actor = policy.actor
        networks = {"actor": (actor.latent_pi, (actor.mu, actor.log_std))}
        networks |= {f"critic{i}": (q_net, ()) for i, q_net in enumerate(policy.critic.q_networks)}
    else:
        raise TypeError(f"policy {type(policy).__name__} is not supported: expected an ActorCriticPolicy or SACPolicy")
    return {name: sequential_sites(body, heads) for name, (body, heads) in networks.items() if len(body) > 1}


def policy_heads(policy: BasePolicy) -> dict[str, dict[str, nn.Linear]]:
    """Output layers of each network, for weight-magnitude logging."""
    if isinstance(policy, ActorCriticPolicy):
        return {"actor": {"head": policy.action_net}, "critic": {"head": policy.value_net}}
    heads = {"actor": {"mu": policy.actor.mu, "log_std": policy.actor.log_std}}
    return heads | {f"critic{i}": {"head": q_net[-1]} for i, q_net in enumerate(policy.critic.q_networks)}


def network_parameters(policy: BasePolicy) -> dict[str, list[nn.Parameter]]:
    """The parameters each network trains, for per-network gradient norms."""
    if isinstance(policy, ActorCriticPolicy):
        extractor = policy.mlp_extractor
        log_std = [policy.log_std] if isinstance(getattr(policy, "log_std", None), nn.Parameter) else []
        return {
            "actor": [*extractor.policy_net.parameters(), *policy.action_net.parameters(), *log_std],
            "critic": [*extractor.value_net.parameters(), *policy.value_net.parameters()],
        }
    return {"actor": list(policy.actor.parameters()), "critic": list(policy.critic.parameters())}


@torch.no_grad()
def probe_forward(policy: BasePolicy, observations: torch.Tensor, actions: torch.Tensor | None = None) -> None:
    """Push a batch through every site of the policy without sampling (the RNG stream is left untouched)."""
    if isinstance(policy, ActorCriticPolicy):
        policy.get_distribution(observations)
        policy.predict_values(observations)
    else:
        policy.actor(observations, deterministic=True)
        policy.critic(observations, actions)
