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
