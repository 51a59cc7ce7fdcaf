"""Shared fixtures: where the repository and the read-only `../shared` folder are, and what is
built once per test run (a synthetic set, a trained checkpoint) for every test and worker to copy.

The suite runs in two pytest-xdist workers (the README's command) on a 2-core machine, and most
tests run main.py, in this process (helpers.run_main) or in processes of its own. One thread per
process keeps the two workers from oversubscribing the cores: two OpenMP threads per process, two
processes at once, made forward passes many times slower there. Set before torch is imported
anywhere, and inherited by every child process; the workers hold torch to one thread as well."""
import os
import shutil
from pathlib import Path

import pytest

for _variable in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_variable, '1')

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / 'shared'

# The shared supervised checkpoint: one epoch of the 3 labeled images of split 8 (one step).
SUPERVISED_FLAGS = ['--state', '2', '--exp-name', 'sup', '--split', '8', '--sets-id', '0', '--init-epochs', '1',
                    '--val-num-steps', '100']


@pytest.fixture(scope='session', autouse=True)
def one_torch_thread():
    """torch in the workers runs one thread, whatever OMP_NUM_THREADS said (see the docstring)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope='session')
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope='session')
def shared_dir():
    """`../shared` beside the checkout (present in CI); tests needing it skip when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f'{SHARED_DIR} is absent: the reference data sits beside the checkout in CI')
    return SHARED_DIR


@pytest.fixture(scope='session')
def build_once(tmp_path_factory):
    """build_once(name, build) -> a folder that `build(folder)` filled, once per test run.

    Under pytest-xdist the folder lies in the run's temporary folder, shared by the workers: the
    first to need it builds it while holding a file lock, the other waits and uses it. What is
    built there is read only; a test that changes something copies it first."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        base = base.parent   # pytest-<n>/ above the workers' popen-gw<i>/
    base = base / 'built-once'
    base.mkdir(exist_ok=True)

    def build(name, builder):
        folder = base / name
        done = base / f'{name}.done'
        with FileLock(str(base / f'{name}.lock')):
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)   # left by a build that failed
                folder.mkdir()
                builder(folder)
                done.touch()
        return folder

    return build


@pytest.fixture(scope='session')
def synthetic_voc(build_once):
    """A synthetic VOC set of 24 training and 6 val images (seed 1) with its split lists; read only."""
    from utils.synthetic import make_synthetic_voc

    return build_once('synthetic_voc', lambda folder: make_synthetic_voc(folder, num_train=24, num_val=6, seed=1))


@pytest.fixture(scope='session')
def supervised_checkpoint(build_once, synthetic_voc):
    """sup.pt of a finished state 2 run on `synthetic_voc` (SUPERVISED_FLAGS, TINY_FLAGS), trained once per
    test run; read only: copy it into the test's folder (its recorded validation set is
    `synthetic_voc`, so a state 1 run from it does not validate it again)."""
    from helpers import TINY_FLAGS, run_main

    def train(folder):
        completed = run_main(folder, *SUPERVISED_FLAGS, *TINY_FLAGS, '--data-root', synthetic_voc)
        assert completed.returncode == 0, completed.stderr[-3000:]

    return build_once('supervised', train) / 'sup.pt'
