"""Test-session settings: the networks under test are tiny, so one torch thread per process is fastest, and it keeps
the suite's time steady on a busy 2-core machine (idle OpenMP threads spin against other processes)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
