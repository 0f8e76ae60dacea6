"""CBP policies inside the real SB3 PPO and SAC: replacement rates, save/load across processes, logging."""

import importlib
import json
import math
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import envs  # noqa: F401  (registers the Slippery* ids)
from agents.checkpoints import ResumableEnv, env_states, restore_env_states, schedule_states
from agents.config import build_config, make_env
from agents.run import load_checkpoint
from agents import (
    CBPActorCriticPolicy,
    CBPSACPolicy,
    FrictionCallback,
    RunCheckpointCallback,
    UnitHealthCallback,
    init_policy_,
    list_checkpoints,
    policy_sites,
)
from agents.sites import network_parameters
from cbp_rl import kernels

UNITS = 32
CBP = dict(replacement_rate=0.01, maturity_threshold=10)


def ppo(cbp=CBP, n_envs=1, **kwargs):
    env = make_vec_env("SlipperyHopper-v0", n_envs=n_envs, seed=0, env_kwargs=dict(change_every=300))
    policy_kwargs = dict(net_arch=[UNITS, UNITS], cbp=cbp, init="lecun")
    return PPO(CBPActorCriticPolicy, env, n_steps=128, batch_size=32, n_epochs=2, seed=0, policy_kwargs=policy_kwargs, **kwargs)


def sac(cbp=CBP, **kwargs):
    env = make_vec_env("SlipperyHopper-v0", seed=0)
    policy_kwargs = dict(net_arch=[UNITS, UNITS], cbp=cbp)
    return SAC(CBPSACPolicy, env, learning_starts=50, batch_size=32, buffer_size=5000, seed=0, policy_kwargs=policy_kwargs, **kwargs)


def replacements(model):
    return {site: n for cbp in model.policy.cbp.values() for site, n in cbp.replacements().items()}


def assert_rate(counts, updates):
    """Every site replaced about ``rate × mature units`` per update (fewer only by re-maturing newborns)."""
    most = CBP["replacement_rate"] * UNITS * (updates - CBP["maturity_threshold"])
    for site, count in counts.items():
        assert most * 0.8 <= count <= most + 1, (site, count, most)


def test_ppo_replaces_units_in_actor_and_critic_at_the_configured_rate():
    model = ppo()
    model.learn(512)
    updates = 4 * 2 * (128 // 32)
    counts = replacements(model)
    assert set(counts) == {"actor/l0", "actor/l1", "critic/l0", "critic/l1"}
    assert_rate(counts, updates)


def test_sac_replaces_units_in_actor_and_every_critic_but_not_the_target():
    model = sac(tau=0.0)
    target_before = {k: v.clone() for k, v in model.policy.critic_target.state_dict().items()}
    model.learn(250)
    counts = replacements(model)
    assert set(counts) == {"actor/l0", "actor/l1", "critic0/l0", "critic0/l1", "critic1/l0", "critic1/l1"}
    assert_rate(counts, 200)
    for key, value in model.policy.critic_target.state_dict().items():
        assert torch.equal(value, target_before[key]), key
    target_modules = set(map(id, model.policy.critic_target.modules()))
    for sites in policy_sites(model.policy).values():
        assert not any(id(s.producer) in target_modules or id(s.activation) in target_modules for s in sites.values())


@pytest.mark.skipif(not kernels.ENABLED, reason="CBP's C kernel is not built here")
@pytest.mark.parametrize("build", [ppo, sac], ids=["ppo", "sac"])
def test_sb3_updates_hand_every_site_to_the_c_kernel(build, monkeypatch):
    """SB3's activations and weights are as the kernel reads them, so no site falls back to the slower torch ops."""
    read = set()
    arguments = kernels.KernelSite.arguments

    def read_by_kernel(site, h):
        result = arguments(site, h)
        assert result is not None, "a site took the torch ops"
        read.add(site)
        return result

    monkeypatch.setattr(kernels.KernelSite, "arguments", read_by_kernel)
    build().learn(200)
    assert len(read) == (4 if build is ppo else 6)


def test_cbp_none_is_plain_backprop_on_the_same_network():
    model = ppo(cbp=None)
    model.learn(256)
    assert model.policy.cbp is None
    assert [p.shape for p in model.policy.parameters()] == [p.shape for p in ppo().policy.parameters()]


@pytest.mark.parametrize("algo, policy_class, plain_kwargs", [
    (PPO, CBPActorCriticPolicy, dict(ortho_init=False)),
    (SAC, CBPSACPolicy, {}),
])
def test_init_policy_gives_a_plain_policy_the_cbp_class_weights(algo, policy_class, plain_kwargs):
    """Same seed and init: an MlpPolicy starts from exactly the CBP class's weights (SAC's target included)."""
    env = make_vec_env("SlipperyHopper-v0", seed=0)
    cbp = algo(policy_class, env, seed=0, policy_kwargs=dict(net_arch=[UNITS, UNITS], cbp=CBP, init="xavier"))
    plain = algo("MlpPolicy", env, seed=0, policy_kwargs=dict(net_arch=[UNITS, UNITS], **plain_kwargs))
    init_policy_(plain.policy, "xavier")
    cbp_state = cbp.policy.state_dict()
    assert all(torch.equal(value, cbp_state[key]) for key, value in plain.policy.state_dict().items())


def test_rollouts_and_evaluation_never_feed_cbp():
    model = ppo()
    policy = model.policy
    policy.set_training_mode(False)
    assert not any(cbp.recording for cbp in policy.cbp.values())
    activations = [site.activation for cbp in policy.cbp.values() for site in cbp.sites.values()]
    assert not any("forward" in a.__dict__ or a._forward_hooks for a in activations)  # the plain call path
    obs = torch.randn(8, *model.observation_space.shape)
    policy.evaluate_actions(obs, torch.zeros(8, *model.action_space.shape))[0].sum().backward()
    policy.optimizer.step()
    assert all((age == 0).all() for cbp in policy.cbp.values() for age in cbp.ages().values())
    policy.set_training_mode(True)
    policy.evaluate_actions(obs, torch.zeros(8, *model.action_space.shape))[0].sum().backward()
    policy.optimizer.step()
    assert all((age == 1).all() for cbp in policy.cbp.values() for age in cbp.ages().values())


def test_a_recreated_optimizer_gets_cbp_back_at_the_next_training_phase():
    model = ppo()
    model.policy.optimizer = torch.optim.Adam(model.policy.parameters(), lr=1e-4)
    model.learn(256)
    assert all(count > 0 for count in replacements(model).values())


def test_gsde_and_bad_settings_are_rejected_with_one_line():
    for kwargs, message in (
        (dict(use_sde=True), "use_sde=True"),
        (dict(cbp=dict(replacment_rate=0.1)), "'replacment_rate'"),
        (dict(cbp=dict(maturity_threshold=-3)), "maturity_threshold=-3"),
        (dict(init="glorot"), "init='glorot'"),
    ):
        env = make_vec_env("SlipperyHopper-v0", seed=0)
        with pytest.raises(ValueError, match=message) as error:
            PPO(CBPActorCriticPolicy, env, policy_kwargs=kwargs, use_sde=kwargs.pop("use_sde", False))
        assert "\n" not in str(error.value)


def test_unset_cbp_keys_take_the_papers_rl_settings_and_the_policys_init():
    resolved = {algo: model.policy.cbp[group].settings for algo, model, group in (
        ("ppo", ppo(cbp={}), "policy"), ("sac", sac(cbp=dict(decay_rate=0.9)), "critic"))}
    assert resolved["ppo"] == dict(replacement_rate=1e-4, maturity_threshold=10_000, decay_rate=0.99, init="lecun",
                                   fractional="accumulate", reset_optimizer_state=True)
    assert resolved["sac"]["maturity_threshold"] == 10_000 and resolved["sac"]["decay_rate"] == 0.9
    assert resolved["sac"]["init"] == "default"
    assert ppo(cbp=dict(maturity_threshold=100)).policy.cbp["policy"].maturity_threshold == 100


def test_constructor_parameters_report_the_settings_of_a_loaded_state_dict():
    trained, fresh = ppo(cbp=dict(maturity_threshold=7)), ppo(cbp={})
    fresh.policy.load_state_dict(trained.policy.state_dict())
    assert fresh.policy.cbp["policy"].maturity_threshold == 7
    assert fresh.policy._get_constructor_parameters()["cbp"]["maturity_threshold"] == 7


def test_loaded_model_uses_trained_settings_and_predicts_without_env(tmp_path):
    model = ppo(cbp=dict(replacement_rate=0.02, maturity_threshold=7))
    model.learn(256)
    model.save(tmp_path / "m.zip")
    loaded = PPO.load(tmp_path / "m.zip", env=None, custom_objects={"policy_kwargs": dict(net_arch=[UNITS, UNITS], cbp={})})
    assert loaded.policy.cbp["policy"].settings == model.policy.cbp["policy"].settings
    action, _ = loaded.predict(np.zeros(model.observation_space.shape, dtype=np.float32), deterministic=True)
    assert action.shape == model.action_space.shape


def test_plain_mlp_checkpoint_warm_starts_the_cbp_class(tmp_path):
    env = make_vec_env("SlipperyHopper-v0", seed=0)
    plain = PPO("MlpPolicy", env, n_steps=64, batch_size=32, seed=0, policy_kwargs=dict(net_arch=[UNITS, UNITS]))
    plain.learn(64)
    plain.save(tmp_path / "plain.zip")
    model = ppo()
    model.set_parameters(str(tmp_path / "plain.zip"))
    for name, value in plain.policy.state_dict().items():
        assert torch.equal(model.policy.state_dict()[name], value), name
    model.learn(512)
    assert all(count > 0 for count in replacements(model).values())


LOAD_AND_CONTINUE = """
import json, sys, torch
import envs
from stable_baselines3 import {algo}
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
model = {algo}.load(sys.argv[1], env=make_vec_env("SlipperyHopper-v0", seed=1))
saved = torch.load(sys.argv[2])
state = model.policy.state_dict()
same = all(torch.equal(state[k], v) for k, v in saved.items())
before = {{n: c.replacements() for n, c in model.policy.cbp.items()}}
model.learn({steps}, reset_num_timesteps=False)
after = {{n: c.replacements() for n, c in model.policy.cbp.items()}}
print(json.dumps(dict(same=same, n_keys=len(saved), before=before, after=after)))
"""


@pytest.mark.parametrize("algo", ["PPO", "SAC"])
def test_checkpoint_reloads_in_a_new_process_and_keeps_replacing(tmp_path, algo):
    model = ppo() if algo == "PPO" else sac()
    model.learn(512 if algo == "PPO" else 150)
    model.save(tmp_path / "model.zip")
    cbp_state = {k: v for k, v in model.policy.state_dict().items() if k.startswith("plasticity.cbp.") and torch.is_tensor(v)}
    torch.save(cbp_state, tmp_path / "cbp.pt")
    script = LOAD_AND_CONTINUE.format(algo=algo, steps=256 if algo == "PPO" else 100)
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model.zip"), str(tmp_path / "cbp.pt")],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1],
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["same"] and result["n_keys"] >= 10
    assert result["before"] == {n: c.replacements() for n, c in model.policy.cbp.items()}
    for network, sites in result["after"].items():
        for site, count in sites.items():
            assert count > result["before"][network][site], (network, site)


def scalar_tags(folder):
    tags = set()
    for path in Path(folder).rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"]) | {f"hist:{t}" for t in accumulator.Tags()["histograms"]}
    return tags


def test_tensorboard_events_carry_health_cbp_and_friction_tags(tmp_path):
    model = ppo(tensorboard_log=str(tmp_path))
    model.learn(1024, callback=[UnitHealthCallback(), FrictionCallback()])
    tags = scalar_tags(tmp_path)
    for network in ("actor", "critic"):
        for site in ("l0", "l1"):
            for metric in ("dead_frac", "dormant_frac", "effective_rank", "stable_rank", "weight_mag", "feature_norm"):
                assert f"health/{network}/{site}/{metric}" in tags
            assert f"cbp/{network}/{site}/replaced" in tags and f"hist:cbp/{network}/{site}/utility" in tags
        assert f"health/{network}/grad_norm" in tags and f"health/{network}/head/weight_mag" in tags
    assert {"env/friction", "env/friction_segment", "env/segment_return", "rollout/ep_rew_mean"} <= tags


def test_sac_health_probes_the_replay_buffer(tmp_path):
    model = sac(tensorboard_log=str(tmp_path))
    callback = UnitHealthCallback(log_every=50)
    model.learn(120, callback=callback, log_interval=1)
    scalars = callback.log_health(*callback._replay_batch())
    assert {"health/critic1/l1/dead_frac", "health/actor/mu/weight_mag", "cbp/critic0/l0/replaced"} <= set(scalars)
    assert all(math.isfinite(v) for v in scalars.values())


@pytest.mark.parametrize("algo, net_arch", [("ppo", []), ("sac", dict(pi=[UNITS], qf=[]))], ids=["ppo_linear", "sac_linear_critics"])
def test_networks_without_hidden_layers_train_and_log_health(algo, net_arch):
    env = make_vec_env("SlipperyHopper-v0", seed=0)
    policy_kwargs = dict(net_arch=net_arch, cbp=CBP)
    if algo == "ppo":
        model = PPO(CBPActorCriticPolicy, env, n_steps=64, batch_size=32, n_epochs=1, seed=0, policy_kwargs=policy_kwargs)
    else:
        model = SAC(CBPSACPolicy, env, learning_starts=10, batch_size=16, seed=0, policy_kwargs=policy_kwargs)
    callback = UnitHealthCallback(log_every=20, probe_size=16)
    model.learn(64, callback=callback)
    batch = callback._replay_batch() if algo == "sac" else (torch.zeros(4, *model.observation_space.shape),)
    scalars = callback.log_health(*batch)
    assert not any(tag.startswith("health/critic") and tag.endswith("dead_frac") for tag in scalars)
    assert ("health/actor/l0/dead_frac" in scalars) == (algo == "sac") and "health/actor/grad_norm" in scalars
    assert ("health/critic/grad_norm" in scalars) == (algo == "ppo")  # SAC's critic: kept only at its step before a probe


class RecordingHealthCallback(UnitHealthCallback):
    """Keeps each probe batch with what it was drawn from: the rollout (PPO) or the replay position (SAC)."""

    def log_health(self, observations, actions=None):
        buffer = getattr(self.model, "replay_buffer", None)
        source = self.model.rollout_buffer.observations.copy() if buffer is None else buffer.pos
        self.batches = getattr(self, "batches", []) + [(observations.clone(), actions, source)]
        return super().log_health(observations, actions)


def test_ppo_probe_thins_its_rollout_evenly_to_probe_size():
    model = ppo(n_envs=2)
    callback = RecordingHealthCallback(probe_size=100)
    model.learn(128 * 2, callback=callback)
    ((probed, _, rollout),) = callback.batches
    in_step_order = torch.as_tensor(rollout.reshape(256, -1))
    evenly = np.linspace(0, 255, 100).round().astype(int)
    assert UnitHealthCallback().probe_size == 1000 and len(set(evenly)) == 100
    assert torch.equal(probed, in_step_order[evenly])


def test_ranks_come_with_the_first_probe_then_with_the_first_after_each_multiple_of_rank_every():
    class RankSteps(UnitHealthCallback):
        def log_health(self, observations, actions=None):
            scalars = super().log_health(observations, actions)
            self.steps = getattr(self, "steps", []) + [(self.num_timesteps, "health/actor/l0/stable_rank" in scalars)]
            return scalars

    callback = RankSteps(rank_every=300)
    ppo().learn(1024, callback=callback)  # probes at every rollout end: 128, 256, ..., 1024
    assert [step for step, _ in callback.steps] == list(range(128, 1025, 128))
    assert [step for step, ranks in callback.steps if ranks] == [128, 384, 640, 1024]


def test_sac_probe_takes_the_newest_stored_transitions():
    model = sac()
    callback = RecordingHealthCallback(log_every=60, probe_size=40)
    model.learn(110, callback=callback)
    observations, actions, position = callback.batches[-1]
    newest = np.arange(position - 1, position - 41, -1)
    assert [batch[2] for batch in callback.batches] == [40, 100]  # the first once 40 transitions are stored
    assert torch.equal(observations, torch.as_tensor(model.replay_buffer.observations[newest, 0]))
    assert torch.equal(actions, torch.as_tensor(model.replay_buffer.actions[newest, 0]))


def test_grad_norms_cover_every_trained_parameter_once_ppo_log_std_in_the_actor():
    for model, trained in ((ppo(), lambda policy: policy.parameters()),
                           (sac(), lambda policy: [*policy.actor.parameters(), *policy.critic.parameters()])):
        networks = network_parameters(model.policy)
        counted = [id(p) for parameters in networks.values() for p in parameters]
        assert sorted(counted) == sorted(id(p) for p in trained(model.policy))
    policy = ppo().policy
    assert any(p is policy.log_std for p in network_parameters(policy)["actor"])


def test_sac_critic_grad_norm_is_its_own_last_update_not_the_actor_loss_added_later():
    model = sac()
    critic = list(model.policy.critic.parameters())
    at_critic_steps = {}

    def grad_norm():
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in critic])).item()

    model.policy.critic.optimizer.register_step_post_hook(lambda *_: at_critic_steps.update({model.num_timesteps: grad_norm()}))

    class Logged(UnitHealthCallback):
        def log_health(self, observations, actions=None):
            held = grad_norm() if critic[0].grad is not None else None  # .grad after the actor loss's backward
            self.logged = getattr(self, "logged", []) + [(self.num_timesteps, held, super().log_health(observations, actions))]
            return self.logged[-1][2]

    callback = Logged(log_every=60, probe_size=40)
    model.learn(110, callback=callback)
    (_, _, before_updates), (step, held, scalars) = callback.logged
    assert "health/critic/grad_norm" not in before_updates and "health/actor/grad_norm" not in before_updates
    assert scalars["health/critic/grad_norm"] == pytest.approx(at_critic_steps[step - 1], rel=1e-6)
    assert abs(held - at_critic_steps[step - 1]) > 1e-3 * held


def test_checkpoints_keep_the_newest_and_record_the_run_state(tmp_path):
    model = ppo(n_envs=2)
    friction = FrictionCallback()
    saver = RunCheckpointCallback(64, tmp_path, keep=2, stateful={"friction": friction})
    model.learn(1024, callback=[friction, saver])
    checkpoints = list_checkpoints(tmp_path)
    assert [c.steps for c in checkpoints] == [768, 1024]  # rollouts of 256 steps: saved where they start, or at the end
    state = checkpoints[-1].load_run_state()
    assert state["num_timesteps"] == 1024
    assert len(state["schedule_states"]) == 2 and state["schedule_states"][0]["segment"] >= 1
    assert state["callbacks"]["friction"]["env_segments"] == [s["segment"] for s in state["schedule_states"]]
    assert len(list(tmp_path.iterdir())) == 4


def test_checkpoints_stay_on_the_grid_of_steps_when_a_run_continues_from_an_off_grid_step(tmp_path):
    model = ppo(n_envs=2)  # rollouts of 2 × 128 steps; checkpoints every 192 calls × 2 envs = 384 steps
    model.learn(512, callback=RunCheckpointCallback(192, tmp_path, keep=0))  # 384 is due: saved at the end, 512
    model.learn(512, callback=RunCheckpointCallback(192, tmp_path, keep=0), reset_num_timesteps=False)
    assert [c.steps for c in list_checkpoints(tmp_path)] == [512, 768]  # 768 is due, not 512 + 384


def test_resuming_a_checkpoint_continues_the_random_streams_that_load_reseeds(tmp_path):
    model = sac()
    saver = RunCheckpointCallback(1, tmp_path)
    saver.init_callback(model)
    torch.manual_seed(5), np.random.seed(5), random.seed(5), model.action_space.seed(5)
    saver.save_checkpoint()

    def draws(action_space):
        return torch.rand(3), np.random.rand(3), random.random(), action_space.sample()

    expected = draws(model.action_space)
    loaded = load_checkpoint(build_config({"algo": "sac"}), list_checkpoints(tmp_path)[-1], model.get_env(), saver)

    actual = draws(loaded.action_space)  # SB3's load seeded every stream with the run's seed 0; then they were restored
    assert torch.equal(actual[0], expected[0]) and np.array_equal(actual[1], expected[1]) and actual[2] == expected[2]
    assert np.array_equal(actual[3], expected[3])


@pytest.mark.parametrize("vec_env_cls", [DummyVecEnv, SubprocVecEnv])
def test_resumable_env_continues_a_running_episode_bit_for_bit(vec_env_cls):
    def make(seed):
        return make_vec_env("envs:SlipperyAnt-v0", n_envs=2, seed=seed, wrapper_class=ResumableEnv, vec_env_cls=vec_env_cls)

    actions = np.random.default_rng(0).uniform(-1, 1, (25, 2, 8)).astype(np.float32)
    original, other = make(0), make(1)
    try:
        original.reset(), other.reset()
        for action in actions[:10]:
            original.step(action)
        saved = pickle.loads(pickle.dumps(env_states(original)))
        expected = [original.step(action)[:3] for action in actions[10:]]
        restore_env_states(other, saved)
        actual = [other.step(action)[:3] for action in actions[10:]]
    finally:
        original.close(), other.close()
    for (obs, reward, done), (obs_, reward_, done_) in zip(expected, actual):
        assert np.array_equal(obs, obs_) and np.array_equal(reward, reward_) and np.array_equal(done, done_)


def test_envs_without_a_schedule_or_mujoco_have_no_saved_state_and_their_workers_survive_group_signals():
    env = make_env(build_config({"env": {"id": "Pendulum-v1", "n_envs": 2, "vec_env": "subproc"}}))
    try:
        assert schedule_states(env) is None and env_states(env) is None
        for worker in env.processes:  # a terminal's Ctrl-C or a scheduler's SIGTERM reaches the whole process group
            os.kill(worker.pid, signal.SIGINT)
            os.kill(worker.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert env.reset().shape == (2, 3) and env.step(np.zeros((2, 1)))[0].shape == (2, 3)
    finally:
        env.close()


class StopAt(BaseCallback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def _on_step(self):
        return self.num_timesteps < self.step


def test_a_run_cut_short_mid_rollout_is_not_checkpointed_where_it_stopped(tmp_path):
    saver = RunCheckpointCallback(64, tmp_path, keep=0)  # due at 64: saved at the rollout start at 128
    ppo().learn(200, callback=[saver, StopAt(200)])  # stopped at its last step, 72 steps into the second rollout
    assert [c.steps for c in list_checkpoints(tmp_path)] == [128]


def test_a_requested_save_skips_the_step_of_the_checkpoint_just_loaded(tmp_path):
    saver = RunCheckpointCallback(1000, tmp_path)
    saver.last_saved_step = 0  # as after loading a checkpoint at step 0
    saver.request_save()  # a signal before the first rollout start
    ppo().learn(128, callback=saver)
    assert list_checkpoints(tmp_path) == [] and not saver.save_requested


def test_segment_return_waits_until_every_sub_env_has_left_the_segment_and_is_dumped_at_once():
    logged = []
    logger = SimpleNamespace(record=lambda key, value: logged.append((key, value)), dump=lambda step: logged.append(step))
    friction = FrictionCallback()
    friction.model = SimpleNamespace(logger=logger)
    episodes = [(0, 0, 10), (1, 0, 20), (0, 1, 100), (1, 0, 30), (1, 1, 200), (1, 2, 7), (1, 3, 9), (0, 3, 11)]
    for step, (env, segment, episode_return) in enumerate(episodes):
        infos = [{"friction_segment": segment}, {}] if env == 0 else [{}, {"friction_segment": segment}]
        infos[env]["episode"] = {"r": episode_return}
        friction.locals, friction.num_timesteps = {"infos": infos}, step
        friction._on_step()
        expected = {4: [("env/segment_return", 20.0), 4], 7: [("env/segment_return", 150.0), 7, ("env/segment_return", 7.0), 7]}
        assert logged == expected.get(step, [])
        logged.clear()
    restored = FrictionCallback()
    restored.load_state_dict(json.loads(json.dumps(friction.state_dict())))
    assert restored.env_segments == [3, 3] and restored.segment_totals == {3: [20.0, 2]}
    restored.load_state_dict({"segment": 3, "segment_returns": [1.0, 2.0]})  # a checkpoint of the one-list format
    assert restored.env_segments == [3] and restored.segment_totals == {3: [3.0, 2]}
    restored.load_state_dict({"segment": None, "segment_returns": []})  # that format before any episode ended
    assert restored.env_segments == [None] and restored.segment_totals == {}


@pytest.mark.parametrize(
    "method, settings, tag",
    [("redo", dict(reset_period=4, tau=0.5), "redo/actor/l0/replaced"), ("shrink_perturb", dict(noise_scale=1e-3), None),
     ("l2_init", dict(strength=1.0), None)],
)
def test_comparison_methods_run_inside_ppo_and_reload(tmp_path, method, settings, tag):
    model = ppo(cbp=None, tensorboard_log=str(tmp_path))
    model = PPO(CBPActorCriticPolicy, model.get_env(), n_steps=128, batch_size=32, n_epochs=2, seed=0,
                policy_kwargs=dict(net_arch=[UNITS, UNITS], init="lecun", **{method: settings}), tensorboard_log=str(tmp_path))
    plain = ppo(cbp=None)
    model.learn(256, callback=UnitHealthCallback())
    plain.learn(256)
    assert set(model.policy.plasticity) == {method} and set(model.policy.plasticity[method]) == {"policy"}
    assert set(model.policy.plasticity[method]["policy"].names) == {"actor/l0", "actor/l1", "critic/l0", "critic/l1"}
    differs = [not torch.equal(a, b) for a, b in zip(model.policy.parameters(), plain.policy.parameters())]
    assert any(differs)
    if tag:
        assert tag in scalar_tags(tmp_path)
    model.save(tmp_path / "m.zip")
    loaded = PPO.load(tmp_path / "m.zip")
    assert loaded.policy.plasticity[method]["policy"].settings == model.policy.plasticity[method]["policy"].settings


RL_ZOO3_HYPERPARAMS = """
SlipperyHopper-v0:
  policy: agents.CBPActorCriticPolicy
  n_steps: 64
  batch_size: 32
  policy_kwargs: "dict(net_arch=[16, 16], init='lecun', cbp=dict(maturity_threshold=3, replacement_rate=0.05))"
"""


def test_policy_resolves_from_an_rl_zoo3_hyperparameter_file():
    """rl-zoo3 imports a dotted ``policy`` by module and attribute name and evaluates a ``policy_kwargs`` string."""
    hyperparams = yaml.safe_load(RL_ZOO3_HYPERPARAMS)["SlipperyHopper-v0"]
    module, name = hyperparams.pop("policy").rsplit(".", 1)
    policy = getattr(importlib.import_module(module), name)
    policy_kwargs = eval(hyperparams.pop("policy_kwargs"), {})
    model = PPO(policy, make_vec_env("SlipperyHopper-v0", seed=0), policy_kwargs=policy_kwargs, **hyperparams)
    model.learn(256)
    assert all(count > 0 for count in replacements(model).values())
