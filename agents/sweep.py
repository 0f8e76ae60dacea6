"""Sweeps: a grid of training runs (envs × algos × methods × seeds), one ``train.py`` process per run in a Ray task.

Rerunning a sweep resumes it: each run continues from its newest checkpoint, runs at their total are skipped, new
grid cells start, and a larger ``total_steps`` extends every run. Ray is imported only when runs are started.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import yaml

from . import training
from .checkpoints import list_checkpoints
from .config import ALGORITHMS, Config, build_config, build_model, check_resumable, make_env, read_yaml
from .run import PROGRESS_LINE, format_duration

GRID_KEYS = ("root", "envs", "algos", "methods", "seeds", "total_steps", "change_every", "set", "address",
             "cpus_per_run", "max_concurrent")
"""The keys of a sweep file (``configs/sweeps/*.yaml``); a flag of ``sweep.py`` of the same name overrides each."""

CRASH_RETRIES = 3
"""How often a run whose ``train.py`` was killed (``kill -9``, the OOM killer) is resumed before it counts as failed."""

SIGNALLED = (128 + signal.SIGINT, 128 + signal.SIGTERM)
"""``train.py``'s exit statuses after it checkpointed on a signal; one that the sweep did not send counts as a kill."""

TRAIN_SCRIPT = Path(training.__file__).resolve().parents[1] / "train.py"

LOCK_FILE = ".sweep.lock"
"""Held (``flock``) in the sweep's root by the sweep that trains its runs."""

STOP_FILE = ".sweep_stop"
"""Written into the sweep's root when it is asked to stop: every task then stops its ``train.py`` (the root is shared
by the driver and every node)."""

PROGRESS_EVERY_S = 5.0
"""Seconds between the progress lines of each run's ``train.py``, which the sweep reads."""


@dataclass
class Grid:
    """A sweep: every combination of ``envs`` × ``algos`` × ``methods[algo]`` × ``seeds``, written under ``root``.

    ``sets[algo]`` are ``KEY=VALUE`` overrides (as ``train.py --set``) of that algorithm's runs; ``total_steps`` and
    ``change_every``, when given, override each config's."""

    root: Path
    envs: list[str]
    algos: list[str]
    methods: dict[str, list[str]]
    seeds: list[int]
    total_steps: int | None = None
    change_every: int | None = None
    sets: dict[str, list[str]] = field(default_factory=dict)
    address: str | None = None
    cpus_per_run: float = 1
    max_concurrent: int | None = None


@dataclass(frozen=True)
class Run:
    """One cell of the grid: its folder, the ``train.py`` arguments that start and resume it, and where it stands."""

    name: str
    run_dir: Path
    start_args: tuple[str, ...]
    resume_args: tuple[str, ...]
    total_steps: int
    steps: int  # of its newest checkpoint when the sweep was planned

    @property
    def done(self) -> bool:
        return self.steps >= self.total_steps


# ---------------------------------------------------------------- the grid


def parse_seeds(spec: Any) -> list[int]:
    """Seeds from ``3``, ``"0-4"``, ``"0-2,7"`` or a list of those; ``ValueError`` naming a bad one."""
    parts = spec if isinstance(spec, list) else [spec]
    seeds: list[int] = []
    for part in parts:
        for item in str(part).split(","):
            low, dash, high = item.strip().partition("-")
            try:
                first, last = int(low), int(high) if dash else int(low)
            except ValueError:
                raise ValueError(f"seeds {spec!r} are invalid: expected seeds or ranges such as 0-4 or 0-2,7") from None
            if first < 0 or last < first:
                raise ValueError(f"seed range {item.strip()!r} is invalid: expected FIRST-LAST with 0 <= FIRST <= LAST")
            seeds += [seed for seed in range(first, last + 1) if seed not in seeds]
    if not seeds:
        raise ValueError(f"seeds {spec!r} are invalid: expected at least one seed")
    return seeds


def _names(key: str, value: Any) -> list[str]:
    """A list of names from ``"a,b"`` or ``[a, b]``."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"sweep key {key!r}={value!r} is invalid: expected a list of names, e.g. [std, cbp] or std,cbp")
    return [n.strip() for n in names]


def _per_algo(key: str, value: Any, algos: Sequence[str], read: Callable[[str, Any], list[str]]) -> dict[str, list[str]]:
    """``value`` for every algorithm, or from a mapping ``{algo: value}`` (its keys all algorithm names) each grid
    algorithm's own (none if it has no entry); entries of algorithms outside the grid (``--algo``) are left out."""
    if not (isinstance(value, dict) and value and all(name in ALGORITHMS for name in value)):
        return {algo: read(key, value) for algo in algos}
    return {algo: read(f"{key}.{algo}", value[algo]) if value.get(algo) is not None else [] for algo in algos}


def _assignments(key: str, value: Any) -> list[str]:
    """``KEY=VALUE`` overrides from a list of them or a mapping ``{KEY: VALUE}``."""
    if isinstance(value, dict):
        return [f"{k}={_yaml_value(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(a, str) and "=" in a for a in value):
        return list(value)
    raise ValueError(f"sweep key {key!r}={value!r} is invalid: expected a list of KEY=VALUE or a mapping of keys to values")


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _number(key: str, value: Any, kind: type, optional: bool = True) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, float) and kind is int and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise ValueError(f"sweep key {key!r}={value!r} is invalid: expected a positive {kind.__name__}")
    return value


def build_grid(data: dict[str, Any], extra_sets: Sequence[str] = ()) -> Grid:
    """A `Grid` from a sweep file's mapping (keys `GRID_KEYS`) with the flags merged in, and ``extra_sets`` (``--set``)
    after each algorithm's overrides; ``ValueError`` on a bad value."""
    unknown = [key for key in data if key not in GRID_KEYS]
    if unknown:
        raise ValueError(f"sweep key {unknown[0]!r} is unknown: expected one of {', '.join(GRID_KEYS)}")
    for key in ("root", "envs", "methods", "seeds"):
        if data.get(key) is None:
            raise ValueError(f"the sweep has no {key}: pass --{key} or set {key}: in the sweep file")
    algos = _names("algos", data.get("algos") or ["ppo"])
    methods = _per_algo("methods", data["methods"], algos, _names)
    missing = [algo for algo in algos if not methods[algo]]
    if missing:
        raise ValueError(f"sweep key 'methods' names no method for {missing[0]}: expected a list for each of {', '.join(algos)}")
    address = data.get("address")
    if address is not None and not isinstance(address, str):
        raise ValueError(f"sweep key 'address'={address!r} is invalid: expected auto, HOST:PORT or ray://HOST:PORT")
    cpus_per_run = _number("cpus_per_run", data.get("cpus_per_run", 1), float, optional=False)
    if address is None and cpus_per_run > (os.cpu_count() or 1):
        raise ValueError(f"sweep key 'cpus_per_run'={cpus_per_run:g} is invalid: this machine has {os.cpu_count()} CPUs")
    return Grid(
        root=Path(str(data["root"])).resolve(),
        envs=_names("envs", data["envs"]),
        algos=algos,
        methods=methods,
        seeds=parse_seeds(data["seeds"]),
        total_steps=_number("total_steps", data.get("total_steps"), int),
        change_every=_number("change_every", data.get("change_every"), int),
        sets={algo: [*sets, *extra_sets] for algo, sets in _per_algo("set", data.get("set") or [], algos, _assignments).items()},
        address=address,
        cpus_per_run=cpus_per_run,
        max_concurrent=_number("max_concurrent", data.get("max_concurrent"), int),
    )


# ---------------------------------------------------------------- planning


def plan(grid: Grid) -> list[Run]:
    """Every run of the grid, seed by seed (so that a sweep stopped early has all methods of its first seeds), each
    checked as ``train.py`` would check it and against what its folder already holds; ``ValueError`` (naming the
    run) on the first problem, before anything is started or written."""
    runs, built = [], set()
    for seed in grid.seeds:
        for env in grid.envs:
            for algo in grid.algos:
                for method in grid.methods[algo]:
                    runs.append(_plan_run(grid, env, algo, method, seed, built))
    folders = [run.run_dir for run in runs]
    twice = next((f for f in folders if folders.count(f) > 1), None)
    if twice:
        raise ValueError(f"two runs of the grid would share the folder {str(twice)!r}: list each env and method once")
    return runs


def _plan_run(grid: Grid, env: str, algo: str, method: str, seed: int, built: set[str]) -> Run:
    shared = ["--env", env, "--seed", str(seed), "--threads", str(max(1, int(grid.cpus_per_run)))]
    if grid.total_steps is not None:
        shared += ["--total-steps", str(grid.total_steps)]
    if grid.change_every is not None:
        shared += ["--change-every", str(grid.change_every)]
    for assignment in grid.sets.get(algo, []):
        shared += ["--set", assignment]
    shared += ["--progress-every", str(PROGRESS_EVERY_S)]
    label = f"{env} {algo} {method} seed {seed}"
    try:
        config = training.resolve_config(training.parse_args([*shared, "--algo", algo, "--method", method])[1])
    except ValueError as error:
        raise ValueError(f"{label}: {error}") from None
    _check_model(config, label, built)
    name = f"{config.env.id}_{config.algo}_{config.method}_s{config.seed}"
    run_dir = grid.root / name
    steps = _recorded_steps(run_dir, config, label)
    return Run(name, run_dir, (*shared, "--algo", algo, "--method", method, "--run-dir", str(run_dir)),
               (*shared, "--resume", str(run_dir)), config.total_steps, steps)


def _check_model(config: Config, label: str, built: set[str]) -> None:
    """Build the env and model of ``config`` as ``train.py`` will (SB3 checks some settings only then), once for all
    configs that differ only in their seeds (``built`` holds those done)."""
    unseeded = config.to_dict() | {"seed": None}
    unseeded["env"] = unseeded["env"] | {"kwargs": unseeded["env"]["kwargs"] | {"schedule_seed": None}}
    key = repr(unseeded)
    if key in built:
        return
    env = make_env(config)
    try:
        build_model(config, env)
    except ValueError as error:
        raise ValueError(f"{label}: {error}") from None
    finally:
        env.close()
    built.add(key)


def _recorded_steps(run_dir: Path, config: Any, label: str) -> int:
    """Steps of the folder's newest checkpoint (0 if it holds none); ``ValueError`` if it holds another run."""
    if not run_dir.exists():
        return 0
    if not run_dir.is_dir():
        raise ValueError(f"{label}: {str(run_dir)!r} is a file, not a run directory")
    if not (run_dir / "config.yaml").is_file():
        if any(run_dir.iterdir()):
            raise ValueError(f"{label}: {str(run_dir)!r} exists but is no run directory (it has no config.yaml): move it away")
        return 0
    try:
        check_resumable(build_config(read_yaml(run_dir / "config.yaml")), config)
    except ValueError as error:
        raise ValueError(f"{label}: {str(run_dir)!r} holds a run with other settings: {error}") from None
    return _checkpoint_steps(run_dir)


# ---------------------------------------------------------------- one run, in a Ray worker


@dataclass
class Outcome:
    """How a run's task ended: ``done``, ``stopped`` (by the sweep's stop) or ``failed`` (with train.py's last line)."""

    name: str
    status: str
    steps: int
    message: str = ""


def train_run(run: Run, board: Any, stop_file: Path) -> Outcome:
    """Run ``train.py`` until ``run`` is at its total: it resumes from the newest checkpoint (so does a retry of this
    task after its worker died), and again after ``train.py`` was killed, up to `CRASH_RETRIES` times. Its progress goes
    to ``board`` (a `Board` actor); ``stop_file`` existing asks it to stop. Neither waits for a reply from Ray: a task
    that blocks in ``ray.get`` lends its CPU to the next queued task, which would then train beside it."""
    log = run.run_dir / "train.log"
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(CRASH_RETRIES + 1):
        steps = _checkpoint_steps(run.run_dir)
        if steps >= run.total_steps:
            return Outcome(run.name, "done", steps)
        if stop_file.exists():
            return Outcome(run.name, "stopped", steps)
        _report(board, run.name, steps)
        if steps == 0 and run.run_dir.exists():
            shutil.rmtree(run.run_dir)  # started before (its settings are the grid's) but killed before a checkpoint
        returncode, stopping, last_line = _train_process(run.resume_args if steps else run.start_args, run, log, board,
                                                         stop_file, steps)
        steps = _checkpoint_steps(run.run_dir)
        if returncode == 0:
            return Outcome(run.name, "done", steps)
        if stopping:
            return Outcome(run.name, "stopped", steps)
        if returncode > 0 and returncode not in SIGNALLED:
            return Outcome(run.name, "failed", steps, last_line)
    return Outcome(run.name, "failed", steps, f"train.py ended unfinished {CRASH_RETRIES + 1} times; last: {last_line}")


def _checkpoint_steps(run_dir: Path) -> int:
    """Steps of the run's newest complete checkpoint; 0 without one."""
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    return checkpoints[-1].steps if checkpoints else 0


def _train_process(args: Sequence[str], run: Run, log: Path, board: Any, stop_file: Path,
                   steps: int) -> tuple[int, bool, str]:
    """One ``train.py`` process: its output into ``log``, its progress to ``board``, SIGTERM to it once ``stop_file``
    exists. Returns its exit status (negative: killed by that signal), whether the sweep is stopping and the last
    line it printed."""
    command = [sys.executable, str(TRAIN_SCRIPT), *args]
    process = subprocess.Popen(command, cwd=run.run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=os.environ | {"PYTHONUNBUFFERED": "1"}, text=True, bufsize=1,
                               start_new_session=True, preexec_fn=_die_with_parent())
    progress: dict[str, Any] = {"steps": steps, "last": "train.py printed nothing"}
    reader = threading.Thread(target=_copy_output, args=(process, run, log, command, progress), daemon=True)
    reader.start()
    stopping = False
    while process.poll() is None:
        _report(board, run.name, progress["steps"])
        if not stopping and stop_file.exists():
            stopping = True
            process.send_signal(signal.SIGTERM)  # train.py checkpoints at the next rollout start and exits
        reader.join(timeout=1.0)
    reader.join()
    if process.returncode < 0:
        progress["last"] = f"train.py was ended by signal {-process.returncode}"
        if log.parent.is_dir():
            with log.open("a") as out:
                out.write(f"# {progress['last']}\n")
    _report(board, run.name, progress["steps"])
    return process.returncode, stopping or stop_file.exists(), progress["last"]


def _copy_output(process: subprocess.Popen, run: Run, log: Path, command: list[str], progress: dict) -> None:
    """Append ``process``'s output to ``log``, keeping in ``progress`` the step of its last progress line and its last
    line. A new run's lines wait until ``train.py`` has written its ``config.yaml`` (it refuses a folder that is not
    empty); those of a run that fails before are only in ``progress``."""
    held = [f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n"]
    out = None
    for line in process.stdout:
        if match := PROGRESS_LINE.match(line):
            progress["steps"] = int(match["steps"].replace(",", ""))
        if line.strip():
            progress["last"] = line.strip()
        held.append(line)
        if out is None and (run.run_dir / "config.yaml").is_file():
            out = log.open("a")
        if out is not None:
            out.writelines(held)
            out.flush()
            held.clear()
    if out is not None:
        out.close()


def _report(board: Any, name: str, steps: int) -> None:
    """Tell the board where ``name`` stands, without waiting for it."""
    import ray

    try:
        board.report.remote(name, steps)
    except ray.exceptions.RayError:
        pass  # the view misses a report; the run goes on


def _die_with_parent() -> Callable[[], None] | None:
    """For ``Popen``'s ``preexec_fn``: the child receives SIGKILL when the worker that started it dies, so a retried
    task never trains beside it (Linux; ``None`` elsewhere). libc is loaded here, in the parent: the child, forked from
    a threaded worker, only makes the call."""
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Board:
    """A Ray actor that holds the steps each task reports for its run, for the sweep's view."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def report(self, name: str, steps: int) -> None:
        self.steps[name] = steps

    def snapshot(self) -> dict[str, int]:
        return dict(self.steps)


# ---------------------------------------------------------------- the sweep


def run_sweep(grid: Grid, command: str, out: Any = None) -> int:
    """Train every unfinished run of ``grid`` as a Ray task and follow them until all have ended, or a signal stopped
    the sweep (SIGINT/SIGTERM: every running run checkpoints; a second signal leaves at once). ``command`` is what
    continues it. Exit status: 0 when all runs are done, 1 when some failed, 128 + the signal when stopped."""
    out = out or sys.stdout
    runs = plan(grid)
    todo = [run for run in runs if not run.done]
    if not todo:
        print(f"all {len(runs)} runs are at their total steps: nothing to do", file=out, flush=True)
        return 0
    import ray

    with _root_lock(grid.root):
        connect(grid.address, grid.cpus_per_run)
        print(f"{len(todo)} of {len(runs)} runs to train under {grid.root}", file=out, flush=True)
        view = Progress(runs, out)
        try:
            outcomes, stopped_by = _follow(ray, grid, todo, view)
        finally:
            view.close()
            ray.shutdown()
    return view.report(outcomes, stopped_by, command)


@contextlib.contextmanager
def _root_lock(root: Path) -> Iterator[None]:
    """Hold ``{root}/.sweep.lock`` while the sweep runs; ``ValueError`` if another sweep holds it (two would train the
    same runs side by side)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            raise ValueError(f"another sweep is running on {str(root)!r} ({lock.read().strip() or 'its lock is held'}): "
                             "stop it first, or let it finish") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


def connect(address: str | None, cpus_per_run: float = 1) -> None:
    """Join the Ray cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``), or start a local instance
    sized to this machine, without the dashboard (even where ``ray start`` left a cluster that Ray would join).
    ``ValueError`` if that fails; a warning if no node of the cluster has ``cpus_per_run`` CPUs."""
    import logging

    import ray

    options: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=False)
    try:
        ray.init(address, **options) if address else ray.init("local", include_dashboard=False, **options)
    except (ConnectionError, ValueError, RuntimeError) as error:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise ValueError(f"cannot reach {where}: {' '.join(str(error).split())[:300]}") from None
    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
    if cpus_per_run > largest:
        print(f"warning: --cpus-per-run {cpus_per_run:g} is more than any node of the cluster has ({largest:g} CPUs); "
              "the runs wait until a node that large joins", file=sys.stderr)


class _LeaveNow(Exception):
    """A second SIGINT/SIGTERM: the sweep leaves without waiting for its runs."""


def _follow(ray: Any, grid: Grid, todo: list[Run], view: Progress) -> tuple[list[Outcome], int | None]:
    """Submit the runs (at most ``max_concurrent`` at a time), follow them, and on a signal ask them to stop."""
    task = ray.remote(train_run).options(num_cpus=grid.cpus_per_run, max_retries=CRASH_RETRIES, retry_exceptions=False)
    board = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Board).remote()
    stop_file = grid.root / STOP_FILE
    stop_file.unlink(missing_ok=True)
    signals: list[int] = []

    def on_signal(number: int, frame: Any) -> None:
        signals.append(number)
        if len(signals) > 1:
            raise _LeaveNow

    previous = {number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
    queue, active, outcomes = list(todo), {}, []
    try:
        while queue or active:
            if signals and not stop_file.exists():
                queue.clear()
                stop_file.touch()
                view.line(f"signal {signals[0]}: the running runs checkpoint and stop (a second signal leaves at once)")
            while queue and (grid.max_concurrent is None or len(active) < grid.max_concurrent):
                run = queue.pop(0)
                active[task.remote(run, board, stop_file)] = run
            ready, _ = ray.wait(list(active), num_returns=len(active), timeout=1.0)
            for ref in ready:
                outcomes.append(_outcome(ray, ref, active.pop(ref), view))
                view.ended(outcomes[-1])
            try:
                view.update(ray.get(board.snapshot.remote(), timeout=30))
            except ray.exceptions.RayError:
                pass  # the board restarts; its reports come again
    except _LeaveNow:
        view.line(f"signal {signals[-1]}: leaving now; the running runs lose what they did since their last checkpoint")
    except BaseException:
        stop_file.touch()  # the sweep fails: let its runs checkpoint before Ray goes down with it
        ray.wait(list(active), num_returns=len(active), timeout=600)
        raise
    finally:
        stop_file.unlink(missing_ok=True)
        for number, handler in previous.items():
            signal.signal(number, handler)
    return outcomes, signals[-1] if signals else None


def _outcome(ray: Any, ref: Any, run: Run, view: Progress) -> Outcome:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as error:
        cause = getattr(error, "cause", None) or error
        reason = f"{type(cause).__name__}: " + " ".join(str(cause).split())[:300]
        return Outcome(run.name, "failed", view.steps.get(run.name, run.steps), f"its Ray task failed: {reason}")


class Progress:
    """What a sweep shows: a live table on a terminal, else a line per event and a status line every `EVERY_S`."""

    EVERY_S = 30.0
    WINDOW_S = 60.0

    def __init__(self, runs: Sequence[Run], out: Any) -> None:
        self.runs = {run.name: run for run in runs}
        self.steps = {run.name: run.steps for run in runs}
        self.status = {run.name: "done" if run.done else "waiting" for run in runs}
        self.out = out
        self.history: list[tuple[float, int]] = []
        self.last_line = 0.0
        self.live = None
        if getattr(out, "isatty", lambda: False)():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(file=out), refresh_per_second=2, transient=False)
            self.live.start()

    def line(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.out, flush=True)

    def update(self, reported: dict[str, int]) -> None:
        for name, steps in reported.items():
            self.steps[name] = max(self.steps[name], steps)  # a resumed run restarts from its checkpoint
            if self.status[name] == "waiting":
                self.status[name] = "running"
                if self.live is None:
                    self.line(f"started {name} at step {steps:,}")
        now = time.monotonic()
        self.history = [(t, s) for t, s in self.history if now - t <= self.WINDOW_S] + [(now, self._done_steps())]
        if self.live is not None:
            self.live.update(self._table())
        elif now - self.last_line >= self.EVERY_S:
            self.last_line = now
            self.line(self.summary())

    def ended(self, outcome: Outcome) -> None:
        self.status[outcome.name] = outcome.status
        self.steps[outcome.name] = max(self.steps[outcome.name], outcome.steps)
        if outcome.status == "failed":
            self.line(f"failed {outcome.name} at step {outcome.steps:,}: {outcome.message}{self._log(outcome.name)}")
        else:
            self.line(f"{outcome.status} {outcome.name} at step {outcome.steps:,}")

    def _log(self, name: str) -> str:
        log = self.runs[name].run_dir / "train.log"
        return f" (log: {log})" if log.is_file() else " (it failed before writing its run directory)"

    def _done_steps(self) -> int:
        return sum(min(self.steps[name], run.total_steps) for name, run in self.runs.items())

    def summary(self) -> str:
        counts = {status: list(self.status.values()).count(status) for status in ("waiting", "running", "done", "failed", "stopped")}
        if not counts["stopped"]:
            del counts["stopped"]
        total = sum(run.total_steps for run in self.runs.values())
        done = self._done_steps()
        (t0, s0), (t1, s1) = (self.history[0], self.history[-1]) if self.history else ((0.0, 0), (0.0, 0))
        rate = (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0
        eta = format_duration((total - done) / rate) if rate > 0 else "?"
        return (", ".join(f"{n} {status}" for status, n in counts.items())
                + f" | {done:,} of {total:,} steps ({100 * done / max(total, 1):.1f}%) | {rate:,.0f} steps/s | ETA {eta}")

    def _table(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False)
        for column in ("run", "status", "steps", "%"):
            table.add_column(column, justify="right" if column in ("steps", "%") else "left")
        for name, status in self.status.items():
            if status in ("running", "failed", "stopped"):
                total = self.runs[name].total_steps
                table.add_row(name, status, f"{self.steps[name]:,} / {total:,}", f"{100 * self.steps[name] / total:.0f}")
        return Group(Text(self.summary()), table)

    def close(self) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.stop()

    def report(self, outcomes: Sequence[Outcome], stopped_by: int | None, command: str) -> int:
        """The closing lines; the sweep's exit status."""
        self.line(self.summary())
        failed = [o for o in outcomes if o.status == "failed"]
        for outcome in failed:
            self.line(f"failed: {outcome.name}: {outcome.message}{self._log(outcome.name)}")
        if stopped_by is not None:
            self.line(f"stopped by signal {stopped_by}; continue with: {command}")
            return 128 + stopped_by
        return 1 if failed else 0
