"""SB3 callbacks that log unit health, CBP activity and the friction schedule through SB3's logger (TensorBoard)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.sac.policies import SACPolicy

from cbp_rl import probe, weight_magnitude

from .sites import network_parameters, policy_heads, policy_sites, probe_forward

_TB_ONLY = ("stdout", "log", "json", "csv")
PROBE_SIZE = 1000
"""Default observations per health probe: the paper's sample, whose stable rank and dead-unit share are computed on
the features of the last 1000 steps (Dohare et al. 2024, code: ``lop/rl/run_ppo.py``)."""
RANK_EVERY = 10_000
"""Default environment steps between two rank computations: the paper's cadence for the stable rank (same source)."""


def next_multiple(step: int, every: int) -> int:
    """The first multiple of ``every`` after ``step``: a cadence on ``num_timesteps`` that a resumed run keeps."""
    return (step // every + 1) * every


def evenly_spaced(count: int, size: int = PROBE_SIZE) -> np.ndarray:
    """Indices of at most ``size`` of ``count`` items, spread evenly, first and last included."""
    return np.linspace(0, count - 1, min(count, size)).round().astype(int)


class UnitHealthCallback(BaseCallback):
    """Logs DESIGN §4 unit-health metrics of every site of the actor and critic(s), and CBP's activity.

    On-policy algorithms (PPO) are probed at every rollout end on that rollout's observations;
    off-policy ones (SAC) every ``log_every`` environment steps on the newest ``probe_size`` replay transitions, the
    first time once the buffer holds that many (fewer would bias the metrics: one transition makes every unit that is
    zero on it look dead), dumping the logger then, so the values carry the step they were measured at (SB3 dumps
    off-policy logs only every few episodes).
    Tags: ``health/{network}/{site}/{metric}``, ``health/{network}/{head}/weight_mag``,
    ``health/{network}/grad_norm`` (the last update's gradient; for SAC's critic, taken at its optimizer step, as
    SAC's actor loss then adds its own gradient through the critic), ``{method}/{network}/{site}/replaced``
    (cumulative units replaced by CBP or ReDo), ``cbp/{network}/{site}/mean_age`` and, in TensorBoard only,
    ``cbp/{network}/{site}/utility``.

    :param log_every: off-policy only: environment steps (``num_timesteps``) between two probes.
    :param probe_size: at most this many observations per probe (a PPO rollout is thinned evenly); the default,
        1000, is the paper's sample size. Rank metrics depend on it, so compare runs probed alike.
    :param rank_every: the rank metrics (effective and stable rank) come with the first probe of a run and then with
        the first probe at or after each multiple of ``rank_every`` environment steps; 1: with every probe. They cost
        about three quarters of a probe; the default, 10000, is the paper's cadence.
    :param utility_histograms: also log histograms of the bias-corrected CBP utilities.
    """

    def __init__(
        self,
        log_every: int = 10_000,
        probe_size: int = PROBE_SIZE,
        utility_histograms: bool = True,
        rank_every: int = RANK_EVERY,
        verbose: int = 0,
    ):
        super().__init__(verbose)
        self.log_every = log_every
        self.probe_size = probe_size
        self.utility_histograms = utility_histograms
        self.rank_every = rank_every
        self._last_probe: int | None = None
        self._last_ranks: int | None = None
        self._critic_hook: torch.utils.hooks.RemovableHandle | None = None
        self._saved_grad_norms: dict[str, float | None] = {}
        self._parameters: dict[str, list[torch.nn.Parameter]] = {}  # per network, from the model at the first learn()
        self._keeps_critic_norm = False

    def _init_callback(self) -> None:
        policy = self.model.policy
        self._sites = {f"{net}/{name}": site for net, sites in policy_sites(policy).items() for name, site in sites.items()}
        self._heads = policy_heads(policy)
        self._parameters = network_parameters(policy)
        self._off_policy = isinstance(self.model, OffPolicyAlgorithm)
        self._critic_grad_norm: float | None = None
        if self._critic_hook is not None:
            self._critic_hook.remove()
        self._keeps_critic_norm = isinstance(policy, SACPolicy)
        if self._keeps_critic_norm:  # after its step, SAC's actor loss adds its own gradient to the critic's .grad
            self._critic_hook = policy.critic.optimizer.register_step_post_hook(self._keep_critic_grad_norm)

    def _keep_critic_grad_norm(self, *args: Any) -> None:
        """At a SAC critic step right before a probe: the norm of the critic's own gradient, for ``grad_norm``."""
        if self._probe_due(self.model.num_timesteps + self.model.n_envs):
            self._critic_grad_norm = _grad_norm(self._parameters["critic"])

    def _on_training_end(self) -> None:
        if self._critic_hook is not None:
            self._critic_hook.remove()
            self._critic_hook = None

    def _on_step(self) -> bool:
        if self._off_policy and self._probe_due(self.num_timesteps):
            self._last_probe = self.num_timesteps
            self.log_health(*self._replay_batch())
            self.logger.dump(self.num_timesteps)
        return True

    def _probe_due(self, step: int) -> bool:
        """Whether an off-policy probe runs at ``step``: ``log_every`` after the last, once a probe's worth is stored."""
        due = self._last_probe is None or step - self._last_probe >= self.log_every
        return due and self._stored_rows() >= self._probe_rows()

    def _on_rollout_end(self) -> None:
        if not self._off_policy:
            observations = self.model.rollout_buffer.observations
            self.log_health(self._as_tensor(observations.reshape(-1, *observations.shape[2:])))

    def state_dict(self) -> dict[str, Any]:
        """The probe cadence, so that a resumed run probes (and ranks) at the steps the uninterrupted run would, and
        the last update's gradient norms, which a resumed run's first probe logs if no update of its own came before
        (checkpoints hold no gradients)."""
        return {"last_probe": self._last_probe, "last_ranks": self._last_ranks, "grad_norms": self._grad_norms()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_probe, self._last_ranks = state["last_probe"], state["last_ranks"]
        self._saved_grad_norms = state.get("grad_norms", {})

    def _as_tensor(self, array: np.ndarray) -> torch.Tensor:
        return obs_as_tensor(array[evenly_spaced(len(array), self.probe_size)], self.model.device)

    def _probe_rows(self) -> int:
        """Replay rows (one transition of each env) an off-policy probe takes: ``probe_size`` transitions, at most the
        whole buffer."""
        buffer = self.model.replay_buffer
        return min(buffer.buffer_size, max(1, self.probe_size // buffer.n_envs))

    def _stored_rows(self) -> int:
        buffer = self.model.replay_buffer
        return buffer.buffer_size if buffer.full else buffer.pos

    def _replay_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The newest stored transitions, up to a probe's worth: observations and actions."""
        buffer = self.model.replay_buffer
        count = min(self._stored_rows(), self._probe_rows())
        rows = (buffer.pos - 1 - np.arange(count)) % buffer.buffer_size
        observations = buffer.observations[rows].reshape(-1, *buffer.obs_shape)
        actions = buffer.actions[rows].reshape(-1, buffer.action_dim)
        return self._as_tensor(observations), self._as_tensor(actions)

    def log_health(self, observations: torch.Tensor, actions: torch.Tensor | None = None) -> dict[str, float]:
        """Probe the policy on a batch and record every metric; returns the scalar ones."""
        policy = self.model.policy
        ranks = self._last_ranks is None or self.num_timesteps >= next_multiple(self._last_ranks, self.rank_every)
        if ranks:
            self._last_ranks = self.num_timesteps
        scalars = probe(lambda: probe_forward(policy, observations, actions), self._sites, "health/", ranks)
        for network, heads in self._heads.items():
            for name, head in heads.items():
                scalars[f"health/{network}/{name}/weight_mag"] = weight_magnitude(head).item()
        saved, self._saved_grad_norms = self._saved_grad_norms, {}
        for network, norm in self._grad_norms().items():
            norm = saved.get(network) if norm is None else norm
            if norm is not None:
                scalars[f"health/{network}/grad_norm"] = norm
        self._critic_grad_norm = None
        scalars |= self._cbp_scalars()
        for key, value in scalars.items():
            self.logger.record(key, value)
        return scalars

    def _grad_norms(self) -> dict[str, float | None]:
        """The norm of each network's gradient of the last update (None without one); SAC's critic's as kept at its
        last optimizer step before a probe (None if none is due)."""
        norms = {network: _grad_norm(parameters) for network, parameters in self._parameters.items()}
        if self._keeps_critic_norm:
            norms["critic"] = self._critic_grad_norm
        return norms

    def _cbp_scalars(self) -> dict[str, float]:
        scalars = {}
        for method, modules in getattr(self.model.policy, "plasticity", {}).items():
            for module in modules.values():
                for site, count in getattr(module, "replacements", dict)().items():
                    scalars[f"{method}/{site}/replaced"] = float(count)
                if method == "cbp":
                    scalars |= self._cbp_details(module)
        return scalars

    def _cbp_details(self, cbp: Any) -> dict[str, float]:
        scalars = {f"cbp/{site}/mean_age": float(age.mean()) for site, age in cbp.ages().items()}
        if self.utility_histograms:
            for site, utility in cbp.utilities().items():
                self.logger.record(f"cbp/{site}/utility", utility.detach().cpu(), exclude=_TB_ONLY)
        return scalars


def _grad_norm(parameters: list[torch.nn.Parameter]) -> float | None:
    """Global L2 norm of the parameters' gradients; None before the first backward."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() if grads else None


class FrictionCallback(BaseCallback):
    """Logs the friction schedule from ``info``: ``env/friction``, ``env/friction_segment``, and
    ``env/segment_return``, the mean episode return of a friction segment, once every sub-env has finished an
    episode in a later segment (sub-envs change friction at their own episode ends); it is dumped at once, so no
    later segment's return can overwrite it before SB3's next dump.

    Needs episode statistics in ``info["episode"]`` (SB3's ``Monitor``/``VecMonitor``).
    """

    def __init__(self, verbose: int = 0):
        super().__init__(verbose)
        self.env_segments: list[int | None] = []  # per sub-env: the segment of its last finished episode
        self.segment_totals: dict[int, list[float]] = {}  # per segment: [sum of returns, episodes]

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        if len(self.env_segments) != len(infos):
            self.env_segments = [None] * len(infos)
        for index, info in enumerate(infos):
            if "episode" in info and "friction_segment" in info:
                self._episode_ended(index, info["friction_segment"], float(info["episode"]["r"]))
        return True

    def _episode_ended(self, index: int, segment: int, episode_return: float) -> None:
        self.env_segments[index] = segment
        totals = self.segment_totals.setdefault(segment, [0.0, 0])
        totals[0] += episode_return
        totals[1] += 1
        if None in self.env_segments:
            return
        for passed in sorted(s for s in self.segment_totals if s < min(self.env_segments)):
            total, episodes = self.segment_totals.pop(passed)
            self.logger.record("env/segment_return", total / episodes)
            self.logger.dump(self.num_timesteps)

    def _on_rollout_end(self) -> None:
        infos = self.locals.get("infos") or []
        if infos and "friction" in infos[0]:
            self.logger.record("env/friction", float(infos[0]["friction"]))
            self.logger.record("env/friction_segment", int(infos[0]["friction_segment"]))

    def state_dict(self) -> dict[str, Any]:
        totals = {str(segment): list(total) for segment, total in self.segment_totals.items()}
        return {"env_segments": list(self.env_segments), "segment_totals": totals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "segment" in state:  # written before segments were tracked per sub-env: one segment, every return
            segment, returns = state["segment"], state["segment_returns"]
            totals = {} if segment is None else {str(segment): [sum(returns), len(returns)]}
            state = {"env_segments": [segment], "segment_totals": totals}
        self.env_segments = list(state["env_segments"])
        self.segment_totals = {int(segment): list(total) for segment, total in state["segment_totals"].items()}
