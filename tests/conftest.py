"""Shared fixtures: where the repository and the read-only `../shared` folder are."""
from pathlib import Path

import pytest

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
