"""sweep.py end to end on Ray (a local instance, and a head started with ``ray start``), and its checks of a grid.

Ray is kept on the loopback address (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) and without its token authentication
(``RAY_AUTH_MODE=disabled``), which would refuse a driver joining a head started here."""

import dataclasses
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sweep
from agents import list_checkpoints
from agents.run import format_duration
from agents.sweep import build_grid, parse_seeds, plan

ROOT = Path(__file__).resolve().parents[1]
RAY_ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
TINY = ["--env", "SlipperyHopper", "--change-every", "400", "--set", "algo_kwargs.n_steps=256", "--set", "algo_kwargs.batch_size=128",
        "--set", "algo_kwargs.n_epochs=2", "--set", "policy.net_arch=[16,16]", "--set", "checkpoint.every=256"]


def run_sweep(*args, **kwargs):
    return subprocess.run([sys.executable, "sweep.py", *map(str, args)], cwd=ROOT, env=RAY_ENV, capture_output=True,
                          text=True, timeout=600, **kwargs)


def newest_steps(run_dir):
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    return checkpoints[-1].steps if checkpoints else 0


def files(root):
    return {path: (path.stat().st_mtime_ns, path.stat().st_size) for path in sorted(root.rglob("*"))}


def train_processes(run_dir):
    """PIDs of the train.py processes working on ``run_dir``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"train.py") for arg in argv) and str(run_dir).encode() in argv:
            found.append(int(proc.name))
    return found


def assert_unique_steps(run_dir, tmp_path):
    """Every tag's steps, as TensorBoard reads the run's event files (each resumed attempt purges the steps after its
    checkpoint), appear once. The ``*.pending`` file is left out: it holds the values of the run's last update at its
    last step, where SB3's last regular dump may have written those of the update before (train.py's convention)."""
    events = tmp_path / run_dir.name
    events.mkdir()
    for path in (run_dir / "tb").glob("events.out.tfevents.*"):
        if path.suffix != ".pending":
            shutil.copy(path, events)
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    for tag in accumulator.Tags()["scalars"]:
        steps = [event.step for event in accumulator.Scalars(tag)]
        assert steps == sorted(set(steps)), f"{run_dir.name}: {tag} has duplicate or unordered steps"
    assert accumulator.Scalars("rollout/ep_rew_mean")[-1].step >= 4096


def test_sweep_runs_the_grid_reruns_nothing_and_extends_every_run_through_a_kill_9(tmp_path):
    root = tmp_path / "sweep"
    grid = ["--methods", "std,cbp", "--seeds", "0-1", "--root", root, *TINY]
    result = run_sweep(*grid, "--total-steps", 512)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    assert [r.name for r in runs] == [f"SlipperyHopper-v0_ppo_{m}_s{s}" for m in ("cbp", "std") for s in (0, 1)]
    for run in runs:
        assert newest_steps(run) >= 512 and (run / "config.yaml").is_file() and (run / "metadata.json").is_file()
        assert "progress: 512 of 512 steps" in (run / "train.log").read_text()
    assert "0 waiting, 0 running, 4 done, 0 failed" in result.stdout

    before = files(root)
    result = run_sweep(*grid, "--total-steps", 512)
    assert result.returncode == 0 and "nothing to do" in result.stdout, result.stdout + result.stderr
    assert files(root) == before

    victim = root / "SlipperyHopper-v0_ppo_cbp_s1"
    process = subprocess.Popen([sys.executable, "sweep.py", *map(str, grid), "--total-steps", "4096", "--max-concurrent", "2"],
                               cwd=ROOT, env=RAY_ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, concurrent = time.monotonic() + 300, 0
    while newest_steps(victim) < 1536 and time.monotonic() < deadline and process.poll() is None:
        concurrent = max(concurrent, sum(len(train_processes(run)) for run in runs))
        time.sleep(0.2)
    assert concurrent == 2
    pids = train_processes(victim)
    assert pids, "the run to kill was not running"
    os.kill(pids[0], signal.SIGKILL)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    for run in runs:
        assert newest_steps(run) >= 4096, output
        assert_unique_steps(run, tmp_path)
    assert "train.py was ended by signal 9" in (victim / "train.log").read_text()


def test_a_signal_checkpoints_the_running_runs_and_prints_the_continuing_command(tmp_path):
    root = tmp_path / "sweep"
    process = subprocess.Popen([sys.executable, "sweep.py", "--methods", "std", "--seeds", "0-1", "--root", str(root),
                                "--total-steps", "100000", *TINY, "--set", "checkpoint.every=50000"],
                               cwd=ROOT, env=RAY_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = [root / f"SlipperyHopper-v0_ppo_std_s{seed}" / "train.log" for seed in (0, 1)]
    deadline = time.monotonic() + 300
    while not all(log.is_file() and "progress:" in log.read_text() for log in logs) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert f"continue with: python sweep.py --methods std --seeds 0-1 --root {root}" in output
    for log in logs:
        assert 0 < newest_steps(log.parent) < 100000  # the checkpoint of the stop, not the config's every 50k
        assert "stopped by signal 15" in log.read_text()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_sweep_runs_on_a_cluster_given_by_address(tmp_path):
    """The head runs with ``--block`` in a process group of its own, which the test ends: ``ray stop`` would stop
    every Ray instance on the machine."""
    port = free_port()
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            env=RAY_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        result = run_sweep("--methods", "std", "--seeds", "4", "--root", tmp_path, "--total-steps", 256, *TINY,
                           "--address", f"127.0.0.1:{port}")
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert newest_steps(tmp_path / "SlipperyHopper-v0_ppo_std_s4") >= 256


@pytest.mark.parametrize("args, message", [
    (["--methods", "std,bogus"], "method 'bogus' is unknown for ppo"),
    (["--algo", "sac", "--methods", "std,ns"], "method 'ns' is unknown for sac"),
    (["--methods", "std", "--seeds", "3-1"], "seed range '3-1' is invalid"),
    (["--methods", "std", "--seeds", "0-x"], "seeds '0-x' are invalid"),
    (["--methods", "std", "--set", "policy.widths=5"], "config key 'policy.widths' is unknown"),
    (["--methods", "std", "--env", "SlipperyMoon"], "env 'SlipperyMoon' is invalid"),
    (["--methods", "std", "--cpus-per-run", "0"], "sweep key 'cpus_per_run'=0.0 is invalid"),
    (["--methods", "std", "--cpus-per-run", "999"], "sweep key 'cpus_per_run'=999 is invalid: this machine has"),
    (["--methods", "std", "--set", "algo_kwargs.batch_size=1"], "the ppo settings are invalid"),  # SB3's own check
])
def test_a_bad_grid_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys, args, message):
    root = tmp_path / "sweep"
    grid = ["--env", "SlipperyHopper", "--seeds", "0-1", "--root", str(root), *args]
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(grid)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error and error.count("\n") == 1, error
    assert not root.exists()


def test_a_sweep_file_holds_the_grid_and_flags_override_it(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(f"root: {tmp_path / 'sweep'}\nenvs: [SlipperyHopper]\nalgos: [ppo, sac]\n"
                     "methods: {ppo: [std, ns], sac: [std]}\nseeds: 0-1\ntotal_steps: 1000\n"
                     "set: {sac: {algo_kwargs.learning_starts: 100}}\n")
    data = sweep.grid_data(sweep.parse_args(["--file", str(study), "--seeds", "5"])[1])
    runs = plan(build_grid(data, ["logging.health=false"]))
    assert [r.name for r in runs] == ["SlipperyHopper-v0_ppo_std_s5", "SlipperyHopper-v0_ppo_ns_s5", "SlipperyHopper-v0_sac_std_s5"]
    sac = runs[2].start_args
    assert "algo_kwargs.learning_starts=100" in sac and sac.index("logging.health=false") > sac.index("algo_kwargs.learning_starts=100")
    assert "algo_kwargs.learning_starts=100" not in runs[0].start_args and all(r.total_steps == 1000 for r in runs)

    only_sac = plan(build_grid(sweep.grid_data(sweep.parse_args(["--file", str(study), "--algo", "sac"])[1])))
    assert [r.name for r in only_sac] == ["SlipperyHopper-v0_sac_std_s0", "SlipperyHopper-v0_sac_std_s1"]

    study.write_text(study.read_text() + "seed: 3\n")
    with pytest.raises(SystemExit):
        sweep.main(["--file", str(study)])
    assert "sweep key 'seed' is unknown" in capsys.readouterr().err


def test_runs_are_planned_seed_by_seed_and_a_folder_with_other_settings_is_refused(tmp_path):
    grid = build_grid(dict(root=str(tmp_path), envs="SlipperyHopper", methods="std,cbp", seeds="0-1", total_steps=512))
    assert [r.name[-6:] for r in plan(grid)] == ["std_s0", "cbp_s0", "std_s1", "cbp_s1"]
    other = subprocess.run([sys.executable, "train.py", *TINY, "--method", "std", "--total-steps", "256", "--change-every", "300",
                            "--run-dir", tmp_path / "SlipperyHopper-v0_ppo_std_s1"], cwd=ROOT, capture_output=True)
    assert other.returncode == 0
    with pytest.raises(ValueError, match="SlipperyHopper ppo std seed 1: .* holds a run with other settings"):
        plan(grid)


def test_seed_ranges():
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    assert parse_seeds([3, "5-6"]) == [3, 5, 6]
    assert parse_seeds(4) == [4]
    with pytest.raises(ValueError, match="expected at least one seed|invalid"):
        parse_seeds("")


class Board:
    """Stands in for the Ray actor: records the reports."""

    def __init__(self):
        self.reports = []
        self.report = self

    def remote(self, name, steps):
        self.reports.append((name, steps))


def test_a_run_that_fails_reports_its_last_line_and_the_sweep_exits_1(tmp_path):
    from agents.sweep import Progress, train_run

    grid = build_grid(dict(root=str(tmp_path), envs="SlipperyHopper", methods="std", seeds="0", total_steps=256))
    run = plan(grid)[0]
    bad_args = (*run.start_args, "--set", "algo_kwargs.batch_size=1")  # one the sweep's plan would have refused
    run = dataclasses.replace(run, start_args=bad_args)
    board = Board()

    outcome = train_run(run, board, tmp_path / ".sweep_stop")

    assert outcome.status == "failed" and outcome.message.startswith("train.py: error: the ppo settings are invalid")
    assert board.reports[0] == (run.name, 0) and not run.run_dir.exists()  # train.py refused it before writing
    lines = []
    view = Progress([run], out=None)
    view.line = lines.append
    view.ended(outcome)
    assert view.report([outcome], None, "python sweep.py ...") == 1
    assert f"failed: {run.name}: {outcome.message} (it failed before writing its run directory)" in lines


def test_a_second_sweep_on_the_same_root_is_refused(tmp_path, capsys):
    root = tmp_path / "sweep"
    root.mkdir()
    with (root / ".sweep.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1 on elsewhere\n")
        held.flush()
        with pytest.raises(SystemExit) as exit_info:
            sweep.main(["--env", "SlipperyHopper", "--methods", "std", "--seeds", "0", "--root", str(root), *TINY[2:]])
    assert exit_info.value.code == 2
    assert "another sweep is running on" in capsys.readouterr().err and "pid 1 on elsewhere" in (root / ".sweep.lock").read_text()
    assert sorted(p.name for p in root.iterdir()) == [".sweep.lock"]


def test_durations_count_days():
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(3 * 86400 + 5 * 3600 + 7) == "3d 05:00:07"
