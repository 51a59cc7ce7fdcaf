"""Nothing a user does by mistake loses work (issue 15): what an experiment name holds, lists
edited between a stop and --resume, files found wrong only after the work, signals outside the
training loops, and the original's defaults.

Runs go through `main.main(argv)` in this process (a run of the tiny set takes seconds; starting a
process costs seconds more); only the signal tests start processes. A stop inside a training loop
is asked for by a stand-in for the loop's `fetch` that sets the run's stop request after a number
of steps, which is what SIGINT does there."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main
import utils.context
import utils.self_training
import utils.supervised
import utils.training
from helpers import write_list
from models import deeplab_v2
from utils.checkpoints import load_checkpoint, save_checkpoint
from utils.errors import InputError
from utils.files import FolderLock
from utils.self_training import check_flags
from utils.synthetic import make_synthetic_voc

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ['--backbone', 'resnet14', '--crop-size', '48', '48', '--batch-size', '4', '--device', 'cpu',
        '--eval-size', '96', '128', '--split', '8', '--sets-id', '0', '--workers', '0']
LIST_DIR = Path('ImageSets') / 'Segmentation'


# --- helpers -------------------------------------------------------------------------------------

def run(capsys, *args):
    """main.main in this process: (exit status, stdout, the non-empty stderr lines)."""
    try:
        status = main.main([str(arg) for arg in args])
    except SystemExit as stop:
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def one_line(lines, *fragments):
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def stop_training_after(monkeypatch, steps):
    """The training loop fetches the batch of step n + 1 during step n: the fetch after `steps`
    steps finds the stop requested, as after SIGINT, and the loop saves its state and stops."""
    real_fetch = utils.training.fetch
    fetches = []

    def fetch(batches, stop):
        fetches.append(1)
        if len(fetches) > steps:
            stop.signal_name = 'SIGINT'
        return real_fetch(batches, stop)
    monkeypatch.setattr(utils.training, 'fetch', fetch)


def start_checkpoint(path, seed=0):
    torch.manual_seed(seed)
    save_checkpoint(path, deeplab_v2(21, backbone='resnet14'), num_classes=21,
                    extra={'architecture': {'backbone': 'resnet14', 'head_branches': 2}})
    return path


def log_of(name):
    return (Path('logs') / name / 'run.log').read_text()


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp('voc')
    make_synthetic_voc(root, num_train=24, num_val=6, seed=4)
    return root


@pytest.fixture
def data(root, tmp_path):
    """A private copy of the set, for tests that change a list or break a file."""
    return Path(shutil.copytree(root, tmp_path / 'voc'))


@pytest.fixture(scope='module')
def finished(root, tmp_path_factory):
    """A folder holding a finished state 2 run 'sup' (2 steps) and a start checkpoint."""
    folder = tmp_path_factory.mktemp('finished')
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        start_checkpoint(folder / 'start.pt')
        assert main.main(['--state', '2', '--exp-name', 'sup', '--data-root', str(root), '--init-epochs', '2',
                          '--val-num-steps', '1000', *TINY]) == 0
    return folder


@pytest.fixture
def work(finished, tmp_path, monkeypatch):
    """The working folder of a test: a copy of `finished`, made current."""
    folder = Path(shutil.copytree(finished, tmp_path / 'work'))
    monkeypatch.chdir(folder)
    return folder


def stopped_supervised_run(capsys, monkeypatch, data_root, name='run1', steps=2):
    """A state 2 run stopped after `steps` steps, its state in logs/<name>/last.pt; returns its flags."""
    args = ['--state', 2, '--exp-name', name, '--data-root', data_root, '--init-epochs', 20,
            '--val-num-steps', 1000, '--save-every', 0, *TINY]
    with monkeypatch.context() as patch:
        stop_training_after(patch, steps)
        status, _, lines = run(capsys, *args)
    assert status == 130, lines
    assert load_checkpoint(Path('logs') / name / 'last.pt')['step'] == steps
    return args


# --- A. an experiment name holds one run -----------------------------------------------------------

@pytest.mark.parametrize('state,extra', [(0, []), (3, []), (3, ['--resume'])], ids=['state0', 'state3', 'state3-resume'])
def test_another_state_under_an_unfinished_training_name_is_refused(root, work, capsys, monkeypatch, state, extra):
    """A state 0 or 3 run under the name of a stopped training removed its last.pt (exit 0), with
    --resume too (which means nothing to states that keep no state)."""
    stopped_supervised_run(capsys, monkeypatch, root)
    last = work / 'logs' / 'run1' / 'last.pt'
    before = last.read_bytes(), (work / 'logs' / 'run1' / 'settings.json').read_bytes()
    status, _, lines = run(capsys, '--state', state, '--exp-name', 'run1', '--continue-from', 'sup.pt',
                           '--data-root', root, *TINY, *extra)
    assert status == 2
    one_line(lines, 'logs/run1/last.pt', 'unfinished run', '--exp-name')
    assert (last.read_bytes(), (work / 'logs' / 'run1' / 'settings.json').read_bytes()) == before
    assert not (work / 'logs' / 'run1' / 'results.json').exists()


def test_another_state_under_a_finished_name_keeps_its_results(root, work, capsys):
    """An evaluation under a finished training's name replaced its results.json and settings.json;
    with --overwrite it may, and says so."""
    folder = work / 'logs' / 'sup'
    before = {name: (folder / name).read_bytes() for name in ('results.json', 'settings.json')}
    args = ['--state', 3, '--exp-name', 'sup', '--continue-from', 'sup.pt', '--data-root', root, *TINY]
    status, _, lines = run(capsys, *args)
    assert status == 2
    one_line(lines, 'logs/sup/results.json', 'logs/sup/settings.json', '--overwrite')
    assert {name: (folder / name).read_bytes() for name in before} == before
    status, out, _ = run(capsys, *args, '--overwrite')
    assert status == 0 and '--overwrite: this run replaces' in out
    assert json.loads((folder / 'results.json').read_text())['state'] == 3
    assert json.loads((folder / 'settings.json').read_text())['state'] == 3


# --- B. a finished experiment is not replaced unless asked --------------------------------------------

def test_rerunning_a_finished_training_is_refused_unless_overwrite(root, work, capsys, monkeypatch):
    """A second state 2 run as 'sup' replaced sup.pt and results.json. Refused now; with
    --overwrite the old files stay until the new run writes its own: a run stopped before its
    first validation leaves them as they were."""
    files = [work / 'sup.pt', work / 'logs' / 'sup' / 'results.json', work / 'logs' / 'sup' / 'settings.json']
    before = [path.read_bytes() for path in files]
    args = ['--state', 2, '--exp-name', 'sup', '--data-root', root, '--init-epochs', 3, '--val-num-steps', 1000,
            '--save-every', 0, *TINY]
    status, _, lines = run(capsys, *args)
    assert status == 2
    one_line(lines, 'sup.pt', 'logs/sup/results.json', 'finished', '--overwrite')
    assert [path.read_bytes() for path in files] == before

    with monkeypatch.context() as patch:
        stop_training_after(patch, 1)
        status, _, lines = run(capsys, *args, '--overwrite')
    assert status == 130, lines
    assert [path.read_bytes() for path in files] == before, 'nothing replaced before the new files exist'

    status, _, lines = run(capsys, *args, '--overwrite', '--resume')
    assert status == 0, lines
    assert load_checkpoint(work / 'sup.pt')['step'] == 3
    assert json.loads(files[1].read_text())['steps'] == 3
    assert json.loads(files[2].read_text())['init_epochs'] == 3


@pytest.mark.parametrize('flag,output', [('--results-file', 'scores.json'), ('--save-predictions', 'pictures')])
def test_an_output_a_flag_names_is_replaced_only_with_overwrite(root, work, capsys, flag, output):
    """The class of B for paths named by a flag: an evaluation under a new name replaced the
    results file or the prediction pictures of another one."""
    common = ['--state', 3, '--continue-from', 'sup.pt', '--data-root', root, *TINY, flag, output]
    assert run(capsys, *common, '--exp-name', 'first')[0] == 0
    files = sorted(path for path in [work / output, *(work / output).rglob('*')] if path.is_file())
    before = [path.read_bytes() for path in files]
    status, _, lines = run(capsys, *common, '--exp-name', 'second')
    assert status == 2
    one_line(lines, f'would replace {output}', f'choose another {flag}', '--overwrite')
    assert [path.read_bytes() for path in files] == before
    status, _, lines = run(capsys, *common, '--exp-name', 'third', '--overwrite')
    assert status == 0, lines


# --- C. lists edited between a stop and --resume --------------------------------------------------------

@pytest.mark.parametrize('list_name', ['8_labeled_0', 'val'])
def test_resume_refuses_a_list_edited_since_the_stop(data, tmp_path, capsys, monkeypatch, list_name):
    monkeypatch.chdir(tmp_path)
    args = stopped_supervised_run(capsys, monkeypatch, data)
    last = tmp_path / 'logs' / 'run1' / 'last.pt'
    before = last.read_bytes()
    edited = data / LIST_DIR / f'{list_name}.txt'
    names = edited.read_text().split()
    train = (data / LIST_DIR / 'train.txt').read_text().split()
    write_list(edited, names + [name for name in train if name not in names][:3])   # three ids added
    status, _, lines = run(capsys, *args, '--resume')
    assert status == 2
    one_line(lines, '--resume', edited, 'changed since the interrupted run')
    assert last.read_bytes() == before
    write_list(edited, names)   # restored: the run goes on
    status, _, lines = run(capsys, *args, '--resume')
    assert status == 0, lines
    assert json.loads((tmp_path / 'logs' / 'run1' / 'settings.json').read_text())['lists'][list_name]['file'] == str(edited)


# --- D. a validation image larger than --eval-size ------------------------------------------------

@pytest.mark.parametrize('state', [0, 2, 3])
def test_an_image_larger_than_eval_size_is_refused_before_any_work(root, work, capsys, state):
    """Found at the first validation, after training steps, before; now before the first step of
    any state (labeling and evaluation pad to --eval-size too)."""
    status, _, lines = run(capsys, '--state', state, '--exp-name', 'small', '--continue-from', 'start.pt',
                           '--data-root', root, '--init-epochs', 1, *TINY, '--eval-size', 64, 64)
    assert status == 2
    line = one_line(lines, 'larger than the evaluation canvas 64x64', 'use --eval-size')
    assert '/JPEGImages/' in line
    log = log_of('small')
    assert 'steps of batch' not in log and 'pseudo-labeling' not in log and 'evaluating' not in log


# --- E. a validation file broken mid-run ------------------------------------------------------------

def test_a_validation_file_broken_mid_run_saves_the_state(data, tmp_path, capsys, monkeypatch):
    """Training batches saved the state before a data error ended the run; a validation did not.
    Once the file is mended, --resume validates that step first."""
    monkeypatch.chdir(tmp_path)
    broken = data / 'JPEGImages' / f'{(data / LIST_DIR / "val.txt").read_text().split()[2]}.jpg'
    intact = broken.read_bytes()
    real_check = utils.context.check_dataset

    def check_then_break(dataset, *args, **kwargs):
        sizes = real_check(dataset, *args, **kwargs)
        if dataset.list_path.name == 'val.txt':
            broken.write_bytes(broken.read_bytes()[:200])   # cut off after the up-front check
        return sizes

    monkeypatch.setattr(utils.context, 'check_dataset', check_then_break)
    status, _, lines = run(capsys, '--state', 2, '--exp-name', 'run', '--data-root', data, '--init-epochs', 5,
                           '--val-num-steps', 2, '--save-every', 0, *TINY)
    assert status == 2
    one_line(lines, broken, 'cannot read image')
    assert load_checkpoint(tmp_path / 'logs' / 'run' / 'last.pt')['step'] == 2   # the step before validating
    monkeypatch.setattr(utils.context, 'check_dataset', real_check)
    broken.write_bytes(intact)
    status, _, lines = run(capsys, '--state', 2, '--exp-name', 'run', '--data-root', data, '--init-epochs', 5,
                           '--val-num-steps', 2, '--save-every', 0, *TINY, '--resume')
    assert status == 0, lines
    validations = re.findall(r'supervised step (\d+)/\d+: val mIoU', log_of('run'))
    assert validations[0] == '2', validations


# --- F. the original's defaults ----------------------------------------------------------------------

@pytest.mark.parametrize('state', ['0', '1', '2', '3'])
def test_defaults_are_the_originals(state):
    args = main.parse_args(['--state', state])
    assert (args.gamma, args.init_epochs, args.st_epochs, args.iters) == (2.0, 30, [6, 6, 6, 6, 6], 5)
    assert (args.batch_size, args.val_num_steps, args.lr, args.st_lr) == (8, 1000, 0.002, 0.002)
    assert main.parse_args(['--state', state, '--iters', '3']).st_epochs == [6, 6, 6]


def test_the_warm_up_trains_half_batches_and_validates_every_1000_steps(root, work, capsys):
    """State 1's supervised warm-up, as the original's: batches of int(batch / 2) labeled images
    (3 labeled images in batches of 2: 2 steps an epoch), validation every 1000 steps and at the
    last, whatever --val-num-steps (here 1) says; the rounds keep --val-num-steps."""
    status, _, lines = run(capsys, '--state', 1, '--exp-name', 'st', '--continue-from', 'start.pt',
                           '--data-root', root, '--init-epochs', 2, '--iters', 1, '--st-epochs', 0,
                           '--val-num-steps', 1, *TINY)
    assert status == 0, lines
    log = log_of('st')
    assert 'supervised: 3 labeled images (8_labeled_0), 2 epochs = 4 steps of batch 2' in log
    assert 'validation every 1000 steps' in log and 'half of --batch-size' in log
    validations = [line for line in log.splitlines() if ' supervised step ' in line and 'val mIoU' in line]
    assert len(validations) == 1 and 'step 4/4' in validations[0]
    assert 'labeling with sup.pt' not in log and 'labeling with st.pt' in log   # round 1: the warm-up's best


# --- G. weak spots --------------------------------------------------------------------------------------

def start_process(cwd, *args):
    return subprocess.Popen([sys.executable, str(REPO_ROOT / 'main.py'), *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TQDM_DISABLE='1'))


@pytest.mark.parametrize('state', [0, 3])
def test_sigterm_outside_training_is_one_line_and_exit_130(root, finished, tmp_path, state):
    """SIGTERM ended states 0 and 3 with exit 143 and no message."""
    process = start_process(tmp_path, '--state', state, '--exp-name', 'term', '--continue-from',
                            finished / 'sup.pt', '--data-root', root, *TINY, '--scales', 0.5, 0.75, 1, 1.25, 1.5,
                            '--flip')
    log = tmp_path / 'logs' / 'term' / 'run.log'
    deadline = time.time() + 120
    while not log.exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    one_line([line for line in stderr.splitlines() if line.strip()], 'stopped: SIGTERM', 'run the same command again')


def test_a_stop_while_labeling_saves_the_round_start_and_resumes(root, work, capsys, monkeypatch):
    """State 1 saved nothing when stopped while labeling; now the round's start is saved and
    --resume labels and trains the round."""
    real_labeling = utils.self_training.generate_pseudo_labels

    def stopped_labeling(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C, mid-labeling
        return real_labeling(*args, **kwargs)

    args = ['--state', 1, '--exp-name', 'st', '--continue-from', 'sup.pt', '--data-root', root, '--init-epochs', 0,
            '--iters', 1, '--st-epochs', 1, '--val-num-steps', 1000, *TINY]
    with monkeypatch.context() as patch:
        patch.setattr(utils.self_training, 'generate_pseudo_labels', stopped_labeling)
        status, _, lines = run(capsys, *args)
    assert status == 130
    one_line(lines, 'SIGINT while labeling round 1', 'logs/st/last.pt', '--resume')
    saved = load_checkpoint(work / 'logs' / 'st' / 'last.pt')
    assert saved['step'] == 0 and saved['train_state']['progress']['round'] == 0
    status, _, lines = run(capsys, *args, '--resume')
    assert status == 0, lines
    assert [r['round'] for r in json.loads((work / 'logs' / 'st' / 'results.json').read_text())['rounds']] == [1]


@pytest.mark.parametrize('labeler', ['unchanged', 'changed'])
def test_a_resumed_round_whose_pseudo_labels_were_deleted_labels_again(root, work, capsys, monkeypatch, labeler):
    """A label deleted after the stop was reported "checked and reused", then every --resume
    failed at `cannot read label`. Now the round labels again with the checkpoint that labeled it
    when that file is unchanged (and goes on from its step), else starts again from the best."""
    args = ['--state', 1, '--exp-name', 'st', '--continue-from', 'start.pt', '--data-root', root,
            '--init-epochs', 0, '--iters', 1, '--st-epochs', 1, '--val-num-steps', 1000, '--save-every', 0, *TINY]
    with monkeypatch.context() as patch:
        stop_training_after(patch, 3)
        status, _, lines = run(capsys, *args)
    assert status == 130, lines
    assert load_checkpoint(work / 'logs' / 'st' / 'last.pt')['step'] == 3
    labels = sorted((work / 'logs' / 'st' / 'pseudo_labels').glob('*.png'))
    labels[4].unlink()
    if labeler == 'changed':
        start_checkpoint(work / 'start.pt', seed=5)
    status, _, lines = run(capsys, *args, '--resume')
    assert status == 0, lines
    log = log_of('st')
    assert 'checked and reused' not in log and labels[4].exists()
    if labeler == 'unchanged':
        assert 'labeling again with start.pt, which made them' in log and 'round 1: resumed at step 3' in log
    else:
        assert 'has changed since it made them: the round starts again' in log
        assert 'round 1: resumed at step' not in log
    assert json.loads((work / 'logs' / 'st' / 'results.json').read_text())['rounds'][0]['steps'] == 11


@pytest.mark.parametrize('flags,named', [
    (['--results-file', 'logs'], ['--results-file logs is a folder']),
    (['--cache-dir', 'start.pt'], ['--cache-dir start.pt is a file']),
    (['--pseudo-dir', 'start.pt/labels'], ['--pseudo-dir', 'start.pt is a file']),
    (['--exp-name', 'x' * 250], ['--exp-name', 'too long', 'the limit is 255']),
], ids=['results-file-folder', 'cache-dir-file', 'pseudo-dir-under-file', 'exp-name-too-long'])
def test_outputs_are_checked_before_any_work(root, work, capsys, flags, named):
    """Each was found only when written, after the work (a NotADirectoryError traceback for
    --cache-dir); state 1 here, whose outputs include all of them."""
    status, _, lines = run(capsys, '--state', 1, '--exp-name', 'out', '--continue-from', 'start.pt', '--data-root',
                           root, '--init-epochs', 0, '--iters', 1, '--st-epochs', 1, *TINY, *flags)
    assert status == 2
    one_line(lines, *named)
    assert not (Path('logs') / 'out').exists(), 'nothing was written'
    assert not list(Path('logs').glob('x*'))


@pytest.mark.parametrize('flag,value', [('--results-file', 'results.json'), ('--save-predictions', 'pictures')])
def test_outputs_inside_the_dataset_name_their_flag(data, tmp_path, capsys, monkeypatch, flag, value):
    """The refusal named "the working folder" for --results-file, and --save-predictions inside the
    dataset was not refused."""
    monkeypatch.chdir(tmp_path)
    start_checkpoint(tmp_path / 'start.pt')
    status, _, lines = run(capsys, '--state', 3, '--exp-name', 'ev', '--continue-from', 'start.pt', '--data-root',
                           data, *TINY, flag, data / value)
    assert status == 2
    one_line(lines, data / value, f'(from {flag})', f'choose another {flag}')
    assert not (data / value).exists()


def test_round_and_ratio_flags_that_mean_nothing_are_refused(capsys):
    """Extra --st-epochs values were ignored and --label-ratio 1.5 taken as 1: each is one line
    naming the flags now."""
    args = main.parse_args(['--state', '1', '--iters', '2', '--st-epochs', '1', '1', '1'])
    with pytest.raises(InputError, match='--st-epochs gives 3 values for --iters 2'):
        check_flags(args, 1)
    check_flags(main.parse_args(['--state', '1', '--iters', '2', '--st-epochs', '1', '1']), 1)
    for flag in ('--label-ratio', '--init-label-ratio'):
        status, _, lines = run(capsys, '--state', '0', flag, '1.5')
        assert status == 2
        one_line(lines, flag, '(0, 1]', 'keeps every pixel')
    assert main.parse_args(['--state', '0', '--label-ratio', '1']).label_ratio == 1.0


def test_flags_a_state_does_not_read_are_warned_or_refused_when_taken_for_another(capsys):
    """State 1 with --label-ratio 0.3 ran at ratio 0.2, state 3 took --gamma 9 and state 2
    --scales 0.5 1.0, all in silence. A flag mistaken for one the state reads is refused; the
    others (a script may give every state one set of flags) are warned in the run's log."""
    status, _, lines = run(capsys, '--state', '1', '--label-ratio', '0.3')
    assert status == 2
    one_line(lines, '--label-ratio means nothing in state 1 (only state 0 reads it)', '--init-label-ratio',
             '--det-label-ratio')
    assert main.parse_args(['--state', '3', '--gamma', '9', '--scales', '0.5', '1']).ignored_flags == [
        '--gamma means nothing in state 3 (only state 1 reads it): ignored']
    assert main.parse_args(['--state', '2', '--scales', '0.5', '1', '--flip']).ignored_flags == [
        '--scales means nothing in state 2 (only state 3 reads it): ignored',
        '--flip means nothing in state 2 (only state 3 reads it): ignored']
    assert main.parse_args(['--state', '0', '--label-ratio', '0.3', '--scales', '1']).ignored_flags == []
    assert main.parse_args(['--state', '1', '--gamma', '9', '--st-epochs', '3', '--iters', '1']).ignored_flags == []


def test_default_names_are_unique_and_free(tmp_path, monkeypatch):
    """Two runs started in the same second without --exp-name shared one timestamp name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(main.time, 'strftime', lambda pattern: '20250101-120000')
    names = []
    for pid in (4101, 4102, 4101):
        monkeypatch.setattr(main.os, 'getpid', lambda: pid)
        names.append(main.parse_args(['--state', '3']).exp_name)
        (tmp_path / "logs" / names[-1]).mkdir(parents=True, exist_ok=True)   # that run has begun
    assert names[0].startswith('20250101-120000') and len(set(names)) == 3


def test_run_log_ends_with_how_the_run_ended(root, work, capsys, monkeypatch):
    """run.log never said how a run ended. Its last line does now: finished, stopped, refused or
    failed, with the exit status and the one line; a run refused because a live run holds the
    name, or before it began because the name holds a finished run, writes nothing into that run's
    log (its last line said `ended: refused` of a run that had finished)."""
    def last_line(name):
        return log_of(name).splitlines()[-1].split(' ', 2)[2]   # after the date and time

    evaluation = ['--state', 3, '--exp-name', 'ev', '--continue-from', 'sup.pt', '--data-root', root, *TINY]
    status, _, _ = run(capsys, *evaluation)
    assert status == 0 and last_line('ev') == 'ended: finished'
    finished = log_of('ev')
    status, _, lines = run(capsys, *evaluation)   # the name holds a finished run: refused before it begins
    assert status == 2 and '--overwrite' in lines[0]
    assert log_of('ev') == finished, 'a run refused before it began wrote into the finished run\'s log'
    args = stopped_supervised_run(capsys, monkeypatch, root, name='st')
    assert last_line('st') == ('ended: stopped (exit 130): SIGINT at step 2 of supervised: state saved to '
                               'logs/st/last.pt; continue with the same command and --resume')
    status, _, lines = run(capsys, *args, '--resume', '--lr', 0.01)
    assert status == 2 and last_line('st') == f'ended: refused (exit 2): {lines[0].removeprefix("error: ")}'
    status, _, lines = run(capsys, '--state', 2, '--exp-name', 'big', '--data-root', root, *TINY, '--crop-size',
                           100000, 100000)
    assert status == 6 and last_line('big') == f'ended: failed (exit 6): {lines[0].removeprefix("error: ")}'

    held = FolderLock(Path('logs') / 'st' / 'lock').acquire('a live run')
    try:
        before = log_of('st')
        status, _, lines = run(capsys, *args, '--resume')
        assert status == 2 and 'in use by a live run' in lines[0]
        assert log_of('st') == before
    finally:
        held.release()
