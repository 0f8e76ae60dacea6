"""train.py end to end: PPO and SAC runs, interrupt and resume, and every bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from stable_baselines3 import SAC
from stable_baselines3.common.save_util import load_from_zip_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import train
from agents import list_checkpoints
from agents.checkpoints import pending_records
from agents.config import build_config, read_yaml, set_dotted
from agents.run import tensorboard_logger
from envs import FrictionSchedule

ROOT = Path(__file__).resolve().parents[1]
TINY_PPO = ["--env", "SlipperyHopper", "--change-every", "400", "--set", "algo_kwargs.n_steps=256",
            "--set", "algo_kwargs.batch_size=128", "--set", "algo_kwargs.n_epochs=2", "--set", "policy.net_arch=[16,16]",
            "--set", "policy.cbp.maturity_threshold=5", "--set", "policy.cbp.replacement_rate=0.01"]


def run_train(*args, **kwargs):
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True, **kwargs)


def scalars(run_dir):
    """Every scalar of a run as {tag: [(step, value), ...]}, files in order, as TensorBoard would purge them."""
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_ppo_run_writes_config_metadata_events_and_checkpoints(tmp_path):
    run = tmp_path / "run"
    result = run_train(*TINY_PPO, "--total-steps", 1024, "--checkpoint-every", 512, "--run-dir", run, "--seed", 3)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["seed"] == 3 and config["env"]["id"] == "SlipperyHopper-v0"
    assert config["env"]["kwargs"]["schedule_seed"] == 3 and config["policy"]["cbp"]["maturity_threshold"] == 5
    assert config["algo_kwargs"]["gamma"] == 0.99  # the paper's PPO settings came through
    metadata = json.loads((run / "metadata.json").read_text())[0]
    assert metadata["seed"] == 3 and metadata["packages"]["stable-baselines3"] and "--seed" in metadata["command"]
    tags = scalars(run)
    assert {"health/actor/l0/dead_frac", "cbp/critic/l1/replaced", "env/friction"} <= set(tags)
    assert tags["cbp/actor/l0/replaced"][-1][1] > 0
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("*.zip"))
    assert checkpoints == ["model_1024_steps.zip", "model_512_steps.zip"]


def test_sac_run(tmp_path):
    result = run_train("--algo", "sac", "--env", "SlipperyHopper", "--total-steps", 300, "--run-dir", tmp_path / "sac",
                       "--set", "algo_kwargs.learning_starts=100", "--set", "algo_kwargs.buffer_size=1000",
                       "--set", "policy.net_arch=[16,16]", "--set", "policy.cbp.maturity_threshold=10",
                       "--set", "policy.cbp.replacement_rate=0.01", "--set", "logging.health_every=100",
                       "--set", "logging.rank_every=200", "--set", "logging.probe_size=50")
    assert result.returncode == 0, result.stderr
    tags = scalars(tmp_path / "sac")
    assert tags["cbp/critic1/l0/replaced"][-1][1] > 0
    # at the probes' own steps, the first once 50 transitions are stored (a step's transition is stored after it)
    assert [step for step, _ in tags["health/actor/l1/dead_frac"]] == [51, 151, 251]
    assert [step for step, _ in tags["health/actor/l1/effective_rank"]] == [51, 251]


def test_interrupt_then_resume_continues_steps_and_friction_sequence(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "train.py", *TINY_PPO, "--total-steps", "20000", "--checkpoint-every", "512",
                                "--run-dir", str(run)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((run / "checkpoints").glob("*_run_state_1024_steps.json")) and time.monotonic() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 128 + signal.SIGINT
    stopped_at = max(json.loads(p.read_text())["num_timesteps"] for p in (run / "checkpoints").glob("*run_state*"))
    assert 1024 <= stopped_at < 20000 and stopped_at % 256 == 0  # at a rollout start: nothing half-collected
    assert list_checkpoints(run / "checkpoints")[-1].env_state is not None
    before = scalars(run)

    result = run_train("--resume", run, "--total-steps", stopped_at + 1024)
    assert result.returncode == 0, result.stderr
    final = json.loads(sorted((run / "checkpoints").glob("*run_state*"), key=os.path.getmtime)[-1].read_text())
    assert final["num_timesteps"] >= stopped_at + 1024
    after = scalars(run)
    steps = [step for step, _ in after["env/friction"]]
    assert steps == sorted(set(steps)) and steps[-1] > stopped_at  # continuous, no step twice
    schedule = FrictionSchedule(change_every=400, schedule_seed=0)
    segments = [int(v) for _, v in after["env/friction_segment"]]
    assert segments == sorted(segments) and segments[-1] > int(before["env/friction_segment"][-1][1]) - 1
    for (_, friction), segment in zip(after["env/friction"], segments):
        assert friction == pytest.approx(schedule.friction_at(segment), rel=1e-6)
    assert len(json.loads((run / "metadata.json").read_text())) == 2


TINY_SAC = ["--algo", "sac", "--env", "SlipperyHopper", "--set", "algo_kwargs.learning_starts=100",
            "--set", "algo_kwargs.buffer_size=1000", "--set", "policy.net_arch=[16,16]",
            "--set", "policy.cbp.maturity_threshold=10", "--set", "policy.cbp.replacement_rate=0.01",
            "--set", "logging.probe_size=50"]


def newest_tensors(run):
    """The step of a run's newest checkpoint and every tensor in it: weights, CBP buffers, optimizer moments."""
    checkpoint = list_checkpoints(run / "checkpoints")[-1]
    _, parameters, variables = load_from_zip_file(checkpoint.model)

    def leaves(tree):
        if isinstance(tree, torch.Tensor):
            yield tree
        elif isinstance(tree, (dict, list, tuple)):
            for value in tree.values() if isinstance(tree, dict) else tree:
                yield from leaves(value)

    return checkpoint.steps, list(leaves([parameters, variables]))


@pytest.mark.parametrize(
    "algo, tiny, total", [("ppo", TINY_PPO, 1024), ("sac", [*TINY_SAC, "--set", "logging.health_every=100"], 300)]
)
def test_a_resumed_run_continues_exactly_as_the_uninterrupted_run(tmp_path, algo, tiny, total):
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    half = total // 2
    seed = ["--seed", 2]  # its first half ends 7 (PPO) steps into an episode
    assert run_train(*tiny, *seed, "--total-steps", total, "--checkpoint-every", half, "--run-dir", whole).returncode == 0
    assert run_train(*tiny, *seed, "--total-steps", half, "--run-dir", halves).returncode == 0
    env_state = list_checkpoints(halves / "checkpoints")[-1].load_env_states()[0]
    assert env_state["wrappers"][0]["rewards"], "the first half should stop mid-episode"
    restarted = tmp_path / "restarted"
    shutil.copytree(halves, restarted)
    list_checkpoints(restarted / "checkpoints")[-1].env_state.unlink()

    result = run_train("--resume", halves, "--total-steps", total)
    assert result.returncode == 0 and "note" not in result.stderr, result.stderr
    result = run_train("--resume", restarted, "--total-steps", total)
    assert result.returncode == 0 and "has no env state: the running episodes restart" in result.stderr

    steps, expected = newest_tensors(whole)
    for run, exact in ((halves, True), (restarted, False)):
        resumed_steps, resumed = newest_tensors(run)
        assert resumed_steps == steps and len(resumed) == len(expected)
        assert all(torch.equal(a, b) for a, b in zip(expected, resumed)) == exact, run.name

    def logged(run):  # wall-clock times aside
        return {tag: v for tag, v in scalars(run).items() if not tag.startswith("time/")}

    expected = logged(whole)
    assert logged(halves) == expected and len(expected["health/actor/l1/effective_rank"]) == 1
    # the first dump and probe after the split (PPO 768, SAC 151) write the checkpoint's unwritten records and its
    # gradient norms: the resumed model has taken no update by then
    after_split = 3 * total // 4 if algo == "ppo" else total // 2 + 1
    for tag in ("health/actor/grad_norm", "health/critic/grad_norm", "train/loss" if algo == "ppo" else "train/critic_loss"):
        assert after_split in dict(expected[tag]), tag


def test_resuming_a_finished_run_without_more_steps_changes_nothing(tmp_path):
    run = tmp_path / "run"
    assert run_train(*TINY_SAC, "--seed", 2, "--total-steps", 150, "--run-dir", run).returncode == 0
    before, pending = scalars(run), list((run / "tb").glob("*.pending"))
    assert pending and before["train/critic_loss"][-1][0] == 150  # the values held at the end, at the last step

    result = run_train("--resume", run, "--total-steps", 150)
    assert result.returncode == 0 and "nothing to do" in result.stdout, result.stderr
    assert scalars(run) == before and list((run / "tb").glob("*.pending")) == pending


def test_a_resumed_logger_purges_only_the_steps_after_the_checkpoint(tmp_path):
    first = SummaryWriter(str(tmp_path / "tb"))
    for step in (2, 4, 6, 8):
        first.add_scalar("rollout/ep_rew_mean", step, step)
    first.close()
    time.sleep(1.1)  # event files are named by the second they were opened

    logger = tensorboard_logger(tmp_path, resume_step=4)
    logger.record("rollout/ep_rew_mean", 100.0)
    logger.dump(step=5)
    logger.close()

    assert scalars(tmp_path)["rollout/ep_rew_mean"] == [(2, 2.0), (4, 4.0), (5, 100.0)]


def test_a_resumed_logger_writes_the_checkpoints_pending_records_in_place_of_what_the_stop_wrote(tmp_path):
    logger = tensorboard_logger(tmp_path, resume_step=None)
    logger.record("env/friction", 0.5)
    logger.dump(step=4)
    logger.record_mean("train/loss", 1.0)
    logger.record_mean("train/loss", 2.0)
    logger.record("cbp/utility", torch.tensor([0.25, 0.5]), exclude=("stdout", "log"))
    logger.record("rollout/ep_rew_mean", np.float32(7.5))
    logger.record("rollout/lengths", np.array([3, 4]))
    logger.record("custom/figure", object())  # JSON cannot hold it: left out
    checkpointed = json.loads(json.dumps(pending_records(logger)))  # as the run state stores them
    del logger.name_to_value["custom/figure"], logger.name_to_excluded["custom/figure"]  # TensorBoard cannot write it
    logger.dump_pending(6)
    logger.close()
    assert scalars(tmp_path)["train/loss"] == [(6, 1.5)]

    resumed = tensorboard_logger(tmp_path, resume_step=4, pending=checkpointed)
    assert not list((tmp_path / "tb").glob("*.pending"))
    assert resumed.name_to_count["train/loss"] == 2 and resumed.name_to_excluded["cbp/utility"] == ("stdout", "log")
    assert torch.equal(resumed.name_to_value["cbp/utility"], torch.tensor([0.25, 0.5])) and "custom/figure" not in resumed.name_to_value
    assert np.array_equal(resumed.name_to_value["rollout/lengths"], np.array([3, 4]))
    resumed.record_mean("train/loss", 4.5)
    resumed.dump(step=8)
    resumed.close()
    logged = scalars(tmp_path)
    assert logged["train/loss"] == [(8, 2.5)] and logged["rollout/ep_rew_mean"] == [(8, 7.5)]
    assert logged["env/friction"] == [(4, 0.5)]


def test_values_recorded_after_the_last_dump_are_written_at_the_stop_step(tmp_path):
    logger = tensorboard_logger(tmp_path, resume_step=None)
    logger.record("env/segment_return", 1.0)
    logger.dump(step=4)
    logger.record("train/loss", 2.0)
    logger.dump_pending(4)  # a run that ended right after SB3's own last dump, at its update
    logger.dump_pending(5)  # nothing left: no events file
    logger.record("env/segment_return", 3.0)
    logger.dump_pending(6)  # a run stopped between two dumps
    logger.close()

    assert scalars(tmp_path) == {"env/segment_return": [(4, 1.0), (6, 3.0)], "train/loss": [(4, 2.0)]}
    assert len(list((tmp_path / "tb").glob("*.pending"))) == 2


def test_resume_refuses_a_corrupt_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert run_train(*TINY_PPO, "--total-steps", 256, "--run-dir", run).returncode == 0
    (run / "checkpoints" / "model_256_steps.zip").write_text("not a zip")
    listing = sorted(p.name for p in run.rglob("*"))
    result = run_train("--resume", run, "--total-steps", 512)
    assert result.returncode == 2 and "model_256_steps.zip" in result.stderr and len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in run.rglob("*")) == listing


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "SlipperyMoon"], "env 'SlipperyMoon' is invalid"),
        (["--method", "magic"], "method 'magic' is unknown"),
        (["--set", "policy.widht=3"], "'policy.widht' is unknown"),
        (["--set", "algo_kwargs.n_steps=many"], "'algo_kwargs.n_steps'='many' is invalid"),
        (["--set", "policy.cbp.replacement_rate=2"], "replacement_rate=2"),
        (["--total-steps", "0"], "'total_steps'=0 is invalid"),
        (["--total-steps", "-5"], "'total_steps'=-5 is invalid"),
        (["--resume", "nowhere"], "is not a run directory"),
        (["--set", "novalue"], "expected key=value"),
        (["--threads", "0"], "'torch_threads'=0 is invalid"),
        (["--set", "logging.eval_frictions=[0.5,-1]"], "'logging.eval_frictions'=[0.5, -1] is invalid"),
        (["--env", "Hopper-v5", "--set", "logging.eval_frictions=[1]"], "'logging.eval_frictions' needs a Slippery* env"),
        (["--env", "Hopper-v5", "--change-every", "100"], "--change-every needs a Slippery* env"),
        (["--env", "Hopper-v5", "--set", "env.kwargs.friction=0.5"], "--set env.kwargs.friction=0.5 needs a Slippery* env"),
        (["--set", "policy.cbp.decay_rate=fast"], "decay_rate='fast' is invalid"),
        (["--method", "shrink_perturb", "--set", "policy.shrink_perturb.noise_scale=[1]"], "noise_scale=[1] is invalid"),
        (["--device", "cudaa"], "'device'='cudaa' is invalid"),
        (["--set", "algo_kwargs.n_steps=2.5"], "'algo_kwargs.n_steps'=2.5 is invalid: expected int"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train.main([*args, "--run-dir", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error and len(error.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_numbers_written_like_1e_4_and_lists_for_tuple_settings_are_read_as_meant(tmp_path):
    (tmp_path / "run.yaml").write_text("base: " + str(ROOT / "configs/sac/cbp.yaml") + "\n"
                                       "algo_kwargs: {learning_rate: 3e-4, train_freq: [1, episode]}\n")
    config = build_config(set_dotted(read_yaml(tmp_path / "run.yaml"), "policy.cbp.replacement_rate=1e-5"))
    assert config.algo_kwargs["learning_rate"] == 3e-4 and config.policy.cbp["replacement_rate"] == 1e-5
    assert config.algo_kwargs["train_freq"] == (1, "episode")
    assert build_config(set_dotted(read_yaml(tmp_path / "run.yaml"), "algo_kwargs.buffer_size=1e6")).algo_kwargs["buffer_size"] == 10**6


def test_the_recorded_config_holds_complete_plasticity_settings(tmp_path):
    (tmp_path / "partial.yaml").write_text("base: " + str(ROOT / "configs/ppo/cbp.yaml") + "\n"
                                           "policy: {init: orthogonal, cbp: null, redo: {tau: 0.2}}\n")
    config = build_config(read_yaml(tmp_path / "partial.yaml"))
    assert config.policy.cbp is None
    assert config.policy.redo == dict(reset_period=1000, tau=0.2, init="kaiming", reset_optimizer_state=True)
    config = build_config(set_dotted(read_yaml(ROOT / "configs/sac/std.yaml"), "policy.cbp={replacement_rate: 0.01}"))
    assert config.policy.cbp == dict(replacement_rate=0.01, maturity_threshold=10_000, decay_rate=0.99, init="default",
                                     fractional="accumulate", reset_optimizer_state=True)


def test_a_config_file_that_sets_a_friction_schedule_for_a_non_slippery_env_is_refused(tmp_path, capsys):
    base = "base: " + str(ROOT / "configs/ppo/cbp.yaml") + "\n"
    (tmp_path / "hopper.yaml").write_text(base + "env: {id: Hopper-v5}\n")
    assert build_config(read_yaml(tmp_path / "hopper.yaml")).env.kwargs == {}  # the base's schedule is dropped
    (tmp_path / "contradiction.yaml").write_text(base + "env: {id: Hopper-v5, kwargs: {change_every: 100}}\n")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", str(tmp_path / "contradiction.yaml"), "--total-steps", "64", "--set", "algo_kwargs.n_steps=64",
                    "--set", "algo_kwargs.batch_size=32", "--run-dir", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1
    assert "contradiction.yaml' sets env.kwargs.change_every, which needs a Slippery* env" in error and "'Hopper-v5'" in error
    assert not (tmp_path / "run").exists()
    (tmp_path / "misspelt_base.yaml").write_text("base: " + str(ROOT / "configs/ppo/cbp.yaml") + "\nenv: {id: Hoper-v5, kwargs: {change_every: 100}}\n")
    (tmp_path / "renamed.yaml").write_text("base: misspelt_base.yaml\nenv: {id: SlipperyHopper}\n")
    assert build_config(read_yaml(tmp_path / "renamed.yaml")).env.kwargs["change_every"] == 100
    (tmp_path / "not_an_id.yaml").write_text(base + "env: {id: [1], kwargs: {change_every: 100}}\n")
    with pytest.raises(ValueError, match=r"'env.id'=\[1\] is invalid: expected str"):
        build_config(read_yaml(tmp_path / "not_an_id.yaml"))


def test_any_gymnasium_env_trains_without_the_friction_protocol_of_the_configs(tmp_path):
    result = run_train("--env", "Hopper-v5", "--total-steps", 64, "--set", "algo_kwargs.n_steps=64",
                       "--set", "algo_kwargs.batch_size=32", "--run-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["env"]["kwargs"] == {}


def test_resume_may_change_only_the_run_length_device_threads_checkpoints_and_logging(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(build_config(read_yaml(ROOT / "configs/ppo/cbp.yaml")).to_dict()))
    refused = {
        ("--set", "algo_kwargs.ent_coef=0.01"): "'algo_kwargs.ent_coef' is 0.0 there, not 0.01",
        ("--seed", "1"): "'seed' is 0 there, not 1",
        ("--set", "policy.cbp.replacement_rate=0.001"): "'policy.cbp.replacement_rate' is 0.0001 there, not 0.001",
        ("--algo", "sac"): "takes the algorithm, method, config and folder from the run: drop --algo",
        ("--method", "cbp"): "drop --method",
        ("--run-dir", str(tmp_path / "elsewhere")): "drop --run-dir",
    }
    for args, message in refused.items():
        with pytest.raises(SystemExit):
            train.main(["--resume", str(run), *args])
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        train.main(["--resume", str(run), "--total-steps", "100", "--threads", "1", "--set", "logging.health=false",
                    "--set", "checkpoint.keep=5", "--env", "SlipperyAnt"])
    assert "has no complete checkpoint" in capsys.readouterr().err  # past the settings check
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_sac_resume_reloads_the_newest_replay_buffer_or_refills_before_updating(tmp_path):
    run = tmp_path / "sac"
    result = run_train("--algo", "sac", "--env", "SlipperyHopper", "--total-steps", 300, "--checkpoint-every", 100,
                       "--run-dir", run, "--set", "algo_kwargs.learning_starts=100", "--set", "algo_kwargs.buffer_size=1000",
                       "--set", "policy.net_arch=[16,16]", "--set", "logging.health=false")
    assert result.returncode == 0, result.stderr
    assert [c.steps for c in list_checkpoints(run / "checkpoints")] == [100, 200, 300]
    assert [p.name for p in (run / "checkpoints").glob("*replay_buffer*")] == ["model_replay_buffer_300_steps.pkl"]

    def updates(steps: int) -> int:
        return SAC.load(run / "checkpoints" / f"model_{steps}_steps.zip")._n_updates

    result = run_train("--resume", run, "--total-steps", 400)
    assert result.returncode == 0 and "replay buffer" not in result.stderr, result.stderr
    assert updates(400) - updates(300) == 100
    (run / "checkpoints" / "model_replay_buffer_400_steps.pkl").unlink()
    result = run_train("--resume", run, "--total-steps", 550)
    assert result.returncode == 0, result.stderr
    assert "model_400_steps.zip has no replay buffer" in result.stderr and "takes 100 random-action steps" in result.stderr
    assert updates(550) - updates(400) == 50


def test_existing_run_dir_needs_resume_or_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit):
        train.main(["--run-dir", str(run)])
    assert "--resume" in capsys.readouterr().err and (run / "keep.txt").read_text() == "precious"
    with pytest.raises(SystemExit):
        train.main(["--resume", str(run), "--overwrite"])
    assert (run / "keep.txt").exists()


TINY_SAC_PROBED = ["--algo", "sac", "--env", "SlipperyHopper", "--set", "algo_kwargs.learning_starts=100",
                   "--set", "algo_kwargs.buffer_size=1000", "--set", "policy.net_arch=[16,16]",
                   "--set", "logging.health_every=100", "--set", "logging.probe_size=50"]


@pytest.mark.parametrize("algo_args, steps", [(TINY_PPO, 512), (TINY_SAC_PROBED, 400)], ids=["ppo", "sac"])
def test_same_seed_gives_the_same_run_and_evaluating_at_fixed_frictions_leaves_it_unchanged(tmp_path, algo_args, steps):
    every = steps // 2
    evaluation = ("--set", "logging.eval_frictions=[0.05,2.0]", "--set", f"logging.eval_every={every}",
                  "--set", "logging.eval_episodes=2")
    for name, extra in (("a", ()), ("b", evaluation)):
        result = run_train(*algo_args, "--total-steps", steps, "--seed", 7, "--run-dir", tmp_path / name, *extra)
        assert result.returncode == 0, result.stderr
    first, second = (scalars(tmp_path / name) for name in ("a", "b"))
    assert first["rollout/ep_rew_mean"] == second["rollout/ep_rew_mean"]
    assert first["health/actor/l1/effective_rank"] == second["health/actor/l1/effective_rank"]
    slippery, grippy = second["eval/return_at_friction_0.05"], second["eval/return_at_friction_2"]
    assert [step for step, _ in slippery] == [step for step, _ in grippy] == [every, steps]
    assert [value for _, value in slippery] != [value for _, value in grippy]
    assert not any(tag.startswith("eval/") for tag in first)
