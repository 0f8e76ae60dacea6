"""evaluate.py: checkpoints of tiny PPO and SAC runs evaluated at fixed frictions, and its one-line errors."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env

import agents
import envs

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("evaluate", REPO / "evaluate.py")
evaluate = sys.modules["evaluate"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate)

CHANGE_EVERY = 200
FAST = ("--episodes", "1", "--max-episode-steps", "50", "--frictions", "0.1", "1")
TINY_NET = dict(net_arch=[16, 16], cbp=dict(maturity_threshold=5, replacement_rate=0.01))


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "evaluate.py", *map(str, args)], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )


def rounded(friction: float) -> float:
    return float(f"{friction:.4g}")


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train.py-like PPO run: config.yaml and complete checkpoints at 128 and 256 steps."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("ppo_run")
    env_kwargs = dict(change_every=CHANGE_EVERY, schedule_seed=0, friction_range=[0.02, 2.0])
    venv = make_vec_env("SlipperyHopper-v0", env_kwargs=env_kwargs, seed=0)
    model = PPO(agents.CBPActorCriticPolicy, venv, n_steps=64, batch_size=32, n_epochs=1, policy_kwargs=TINY_NET, seed=0)
    model.learn(256, callback=agents.RunCheckpointCallback(save_freq=128, save_path=run / "checkpoints", keep=0))
    config = {"algo": "ppo", "method": "cbp", "seed": 0, "env": {"id": "SlipperyHopper", "n_envs": 1, "kwargs": env_kwargs}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


@pytest.fixture(scope="module")
def sac_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete SAC checkpoint at 100 steps, in a run without config.yaml."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("sac_run")
    venv = make_vec_env("SlipperyHopper-v0", env_kwargs=dict(change_every=40, schedule_seed=3), seed=0)
    model = SAC(agents.CBPSACPolicy, venv, learning_starts=50, batch_size=32, policy_kwargs=TINY_NET, seed=0)
    model.learn(100, callback=agents.RunCheckpointCallback(save_freq=100, save_path=run / "checkpoints", keep=0))
    return run / "checkpoints" / "model_100_steps.zip"


def expected_trained_frictions(run: Path) -> set[float]:
    """Frictions of segments 0..last reached, recomputed from the schedule the run used."""
    checkpoints = agents.list_checkpoints(run / "checkpoints")
    segment = max(s["segment"] for c in checkpoints for s in c.load_run_state()["schedule_states"])
    assert segment >= 1, "the fixture run should have changed friction at least once"
    schedule = envs.FrictionSchedule(CHANGE_EVERY, schedule_seed=0)
    return {rounded(schedule.friction_at(k)) for k in range(segment + 1)}


def health_keys(record: dict) -> list[str]:
    return [key for key in record if key.startswith("health/")]


def test_run_dir_gives_a_curve_over_checkpoints_and_frictions(ppo_run: Path) -> None:
    result = run_cli(ppo_run, *FAST, "--health")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert str(ppo_run / "evaluation.json") in result.stdout  # default --out: the run directory

    data = json.loads((ppo_run / "evaluation.json").read_text())
    metadata = (data["env_id"], data["algo"], data["method"], data["seed"], data["episodes"])
    assert metadata == ("SlipperyHopper-v0", "ppo", "cbp", 0, 1)
    trained = expected_trained_frictions(ppo_run)
    assert set(data["trained_frictions"]) == trained
    frictions = {0.1, 1.0} | trained
    records = data["records"]
    assert [(r["steps"], r["friction"]) for r in records] == [(s, f) for s in (128, 256) for f in sorted(frictions)]
    for record in records:
        assert record["trained"] == (record["friction"] in trained)
        assert len(record["returns"]) == 1 and all(math.isfinite(x) for x in record["returns"])
        assert record["mean_return"] == pytest.approx(record["returns"][0]) and record["std_return"] == 0.0
    for steps in (128, 256):
        returns = {r["friction"]: r["mean_return"] for r in records if r["steps"] == steps}
        assert len(set(returns.values())) > 1, f"friction did not change any return at {steps} steps: {returns}"

    # --health: every site's metrics, the same for every friction of one checkpoint
    keys = health_keys(records[0])
    assert {f"health/{net}/{site}/dead_frac" for net in ("actor", "critic") for site in ("l0", "l1")} <= set(keys)
    assert all(0.0 <= r["health/actor/l0/dead_frac"] <= 1.0 for r in records)
    assert all(health_keys(r) == keys for r in records)

    with (ppo_run / "evaluation.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(records)
    assert float(rows[0]["mean_return"]) == pytest.approx(records[0]["mean_return"])
    assert set(keys) <= set(rows[0])


def test_a_sweep_root_evaluates_each_of_its_runs(ppo_run: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "sweep"
    for name in ("SlipperyHopper-v0_ppo_cbp_s0", "SlipperyHopper-v0_ppo_cbp_s1"):
        shutil.copytree(ppo_run, root / name, ignore=shutil.ignore_patterns("evaluation.*"))

    evaluate.main([str(root), *FAST, "--out", str(tmp_path / "out")])

    for name in ("SlipperyHopper-v0_ppo_cbp_s0", "SlipperyHopper-v0_ppo_cbp_s1"):
        data = json.loads((tmp_path / "out" / name / "evaluation.json").read_text())
        assert data["run_dir"].endswith(name) and {r["steps"] for r in data["records"]} == {128, 256}
    assert capsys.readouterr().out.count("== ") == 2


def test_one_checkpoint_sees_the_same_episodes(ppo_run: Path, tmp_path: Path) -> None:
    checkpoint = ppo_run / "checkpoints" / "model_128_steps.zip"
    out = tmp_path / "out"
    result = run_cli(checkpoint, *FAST, "--out", out)
    assert result.returncode == 0, result.stderr
    records = json.loads((out / "evaluation.json").read_text())["records"]
    # a bare checkpoint gets the frictions its run had trained on by then: segment 0 only at 128 steps
    first = rounded(envs.FrictionSchedule(CHANGE_EVERY, schedule_seed=0).friction_at(0))
    assert [(r["friction"], r["trained"]) for r in records] == sorted([(0.1, False), (1.0, False), (first, True)])
    assert all(r["steps"] == 128 and r["checkpoint"] == str(checkpoint.resolve()) for r in records)
    assert all(not health_keys(r) for r in records)  # no --health, no health columns
    # episode seeds do not depend on what else is evaluated: returns match the whole-run evaluation
    reference = evaluate_in_process(ppo_run, tmp_path / "reference")
    for record in records:
        assert record["returns"] == pytest.approx(reference[(128, record["friction"])], rel=1e-6)


def evaluate_in_process(path: Path, out: Path) -> dict[tuple[int, float], list[float]]:
    evaluate.main([str(path), *FAST, "--out", str(out)])
    return {(r["steps"], r["friction"]): r["returns"] for r in json.loads((out / "evaluation.json").read_text())["records"]}


def test_paths_inside_the_working_directory_are_recorded_relative(
    ppo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ppo_run.parent)
    checkpoint = Path(ppo_run.name, "checkpoints", "model_128_steps.zip")
    evaluate.main([str(checkpoint), *FAST, "--out", str(tmp_path / "out")])
    data = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert data["run_dir"] == ppo_run.name
    assert {r["checkpoint"] for r in data["records"]} == {str(checkpoint)}


def test_sac_checkpoint_without_config_takes_algo_from_zip(sac_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(sac_checkpoint, *FAST, "--env", "SlipperyHopper", "--health", "--out", out)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "evaluation.json").read_text())
    assert (data["algo"], data["env_id"]) == ("sac", "SlipperyHopper-v0")
    # no config.yaml: the trained friction is the one recorded in the run state
    state = agents.list_checkpoints(sac_checkpoint.parent)[0].load_run_state()
    assert data["trained_frictions"] == [rounded(state["schedule_states"][0]["friction"])]
    records = data["records"]
    assert [r["friction"] for r in records] == sorted({0.1, 1.0, *data["trained_frictions"]})
    assert all(r["steps"] == 100 and math.isfinite(r["mean_return"]) for r in records)
    assert {f"health/{net}/l1/dead_frac" for net in ("actor", "critic0", "critic1")} <= set(records[0])


def corrupt_params(source: Path, target: Path) -> None:
    """A copy of an SB3 zip whose ``data`` is intact but whose policy weights are garbage."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for name in original.namelist():
            copy.writestr(name, b"not a torch file" if name == "policy.pth" else original.read(name))


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("evaluation.*"))
    return target


BAD_INPUTS = {
    "missing path": (lambda run, tmp: [str(tmp / "nope")], "does not exist"),
    "no complete checkpoint": (
        lambda run, tmp: [str(_without_run_states(copy_run(run, tmp / "run")))],
        "no complete checkpoint",
    ),
    "text file renamed .zip": (lambda run, tmp: [str(_text_zip(tmp))], "model.zip"),
    "corrupt zip in run dir": (lambda run, tmp: [str(_corrupt_in_run(run, tmp))], "model_256_steps.zip"),
    "unloadable weights": (lambda run, tmp: [str(_bad_weights(run, tmp))], "could not be loaded"),
    "friction 0": (lambda run, tmp: [str(run), "--frictions", "0"], "--frictions"),
    "negative friction": (lambda run, tmp: [str(run), "--frictions", "1", "-0.5"], "--frictions"),
    "no episodes": (lambda run, tmp: [str(run), "--episodes", "0"], "--episodes"),
    "unknown env": (lambda run, tmp: [str(run), "--env", "NoSuchEnv"], "NoSuchEnv"),
    "env without friction": (lambda run, tmp: [str(run), "--env", "Hopper-v5"], "Slippery"),
    "no config and no --env": (lambda run, tmp: [str(_without_config(run, tmp))], "--env"),
    "checkpoints of two runs": (
        lambda run, tmp: [str(run), str(copy_run(run, tmp / "other") / "checkpoints" / "model_128_steps.zip")],
        "one run per call",
    ),
}


def _without_run_states(run: Path) -> Path:
    for state in (run / "checkpoints").glob("*run_state*"):
        state.unlink()
    return run


def _text_zip(tmp: Path) -> Path:
    (tmp / "checkpoints").mkdir()
    path = tmp / "checkpoints" / "model.zip"
    path.write_text("this is not a zip\n")
    return path


def _corrupt_in_run(run: Path, tmp: Path) -> Path:
    copy = copy_run(run, tmp / "run")
    (copy / "checkpoints" / "model_256_steps.zip").write_text("truncated")
    return copy


def _bad_weights(run: Path, tmp: Path) -> Path:
    copy = copy_run(run, tmp / "run")
    checkpoint = copy / "checkpoints" / "model_256_steps.zip"
    corrupt_params(run / "checkpoints" / "model_256_steps.zip", checkpoint)
    return checkpoint


def _without_config(run: Path, tmp: Path) -> Path:
    copy = copy_run(run, tmp / "run")
    (copy / "config.yaml").unlink()
    return copy / "checkpoints" / "model_128_steps.zip"


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(
    case: str, ppo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make_args, expected = BAD_INPUTS[case]
    args = make_args(ppo_run, tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([*FAST, "--out", str(out), *args])  # the case's options come last and win
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("evaluate.py: error: "), err
    assert expected in err
    assert not out.exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not list(tmp_path.rglob("evaluation.*"))


def test_cli_error_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoints" / "model_5_steps.zip"
    bad.parent.mkdir()
    bad.write_text("hello")
    result = run_cli(bad, "--env", "SlipperyHopper", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(bad) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
