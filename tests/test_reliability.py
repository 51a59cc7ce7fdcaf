"""A run never silently goes wrong: every fault of the README's reliability table, as a user or a
crash would produce it, and what the program does about it.

Command lines run on a tiny synthetic set through main.main(argv) in this process (`cli`, see
helpers.run_main); runs that are killed, stopped or held, or run under a resource limit, are
processes of their own (`start`, `cli_process`)."""
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main
from helpers import build_city_tree, run_main, write_list
from models import deeplab_v2
from utils import files
from utils.checkpoints import load_checkpoint, save_checkpoint
from utils.errors import InputError
from utils.synthetic import make_synthetic_voc
from utils.training import (LoopHooks, Runtime, TrainState, build_optimizer, build_scheduler,
                            step_batch, train_loop, weights_finite)
from utils.losses import DynamicLoss
from utils.metrics import ConfusionMatrix

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN = REPO_ROOT / 'main.py'
TINY = ['--backbone', 'resnet14', '--crop-size', '48', '48', '--batch-size', '4', '--device', 'cpu',
        '--eval-size', '96', '128', '--split', '8', '--sets-id', '0']
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', TQDM_DISABLE='1')


def cli(cwd, *args, check=True):
    """`python main.py ARGS` in `cwd`, run in this process; unless it exits 0, a failure (check)."""
    completed = run_main(cwd, *args)
    if check and completed.returncode != 0:
        raise AssertionError(f'main.py failed with {completed.returncode}:\n{completed.stderr[-3000:]}')
    return completed


def cli_process(cwd, *args, check=True, timeout=600, **kwargs):
    """The same in a process of its own (for what needs one, e.g. a resource limit)."""
    completed = subprocess.run([sys.executable, str(MAIN), *map(str, args)], cwd=cwd, capture_output=True,
                               text=True, timeout=timeout, env=ONE_THREAD, **kwargs)
    if check and completed.returncode != 0:
        raise AssertionError(f'main.py failed with {completed.returncode}:\n{completed.stderr[-3000:]}')
    return completed


def start(cwd, *args):
    return subprocess.Popen([sys.executable, str(MAIN), *map(str, args)], cwd=cwd, env=ONE_THREAD,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, process, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, 'timed out'
        time.sleep(0.1)


def one_line(completed, *fragments, status=2):
    assert completed.returncode == status, (completed.returncode, completed.stderr[-3000:])
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def results(cwd, name):
    return json.loads((Path(cwd) / 'logs' / name / 'results.json').read_text())


@pytest.fixture(scope='module')
def root(build_once):
    """24 training and 6 val images (seed 4), made once per test run (conftest.py); read only."""
    return build_once('voc_seed4', lambda folder: make_synthetic_voc(folder, num_train=24, num_val=6, seed=4))


@pytest.fixture
def data(root, tmp_path):
    """A private copy of the set, for tests that break a file."""
    copy = tmp_path / 'voc'
    shutil.copytree(root, copy)
    return copy


def checkpoint(path, head_branches=2, seed=0):
    torch.manual_seed(seed)
    model = deeplab_v2(21, backbone='resnet14', head_branches=head_branches)
    save_checkpoint(path, model, num_classes=21,
                    extra={'architecture': {'backbone': 'resnet14', 'head_branches': head_branches}})
    return path


# --- bugs ------------------------------------------------------------------------------------

def test_bad_validation_label_stops_before_the_first_step(data, tmp_path):
    val = (data / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()
    bad = data / 'SegmentationClassAug' / f'{val[3]}.png'
    label = np.array(Image.open(bad))
    label[5, 5] = 77
    Image.fromarray(label).save(bad)
    completed = cli(tmp_path, '--state', 2, '--exp-name', 'run', '--data-root', data, '--init-epochs', 50,
                    *TINY, '--workers', 0, check=False)
    one_line(completed, bad, 'label value 77')
    assert 'steps of batch' not in (tmp_path / 'logs' / 'run' / 'run.log').read_text(), 'no training began'
    # The check is cached per list: fixed, the file is checked again (its time changed).
    label[5, 5] = 0
    Image.fromarray(label).save(bad)
    cli(tmp_path, '--state', 3, '--exp-name', 'eval', '--data-root', data, '--continue-from',
        checkpoint(tmp_path / 'start.pt'), *TINY, '--workers', 0)


@pytest.mark.parametrize('flags,named', [
    (['--lr', 'nan'], '--lr'), (['--lr', 'inf'], '--lr'), (['--lr', '-1'], '--lr'), (['--st-lr', '0'], '--st-lr'),
    (['--gamma', '-1'], '--gamma'), (['--weight-decay', 'nan'], '--weight-decay'),
    (['--det-label-ratio', '-1'], '--det-label-ratio'), (['--init-label-ratio', '0'], '--init-label-ratio'),
    (['--exp-name', ''], '--exp-name'), (['--exp-name', '.hidden'], '--exp-name'),
    (['--exp-name', 'a/b'], '--exp-name'), (['--seed', '-3'], '--seed')])
def test_odd_flag_values_are_one_line(capsys, flags, named):
    try:
        status = main.main(['--state', '2', *flags])
    except SystemExit as stop:
        status = stop.code
    error = capsys.readouterr().err
    assert status == 2
    lines = [line for line in error.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0], error


def test_weights_that_become_non_finite_stop_the_run_and_are_never_saved(tmp_path):
    """A finite loss with a step that overflows the weights (here a huge learning rate): the check
    after the update stops the run; the checkpoint guard would refuse them anyway."""
    torch.manual_seed(0)
    model = deeplab_v2(3, backbone='resnet14')
    optimizer = build_optimizer(model, lr=1e38, weight_decay=0.0)
    state = TrainState(model, optimizer, build_scheduler(optimizer, 5), torch.amp.GradScaler('cpu', enabled=False), 5)
    saved = []
    hooks = LoopHooks(validate=lambda: ConfusionMatrix(3),
                      on_best=lambda s, scores: saved.append(weights_finite(s.model)),
                      on_validated=lambda s, scores: None, save_last=lambda s: saved.append(weights_finite(s.model)),
                      log=lambda message: None, scalar=lambda *a: None)
    batches = iter([step_batch(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))] * 5)
    with pytest.raises(Exception) as error:
        train_loop(state, batches, DynamicLoss(0.0), Runtime(torch.device('cpu')), hooks, val_every=1,
                   save_every=1, num_classes=3)
    assert type(error.value).__name__ == 'TrainingDiverged'
    assert 'NaN or infinite' in str(error.value) or 'loss is' in str(error.value)
    assert all(saved), 'everything saved was finite: nothing is saved once the weights break'


@pytest.mark.parametrize('failing_step', [2, 4], ids=['mid-phase', 'last step'])
def test_a_validation_that_failed_is_done_first_when_resumed(failing_step):
    """A validation file broken mid-run stops the run after its step; once the file is mended,
    --resume validates that step before the next one, so the model of that step (the phase's
    last one too) still competes for the best checkpoint instead of being skipped silently."""
    import copy
    torch.manual_seed(0)
    model = deeplab_v2(3, backbone='resnet14')
    validated, saved = [], []

    def run(state, broken, steps):
        def validate():
            if broken and state.step == failing_step:
                raise InputError('val/x.png: cannot read label')
            validated.append(state.step)
            return ConfusionMatrix(3)
        hooks = LoopHooks(validate=validate, on_best=lambda s, scores: None, on_validated=lambda s, scores: None,
                          save_last=lambda s: saved.append((s.step, copy.deepcopy(s.extra))) or 'last.pt',
                          log=lambda message: None, scalar=lambda *a: None)
        batches = iter([step_batch(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))] * steps)
        train_loop(state, batches, DynamicLoss(0.0), Runtime(torch.device('cpu')), hooks, val_every=2,
                   save_every=0, num_classes=3)

    def fresh_state():
        optimizer = build_optimizer(model, 0.001, 0.0)
        return TrainState(model, optimizer, build_scheduler(optimizer, 4), torch.amp.GradScaler('cpu', enabled=False), 4)

    with pytest.raises(InputError):
        run(fresh_state(), broken=True, steps=4)
    step, extra = saved[-1]
    assert step == failing_step and validated == ([] if failing_step == 2 else [2])
    resumed = fresh_state()
    resumed.step, resumed.extra = step, extra
    validated.clear()
    run(resumed, broken=False, steps=4 - step)
    assert validated == ([2, 4] if failing_step == 2 else [4]), 'the failed validation comes first'
    assert resumed.step == 4


def test_two_runs_of_one_name_second_refused_first_intact(root, tmp_path):
    args = ['--state', 2, '--exp-name', 'twice', '--data-root', root, '--init-epochs', 10,
            '--val-num-steps', 1000, *TINY, '--workers', 0]
    first = start(tmp_path, *args)
    log = tmp_path / 'logs' / 'twice' / 'run.log'
    wait_for(lambda: log.exists() and 'steps of batch' in log.read_text(), first)
    os.killpg(first.pid, signal.SIGSTOP)   # held mid-run, lock and all, while the others try
    try:
        second = cli(tmp_path, *args, check=False)
        one_line(second, "experiment 'twice' is in use by a live run", f'pid {first.pid}')
        resumed = cli(tmp_path, *args, '--resume', check=False)    # nor may --resume take it over
        one_line(resumed, 'in use by a live run')
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    assert results(tmp_path, 'twice')['steps'] == 10 and load_checkpoint(tmp_path / 'twice.pt')['step'] == 10


def test_two_labeling_runs_of_one_name(root, tmp_path):
    """The second is refused while the first runs; the first's labels are those of its own
    checkpoint (the same as a separate labeling with it), not a mix of two."""
    first_checkpoint = checkpoint(tmp_path / 'a.pt', seed=1)
    other_checkpoint = checkpoint(tmp_path / 'b.pt', seed=2)
    args = ['--state', 0, '--data-root', root, *TINY, '--workers', 0, '--label-ratio', 0.5]
    first = start(tmp_path, '--exp-name', 'dup', '--continue-from', first_checkpoint, *args)
    log = tmp_path / 'logs' / 'dup' / 'run.log'
    wait_for(lambda: log.exists(), first)
    os.killpg(first.pid, signal.SIGSTOP)   # held while it holds the experiment
    try:
        second = cli(tmp_path, '--exp-name', 'dup', '--continue-from', other_checkpoint, *args, check=False)
        one_line(second, 'in use by a live run')
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert first.wait(timeout=600) == 0
    cli(tmp_path, '--exp-name', 'reference', '--continue-from', first_checkpoint, *args)
    labels = sorted((tmp_path / 'logs' / 'reference' / 'pseudo_labels').glob('*.png'))
    assert len(labels) == 21
    for path in labels:
        assert np.array_equal(np.array(Image.open(path)),
                              np.array(Image.open(tmp_path / 'logs' / 'dup' / 'pseudo_labels' / path.name)))


def killed_run(tmp_path, args, saved_at_least=1):
    """Start a run, wait for its last state, kill -9 it; returns the saved step."""
    process = start(tmp_path, *args)
    last = tmp_path / 'logs' / args[args.index('--exp-name') + 1] / 'last.pt'
    wait_for(last.exists, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=120)
    step = load_checkpoint(last)['step']
    assert step >= saved_at_least
    return step


@pytest.fixture(scope='module')
def killed_training(root, build_once):
    """(working folder, flags) of a state 2 run killed with kill -9 once it had saved its state,
    made once per test run for the tests that only try to resume it; read only: copy it."""
    args = ['--state', 2, '--exp-name', 'run', '--data-root', root, '--init-epochs', 40, '--lr', 0.02,
            '--val-num-steps', 1000, '--save-every', 2, *TINY, '--workers', 0]
    return build_once('killed_training', lambda folder: killed_run(folder, args)), args


@pytest.mark.parametrize('changed,named', [(['--lr', 0.5], "--lr was 0.02"), (['--split', '1'], "--split was 8"),
                                           (['--batch-size', 2], '--batch-size was 4'),
                                           (['--head-branches', 4], '--head-branches was 2')])
def test_resume_refuses_a_changed_run(killed_training, tmp_path, changed, named):
    killed, args = killed_training
    work = Path(shutil.copytree(killed, tmp_path / 'work'))
    before = (work / 'logs' / 'run' / 'last.pt').read_bytes()
    refused = cli(work, *args, *changed, '--resume', check=False)
    one_line(refused, '--resume', named)
    assert (work / 'logs' / 'run' / 'last.pt').read_bytes() == before


def test_resume_names_the_keys_of_a_description_edited_since(killed_training, tmp_path, repo_root):
    """It said '--dataset (its description) was 5c8988... now 80dc37...; resume with the same flags'
    though the flags were the same: two digests and no key."""
    killed, args = killed_training
    work = Path(shutil.copytree(killed, tmp_path / 'work'))
    text = (repo_root / 'datasets' / 'voc.yaml').read_text()
    edited = tmp_path / 'voc_edited.yaml'
    edited.write_text(text.replace('crop_size: [321, 321]', 'crop_size: [300, 300]')
                      .replace('splits: ../data_splits/', f'splits: {repo_root / "data_splits"}/'))
    refused = cli(work, *args, '--dataset', edited, '--resume', check=False)
    line = one_line(refused, '--resume: the dataset description', 'changed since the interrupted run',
                    'restore it, or start a new --exp-name')
    assert re.search(r'\(in: [a-z_, ]*crop_size', line), line


def test_resume_is_an_exact_continuation_with_loader_workers(root, tmp_path):
    """Killed and resumed with two loader workers, a run ends with the very weights and scores of
    the same run left alone: augmentation is a function of (seed, epoch, position)."""
    args = ['--data-root', root, '--init-epochs', 3, '--val-num-steps', 1000, '--save-every', 3, *TINY,
            '--split', '1', '--workers', 2, '--state', 2]
    alone, interrupted = tmp_path / 'alone', tmp_path / 'interrupted'
    alone.mkdir(), interrupted.mkdir()
    cli(alone, *args, '--exp-name', 'run')
    saved = killed_run(interrupted, [*args, '--exp-name', 'run'], saved_at_least=3)
    assert saved < 18
    cli(interrupted, *args, '--exp-name', 'run', '--resume', '--workers', 1)   # workers may change
    first, second = load_checkpoint(alone / 'run.pt'), load_checkpoint(interrupted / 'run.pt')
    assert first['step'] == second['step'] == 18
    for key, value in first['model'].items():
        assert torch.equal(value, second['model'][key]), key
    assert results(alone, 'run')['best_scores'] == results(interrupted, 'run')['best_scores']


def test_a_data_error_in_a_loader_worker_is_one_line_and_saves_the_state(data, tmp_path):
    args = ['--state', 2, '--exp-name', 'run', '--data-root', data, '--split', '1', '--init-epochs', 200,
            '--val-num-steps', 1000, '--save-every', 2, *TINY, '--workers', 2]
    process = start(tmp_path, *args)
    wait_for((tmp_path / 'logs' / 'run' / 'last.pt').exists, process)   # two steps done
    broken = data / 'JPEGImages' / f'{(data / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[5]}.jpg'
    broken.write_bytes(broken.read_bytes()[:200])   # cut off mid-run, after the up-front check
    _, stderr = process.communicate(timeout=600)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 2 and len(lines) == 1, stderr[-3000:]
    assert str(broken) in lines[0] and 'cannot read image' in lines[0]
    saved = load_checkpoint(tmp_path / 'logs' / 'run' / 'last.pt')
    assert saved['step'] >= 2, saved['step']
    log = (tmp_path / 'logs' / 'run' / 'run.log').read_text()
    assert 'steps of batch' in log   # the error came mid-run, after the up-front check passed


def test_write_failures_are_one_line(root, tmp_path):
    # The log folder cannot be made (a file stands where it should be).
    (tmp_path / 'logs').write_text('not a folder')
    completed = cli(tmp_path, '--state', 2, '--exp-name', 'run', '--data-root', root, *TINY, check=False)
    one_line(completed, 'cannot write', status=4)
    (tmp_path / 'logs').unlink()
    # A file size limit (as a full disk would) at the first checkpoint: one line, exit 4, no
    # half-written checkpoint left.
    limit = 2 * 2 ** 20

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    completed = cli_process(tmp_path, '--state', 2, '--exp-name', 'full', '--data-root', root, '--init-epochs', 1,
                            '--val-num-steps', 1, *TINY, '--workers', 0, check=False, preexec_fn=small_files)
    line = one_line(completed, 'full.pt', 'cannot write checkpoint', status=4)
    assert 'file size limit' in line or 'disk full' in line
    assert not (tmp_path / 'full.pt').exists() and not list(tmp_path.glob('*.tmp'))


def test_head_layout_comes_from_the_checkpoint_or_is_refused(root, tmp_path):
    four = checkpoint(tmp_path / 'four.pt', head_branches=4)
    adopted = cli(tmp_path, '--state', 3, '--exp-name', 'adopted', '--continue-from', four, '--data-root', root,
                  *TINY, '--workers', 0)
    assert 'from the checkpoint: head_branches' in adopted.stdout and '4-branch head' in adopted.stdout
    cli(tmp_path, '--state', 3, '--exp-name', 'explicit', '--continue-from', four, '--data-root',
                   root, *TINY, '--workers', 0, '--head-branches', 4)
    assert results(tmp_path, 'adopted')['miou'] == results(tmp_path, 'explicit')['miou']
    refused = cli(tmp_path, '--state', 3, '--exp-name', 'wrong', '--continue-from', four, '--data-root', root,
                  *TINY, '--workers', 0, '--head-branches', 2, check=False)
    one_line(refused, 'four.pt', '--head-branches 4')


def test_another_experiments_labels_are_refused_before_any_work(root, tmp_path):
    start_checkpoint = checkpoint(tmp_path / 'start.pt')
    common = ['--data-root', root, '--continue-from', start_checkpoint, *TINY, '--workers', 0]
    cli(tmp_path, '--state', 0, '--exp-name', 'owner', *common)
    refused = cli(tmp_path, '--state', 1, '--exp-name', 'intruder', '--iters', 2, '--pseudo-dir',
                  'logs/owner/pseudo_labels', *common, check=False)
    one_line(refused, "experiment 'owner'")
    assert 'round' not in (tmp_path / 'logs' / 'intruder' / 'run.log').read_text()


def test_outputs_may_not_land_inside_the_dataset(data):
    completed = cli(data, '--state', 3, '--continue-from', 'x.pt', '--data-root', data, *TINY, check=False)
    one_line(completed, 'inside the dataset root')
    assert not (data / 'logs').exists()


def test_half_written_files_of_killed_runs_are_removed(root, tmp_path):
    dead_pid = 4_000_000   # above pid_max: no such process
    (tmp_path / 'logs' / 'run').mkdir(parents=True)
    stale = [tmp_path / f'run.pt.{dead_pid}.tmp', tmp_path / 'logs' / 'run' / f'last.pt.{dead_pid}.tmp']
    alive = tmp_path / f'run.pt.{os.getppid()}.tmp'   # a live process's file is left alone (not the run's own)
    for path in stale + [alive]:
        path.write_bytes(b'partial')
    completed = cli(tmp_path, '--state', 3, '--exp-name', 'run', '--continue-from', checkpoint(tmp_path / 's.pt'),
                    '--data-root', root, *TINY, '--workers', 0)
    assert not any(path.exists() for path in stale) and alive.exists()
    assert completed.stdout.count('left half-written by a killed run') == 2


def test_durable_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, 'fsync', lambda fd: synced.append(os.readlink(f'/proc/self/fd/{fd}')) or real_fsync(fd))
    target = tmp_path / 'manifest.json'
    with files.atomic_path(target, durable=True) as temporary:
        temporary.write_text('{}')
    assert synced[0].endswith('.tmp') and synced[-1] == str(tmp_path)
    assert target.read_text() == '{}'


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path):
    lock = tmp_path / 'lock'
    holder = subprocess.Popen([sys.executable, '-c', f'import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); '
                               f'from utils.files import FolderLock; held = FolderLock({str(lock)!r}).acquire("x"); '
                               f'print("held", flush=True); import time; time.sleep(60)'],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(InputError, match=f'pid {holder.pid}'):
        files.FolderLock(lock).acquire('the experiment')
    holder.kill()
    holder.wait()
    files.FolderLock(lock).acquire('the experiment').release()   # stale: taken over


def test_a_resume_never_lets_the_best_checkpoint_regress(root, tmp_path):
    args = ['--state', 2, '--exp-name', 'run', '--data-root', root, '--init-epochs', 20, '--val-num-steps', 1000,
            '--save-every', 2, *TINY, '--workers', 0]
    killed_run(tmp_path, args)
    # The best file holds a better network than last.pt knows of (saved after it, then killed).
    best = load_checkpoint(tmp_path / 'run.pt') if (tmp_path / 'run.pt').exists() else None
    last = load_checkpoint(tmp_path / 'logs' / 'run' / 'last.pt')
    model = deeplab_v2(21, backbone='resnet14')
    model.load_state_dict(last['model'])
    save_checkpoint(tmp_path / 'run.pt', model, step=1, best_miou=0.99, num_classes=21,
                    extra={'validation': last['validation'], 'architecture': last['architecture'],
                           'best_scores': {'miou': 0.99}})
    assert best is None or best['best_miou'] < 0.99
    cli(tmp_path, *args, '--resume')
    assert results(tmp_path, 'run')['best_miou'] == 0.99
    assert load_checkpoint(tmp_path / 'run.pt')['best_miou'] == 0.99, 'not overwritten by a worse one'


# --- paths no test ran before ------------------------------------------------------------------

def test_cityscapes_through_every_state(tmp_path):
    raw = np.full((512, 1024), 7, dtype=np.uint8)   # road
    raw[200:, :400] = 26                             # car
    raw[:100] = 23                                   # sky
    raw[300:310] = 0                                 # unlabeled -> 255
    # Every forward pass but the training crops is at 512x1024: one image to label, one to score.
    entries = [('train', 'ulm', f'ulm_00000{i}_000019') for i in range(3)] + \
              [('val', 'lindau', 'lindau_000000_000019')]
    root = build_city_tree(tmp_path / 'city', entries, [raw] * len(entries))
    lists = root / 'data_lists'
    train = [f'ulm/ulm_00000{i}_000019' for i in range(3)]
    write_list(lists / 'train.txt', train)
    write_list(lists / 'val.txt', ['lindau/lindau_000000_000019'])
    write_list(lists / '2_labeled_0.txt', train[:2])
    write_list(lists / '2_unlabeled_0.txt', train[2:])
    common = ['--dataset', 'city', '--data-root', root, '--backbone', 'resnet14', '--crop-size', 64, 128,
              '--batch-size', 2, '--device', 'cpu', '--split', 2, '--workers', 0]
    work = tmp_path / 'work'
    work.mkdir()
    cli(work, '--state', 2, '--exp-name', 'sup', '--init-epochs', 1, '--val-num-steps', 10, '--lr', 0.01, *common)
    cli(work, '--state', 0, '--exp-name', 'labels', '--continue-from', 'sup.pt', '--label-ratio', 0.5, *common)
    labels = sorted((work / 'logs' / 'labels' / 'pseudo_labels' / 'ulm').glob('*.png'))
    assert len(labels) == 1, labels   # one per unlabeled image, in its city's folder
    for path in labels:
        with Image.open(path) as label:
            assert (label.height, label.width) == (512, 1024)
            assert set(np.unique(np.array(label)).tolist()) <= set(range(19)) | {255}
    assert results(work, 'labels')['pseudo_label_miou'] is not None
    cli(work, '--state', 1, '--exp-name', 'dst', '--continue-from', 'sup.pt', '--iters', 1, '--st-epochs', 1,
        '--init-epochs', 0, '--gamma', 9, '--val-num-steps', 10, *common)
    cli(work, '--state', 3, '--exp-name', 'eval', '--continue-from', 'dst.pt', *common, '--save-predictions', 'out')
    evaluation = results(work, 'eval')
    assert evaluation['method'] == 'dst-cbc' and len(evaluation['confusion_matrix']) == 19
    with Image.open(work / 'out' / 'label_ids' / 'lindau' / 'lindau_000000_000019.png') as ids:
        assert (ids.height, ids.width) == (512, 1024)
        assert set(np.unique(np.array(ids)).tolist()) <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26,
                                                          27, 28, 31, 32, 33}


def test_self_training_rounds_in_one_process_resume_at_the_boundary(root, tmp_path):
    """--iters 2 in one process with the supervised warm-up (--init-epochs 1), killed once round
    two has begun, resumed from the round boundary: round one is not run again."""
    start_checkpoint = checkpoint(tmp_path / 'start.pt')
    args = ['--state', 1, '--exp-name', 'st', '--continue-from', start_checkpoint, '--data-root', root, '--iters', 2,
            '--st-epochs', 1, 1, '--init-epochs', 1, '--val-num-steps', 1000, '--save-every', 0, *TINY,
            '--workers', 0]
    process = start(tmp_path, *args)
    log = tmp_path / 'logs' / 'st' / 'run.log'
    wait_for(lambda: log.exists() and 'round 2/2: ratio' in log.read_text(), process)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=120)
    saved = load_checkpoint(tmp_path / 'logs' / 'st' / 'last.pt')
    assert saved['step'] == 0 and saved['train_state']['progress']['round'] == 1
    text = log.read_text()
    assert 'supervised: 3 labeled images' in text and 'round 1 done' in text
    cli(tmp_path, *args, '--resume')
    text = log.read_text()
    assert text.count('round 1/2: ratio') == 1 and text.count('round 2/2: ratio') == 2
    rounds = results(tmp_path, 'st')['rounds']
    assert [r['round'] for r in rounds] == [1, 2] and [r['ratio'] for r in rounds] == [0.2, 0.4]


def test_mixed_precision_training_on_cpu_is_close_to_float32():
    """A few steps under bfloat16 autocast (what --mixed-precision means on a CPU) against float32:
    losses within 2% (bfloat16 keeps 8 bits of mantissa; the loss itself is computed in float32)."""
    losses = {}
    for name, dtype in (('fp32', None), ('bf16', torch.bfloat16)):
        torch.manual_seed(0)
        model = deeplab_v2(5, backbone='resnet14')
        optimizer = build_optimizer(model, 0.01, 5e-4)
        state = TrainState(model, optimizer, build_scheduler(optimizer, 3), torch.amp.GradScaler('cpu', enabled=False), 3)
        generator = torch.Generator().manual_seed(1)
        batches = [step_batch(torch.randn(2, 3, 32, 32, generator=generator),
                              torch.randint(0, 5, (2, 32, 32), generator=generator)) for _ in range(3)]
        seen = []
        hooks = LoopHooks(validate=lambda: ConfusionMatrix(5), on_best=lambda s, scores: None,
                          on_validated=lambda s, scores: None, save_last=lambda s: None, log=lambda m: None,
                          scalar=lambda tag, value, step: seen.append(value) if tag.endswith('/loss') else None)
        for step, batch in enumerate(batches):
            state.total_steps = step + 1
            train_loop(state, iter([batch]), DynamicLoss(0.0), Runtime(torch.device('cpu'), amp_dtype=dtype), hooks,
                       val_every=100, save_every=0, num_classes=5)
        losses[name] = seen
    assert len(losses['fp32']) == 3
    for full, half in zip(losses['fp32'], losses['bf16']):
        assert half == pytest.approx(full, rel=0.02)


def test_batches_that_do_not_divide_over_the_processes_are_refused():
    args = main.parse_args(['--state', '2', '--batch-size', '6'])
    main.check_batch_split(args, 2, torch.device('cpu'))   # 3 per process: fine
    with pytest.raises(InputError, match='--batch-size 6 is the global batch and does not divide over 4'):
        main.check_batch_split(args, 4, torch.device('cpu'))
    args = main.parse_args(['--state', '2', '--batch-size', '8', '--sync-bn'])
    with pytest.raises(InputError, match='--sync-bn needs CUDA'):
        main.check_batch_split(args, 2, torch.device('cpu'))
    from utils.self_training import check_flags
    args = main.parse_args(['--state', '1', '--batch-size', '6'])
    with pytest.raises(InputError, match='halves'):
        check_flags(args, 2)   # 3 pseudo-labeled + 3 labeled do not split over 2
