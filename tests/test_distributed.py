"""Two processes with the gloo backend on the CPU, started as torchrun would (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), against one process: the same thresholds and labels
(state 0), the same scores with an uneven share per rank (state 3), the same training (state 2,
BatchNorm frozen so that the comparison means something), resume after a kill, and one failing
rank stopping both with the same line.

Every process runs one thread, on both sides: float sums depend on the thread count. The
per-process batch is kept equal on both sides too (--batch-size is the global batch: 1 for one
process, 2 for two), so each image goes through the network in a batch of one either way and
its logits are bit for bit the same; thresholds and labels can then be compared exactly.

The one-process side runs main.main(argv) in this process (helpers.run_main, on one thread too);
ranks of several processes are processes, as torchrun starts them.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import call, confident_checkpoint, run_main
from utils.checkpoints import load_checkpoint
from utils.synthetic import make_synthetic_voc

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN = REPO_ROOT / 'main.py'
COMMON = ['--dataset', 'voc', '--backbone', 'resnet14', '--eval-size', '96', '128', '--crop-size', '48', '48',
          '--split', '8', '--sets-id', '0', '--workers', '0', '--device', 'cpu', '--dist-timeout', '60']


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def start(cwd, processes, args, program=MAIN):
    """`processes` processes of main.py (1: a plain process), as torchrun starts them."""
    port = free_port()
    started = []
    for rank in range(processes):
        env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT))
        if processes > 1:
            env.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), WORLD_SIZE=str(processes),
                       RANK=str(rank), LOCAL_RANK=str(rank))
        started.append(subprocess.Popen([sys.executable, str(program), *map(str, args)], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return started


def start_script(cwd, processes, script):
    """`processes` processes of a Python script that imports the project, as torchrun starts them."""
    return start(cwd, processes, [], program=script)


def finish(started, timeout=600):
    """(exit status, stdout, stderr) of each process. Their pipes are read side by side: a rank
    that writes more than a pipe holds while another is read would otherwise block, and the
    ranks waiting for it in a collective would time out."""
    with ThreadPoolExecutor(len(started)) as pool:
        outputs = list(pool.map(lambda process: process.communicate(timeout=timeout), started))
    return [(process.returncode, stdout, stderr) for process, (stdout, stderr) in zip(started, outputs)]


def run(cwd, processes, args, timeout=600):
    """`processes` ranks of main.py, each of which must exit 0; one process runs in this one."""
    if processes == 1:
        outputs = [tuple(run_main(cwd, *args))]
    else:
        outputs = finish(start(cwd, processes, args), timeout)
    for rank, (code, stdout, stderr) in enumerate(outputs):
        assert code == 0, f'rank {rank} exit {code}:\n{stdout[-2000:]}\n{stderr[-3000:]}'
    return outputs


def own_lines(text):
    """What a process printed, less the line gloo itself prints at connection in some torch
    releases (2.8: "[Gloo] Rank 1 is connected to 1 peer ranks. ...")."""
    return [line for line in text.splitlines() if not re.match(r'\[Gloo\] Rank \d+ is connected to', line)]


def read_png(path):
    with Image.open(path) as png:
        return np.array(png)


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    """Synthetic data (an odd number of val images: uneven shares) and a trained-looking start."""
    work = tmp_path_factory.mktemp('ddp')
    make_synthetic_voc(work / 'voc', num_train=24, num_val=7, seed=2)
    confident_checkpoint(work / 'start.pt', architecture={'backbone': 'resnet14', 'head_branches': 2})
    return work


def data(work):
    return ['--data-root', work / 'voc']


def test_pseudo_labels_and_thresholds_match_one_process(work):
    args = ['--state', 0, '--continue-from', 'start.pt', '--label-ratio', 0.3, *COMMON, *data(work)]
    run(work, 1, ['--exp-name', 'labels1', '--batch-size', 1, *args])
    outputs = run(work, 2, ['--exp-name', 'labels2', '--batch-size', 2, *args])
    assert own_lines(outputs[1][1]) == own_lines(outputs[1][2]) == [], 'only rank 0 prints'
    one = json.loads((work / 'logs' / 'labels1' / 'pseudo_labels' / 'pseudo_labels.json').read_text())
    two = json.loads((work / 'logs' / 'labels2' / 'pseudo_labels' / 'pseudo_labels.json').read_text())
    assert two['complete'] is True and two['world_size'] == 2 and one['world_size'] == 1
    assert two['thresholds'] == one['thresholds']
    assert two['labeled_share'] == one['labeled_share']
    assert two['pseudo_label_miou'] == one['pseudo_label_miou']
    assert len(set(one['thresholds'])) > 3, 'several classes predicted: the comparison means something'
    names = (work / 'voc' / 'ImageSets' / 'Segmentation' / '8_unlabeled_0.txt').read_text().split()
    for name in names:
        assert np.array_equal(read_png(work / 'logs' / 'labels1' / 'pseudo_labels' / f'{name}.png'),
                              read_png(work / 'logs' / 'labels2' / 'pseudo_labels' / f'{name}.png')), name
    results = json.loads((work / 'logs' / 'labels2' / 'results.json').read_text())
    assert results['world_size'] == 2
    assert not list((work / 'logs' / 'labels2').glob('dstcbc-prediction-cache-*')), 'caches removed'


def test_evaluation_with_uneven_shares_matches_one_process(work):
    args = ['--state', 3, '--continue-from', 'start.pt', *COMMON, *data(work)]
    run(work, 1, ['--exp-name', 'eval1', '--batch-size', 1, *args])
    run(work, 2, ['--exp-name', 'eval2', '--batch-size', 2, *args])
    one = json.loads((work / 'logs' / 'eval1' / 'results.json').read_text())
    two = json.loads((work / 'logs' / 'eval2' / 'results.json').read_text())
    assert len((work / 'voc' / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()) == 7
    assert two['confusion_matrix'] == one['confusion_matrix']   # every pixel counted once
    assert two['miou'] == one['miou'] and two['scores']['iou'] == one['scores']['iou']


def logged_losses(work, name):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(next((work / 'logs' / name).glob('events.out.tfevents.*'))))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars('supervised/loss')]


def test_training_steps_match_one_process(work):
    """A few steps of state 2 with the same global batch of 4: the loss is normalised over the
    whole global batch, so two processes take the same steps as one, up to float sums. (Split
    over two processes, the weight gradients' sums over the batch run in another order; where
    they cancel, the float32 result differs by up to about 1e-4 of the update.)"""
    args = ['--state', 2, '--continue-from', 'start.pt', '--batch-size', 4, '--init-epochs', 2,
            '--val-num-steps', 100, '--lr', 0.01, '--frozen-bn', '--save-every', 0, *COMMON, *data(work)]
    run(work, 1, ['--exp-name', 'train1', *args])
    run(work, 2, ['--exp-name', 'train2', *args])
    one = load_checkpoint(work / 'train1.pt')
    two = load_checkpoint(work / 'train2.pt')
    assert one['step'] == two['step'] == 2   # 3 labeled images: a batch of 3 per epoch
    start = load_checkpoint(work / 'start.pt')['model']
    moved = max((one['model'][k].float() - start[k].float()).abs().max().item() for k in start)
    differ = max((one['model'][k].float() - two['model'][k].float()).abs().max().item() for k in start)
    assert moved > 1e-3 and differ < 2e-3 * moved, (moved, differ)
    loss_one, loss_two = logged_losses(work, 'train1'), logged_losses(work, 'train2')
    assert [step for step, _ in loss_one] == [step for step, _ in loss_two] == [2]
    assert loss_two[0][1] == pytest.approx(loss_one[0][1], rel=1e-5)
    log_one = (work / 'logs' / 'train1' / 'run.log').read_text()
    log_two = (work / 'logs' / 'train2' / 'run.log').read_text()
    assert 'over 2 process(es)' in log_two and 'BatchNorm frozen' in log_two
    mious = [[line.split('val mIoU ')[1].split()[0] for line in log.splitlines() if 'step 2/2: val mIoU' in line]
             for log in (log_one, log_two)]
    assert len(mious[0]) == 1 and mious[0] == mious[1]
    assert json.loads((work / 'logs' / 'train2' / 'settings.json').read_text())['world_size'] == 2


def test_killed_two_process_run_resumes(work):
    args = [*COMMON, '--state', 2, '--exp-name', 'long', '--continue-from', 'start.pt', '--batch-size', 2,
            '--split', '1', '--init-epochs', 2, '--val-num-steps', 1000, '--save-every', 4, *data(work)]
    started = start(work, 2, args)
    last = work / 'logs' / 'long' / 'last.pt'
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and all(p.poll() is None for p in started):
        time.sleep(0.2)
    assert last.exists(), finish(started)
    for process in started:
        process.send_signal(signal.SIGKILL)
    finish(started)
    saved = load_checkpoint(last)['step']
    assert 0 < saved < 2 * 12
    run(work, 2, [*args, '--resume'])
    log = (work / 'logs' / 'long' / 'run.log').read_text()
    assert f'resumed at step {saved}' in log
    assert json.loads((work / 'logs' / 'long' / 'results.json').read_text())['steps'] == 2 * 12


def test_a_bad_label_on_one_rank_stops_both_with_one_line(work, tmp_path):
    root = tmp_path / 'voc'
    make_synthetic_voc(root, num_train=16, num_val=4, seed=3)
    val = (root / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()
    bad = root / 'SegmentationClassAug' / f'{val[1]}.png'   # checked by rank 1 (every 2nd entry)
    label = read_png(bad)
    label[0, 0] = 77
    Image.fromarray(label).save(bad)
    started_at = time.time()
    outputs = finish(start(tmp_path, 2, ['--state', 3, '--exp-name', 'bad', '--continue-from',
                                         work / 'start.pt', '--batch-size', 2, *COMMON, '--data-root', root]))
    assert time.time() - started_at < 120
    lines = []
    for code, _, stderr in outputs:
        errors = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and len(errors) == 1, stderr
        lines.append(errors[0])
        assert str(bad) in errors[0] and 'label value 77' in errors[0]
    assert 'reported by rank 1' in lines[0]


def long_training(work, name):
    """Two processes training for long, returned once their steps have begun."""
    args = [*COMMON, '--state', 2, '--exp-name', name, '--continue-from', 'start.pt', '--batch-size', 2,
            '--split', '1', '--init-epochs', 50, '--val-num-steps', 1000, '--save-every', 0, *data(work)]
    started = start(work, 2, args)
    log = work / 'logs' / name / 'run.log'
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or 'supervised:' not in log.read_text()):
        time.sleep(0.2)
    time.sleep(2)
    return started


def test_a_stop_on_one_rank_stops_both_and_saves(work):
    started = long_training(work, 'stopped')
    started[1].send_signal(signal.SIGINT)   # only rank 1 is told
    outputs = finish(started)
    for code, _, stderr in outputs:
        assert code == 130, stderr
    assert 'stopped: SIGINT' in outputs[1][2] and '--resume' in outputs[0][2]
    assert (work / 'logs' / 'stopped' / 'last.pt').exists()


def test_a_lost_rank_is_one_line_on_the_others(work):
    """kill -9 of one process mid-run: the other does not hang, it stops with one line (a peer
    that disappears breaks the connection at once; a silent one trips --dist-timeout)."""
    started = long_training(work, 'lost')
    started[1].send_signal(signal.SIGKILL)
    began = time.time()
    code, _, stderr = finish(started)[0]
    assert time.time() - began < 90
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 5 and len(lines) == 1 and 'lost contact with another process' in lines[0], stderr[-3000:]


def test_torchrun_itself_launches_main(work):
    """The launcher users type: torchrun (here as python -m torch.distributed.run) with the same
    flags; evaluation gives the single-process scores."""
    args = ['--state', 3, '--exp-name', 'torchrun', '--continue-from', 'start.pt', '--batch-size', 2,
            *COMMON, *data(work)]
    completed = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                                '--master_port', str(free_port()), str(MAIN), *map(str, args)],
                               cwd=work, capture_output=True, text=True, timeout=600,
                               env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert completed.returncode == 0, completed.stderr[-3000:]
    launched = json.loads((work / 'logs' / 'torchrun' / 'results.json').read_text())
    single = work / 'logs' / 'eval1' / 'results.json'
    if not single.exists():
        run(work, 1, ['--exp-name', 'eval1', '--batch-size', 1, '--state', 3, '--continue-from', 'start.pt',
                      *COMMON, *data(work)])
    assert launched['world_size'] == 2
    assert launched['confusion_matrix'] == json.loads(single.read_text())['confusion_matrix']


def test_self_training_rounds_with_a_warm_up_on_two_processes(work):
    """Warm-up and two rounds in one process group (one DDP wrapper trains them all)."""
    args = [*COMMON, '--state', 1, '--exp-name', 'rounds', '--continue-from', 'start.pt', '--batch-size', 4,
            '--iters', 2, '--st-epochs', 1, 1, '--init-epochs', 1, '--val-num-steps', 1000, *data(work)]
    run(work, 2, args)
    results = json.loads((work / 'logs' / 'rounds' / 'results.json').read_text())
    assert [r['round'] for r in results['rounds']] == [1, 2] and results['world_size'] == 2
    manifest = json.loads((work / 'logs' / 'rounds' / 'pseudo_labels' / 'pseudo_labels.json').read_text())
    assert manifest['complete'] is True and manifest['ratio'] == 0.4


def test_predict_on_two_processes_matches_one(work):
    """predict.py under torchrun's variables: each rank predicts its share of the images, every
    image once, with the classes one process gives; rank 0 writes the one summary."""
    val = work / 'voc' / 'ImageSets' / 'Segmentation' / 'val.txt'
    common = ['--dataset', 'voc', '--checkpoint', work / 'start.pt', '--data-root', work / 'voc',
              '--eval-size', 96, 128, '--workers', 0, '--device', 'cpu', val]
    ranks = start(work, 2, ['--out', 'predicted2', '--batch-size', 2, *common], program=REPO_ROOT / 'predict.py')
    import predict   # the one-process reference runs in this process meanwhile
    one_process = call(predict, '--out', work / 'predicted1', '--batch-size', 1, *common)
    for code, _, stderr in [one_process, *finish(ranks)]:
        assert code == 0, stderr[-3000:]
    names = val.read_text().split()
    for name in names:
        assert np.array_equal(read_png(work / 'predicted1' / 'index' / f'{name}.png'),
                              read_png(work / 'predicted2' / 'index' / f'{name}.png')), name
    for folder in ('predicted1', 'predicted2'):
        rows = (work / folder / 'summary.csv').read_text().splitlines()[1:]
        assert sorted(row.split(',')[1] for row in rows) == sorted(names)
