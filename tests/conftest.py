import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Golden vectors were produced with 2 threads; CI has 2 cores.
torch.set_num_threads(2)


@pytest.fixture
def repo_root():
    return ROOT


@pytest.fixture
def one_thread(monkeypatch):
    """In-process training runs: one thread (OMP_NUM_THREADS=1 fixes train.py's thread policy; reproducible
    and robust to a busy CI machine); the thread count and deterministic mode that train.py sets are restored."""
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)
