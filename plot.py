"""Paper-style figures from the TensorBoard logs of cbp-rl training runs (return and unit health).

Reads every ``events.out.tfevents.*`` under each RUN_DIR (a folder of run directories, such as a
sweep's root, stands for all of them), groups the runs by env × algorithm (one set of figures each,
never pooled) and, within that, by the ``method`` of their ``config.yaml`` (the directory name when
it has none). Each method's curve is the interquartile mean (IQM) over its runs (seeds) with a
shaded stratified-bootstrap confidence interval, both from ``rliable`` (Agarwal et al., NeurIPS
2021); with fewer than 4 runs the IQM is the mean. Runs of one method are first put on a common
step grid: linear interpolation over the overlap of their step ranges.

- ``return.png``: ``rollout/ep_rew_mean`` over environment steps; dashed vertical lines where the
  friction segment changes, labelled with the new friction when every run agrees on it.
- ``health.png``: dead units (%), weight magnitude, stable rank and effective rank (DESIGN §4), one
  panel per metric and one line per network (actor, critic, ...), each line the mean over that
  network's logged layers: its hidden layers (sites), and for weight magnitude also its heads.
  With several methods, colour is the method and line style the network. Left out when no run
  logged ``health/`` tags.
- ``segments.md``: a table per method, one row per friction segment: its friction and steps, and
  the means over the segment's last fifth (after adapting to the friction) of the return and of
  dead units, stable rank and weight magnitude of the actor and the critic(s); the IQM over runs,
  for the return with its CI. The segment a run stopped in (before its ``total_steps``) counts only
  where no run completed it, marked partial.
- ``summary.csv``: one row per run × friction segment: env, algo, method, seed, segment, friction,
  steps, whether the run completed the segment, and the same last-fifth means of the return and, per
  network, of dead and dormant fractions, stable and effective rank and weight magnitude.

With several env × algorithm groups, each one's files go to ``OUT/{env}_{algo}/``.

Usage::

    python plot.py runs/std_s0 runs/std_s1 runs/cbp_s0 runs/cbp_s1 --out figures
    python plot.py runs/sweeps/sant --out results/sant      # every run of a sweep
    python plot.py runs/cbp_s0 --smooth 5      # one run: written to runs/cbp_s0/plots/
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, NoReturn, Sequence

import numpy as np
import scipy.stats
import yaml
from tensorboard.backend.event_processing import event_accumulator as ea

from agents import list_checkpoints
from agents.run import sweep_run_dirs

try:
    import matplotlib
    from rliable import library as rly

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter
except ImportError:
    plt = None

Series = tuple[np.ndarray, np.ndarray]

RETURN_TAG = "rollout/ep_rew_mean"
FRICTION_TAG = "env/friction"
SEGMENT_TAGS = ("env/friction_segment", "env/segment")
HEALTH_TAG = re.compile(r"^health/(?P<net>[^/]+)/(?P<site>[^/]+)/(?P<metric>[^/]+)$")
STEPS_LABEL = "environment steps"
LINESTYLES = ("-", "--", ":", "-.")
MARK_STYLE = dict(color="0.6", linestyle=(0, (4, 3)), linewidth=0.7, zorder=0)

# (panel title, candidate metrics: (tag metric, y label, scale)); the first metric any run has wins.
HEALTH_PANELS: tuple[tuple[str, tuple[tuple[str, str, float], ...]], ...] = (
    ("Dead units", (("dead_frac", "dead units (% of units)", 100.0),)),
    ("Weight magnitude", (("weight_mag", "mean |weight|", 1.0),)),
    (
        "Stable rank",
        (("stable_rank_pct", "stable rank (% of units)", 1.0), ("stable_rank", "stable rank (units)", 1.0)),
    ),
    ("Effective rank", (("effective_rank", "effective rank", 1.0),)),
)


@dataclass
class Run:
    """One training run: where it lives, its method and its scalars."""

    path: Path
    method: str
    config: dict[str, Any]
    scalars: dict[str, Series]
    checkpoint_steps: int | None = None  # steps of its newest checkpoint: train.py writes one when learn() ends

    @property
    def env_id(self) -> str:
        """The env id of its config; empty without one."""
        env = self.config.get("env")
        return str(env.get("id") or "") if isinstance(env, dict) else ""


@dataclass
class Curve:
    """A method's IQM over runs on a step grid, with the CI bounds (``None`` for a single run)."""

    steps: np.ndarray
    iqm: np.ndarray
    low: np.ndarray | None
    high: np.ndarray | None
    n_runs: int


@dataclass
class Stats:
    """How the runs of one method become a :class:`Curve`.

    :param smooth: centred moving-average window, in logged points (1: none)
    :param ci: confidence level of the bootstrap interval
    :param n_boot: bootstrap resamples of the runs
    :param seed: seed of the resampling
    """

    smooth: int = 1
    ci: float = 0.95
    n_boot: int = 1000
    seed: int = 0

    def curve(self, series: Sequence[Series], scale: float = 1.0) -> Curve | None:
        """Smoothed, scaled runs aggregated on a common grid (see :func:`aggregate`)."""
        scaled = [(steps, scale * smooth(values, self.smooth)) for steps, values in series]
        return aggregate(scaled, self.ci, self.n_boot, self.seed)

    def interval(self, values: Sequence[float]) -> tuple[float, float, float]:
        """IQM of one number per run and its CI (NaN bounds for a single run)."""
        center, low, high = iqm_interval(np.asarray(values, dtype=float)[:, None], self.ci, self.n_boot, self.seed)
        return float(center[0]), float(low[0]), float(high[0])


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------- reading


def event_files(run_dir: str | Path) -> list[Path]:
    """The TensorBoard event files found recursively under ``run_dir``."""
    return sorted(p for p in Path(run_dir).rglob("events.out.tfevents.*") if p.is_file())


def _read_event_file(path: Path) -> tuple[float, dict[str, Series]]:
    """Wall time of the file's first event and its scalars ``{tag: (steps, values)}``."""
    acc = ea.EventAccumulator(
        str(path), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 1, ea.IMAGES: 1, ea.AUDIO: 1, ea.TENSORS: 1}
    )
    acc.Reload()
    try:
        start = acc.FirstEventTimestamp()
    except ValueError:
        return float("inf"), {}
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        scalars[tag] = (np.array([e.step for e in events], dtype=np.int64), np.array([e.value for e in events]))
    return start, scalars


def _keep_last(steps: np.ndarray, values: np.ndarray) -> Series:
    """Sorted unique steps, each with the value logged last for it."""
    unique, first_from_end = np.unique(steps[::-1], return_index=True)
    return unique, values[::-1][first_from_end]


def _supersede(parts: Sequence[Series]) -> Series:
    """One tag's series from files in time order: each file replaces earlier values from its first step on."""
    steps, values = parts[0]
    for later_steps, later_values in parts[1:]:
        kept = steps < later_steps.min()
        steps, values = np.r_[steps[kept], later_steps], np.r_[values[kept], later_values]
    return _keep_last(steps, values)


def load_scalars(run_dir: str | Path) -> dict[str, Series]:
    """Every scalar tag of a run as ``{tag: (steps, values)}``, sorted by step.

    Event files are merged in the order of their first event's wall time. A resumed run rewrites
    its steps from the checkpoint on (train.py purges them), so per tag a later file's values win
    from its first step of that tag on: a step logged twice keeps the later value, and the crashed
    run's points between two resumed ones are dropped.
    """
    files = sorted(map(_read_event_file, event_files(run_dir)), key=lambda file: file[0])
    merged: dict[str, list[Series]] = {}
    for _, scalars in files:
        for tag, series in scalars.items():
            merged.setdefault(tag, []).append(series)
    return {tag: _supersede(parts) for tag, parts in merged.items()}


def _check_run_dir(path: Path) -> None:
    """``ValueError`` unless ``path`` is a directory with event files."""
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory (expected a run directory written by train.py)")
    if not event_files(path):
        raise ValueError(f"no TensorBoard event files (events.out.tfevents.*) under {path}; expected RUN_DIR/tb/")


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory; ``ValueError`` (in the user's words) if it is not a usable one."""
    path = Path(run_dir)
    _check_run_dir(path)
    config: Any = {}
    if (path / "config.yaml").is_file():
        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path / 'config.yaml'} is not valid YAML ({err.__class__.__name__})") from None
    config = config if isinstance(config, dict) else {}
    method = str(config.get("method") or path.resolve().name)
    checkpoints = list_checkpoints(path / "checkpoints")
    return Run(path, method, config, load_scalars(path), checkpoints[-1].steps if checkpoints else None)


def load_runs(run_dirs: Sequence[str]) -> list[Run]:
    """:func:`load_run` for each directory, in parallel processes when there are several."""
    for run_dir in run_dirs:
        _check_run_dir(Path(run_dir))
    if len(run_dirs) == 1:
        return [load_run(run_dirs[0])]
    with ProcessPoolExecutor(max_workers=min(len(run_dirs), os.cpu_count() or 1)) as pool:
        return list(pool.map(load_run, run_dirs))


# ---------------------------------------------------------------- series


def smooth(values: np.ndarray, n: int) -> np.ndarray:
    """Centred moving average over ``n`` logged points (the window shrinks at the ends)."""
    n = min(n, len(values))
    if n <= 1:
        return values
    kernel = np.ones(n)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones(len(values)), kernel, "same")


def iqm(values: np.ndarray) -> np.ndarray:
    """rliable's interquartile mean: the 25%-trimmed mean, over axis 0."""
    return scipy.stats.trim_mean(values, proportiontocut=0.25, axis=0)


def pointwise_iqm(scores: np.ndarray) -> np.ndarray:
    """The IQM over runs and tasks at each point of ``scores [runs, tasks, points]``."""
    return iqm(scores.reshape(-1, scores.shape[-1]))


def iqm_interval(matrix: np.ndarray, ci: float, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM over the runs (rows) of ``matrix [runs, points]`` and its percentile stratified-bootstrap interval
    (rliable's ``get_interval_estimates``, one task); NaN bounds for a single run."""
    center = pointwise_iqm(matrix[:, None, :])
    if matrix.shape[0] < 2:
        return center, np.full_like(center, np.nan), np.full_like(center, np.nan)
    with warnings.catch_warnings():  # arch deprecates the seeded RandomState that rliable hands it
        warnings.simplefilter("ignore", FutureWarning)
        _, intervals = rly.get_interval_estimates({"runs": matrix[:, None, :]}, pointwise_iqm, reps=n_boot,
                                                  confidence_interval_size=ci, random_state=np.random.RandomState(seed))
    return center, intervals["runs"][0], intervals["runs"][1]


def aggregate(series: Sequence[Series], ci: float, n_boot: int, seed: int = 0, max_points: int = 1000) -> Curve | None:
    """IQM and its CI (`iqm_interval`) of runs on a common grid over their overlap; ``None`` if they don't overlap."""
    series = [(s, v) for s, v in series if len(s)]
    if not series:
        return None
    if len(series) == 1:
        steps, values = series[0]
        return Curve(steps.astype(float), values, None, None, 1)
    start = max(float(s[0]) for s, _ in series)
    stop = min(float(s[-1]) for s, _ in series)
    if stop < start:
        return None
    inside = max(int(np.count_nonzero((s >= start) & (s <= stop))) for s, _ in series)
    grid = np.linspace(start, stop, max(1, min(inside, max_points)))
    matrix = np.stack([np.interp(grid, s, v) for s, v in series])
    return Curve(grid, *iqm_interval(matrix, ci, n_boot, seed), len(series))


def network_series(scalars: dict[str, Series], metric: str) -> dict[str, Series]:
    """``{net: (steps, mean over the net's sites)}`` of one health metric, at steps every site logged."""
    sites: dict[str, list[Series]] = {}
    for tag, series in scalars.items():
        match = HEALTH_TAG.match(tag)
        if match and match["metric"] == metric:
            sites.setdefault(match["net"], []).append(series)
    return {net: _mean_at_common_steps(parts) for net, parts in sites.items()}


def _mean_at_common_steps(parts: Sequence[Series]) -> Series:
    """The mean of several series at the steps all of them logged."""
    steps = reduce(np.intersect1d, (s for s, _ in parts))
    return steps, np.mean([v[np.searchsorted(s, steps)] for s, v in parts], axis=0)


def run_segments(scalars: dict[str, Series]) -> list[tuple[float, float | None]]:
    """``(first step, friction)`` of each friction segment of a run; empty without a segment tag."""
    tag = next((t for t in SEGMENT_TAGS if t in scalars), None)
    if tag is None:
        return []
    steps, segment = scalars[tag]
    starts = np.flatnonzero(np.r_[True, np.diff(segment) != 0])
    friction_steps, friction = scalars.get(FRICTION_TAG, (np.array([]), np.array([])))
    found = np.searchsorted(friction_steps, steps[starts])
    return [(float(steps[i]), float(friction[j]) if j < len(friction) else None) for i, j in zip(starts, found)]


def common_segments(runs: Sequence[Run]) -> list[tuple[float, float | None]]:
    """Segment starts across runs: the median step of each k-th start, the friction if all runs agree."""
    per_run = [seg for seg in (run_segments(r.scalars) for r in runs) if seg]
    merged = []
    for k in range(max(map(len, per_run), default=0)):
        kth = [seg[k] for seg in per_run if len(seg) > k]
        frictions = [f for _, f in kth]
        agree = None not in frictions and np.allclose(frictions, frictions[0], rtol=1e-3)
        merged.append((float(np.median([s for s, _ in kth])), frictions[0] if agree else None))
    return merged


SEGMENT_TAIL = 0.2
"""Share of a friction segment, at its end, that ``segments.md`` averages."""

# (column, health metric or None for the return, scale, format); health columns have actor and critic variants
SEGMENT_COLUMNS: tuple[tuple[str, str | None, float, str], ...] = (
    ("return", None, 1.0, "{:.0f}"),
    ("dead units %", "dead_frac", 100.0, "{:.1f}"),
    ("stable rank %", "stable_rank_pct", 1.0, "{:.1f}"),
    ("mean abs weight", "weight_mag", 1.0, "{:.4f}"),
)


def _tail_mean(series: Series, start: float, end: float, last: bool) -> float:
    """Mean of the values logged in the last ``SEGMENT_TAIL`` of ``[start, end)`` (``[start, end]`` for the
    run's last segment); NaN if none."""
    steps, values = series
    inside = (steps >= end - SEGMENT_TAIL * (end - start)) & ((steps <= end) if last else (steps < end))
    return float(values[inside].mean()) if inside.any() else float("nan")


SUMMARY_METRICS = ("dead_frac", "dormant_frac", "stable_rank", "effective_rank", "weight_mag")
"""Health metrics of ``summary.csv``, one column per network each (``{net}/{metric}``)."""


def _network_metric_series(scalars: dict[str, Series]) -> dict[str, Series]:
    """The series that ``summary.csv`` summarizes, by column: ``return`` and ``{net}/{metric}`` (`SUMMARY_METRICS`)."""
    series = {"return": scalars[RETURN_TAG]} if RETURN_TAG in scalars else {}
    for metric in SUMMARY_METRICS:
        for net, metric_series in sorted(network_series(scalars, metric).items(), key=lambda item: _net_order(item[0])):
            series[f"{net}/{metric}"] = metric_series
    return series


def _segment_series(scalars: dict[str, Series]) -> dict[str, Series]:
    """The series that ``segments.md`` summarizes, by column key: ``return`` and ``{metric}/{actor|critic}``."""
    series = {"return": scalars[RETURN_TAG]} if RETURN_TAG in scalars else {}
    for _, metric, _, _ in SEGMENT_COLUMNS:
        nets = network_series(scalars, metric) if metric else {}
        critics = [s for net, s in nets.items() if net != "actor"]
        if "actor" in nets:
            series[f"{metric}/actor"] = nets["actor"]
        if critics:
            series[f"{metric}/critic"] = _mean_at_common_steps(critics)
    return series


def segment_summary(run: Run, series: dict[str, Series] | None = None) -> list[dict[str, float]]:
    """Per friction segment of a run: ``start``, ``end`` (the next start, or the last logged step), ``friction``,
    ``complete`` (1.0 unless it is the last segment of a run that stopped before its ``total_steps``: its last
    logged step and its newest checkpoint are both short of them) and the tail means (see ``SEGMENT_TAIL``) of
    ``series`` (default: the return and the health series of ``segments.md``, keys of `_segment_series`)."""
    segments = run_segments(run.scalars)
    if not segments or RETURN_TAG not in run.scalars:
        return []
    last = float(run.scalars[RETURN_TAG][0][-1])
    finished = max(last, run.checkpoint_steps or 0) >= float(run.config.get("total_steps", np.inf))
    series = _segment_series(run.scalars) if series is None else series
    rows = []
    ends = [start for start, _ in segments[1:]] + [last]
    for k, ((start, friction), end) in enumerate(zip(segments, ends)):
        is_last = k == len(segments) - 1
        row = {"start": start, "end": end, "friction": np.nan if friction is None else friction}
        row["complete"] = float(finished or not is_last)
        rows.append(row | {key: _tail_mean(s, start, end, is_last) for key, s in series.items()})
    return rows


def segment_table(groups: dict[str, list[Run]], stats: Stats | None = None) -> str:
    """``segments.md``: per method, the k-th segments of its runs aggregated (see :func:`segment_summary`): those
    that completed it, or, if none did, the partial ones (marked)."""
    stats = stats or Stats()
    lines = [
        f"Means over the last {SEGMENT_TAIL:.0%} of each friction segment; health: actor / critic, each the mean "
        "over the network's layers. With several runs: the IQM (the mean below 4 runs) over the runs that completed "
        f"the segment (if none did, over those that reached it: partial), the return with its {stats.ci:.0%} "
        "stratified-bootstrap CI in brackets; steps: the median start and the latest end; friction: – where the "
        "runs' frictions differ.",
    ]
    for method, runs in groups.items():
        per_run = [rows for rows in map(segment_summary, runs) if rows]
        if not per_run:
            continue
        header = ["segment", "friction", "steps", "runs"] + [name for name, *_ in SEGMENT_COLUMNS]
        lines += ["", f"### {method}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for k in range(max(map(len, per_run))):
            reached = [rows[k] for rows in per_run if len(rows) > k]
            kth = [row for row in reached if row["complete"]] or reached
            keys = {key for row in kth for key in row}
            center = {key: _iqm_of_logged([row.get(key, np.nan) for row in kth]) for key in keys}
            frictions = [row["friction"] for row in kth]
            friction = frictions[0] if np.allclose(frictions, frictions[0], rtol=1e-3) else np.nan
            steps = f"{_eng(np.median([row['start'] for row in kth]))}-{_eng(max(row['end'] for row in kth))}"
            cells = [f"{k}" if kth[0]["complete"] else f"{k} (partial)", _number(friction, "{:.3g}"), steps, str(len(kth))]
            cells.append(_return_cell([row["return"] for row in kth], stats))
            for _, metric, scale, fmt in SEGMENT_COLUMNS[1:]:
                columns = [f"{metric}/actor", f"{metric}/critic"]
                cells.append(" / ".join(_number(scale * center.get(column, np.nan), fmt) for column in columns))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _return_cell(returns: Sequence[float], stats: Stats) -> str:
    """The IQM of the runs' returns, with its CI in brackets when there are several runs."""
    logged = [r for r in returns if not np.isnan(r)]
    if len(logged) < 2:
        return _number(_iqm_of_logged(logged), "{:.0f}")
    center, low, high = stats.interval(logged)
    return f"{center:.0f} [{low:.0f}, {high:.0f}]"


def _iqm_of_logged(values: Sequence[float]) -> float:
    """The IQM of the values that are not NaN (NaN if none is)."""
    logged = [v for v in values if not np.isnan(v)]
    return float(iqm(np.asarray(logged))) if logged else float("nan")


def summary_rows(run: Run) -> list[dict[str, Any]]:
    """``summary.csv``'s rows of a run: its env, algo, method, seed and folder, then per friction segment what
    :func:`segment_summary` gives for the return and each network's health (`SUMMARY_METRICS`)."""
    context = {"env": run.env_id, "algo": run.config.get("algo", ""),
               "method": run.method, "seed": run.config.get("seed", ""), "run": run.path.name}
    rows = segment_summary(run, _network_metric_series(run.scalars))
    return [context | {"segment": k, "friction": row.pop("friction"), "start": int(row.pop("start")),
                       "end": int(row.pop("end")), "complete": bool(row.pop("complete"))} | row for k, row in enumerate(rows)]


def write_summary(runs: Sequence[Run], path: Path) -> Path:
    """``summary.csv`` of ``runs`` (columns: the union of their rows' keys, in first-seen order)."""
    rows = [row for run in runs for row in summary_rows(run)]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns, restval="")
        writer.writeheader()
        writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    return path


def _number(value: float, fmt: str) -> str:
    return "–" if np.isnan(value) else fmt.format(value)


def _eng(steps: float) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if steps >= scale:
            return f"{steps / scale:.3g}{suffix}"
    return f"{steps:.0f}"


# ---------------------------------------------------------------- drawing


def _context(runs: Sequence[Run]) -> str:
    """The env id and algorithm every run shares (and the seed of a single run), for figure titles."""
    env_ids = {str(r.config["env"].get("id")) for r in runs if isinstance(r.config.get("env"), dict)}
    algos = {str(r.config["algo"]).upper() for r in runs if "algo" in r.config}
    parts = [next(iter(values)) for values in (env_ids, algos) if len(values) == 1]
    if len(runs) == 1 and "seed" in runs[0].config:
        parts.append(f"seed {runs[0].config['seed']}")
    return ", ".join(parts)


def _title(what: str, groups: dict[str, list[Run]], ci: float, note: str = "") -> str:
    """``what — env, ALGO``, then a line with the note and what the shading means."""
    context = _context([r for runs in groups.values() for r in runs])
    first = f"{what} — {context}" if context else what
    shaded = any(len(runs) > 1 for runs in groups.values())
    center = "IQM over runs (the mean below 4 runs)" if shaded else ""
    second = "; ".join(p for p in (center, note, shaded and f"shaded: {ci:.0%} stratified-bootstrap CI") if p)
    return f"{first}\n{second}" if second else first


def _friction_handle(label: str) -> Any:
    return Line2D([], [], **{**MARK_STYLE, "label": label})


def _draw(ax: Any, curve: Curve, color: str, linestyle: str = "-", label: str | None = None) -> None:
    """One curve with its shaded interval."""
    ax.plot(curve.steps, curve.iqm, color=color, linestyle=linestyle, linewidth=1.6, label=label)
    if curve.low is not None:
        ax.fill_between(curve.steps, curve.low, curve.high, color=color, alpha=0.18, linewidth=0)


def _mark_segments(ax: Any, segments: Sequence[tuple[float, float | None]], label_friction: bool) -> None:
    """Dashed lines at friction changes inside the plotted x range; optionally the new friction."""
    left, right = ax.get_xlim()
    if label_friction and any(f is not None for _, f in segments):
        bottom, top = ax.get_ylim()
        ax.set_ylim(top=top + 0.07 * (top - bottom))
    for k, (step, friction) in enumerate(segments):
        if not left <= step <= right:
            continue
        if k > 0:
            ax.axvline(step, **MARK_STYLE)
        if label_friction and friction is not None:
            ax.annotate(
                f"μ={friction:.2g}", (step, 1.0), xycoords=ax.get_xaxis_transform(), xytext=(3, -3),
                textcoords="offset points", ha="left", va="top", fontsize=8, color="0.35",
            )


def _style_steps_axis(ax: Any) -> None:
    ax.set_xlabel(STEPS_LABEL)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(alpha=0.25, linewidth=0.6)


def _legend_label(method: str, n_runs: int) -> str:
    return f"{method} ({n_runs} runs)" if n_runs > 1 else method


def plot_return(groups: dict[str, list[Run]], colors: dict[str, str], path: Path, stats: Stats) -> Path:
    """Write the return-over-steps figure to ``path``."""
    fig, ax = plt.subplots(figsize=(9, 4.8), layout="constrained")
    for method, runs in groups.items():
        curve = stats.curve([r.scalars[RETURN_TAG] for r in runs if RETURN_TAG in r.scalars])
        if curve is None:
            print(f"note: the runs of {method!r} have no common step range; left out of {path.name}")
            continue
        _draw(ax, curve, colors[method], label=_legend_label(method, curve.n_runs))
    all_runs = [r for runs in groups.values() for r in runs]
    segments = common_segments(all_runs)
    _mark_segments(ax, segments, label_friction=True)
    handles, _ = ax.get_legend_handles_labels()
    if len(segments) > 1:
        labelled = any(f is not None for _, f in segments)
        handles.append(_friction_handle("friction change (μ: new friction)" if labelled else "friction change"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(_title("Episode return", groups, stats.ci), fontsize=11)
    ax.set_ylabel("mean episode return (last 100 episodes)")
    _style_steps_axis(ax)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def _panel_metric(runs: Sequence[Run], choices: Sequence[tuple[str, str, float]]) -> tuple[str, str, float] | None:
    """The first candidate metric that some run logged."""
    return next((c for c in choices if any(network_series(r.scalars, c[0]) for r in runs)), None)


def _net_order(net: str) -> tuple[bool, str]:
    return net != "actor", net


def plot_health(groups: dict[str, list[Run]], colors: dict[str, str], path: Path, stats: Stats) -> Path | None:
    """Write the grid of unit-health panels to ``path``; ``None`` (nothing written) without health tags."""
    all_runs = [r for runs in groups.values() for r in runs]
    panels = []
    for title, choices in HEALTH_PANELS:
        if chosen := _panel_metric(all_runs, choices):
            per_method = {m: [network_series(r.scalars, chosen[0]) for r in runs] for m, runs in groups.items()}
            panels.append((title, chosen, per_method))
    if not panels:
        return None
    logged = {net for *_, per_method in panels for rows in per_method.values() for row in rows for net in row}
    nets = sorted(logged, key=_net_order)
    styles = _line_styles(colors, nets)
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    figsize = (5.2 * ncols + 1.6, 3.6 * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", squeeze=False)
    segments = common_segments(all_runs)
    for ax, (title, (_, ylabel, scale), per_method) in zip(axes.flat, panels):
        for method, rows in per_method.items():
            for net in nets:
                curve = stats.curve([row[net] for row in rows if net in row], scale)
                if curve is not None:
                    _draw(ax, curve, *styles[method, net])
        _mark_segments(ax, segments, label_friction=False)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        _style_steps_axis(ax)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    handles = _health_legend(groups, styles, nets)
    if len(segments) > 1:
        handles.append(_friction_handle("friction change"))
    axes.flat[ncols - 1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(_title("Unit health", groups, stats.ci, note="each line: mean over the network's layers"))
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def _line_styles(colors: dict[str, str], nets: Sequence[str]) -> dict[tuple[str, str], tuple[str, str]]:
    """``(method, net) -> (colour, line style)``: colour by network for one method, else colour by method
    and line style by network."""
    if len(colors) == 1:
        return {(m, n): (f"C{i % 10}", "-") for m in colors for i, n in enumerate(nets)}
    return {(m, n): (c, LINESTYLES[i % len(LINESTYLES)]) for m, c in colors.items() for i, n in enumerate(nets)}


def _health_legend(
    groups: dict[str, list[Run]], styles: dict[tuple[str, str], tuple[str, str]], nets: Sequence[str]
) -> list[Any]:
    """Legend handles: the networks for one method, else the methods (colour) then the networks (style)."""
    first = next(iter(groups))
    if len(groups) == 1:
        return [Line2D([], [], color=styles[first, n][0], label=n) for n in nets]
    methods = [Line2D([], [], color=styles[m, nets[0]][0], label=_legend_label(m, len(rs))) for m, rs in groups.items()]
    return methods + [Line2D([], [], color="0.2", linestyle=styles[first, n][1], label=n) for n in nets]


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="plot.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directory written by train.py")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: RUN_DIR/plots for one run, ./plots for several)"
    )
    parser.add_argument("--smooth", type=int, default=1, help="centred moving average over N logged points (1: none)")
    parser.add_argument("--ci", type=float, default=0.95, help="confidence level of the shaded interval, in (0, 1)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the runs")
    return parser


def group_by_method(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs grouped by method, in the order methods first appear on the command line."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.method, []).append(run)
    return groups


def group_by_context(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs grouped by ``{env}_{algo}`` of their configs (``-`` for a missing one), in the order they first appear:
    runs of different envs or algorithms are never aggregated together."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(f"{run.env_id or '-'}_{run.config.get('algo') or '-'}", []).append(run)
    return groups


def expand_run_dirs(paths: Sequence[str]) -> list[str]:
    """Each path, or for a sweep's root its run directories that have logged events (the others are noted)."""
    expanded = []
    for path in map(Path, paths):
        runs = sweep_run_dirs(path)
        for run in runs:
            if not event_files(run):
                print(f"note: {run} has no TensorBoard events yet; left out")
        expanded += [str(run) for run in runs if event_files(run)] if runs else [str(path)]
    return expanded


def write_figures(runs: Sequence[Run], out: Path, stats: Stats) -> None:
    """``return.png``, ``health.png``, ``segments.md`` and ``summary.csv`` of runs that share an env and algorithm."""
    out.mkdir(parents=True, exist_ok=True)
    groups = group_by_method(runs)
    colors = {method: f"C{i % 10}" for i, method in enumerate(groups)}
    print(f"wrote {plot_return(groups, colors, out / 'return.png', stats)}")
    health = plot_health(groups, colors, out / "health.png", stats)
    if health is None:
        print("note: no run logged health/{net}/{site}/{metric} tags; health.png not written")
    else:
        print(f"wrote {health}")
    table = out / "segments.md"
    table.write_text(segment_table(groups, stats))
    print(f"wrote {table}")
    print(f"wrote {write_summary(runs, out / 'summary.csv')}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error(f"--smooth must be >= 1 logged points, got {args.smooth}")
    if not 0.0 < args.ci < 1.0:
        parser.error(f"--ci must be a confidence level in (0, 1), e.g. 0.95; got {args.ci}")
    if args.bootstrap < 1:
        parser.error(f"--bootstrap must be >= 1 resamples, got {args.bootstrap}")
    if plt is None:
        parser.error("matplotlib or rliable is not installed; install the plot extra: pip install -e '.[plot]'")
    run_dirs = expand_run_dirs(args.run_dirs)
    try:
        runs = load_runs(run_dirs)
    except ValueError as err:
        parser.error(str(err))
    if not any(RETURN_TAG in r.scalars for r in runs):
        parser.error(f"no run has the tag {RETURN_TAG} (expected SB3 TensorBoard logs of a train.py run)")
    for run in runs:
        if RETURN_TAG not in run.scalars:
            print(f"note: {run.path} has no {RETURN_TAG}; left out of return.png")

    out = args.out or (Path(run_dirs[0]) / "plots" if len(runs) == 1 else Path("plots"))
    contexts = group_by_context(runs)
    stats = Stats(args.smooth, args.ci, args.bootstrap)
    for context, context_runs in contexts.items():
        write_figures(context_runs, out / context if len(contexts) > 1 else out, stats)


if __name__ == "__main__":
    main()
