"""The real CLI end to end: supervised -> pseudo labels -> one DST-CBC round -> evaluation, on tiny
synthetic data and on the 14 real photographs; resume after a kill; and the one-line errors of bad
input.

Command lines run through main.main(argv) in this process (`cli`, see helpers.run_main: a process
start costs 4 to 7 s of imports); what needs a process of its own (a kill, a signal, the spec's
command line with its environment) starts one."""
import json
import os
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

from helpers import build_voc14_tree, run_main, write_list
from models import deeplab_v2
from utils.checkpoints import load_checkpoint, save_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN = REPO_ROOT / 'main.py'
TINY = ['--backbone', 'resnet14', '--crop-size', '48', '48', '--workers', '0', '--batch-size', '4',
        '--device', 'cpu']


def cli(cwd, *args, check=True):
    """`python main.py ARGS` in `cwd`, run in this process; unless it exits 0, a failure (check)."""
    completed = run_main(cwd, *args)
    if check and completed.returncode != 0:
        raise AssertionError(f'main.py {" ".join(map(str, args))} failed with {completed.returncode}:\n'
                             f'{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}')
    return completed


def results(cwd, name):
    return json.loads((Path(cwd) / 'logs' / name / 'results.json').read_text())


@pytest.fixture(scope='module')
def synthetic_root(synthetic_voc):
    """24 training and 6 val images of several sizes (conftest.py: made once per test run, read only)."""
    return synthetic_voc


def run_chain(work, data_args, labeled_split, image_sizes, eval_size_args=()):
    """State 2, then 0, then 1 (one round), then 3; returns the results of each."""
    common = [*TINY, *data_args, '--split', labeled_split, '--sets-id', '0', *eval_size_args]
    cli(work, '--state', 2, '--exp-name', 'sup', '--init-epochs', 2, '--val-num-steps', 2, '--lr', 0.01, *common)
    supervised = results(work, 'sup')
    assert (work / 'sup.pt').is_file()
    checkpoint = load_checkpoint(work / 'sup.pt', num_classes=21)
    assert checkpoint['best_miou'] == pytest.approx(supervised['best_miou'])
    assert 0 <= supervised['best_miou'] <= 1 and supervised['steps'] > 0
    assert f'sup: {supervised["best_miou"] * 100:.2f}' in (work / 'log.txt').read_text()
    assert list((work / 'logs' / 'sup').glob('events.out.tfevents.*'))
    settings = json.loads((work / 'logs' / 'sup' / 'settings.json').read_text())
    assert settings['state'] == 2 and settings['backbone'] == 'resnet14'
    assert not (work / 'logs' / 'sup' / 'last.pt').exists(), 'a finished run keeps no resume state'

    cli(work, '--state', 0, '--exp-name', 'labels', '--continue-from', 'sup.pt', '--label-ratio', 0.5, *common)
    labeling = results(work, 'labels')
    folder = work / 'logs' / 'labels' / 'pseudo_labels'
    pngs = sorted(folder.glob('*.png'))
    assert len(pngs) == labeling['count'] == len(image_sizes)
    for png in pngs:
        with Image.open(png) as label:
            assert label.mode == 'L'
            assert (label.height, label.width) == image_sizes[png.stem]
            values = set(np.unique(np.array(label)).tolist())
        assert values <= set(range(21)) | {255}
    assert 0 < labeling['labeled_share'] <= 1 and len(labeling['thresholds']) == 21
    assert labeling['pseudo_label_miou'] is not None   # ground truth exists for these images

    cli(work, '--state', 1, '--exp-name', 'dst', '--continue-from', 'sup.pt', '--iters', 1,
        '--st-epochs', 1, '--init-epochs', 0, '--gamma', 9, '--val-num-steps', 3, *common)
    self_training = results(work, 'dst')
    assert self_training['start_miou'] == pytest.approx(supervised['best_miou'])
    assert self_training['best_miou'] >= self_training['start_miou']
    assert len(self_training['rounds']) == 1 and self_training['rounds'][0]['ratio'] == 0.2
    assert (work / 'dst.pt').is_file() and 'dst: ' in (work / 'log.txt').read_text()
    dst_labels = sorted((work / 'logs' / 'dst' / 'pseudo_labels').glob('*.png'))
    assert len(dst_labels) == len(image_sizes)

    evaluation = cli(work, '--state', 3, '--exp-name', 'eval', '--continue-from', 'dst.pt', *common)
    scores = results(work, 'eval')
    assert scores['miou'] == pytest.approx(self_training['best_miou'], abs=1e-9)
    assert 'background' in evaluation.stdout and 'mIoU' in evaluation.stdout
    return supervised, labeling, self_training, scores


def image_sizes_of(root, list_name):
    sizes = {}
    for name in (Path(root) / 'ImageSets' / 'Segmentation' / f'{list_name}.txt').read_text().split():
        with Image.open(Path(root) / 'JPEGImages' / f'{name}.jpg') as image:
            sizes[name] = (image.height, image.width)
    return sizes


def test_chain_on_synthetic_data(synthetic_root, tmp_path):
    sizes = image_sizes_of(synthetic_root, '8_unlabeled_0')
    assert len(set(sizes.values())) > 1, 'images of several sizes make the size check meaningful'
    run_chain(tmp_path, ['--data-root', synthetic_root], '8', sizes, ['--eval-size', 96, 128])


def test_chain_on_real_photographs(shared_dir, tmp_path):
    root = tmp_path / 'voc14'
    # Every forward pass here is at the 505x505 canvas: two val images (one upright, one lying)
    # and three unlabeled ones (both too, in one batch) show what more would.
    train, _ = build_voc14_tree(shared_dir, root, val_count=2)
    write_list(root / 'ImageSets' / 'Segmentation' / '2_labeled_0.txt', train[:4])
    write_list(root / 'ImageSets' / 'Segmentation' / '2_unlabeled_0.txt', train[4:7])
    sizes = image_sizes_of(root, '2_unlabeled_0')
    assert len(set(sizes.values())) == 2 and len(set(image_sizes_of(root, 'val').values())) == 2
    work = tmp_path / 'work'
    work.mkdir()
    # Default evaluation canvas (505x505) on the real 500x375 / 375x500 photographs.
    run_chain(work, ['--data-root', root], '2', sizes)


def test_mixed_precision_on_cpu_is_stated(synthetic_root, tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / 'start.pt', deeplab_v2(21, backbone='resnet14'), num_classes=21)
    completed = cli(tmp_path, '--state', 3, '--continue-from', 'start.pt', '--mixed-precision',
                    '--data-root', synthetic_root, '--eval-size', 96, 128, *TINY)
    assert 'bfloat16' in completed.stdout


def test_spec_command_lines_parse_unchanged():
    from main import parse_args
    first = parse_args('--exp-name=fs_voc_106-0 --dataset=voc --val-num-steps=100 --state=2 '
                       '--init-epochs=300 --split=106 --sets-id=0 --continue-from=voc_coco_resnet101.pt '
                       '--coco --mixed-precision'.split())
    assert (first.state, first.init_epochs, first.split, first.val_num_steps, first.coco,
            first.mixed_precision, first.continue_from) == (2, 300, '106', 100, True, True, 'voc_coco_resnet101.pt')
    second = parse_args('--exp-name=ss_voc_106-0 --gamma=9 --dataset=voc --val-num-steps=1000 --state=1 '
                        '--iters=5 --init-epochs=0 --st-epochs 6 6 6 6 6 --st-lr=0.002 --split=106 '
                        '--sets-id=0 --continue-from=fs_voc_106-0.pt --coco --mixed-precision'.split())
    assert (second.state, second.gamma, second.iters, second.st_epochs, second.st_lr, second.init_epochs) == \
        (1, 9.0, 5, [6, 6, 6, 6, 6], 0.002, 0)
    assert (second.init_label_ratio, second.det_label_ratio, second.batch_size, second.lr) == (0.2, 0.2, 8, 0.002)
    third = parse_args('--state=3 --dataset=voc --continue-from=your_model.pt --mixed-precision --coco'.split())
    assert (third.state, third.continue_from, third.coco) == (3, 'your_model.pt', True)


# --- resume -------------------------------------------------------------------------------------

def start(cwd, *args):
    """In its own process group, so that a signal can go to the whole group, as Ctrl-C does."""
    return subprocess.Popen([sys.executable, str(MAIN), *map(str, args)], cwd=cwd, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, process, timeout=300):
    deadline = time.time() + timeout
    while not Path(path).exists():
        assert process.poll() is None, f'run ended before {path} appeared:\n{process.communicate()[1][-2000:]}'
        assert time.time() < deadline, f'{path} did not appear'
        time.sleep(0.05)


@pytest.mark.parametrize('kill_signal,workers', [(signal.SIGKILL, 0), (signal.SIGTERM, 0), (signal.SIGINT, 1)],
                         ids=['SIGKILL', 'SIGTERM', 'Ctrl-C to the group, with a loader worker'])
def test_killed_run_resumes_from_its_saved_step(synthetic_root, tmp_path, kill_signal, workers):
    args = ['--state', 2, '--exp-name', 'long', '--data-root', synthetic_root, '--split', '1',
            '--init-epochs', 3, '--val-num-steps', 1000, '--save-every', 5, '--eval-size', 96, 128, *TINY,
            '--workers', workers]
    total_steps = 3 * 6   # 24 images in batches of 4
    process = start(tmp_path, *args)
    last_state = tmp_path / 'logs' / 'long' / 'last.pt'
    wait_for(last_state, process)
    os.killpg(process.pid, kill_signal)
    stdout, stderr = process.communicate(timeout=120)
    saved_step = load_checkpoint(last_state, num_classes=21)['step']
    assert 0 < saved_step < total_steps
    if kill_signal == signal.SIGKILL:
        assert saved_step % 5 == 0
    else:
        assert process.returncode == 130, stderr[-2000:]
        stopped = [line for line in stderr.splitlines() if line.startswith('stopped: ')]
        assert len(stopped) == 1 and signal.Signals(kill_signal).name in stopped[0] and '--resume' in stopped[0]
    assert not (tmp_path / 'logs' / 'long' / 'results.json').exists()

    refused = cli(tmp_path, *args, check=False)
    assert refused.returncode == 2 and 'unfinished run' in refused.stderr and 'last.pt' in refused.stderr

    cli(tmp_path, *args, '--resume')
    log = (tmp_path / 'logs' / 'long' / 'run.log').read_text()
    assert f'resumed at step {saved_step}' in log
    assert results(tmp_path, 'long')['steps'] == total_steps
    # The resumed process validated once, at the last step, and counted steps from the saved one.
    assert log.count(f'step {total_steps}/{total_steps}: val mIoU') == 1
    assert not last_state.exists()


def test_killed_self_training_round_resumes(synthetic_root, supervised_checkpoint, tmp_path):
    common = ['--data-root', synthetic_root, '--split', '8', '--eval-size', 96, 128, *TINY]
    shutil.copy(supervised_checkpoint, tmp_path / 'sup.pt')   # state 2, split 8, one epoch (conftest.py)
    args = ['--state', 1, '--exp-name', 'dst', '--continue-from', 'sup.pt', '--iters', 1, '--st-epochs', 3,
            '--init-epochs', 0, '--save-every', 3, '--val-num-steps', 1000, *common]
    process = start(tmp_path, *args)
    last_state = tmp_path / 'logs' / 'dst' / 'last.pt'
    wait_for(last_state, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=120)
    saved = load_checkpoint(last_state, num_classes=21)
    assert saved['train_state']['phase'] == 'self_training' and saved['step'] > 0
    # The file the round labeled with changes (in a one-process run the best checkpoint is
    # overwritten mid-round): the resumed round must keep the labels it trained on, checked by
    # the SHA-256 saved with its state, not relabel from the new file.
    supervised = load_checkpoint(tmp_path / 'sup.pt', num_classes=21)
    model = deeplab_v2(21, backbone='resnet14')
    model.load_state_dict(supervised['model'])
    with torch.no_grad():
        model.classifier[0].convs[0].bias.add_(1.0)
    save_checkpoint(tmp_path / 'sup.pt', model, num_classes=21, best_miou=supervised['best_miou'],
                    extra={'validation': supervised['validation']})
    cli(tmp_path, *args, '--resume')
    log = (tmp_path / 'logs' / 'dst' / 'run.log').read_text()
    assert 'pseudo labels of the interrupted round checked and reused' in log
    assert log.count('pseudo-labeling at ratio 0.2') == 1, 'labeled once, before the kill'
    assert f'round 1: resumed at step {saved["step"]}' in log
    assert results(tmp_path, 'dst')['rounds'][0]['steps'] == 3 * 11   # 21 unlabeled, 2 per batch


# --- bad input: one line each -------------------------------------------------------------------

def assert_one_line_error(completed, *fragments, status=2):
    assert completed.returncode == status, completed.stderr
    lines = [line for line in completed.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_unknown_state_and_dataset(tmp_path):
    assert_one_line_error(cli(tmp_path, '--state', 5, check=False), '--state', '5')
    assert_one_line_error(cli(tmp_path, '--state', 2, '--dataset', 'ade20k', check=False), '--dataset', 'ade20k')


def test_missing_continue_from(synthetic_root, tmp_path):
    completed = cli(tmp_path, '--state', 3, '--continue-from', 'nowhere.pt', '--data-root', synthetic_root,
                    *TINY, check=False)
    assert_one_line_error(completed, 'nowhere.pt')
    completed = cli(tmp_path, '--state', 0, '--data-root', synthetic_root, '--split', '8', *TINY, check=False)
    assert_one_line_error(completed, '--continue-from')


def test_checkpoint_for_another_class_count(synthetic_root, tmp_path):
    save_checkpoint(tmp_path / 'city.pt', deeplab_v2(19, backbone='resnet14'), num_classes=19)
    completed = cli(tmp_path, '--state', 3, '--continue-from', 'city.pt', '--data-root', synthetic_root,
                    *TINY, check=False)
    assert_one_line_error(completed, 'city.pt', '19', '21')


def test_self_training_without_lists(synthetic_root, tmp_path):
    save_checkpoint(tmp_path / 'start.pt', deeplab_v2(21, backbone='resnet14'), num_classes=21)
    completed = cli(tmp_path, '--state', 1, '--continue-from', 'start.pt', '--data-root', synthetic_root,
                    '--split', '4', *TINY, check=False)
    assert_one_line_error(completed, '4_labeled_0.txt')


def test_missing_data_root(tmp_path):
    completed = cli(tmp_path, '--state', 2, '--data-root', tmp_path / 'no_voc', check=False)
    assert_one_line_error(completed, 'no_voc')


def test_pseudo_dir_inside_the_dataset_is_refused(synthetic_root, tmp_path):
    completed = cli(tmp_path, '--state', 0, '--data-root', synthetic_root, '--pseudo-dir',
                    synthetic_root / 'pseudo', '--continue-from', 'x.pt', *TINY, check=False)
    assert_one_line_error(completed, '--pseudo-dir', 'inside the dataset')


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path):
    completed = cli(tmp_path, '--state', 2, '--exp-name', 'boom', '--data-root', synthetic_root, '--split', '8',
                    '--lr', '1e30', '--init-epochs', 20, '--val-num-steps', 1, '--eval-size', 96, 128, *TINY,
                    check=False)
    assert_one_line_error(completed, 'loss is', 'at step', status=3)
    step = int(completed.stderr.split('at step ')[1].split(';')[0])
    assert step >= 2
    good = load_checkpoint(tmp_path / 'boom.pt', num_classes=21)
    assert all(torch.isfinite(tensor).all() for tensor in good['model'].values() if tensor.is_floating_point())
    assert good['step'] < step


def test_spec_evaluation_command_runs_unchanged(shared_dir, tmp_path):
    """The third command line of spec section 11, verbatim: ResNet-101, VOC padding to 505x505,
    COCO normalisation, mixed precision; the dataset comes from DSTCBC_VOC_ROOT."""
    root = tmp_path / 'voc'
    build_voc14_tree(shared_dir, root, val_count=1)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / 'your_model.pt', deeplab_v2(21), num_classes=21)
    completed = subprocess.run(
        [sys.executable, str(MAIN), *'--state=3 --dataset=voc --continue-from=your_model.pt '
                                     '--mixed-precision --coco'.split()],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, DSTCBC_VOC_ROOT=str(root)))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert 'mIoU' in completed.stdout and 'aeroplane' in completed.stdout
    result = json.loads(next((tmp_path / 'logs').glob('*/results.json')).read_text())
    assert result['state'] == 3 and 0 <= result['miou'] <= 1
