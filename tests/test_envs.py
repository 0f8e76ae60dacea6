"""Tests of the Slippery* environments: friction in the physics, the schedule's protocol, resume and vector envs."""

import functools
import json
import math

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs import SLIPPERY_ENVS, FrictionSchedule, resolve_env_id

CHEETAH = "SlipperyHalfCheetah-v0"  # never terminates early, and cheap: episodes end only at the time limit


def _actions(env: gym.Env, n: int, seed: int = 0) -> np.ndarray:
    space = env.action_space
    return np.random.default_rng(seed).uniform(space.low, space.high, size=(n, *space.shape)).astype(space.dtype)


def _rollout(env: gym.Env, n_steps: int, reset_seed: int = 0, action_seed: int = 0) -> list[tuple]:
    """Step ``env`` with fixed actions, resetting at episode ends; one (obs, friction, segment) per step and reset."""
    obs, info = env.reset(seed=reset_seed)
    records = [("reset", obs, info["friction"], info["friction_segment"])]
    for action in _actions(env, n_steps, action_seed):
        obs, _, terminated, truncated, info = env.step(action)
        records.append(("step", obs, info["friction"], info["friction_segment"]))
        assert np.all(env.unwrapped.model.geom_friction[:, 0] == info["friction"])
        if terminated or truncated:
            obs, info = env.reset()
            records.append(("reset", obs, info["friction"], info["friction_segment"]))
    return records


def _episode_segments(records: list[tuple]) -> list[int]:
    """Segment of each episode, checking that it stays constant within the episode."""
    segments = []
    for kind, _, _, segment in records:
        if kind == "reset":
            segments.append(segment)
        assert segment == segments[-1], "friction segment changed mid-episode"
    return segments


def _expected_segments(episode_lengths: list[int], change_every: int, steps_per_step: int = 1) -> list[int]:
    segment, since_change, segments = 0, 0, [0]
    for length in episode_lengths:
        since_change += length * steps_per_step
        if since_change >= change_every:
            segment, since_change = segment + 1, 0
        segments.append(segment)
    return segments


def _episode_lengths(records: list[tuple]) -> list[int]:
    lengths, count = [], 0
    for kind, *_ in records[1:]:
        if kind == "reset":
            lengths.append(count)
            count = 0
        else:
            count += 1
    return lengths


def test_frictions_give_pairwise_different_trajectories():
    trajectories = {}
    for friction in (0.02, 0.2, 1.0, 2.0):
        env = gym.make("SlipperyAnt-v0", friction=friction)
        env.reset(seed=3)
        trajectories[friction] = np.array([env.step(a)[0] for a in _actions(env, 60)])
    frictions = list(trajectories)
    for i, a in enumerate(frictions):
        for b in frictions[i + 1 :]:
            assert not np.allclose(trajectories[a], trajectories[b]), f"friction {a} and {b} give the same trajectory"


def test_default_is_paper_protocol():
    env = gym.make("SlipperyAnt-v0")
    schedule = env.get_wrapper_attr("schedule")
    assert schedule.change_every == 2_000_000
    assert schedule.friction_range == (0.02, 2.0)
    assert env.spec.max_episode_steps == gym.spec("Ant-v5").max_episode_steps == 1000
    _, info = env.reset(seed=0)
    assert info["friction"] == FrictionSchedule(schedule_seed=0).friction_at(0)
    assert info["friction_segment"] == 0


def test_changes_only_at_episode_ends_after_change_every():
    env = gym.make(CHEETAH, change_every=50, max_episode_steps=30)
    records = _rollout(env, 300)
    segments = _episode_segments(records)
    assert segments == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    frictions = [f for kind, _, f, _ in records if kind == "reset"]
    assert len(set(frictions)) == 6


def test_changes_follow_rule_with_early_terminations():
    env = gym.make("SlipperyHopper-v0", change_every=40, max_episode_steps=30)
    records = _rollout(env, 400)
    lengths = _episode_lengths(records)
    assert min(lengths) < 30, "expected some episodes to terminate before the time limit"
    assert _episode_segments(records) == _expected_segments(lengths, change_every=40)


def test_n_envs_counts_total_steps():
    env = gym.make(CHEETAH, change_every=100, max_episode_steps=30, n_envs=4)
    segments = _episode_segments(_rollout(env, 120))
    assert segments == [0, 1, 2, 3, 4]
    env = gym.make(CHEETAH, change_every=100, max_episode_steps=30, n_envs=3)
    assert _episode_segments(_rollout(env, 120)) == _expected_segments([30] * 4, 100, steps_per_step=3)


def test_same_seed_same_sequence_other_seed_another():
    def sequence(seed: int) -> list[float]:
        schedule = FrictionSchedule(schedule_seed=seed)
        return [schedule.friction_at(k) for k in range(20)]

    assert sequence(0) == sequence(0)
    assert sequence(0) != sequence(1)
    first = [gym.make(CHEETAH, schedule_seed=seed).reset()[1]["friction"] for seed in (7, 7, 8)]
    assert first[0] == first[1] != first[2]


def test_lazy_draws_do_not_depend_on_access_order():
    forward, backward = FrictionSchedule(schedule_seed=3), FrictionSchedule(schedule_seed=3)
    late = backward.friction_at(9)
    assert [forward.friction_at(k) for k in range(10)][9] == late


@pytest.mark.parametrize("seed", [0, 5])
def test_frictions_log_uniform_within_range(seed):
    low, high = 0.02, 2.0
    schedule = FrictionSchedule(friction_range=(low, high), schedule_seed=seed)
    draws = np.array([schedule.friction_at(k) for k in range(200)])
    assert np.all((draws >= low) & (draws <= high))
    log_mid = (math.log(low) + math.log(high)) / 2
    assert abs(np.log(draws).mean() - log_mid) < 0.4
    assert 0.4 < np.mean(draws < math.exp(log_mid)) < 0.6


def test_seeds_past_100_work():
    for seed in (101, 12345, 2**40):
        env = gym.make(CHEETAH, schedule_seed=seed, change_every=5, max_episode_steps=5)
        records = _rollout(env, 12)
        assert _episode_segments(records)[-1] == 2
        assert all(0.02 <= f <= 2.0 for _, _, f, _ in records)


def test_restore_continues_identically():
    kwargs = dict(change_every=50, max_episode_steps=30, schedule_seed=4)
    original = gym.make(CHEETAH, **kwargs)
    _rollout(original, 75)
    state = json.loads(json.dumps(original.get_wrapper_attr("get_schedule_state")()))
    assert state["steps_since_change"] > 0
    resumed = gym.make(CHEETAH, **kwargs)
    resumed.get_wrapper_attr("set_schedule_state")(state)
    a, b = _rollout(original, 150, reset_seed=9, action_seed=1), _rollout(resumed, 150, reset_seed=9, action_seed=1)
    assert len({segment for *_, segment in a}) > 1, "the compared window should include a change"
    for (kind_a, obs_a, f_a, seg_a), (kind_b, obs_b, f_b, seg_b) in zip(a, b, strict=True):
        assert (kind_a, f_a, seg_a) == (kind_b, f_b, seg_b)
        np.testing.assert_array_equal(obs_a, obs_b)


def test_restore_rejects_state_of_another_schedule():
    env = gym.make(CHEETAH, schedule_seed=1)
    state = gym.make(CHEETAH, schedule_seed=2).get_wrapper_attr("get_schedule_state")()
    with pytest.raises(ValueError, match="friction="):
        env.get_wrapper_attr("set_schedule_state")(state)
    with pytest.raises(ValueError, match="missing keys"):
        env.get_wrapper_attr("set_schedule_state")({"segment": 0})


def test_explicit_frictions_used_in_order_then_stay_on_last():
    env = gym.make(CHEETAH, frictions=[0.1, 0.5, 1.5], change_every=30, max_episode_steps=30)
    records = _rollout(env, 150)
    assert [f for kind, _, f, _ in records if kind == "reset"] == [0.1, 0.5, 1.5, 1.5, 1.5, 1.5]
    assert _episode_segments(records) == [0, 1, 2, 2, 2, 2]


def test_fixed_friction_never_changes():
    env = gym.make(CHEETAH, friction=0.3, change_every=10, max_episode_steps=20)
    records = _rollout(env, 100)
    assert {(f, segment) for _, _, f, segment in records} == {(0.3, 0)}


def test_set_friction_and_friction_property():
    env = gym.make(CHEETAH, change_every=10, max_episode_steps=10)
    env.get_wrapper_attr("set_friction")(0.07)
    assert env.get_wrapper_attr("friction") == 0.07
    assert np.all(env.unwrapped.model.geom_friction[:, 0] == 0.07)
    assert {f for _, _, f, _ in _rollout(env, 40)} == {0.07}


@pytest.mark.parametrize("name", SLIPPERY_ENVS)
def test_every_registered_id_makes_steps_and_resets(name):
    env = gym.make(resolve_env_id(name), change_every=4, max_episode_steps=4)
    records = _rollout(env, 9)
    assert _episode_segments(records) == [0, 1, 2]
    assert len({f for _, _, f, _ in records}) == 3
    env.close()


def _make_cheetah(**kwargs) -> gym.Env:
    return gym.make(CHEETAH, change_every=50, max_episode_steps=30, n_envs=2, **kwargs)


@pytest.mark.parametrize("vec_env_name", ["DummyVecEnv", "SubprocVecEnv"])
def test_works_in_sb3_vec_envs(vec_env_name):
    from stable_baselines3.common import vec_env

    vec = getattr(vec_env, vec_env_name)([functools.partial(_make_cheetah, schedule_seed=6)] * 2)
    try:
        vec.reset()
        segments = []
        for _ in range(40):
            _, _, _, infos = vec.step(np.zeros((2, *vec.action_space.shape), dtype=np.float32))
            assert all(isinstance(info["friction"], float) for info in infos)
            segments.append([info["friction_segment"] for info in infos])
        assert segments[-1] == [1, 1], "50 total steps across 2 workers should end segment 0 at the first reset"
        states = vec.env_method("get_schedule_state")
        assert states[0] == states[1] == json.loads(json.dumps(states[0]))
        state = {"segment": 3, "steps_since_change": 10, "friction": FrictionSchedule(schedule_seed=6).friction_at(3)}
        vec.env_method("set_schedule_state", state, indices=[0])
        assert vec.env_method("get_schedule_state") == [state, states[1]]
        assert vec.get_attr("friction") == [state["friction"], states[1]["friction"]]
    finally:
        vec.close()


BAD_KWARGS = [
    ({"friction": 0}, "friction=0"),
    ({"friction": -0.5}, "friction=-0.5"),
    ({"frictions": []}, "frictions=[]"),
    ({"frictions": [0.5, 0.0]}, "0.0 at index 1"),
    ({"frictions": [0.5, -1]}, "-1 at index 1"),
    ({"friction_range": (2.0, 0.02)}, "friction_range=(2.0, 0.02)"),
    ({"friction_range": (0.0, 1.0)}, "friction_range=(0.0, 1.0)"),
    ({"friction_range": (-1.0, 1.0)}, "friction_range=(-1.0, 1.0)"),
    ({"change_every": -5}, "change_every=-5"),
    ({"change_every": 0}, "change_every=0"),
    ({"friction": 0.5, "frictions": [0.5]}, "friction=0.5 and frictions=[0.5]"),
    ({"n_envs": 0}, "n_envs=0"),
    ({"schedule_seed": -1}, "schedule_seed=-1"),
]


@pytest.mark.parametrize(("kwargs", "named"), BAD_KWARGS, ids=[str(k) for k, _ in BAD_KWARGS])
def test_bad_input_raises_value_error_naming_it(kwargs, named):
    with pytest.raises(ValueError) as error:
        gym.make(CHEETAH, **kwargs)
    message = str(error.value)
    assert named in message
    assert "expected" in message
    assert "\n" not in message


def test_resolve_env_id():
    assert envs.SLIPPERY_ENVS == (
        "SlipperyAnt",
        "SlipperyHalfCheetah",
        "SlipperyHopper",
        "SlipperyWalker2d",
        "SlipperyHumanoid",
    )
    for name in SLIPPERY_ENVS:
        assert resolve_env_id(name) == f"{name}-v0"
        assert resolve_env_id(f"{name}-v0") == f"{name}-v0"
    assert resolve_env_id("Ant-v5") == "Ant-v5"
    with pytest.raises(ValueError, match="'SlipperyCat'.*SlipperyAnt, SlipperyHalfCheetah") as error:
        resolve_env_id("SlipperyCat")
    assert "\n" not in str(error.value)
