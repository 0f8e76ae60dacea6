"""Test-session settings: the networks under test are tiny, so one torch thread per process is fastest, and it keeps
the suite's time steady on a busy 2-core machine (idle OpenMP threads spin against other processes). SB3 makes a log
folder for every model that learns without one: ``SB3_LOGDIR`` if set, else a new ``SB3-<date>`` in the system's temp
folder. The suite sets ``SB3_LOGDIR`` to one temporary folder of its own (subprocesses inherit it), removed at exit."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
if "SB3_LOGDIR" not in os.environ:
    os.environ["SB3_LOGDIR"] = tempfile.mkdtemp(prefix="cbp-rl-tests-sb3-")
    atexit.register(shutil.rmtree, os.environ["SB3_LOGDIR"], ignore_errors=True)

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
