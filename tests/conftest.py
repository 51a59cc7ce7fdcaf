"""Shared fixtures: where the repository and the read-only `../shared` folder are.

The suite runs in two pytest-xdist workers (the README's command) on a 2-core machine, and most
tests start main.py processes. One thread per process keeps the two workers from oversubscribing
the cores: two OpenMP threads per process, two processes at once, made forward passes many times
slower there. Set before torch is imported anywhere, and inherited by every child process."""
import os
from pathlib import Path

import pytest

for _variable in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_variable, '1')

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / 'shared'


@pytest.fixture(scope='session')
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope='session')
def shared_dir():
    """`../shared` beside the checkout (present in CI); tests needing it skip when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f'{SHARED_DIR} is absent: the reference data sits beside the checkout in CI')
    return SHARED_DIR
