"""helpers.run_main, the in-process stand-in for `python main.py ...` that most CLI tests use:
what a process would give (status, its own stdout and stderr, a lock that ends with it) and
nothing left behind in the test process (working folder, argv, environment, threads, RNG)."""
import os
import sys

import pytest
import torch

import main
from helpers import TINY_FLAGS, run_main
from utils.files import FolderLock


def test_a_refusal_after_the_lock_is_taken_leaves_the_test_process_as_it_was(synthetic_voc, tmp_path):
    before = (os.getcwd(), list(sys.argv), dict(os.environ), torch.get_num_threads(), torch.get_rng_state())
    # The checkpoint is read after the experiment's lock is taken: the refusal leaves main
    # without closing the experiment, as a process would end.
    status, stdout, stderr = run_main(tmp_path, '--state', 3, '--exp-name', 'refused', '--continue-from',
                                      'nowhere.pt', *TINY_FLAGS, env={'DSTCBC_VOC_ROOT': synthetic_voc})
    assert status == 2 and 'main.py --state 3 --exp-name refused' in stdout   # its log, on its own stdout
    assert stderr.count('\n') == 1 and stderr.startswith('error: ') and 'nowhere.pt' in stderr
    assert (tmp_path / 'logs' / 'refused' / 'lock').exists(), 'the run got as far as its lock'
    FolderLock(tmp_path / 'logs' / 'refused' / 'lock').acquire('the experiment').release()   # not held
    cwd, argv, environ, threads, rng = before
    assert (os.getcwd(), sys.argv, dict(os.environ), torch.get_num_threads()) == (cwd, argv, environ, threads)
    assert torch.equal(torch.get_rng_state(), rng), 'main seeds torch; the test process keeps its stream'


def test_a_finished_run_prints_on_its_own_stdout(synthetic_voc, tmp_path, capsys):
    from models import deeplab_v2
    from utils.checkpoints import save_checkpoint

    save_checkpoint(tmp_path / 'start.pt', deeplab_v2(21, backbone='resnet14'), num_classes=21)
    completed = run_main(tmp_path, '--state', 3, '--exp-name', 'eval', '--continue-from', 'start.pt',
                         '--data-root', synthetic_voc, *TINY_FLAGS)
    assert completed.returncode == 0, completed.stderr
    assert 'mIoU' in completed.stdout and 'main.py --state 3' in completed.stdout
    assert capsys.readouterr().out == '', 'nothing reached the test process\'s stdout'


def test_argparse_exits_and_uncaught_exceptions_give_a_process_s_status(tmp_path, monkeypatch):
    status, _, stderr = run_main(tmp_path, '--state', 7)
    assert status == 2 and '--state' in stderr

    def broken(*args):
        raise RuntimeError('not an expected failure')

    monkeypatch.setattr(main, 'run', broken)
    status, _, stderr = run_main(tmp_path, '--state', 3)
    assert status == 1
    assert stderr.startswith('Traceback') and stderr.rstrip().endswith('RuntimeError: not an expected failure')


def test_help_exits_0_with_the_usage_on_stdout(tmp_path):
    status, stdout, _ = run_main(tmp_path, '--help')
    assert status == 0 and '--state' in stdout and '--continue-from' in stdout


@pytest.mark.parametrize('script', ['predict', 'describe_dataset', 'generate_splits', 'visualize', 'paper_table',
                                    'convert_coco', 'cityscapes_data_lists'])
def test_a_bad_flag_is_one_line_exit_2_in_every_script(script):
    """As main.py's: argparse printed its usage block above the error, the only multi-line input
    error left in the other scripts."""
    import importlib

    from helpers import call

    status, out, err = call(importlib.import_module(script), '--no-such-flag')
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and out == '' and len(lines) == 1, err
    assert lines[0].startswith('error: ')   # the flags it lacks, or the one it does not know
    assert lines[0].endswith(f'(see python {script}.py --help)')
