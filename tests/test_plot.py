"""plot.py: merging event files, grouping and bootstrap, and the CLI on synthetic TensorBoard runs."""

from __future__ import annotations

import csv
import importlib.util
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("matplotlib", reason="plot.py needs the 'plot' extra")
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("plot", REPO / "plot.py")
plot = sys.modules["plot"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot)

STEP = 2048
N_LOGS = 50
CHANGES = (17, 34)  # log indices where the friction segment changes
FRICTIONS = (1.0, 0.05, 0.5)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(root: Path, name: str, method: str | None, seed: int, health: bool = True, returns: bool = True,
              algo: str = "ppo", env_id: str = "SlipperyAnt-v0") -> Path:
    """A synthetic train.py run: config.yaml and one TensorBoard event file under tb/."""
    run = root / name
    run.mkdir(parents=True)
    config = {"algo": algo, "seed": seed, "env": {"id": env_id}}
    if method is not None:
        config["method"] = method
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rng = np.random.default_rng(seed)
    decay = 1.0 if method == "std" else 0.0
    writer = SummaryWriter(str(run / "tb" / "PPO_1"))
    for i in range(N_LOGS):
        step, t = (i + 1) * STEP, i / N_LOGS
        segment = sum(i >= c for c in CHANGES)
        writer.add_scalar("env/friction_segment", segment, step)
        writer.add_scalar("env/friction", FRICTIONS[segment], step)
        if returns:
            writer.add_scalar("rollout/ep_rew_mean", 3000 * t * (1 - decay * t) + 200 * rng.standard_normal(), step)
        if health:
            for net, worse in (("actor", decay), ("critic", 0.5 * decay)):
                for site in ("l0", "l1"):
                    tag = f"health/{net}/{site}"
                    writer.add_scalar(f"{tag}/dead_frac", 0.02 + worse * 0.5 * t + 0.01 * rng.random(), step)
                    writer.add_scalar(f"{tag}/weight_mag", 0.05 + worse * 0.1 * t, step)
                    writer.add_scalar(f"{tag}/stable_rank_pct", 90 - worse * 50 * t, step)
                    writer.add_scalar(f"{tag}/effective_rank", 200 - worse * 140 * t + 5 * rng.random(), step)
    writer.close()
    return run


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "plot.py"), *args], cwd=cwd, capture_output=True, text=True)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the magic bytes."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


def test_load_scalars_merges_event_files_by_wall_time_and_later_values_win(tmp_path):
    first = SummaryWriter(str(tmp_path / "run" / "tb" / "z_first"))  # sorts last by name, first by time
    for step in range(30):
        first.add_scalar("rollout/ep_rew_mean", step, step)
        first.add_scalar("only/first", -step, step)
    first.close()
    resumed = SummaryWriter(str(tmp_path / "run" / "tb" / "a_resumed"))
    for step in range(20, 40, 2):  # repeats the even steps 20..28; the crashed run's odd ones are stale
        resumed.add_scalar("rollout/ep_rew_mean", 1000 + step, step)
    resumed.close()

    scalars = plot.load_scalars(tmp_path / "run")

    steps, values = scalars["rollout/ep_rew_mean"]
    np.testing.assert_array_equal(steps, np.r_[np.arange(20), np.arange(20, 40, 2)])
    np.testing.assert_allclose(values, np.r_[np.arange(20), 1000 + np.arange(20, 40, 2)])
    np.testing.assert_array_equal(scalars["only/first"][0], np.arange(30))


def test_aggregate_interpolates_over_the_overlap_with_rliables_iqm_and_bootstrap_ci():
    low_run = (np.arange(0, 101, 10), np.zeros(11))
    high_run = (np.arange(50, 151, 5), np.full(21, 2.0))

    curve = plot.aggregate([low_run, high_run], ci=0.95, n_boot=2000)

    assert curve.steps[0] == 50 and curve.steps[-1] == 100 and curve.n_runs == 2
    np.testing.assert_allclose(curve.iqm, 1.0)  # two runs: the IQM is their mean
    np.testing.assert_allclose(curve.low, 0.0)  # resampled means are 0, 1 or 2
    np.testing.assert_allclose(curve.high, 2.0)
    same = plot.aggregate([high_run, high_run, high_run], ci=0.95, n_boot=100)
    np.testing.assert_allclose([same.low, same.high], 2.0)
    assert plot.aggregate([low_run, (np.arange(200, 300), np.ones(100))], 0.95, 10) is None
    single = plot.aggregate([low_run], 0.95, 10)
    assert single.low is None and single.n_runs == 1

    steps = np.arange(0, 101, 10)
    runs = [(steps, np.full(11, value)) for value in (0.0, 1.0, 2.0, 100.0)]  # one run far off
    robust = plot.aggregate(runs, ci=0.95, n_boot=500)
    np.testing.assert_allclose(robust.iqm, 1.5)  # the middle two of four; the mean would be 25.75
    assert np.all(robust.low <= 1.5) and np.all(robust.high >= 1.5)


def test_runs_group_by_method_and_health_averages_sites_per_network(tmp_path):
    runs = [
        plot.load_run(write_run(tmp_path, "a", "cbp", 0)),
        plot.load_run(write_run(tmp_path, "b", "std", 0)),
        plot.load_run(write_run(tmp_path, "no_method_key", None, 1)),
        plot.load_run(write_run(tmp_path, "c", "cbp", 1)),
    ]
    groups = plot.group_by_method(runs)
    assert {m: [r.path.name for r in rs] for m, rs in groups.items()} == {
        "cbp": ["a", "c"], "std": ["b"], "no_method_key": ["no_method_key"]
    }

    writer = SummaryWriter(str(tmp_path / "sites" / "tb"))
    for step in (1, 2):
        writer.add_scalar("health/actor/l0/weight_mag", 10.0 * step, step)
        writer.add_scalar("health/actor/l1/weight_mag", 30.0 * step, step)
        writer.add_scalar("health/critic1/l0/weight_mag", 5.0, step)
        writer.add_scalar("health/actor/grad_norm", 99.0, step)
    writer.close()
    nets = plot.network_series(plot.load_scalars(tmp_path / "sites"), "weight_mag")
    assert sorted(nets) == ["actor", "critic1"]
    np.testing.assert_allclose(nets["actor"][1], [20.0, 40.0])


def test_friction_segments_start_where_the_segment_changes(tmp_path):
    run = plot.load_run(write_run(tmp_path, "run", "cbp", 0, health=False))
    expected = [(STEP, 1.0), ((CHANGES[0] + 1) * STEP, 0.05), ((CHANGES[1] + 1) * STEP, 0.5)]
    segments = plot.run_segments(run.scalars)
    assert [s for s, _ in segments] == [s for s, _ in expected]
    np.testing.assert_allclose([f for _, f in segments], [f for _, f in expected])
    assert plot.common_segments([run, run]) == segments

    fig, ax = plot.plt.subplots()
    ax.plot(*run.scalars["env/friction"])
    plot._mark_segments(ax, segments, label_friction=True)
    assert [line.get_xdata()[0] for line in ax.lines[1:]] == [s for s, _ in expected[1:]]
    assert [text.get_text() for text in ax.texts] == ["μ=1", "μ=0.05", "μ=0.5"]
    plot.plt.close(fig)


def write_segment_run(root: Path, name: str, scale: float, n_logs: int, second_friction: float = 0.5) -> Path:
    """A 1000-step run logged every 100 steps from 100 (up to ``n_logs`` of them) whose friction changes at step 600:
    return ``scale × step``; dead fractions 0.1 and 0.3 (actor), 0.5 (critic0) and 0.7 (critic1)."""
    (root / name).mkdir(parents=True)
    (root / name / "config.yaml").write_text(yaml.safe_dump({"method": "cbp", "total_steps": 1000}))
    writer = SummaryWriter(str(root / name / "tb"))
    for step in range(100, 100 * n_logs + 1, 100):
        writer.add_scalar("env/friction_segment", int(step >= 600), step)
        writer.add_scalar("env/friction", second_friction if step >= 600 else 2.0, step)
        writer.add_scalar("rollout/ep_rew_mean", scale * step, step)
        for tag, value in (("actor/l0", 0.1), ("actor/l1", 0.3), ("critic0/l0", 0.5), ("critic1/l0", 0.7)):
            writer.add_scalar(f"health/{tag}/dead_frac", value, step)
    writer.close()
    return root / name


def table_rows(table: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]


def test_segment_table_averages_each_segments_last_fifth_over_the_runs_that_completed_it(tmp_path):
    full = plot.load_run(write_segment_run(tmp_path, "full", 1.0, n_logs=10))
    other = plot.load_run(write_segment_run(tmp_path, "other", 3.0, n_logs=10, second_friction=0.25))
    stopped = plot.load_run(write_segment_run(tmp_path, "stopped", 2.0, n_logs=7))

    rows = plot.segment_summary(full)

    assert [(r["start"], r["end"], r["friction"], r["complete"]) for r in rows] == [(100, 600, 2.0, 1), (600, 1000, 0.5, 1)]
    assert [r["return"] for r in rows] == [500.0, 1000.0]  # [500, 600) and [920, 1000]: the next start is out
    assert rows[0]["dead_frac/actor"] == pytest.approx(0.2) and rows[0]["dead_frac/critic"] == pytest.approx(0.6)
    assert [r["complete"] for r in plot.segment_summary(stopped)] == [1, 0]
    (tmp_path / "stopped" / "checkpoints").mkdir()
    (tmp_path / "stopped" / "checkpoints" / "model_run_state_1000_steps.json").write_text("{}")
    (tmp_path / "stopped" / "checkpoints" / "model_1000_steps.zip").write_bytes(b"")
    assert plot.segment_summary(plot.load_run(tmp_path / "stopped"))[-1]["complete"] == 1  # finished, logged last at 700
    table = plot.segment_table({"cbp": [full, stopped]})
    assert "| segment | friction | steps | runs | return | dead units %" in table
    first, second = table_rows(table)
    assert first[:6] == ["0", "2", "100-600", "2", "750 [500, 1000]", "20.0 / 60.0"]  # stopped: 2 x 500
    assert first[6:] == ["– / –", "– / –"]
    assert second[:5] == ["1", "0.5", "600-1k", "1", "1000"]  # the stopped run's partial segment is left out
    assert table_rows(plot.segment_table({"cbp": [stopped]}))[1][:5] == ["1 (partial)", "0.5", "600-700", "1", "1400"]
    assert table_rows(plot.segment_table({"cbp": [full, other]}))[1][:5] == ["1", "–", "600-1k", "2", "2000 [1000, 3000]"]


def test_cli_two_methods_two_seeds_writes_return_and_health_figures(tmp_path):
    dirs = [str(write_run(tmp_path, f"{m}_s{s}", m, s)) for m in ("std", "cbp") for s in (0, 1)]
    out = tmp_path / "figures"

    result = run_cli(*dirs, "--out", str(out), "--bootstrap", "200", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert files_under(out) == {out / name for name in ("return.png", "health.png", "segments.md", "summary.csv")}
    assert "### std" in (out / "segments.md").read_text() and "### cbp" in (out / "segments.md").read_text()
    assert str(out / "return.png") in result.stdout and str(out / "health.png") in result.stdout
    assert png_size(out / "return.png") == (1350, 720)  # 9 x 4.8 in at 150 dpi
    assert png_size(out / "health.png") == (1800, 1080)  # 2 x 2 panels
    assert (out / "return.png").stat().st_size > 40_000
    assert (out / "health.png").stat().st_size > 80_000


def test_cli_single_run_defaults_to_its_plots_folder(tmp_path):
    run = write_run(tmp_path, "run", "cbp", 0)

    result = run_cli(str(run), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert files_under(run / "plots") == {run / "plots" / name for name in ("return.png", "health.png", "segments.md", "summary.csv")}
    assert png_size(run / "plots" / "return.png") == (1350, 720)
    assert (run / "plots" / "health.png").stat().st_size > 40_000


def test_a_sweep_root_gives_one_set_of_figures_per_env_and_algorithm(tmp_path, capsys):
    root = tmp_path / "sweep"
    for method in ("std", "cbp"):
        for seed in (0, 1):
            write_run(root, f"SlipperyAnt-v0_ppo_{method}_s{seed}", method, seed)
    write_run(root, "SlipperyHopper-v0_sac_cbp_s0", "cbp", 0, algo="sac", env_id="SlipperyHopper-v0")
    (root / "SlipperyAnt-v0_ppo_cbp_s2").mkdir()
    (root / "SlipperyAnt-v0_ppo_cbp_s2" / "config.yaml").write_text("algo: ppo\n")  # started, nothing logged yet
    out = tmp_path / "figures"

    plot.main([str(root), "--out", str(out), "--bootstrap", "200"])

    assert f"note: {root / 'SlipperyAnt-v0_ppo_cbp_s2'} has no TensorBoard events yet; left out" in capsys.readouterr().out

    ant, hopper = out / "SlipperyAnt-v0_ppo", out / "SlipperyHopper-v0_sac"
    assert {p.parent for p in files_under(out)} == {ant, hopper}
    assert png_size(ant / "health.png") == (1800, 1080) and png_size(hopper / "return.png") == (1350, 720)
    ant_table, hopper_table = (ant / "segments.md").read_text(), (hopper / "segments.md").read_text()
    assert "### std" in ant_table and "### std" not in hopper_table
    assert all(row[3] == "2" for row in table_rows(ant_table)) and all(row[3] == "1" for row in table_rows(hopper_table))


def test_summary_csv_has_a_row_per_run_and_segment_with_each_networks_health(tmp_path):
    full = plot.load_run(write_segment_run(tmp_path, "full", 1.0, n_logs=10))
    stopped = plot.load_run(write_segment_run(tmp_path, "stopped", 2.0, n_logs=7))

    path = plot.write_summary([full, stopped], tmp_path / "summary.csv")

    with path.open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["run"], r["segment"], r["complete"]) for r in rows] == [
        ("full", "0", "True"), ("full", "1", "True"), ("stopped", "0", "True"), ("stopped", "1", "False")]
    assert list(rows[0])[:11] == ["env", "algo", "method", "seed", "run", "segment", "friction", "start", "end", "complete", "return"]
    assert {"actor/dead_frac", "critic0/dead_frac", "critic1/dead_frac"} <= set(rows[0])
    assert float(rows[0]["actor/dead_frac"]) == pytest.approx(0.2) and float(rows[0]["critic1/dead_frac"]) == pytest.approx(0.7)
    assert [float(r["return"]) for r in rows] == [500.0, 1000.0, 1000.0, 1400.0]
    assert rows[1]["friction"] == "0.5" and rows[1]["start"] == "600" and rows[1]["end"] == "1000"


def test_run_without_health_tags_gives_only_the_return_figure(tmp_path, capsys):
    run = write_run(tmp_path, "run", "std", 0, health=False)

    plot.main([str(run), "--out", str(tmp_path / "out")])

    assert files_under(tmp_path / "out") == {tmp_path / "out" / name for name in ("return.png", "segments.md", "summary.csv")}
    assert "health.png not written" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "is not a directory"),
        ("no_events", "no TensorBoard event files"),
        ("no_return", "no run has the tag rollout/ep_rew_mean"),
        ("bad_ci", "--ci must be"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, case, message):
    good = write_run(tmp_path, "good", "cbp", 0, health=False)
    empty = tmp_path / "empty"
    (empty / "tb").mkdir(parents=True)
    argv = {
        "missing": [str(good), str(tmp_path / "nope")],
        "no_events": [str(good), str(empty)],
        "no_return": [str(write_run(tmp_path, "bad", "std", 0, returns=False))],
        "bad_ci": [str(good), "--ci", "95"],
    }[case]
    before = files_under(tmp_path)

    with pytest.raises(SystemExit) as exit_info:
        plot.main([*argv, "--out", str(tmp_path / "out")])

    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert captured.err.startswith("plot.py: error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert files_under(tmp_path) == before


def test_cli_bad_input_as_a_subprocess(tmp_path):
    result = run_cli(str(tmp_path / "nope"), cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.startswith("plot.py: error: ") and result.stderr.count("\n") == 1
    assert result.stdout == "" and not (tmp_path / "plots").exists()
