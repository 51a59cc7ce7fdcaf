#!/usr/bin/env python
"""The GPU check: is the project correct on the device, and how close does it run to the hardware's
pace for DeepLabV2-ResNet-101? One command, a JSON report, under 8 minutes on one GPU.

    python benchmarks/bench_gpu.py --out bench_gpu.json          # on a GPU (the default device)
    python benchmarks/bench_gpu.py --device cpu --small           # the same script in a minute (CI)

No downloads: synthetic data and random weights only. The report (--out) has three sections, and
the script prints a readable summary of it:

1. `chain`: the real command line (main.py) on a synthetic VOC-layout set, on the device: state 2
   (supervised), state 0 (CBC pseudo labels), state 1 (one DST-CBC round) and state 3 (evaluation
   with --scales 1.0 0.75 --flip), once in --precision fp16 and once in bf16. Then each GPU-trained
   checkpoint evaluated with --device cpu (state 3, fp32, same protocol) beside its GPU score, and
   the CBC thresholds of one checkpoint labeled in fp16 and in fp32 (state 0 twice): per-class
   threshold differences and the share of pixels whose pseudo label differs. Every run's exit
   status, wall time and key results. The network is resnet14 at small sizes: this section checks
   correctness, not speed.
2. `network`: DeepLabV2-ResNet-101 (random weights) at the paper's sizes, in fp32, fp16 and bf16:
   training at 321x321, batch 8, through utils.training.train_loop (self-training batches: half
   pseudo-labeled, DynamicLoss with gamma 9, SGD momentum 0.9, weight decay 5e-4); pseudo-labeling
   (utils.cbc.predict_unlabeled) and evaluation (utils.training.evaluate) at 505x505, fed by the
   project's loader over synthetic 375x500 JPEGs and, apart, by batches already on the device.
   Each beside a bare loop of the same network on a fixed device batch under the same autocast and
   layout, with no loader, logging or checks (training: forward, the same loss, backward, the same
   SGD step; inference: forward, upsampling to the canvas, softmax, max): the hardware's pace for
   this network, and the ratio ours/bare. Peak GPU memory of every phase. The bare training loop in
   both memory layouts (channels-last and contiguous) under bf16 and fp16. Host syncs per training
   step, counted under torch.cuda.set_sync_debug_mode('warn').
3. `environment`: versions, GPU, CUDA and cuDNN, CPU, date, load.

Timing: warm-up iterations first (cuDNN's algorithm search, the allocator), the device synchronized
before and after every timed region, whole loops timed (no per-step synchronization inside them).
A failing run or measurement is recorded in the report (`failures`) and the rest goes on; the exit
status is 1 if anything failed. The report is rewritten after every part, so a crash leaves what
was measured. `--device cpu --small` uses resnet14 and tiny sizes; its figures are a smoke check,
not measurements.
"""
import argparse
import contextlib
import io
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

# benchmarks/common.py; importing it puts the repository root on sys.path for the imports below.
from common import REPO_DIR, cpu_name, format_table, load_text, synchronize
import data_processing as dp
from models import deeplab_v2
from utils.cbc import PredictionStore, SampleBuffer, predict_unlabeled
from utils.device import configure_backends, use_channels_last
from utils.experiment import AUTOCAST_DTYPES
from utils.inference import upsample
from utils.losses import DynamicLoss
from utils.metrics import ConfusionMatrix
from utils.synthetic import make_synthetic_voc
from utils.training import (LoopHooks, Runtime, TrainState, build_optimizer, build_scheduler,
                            evaluate, make_loader, step_batch, train_loop)

MAIN = REPO_DIR / 'main.py'
NUM_CLASSES = 21
PRECISIONS = ('fp32', 'fp16', 'bf16')
CHAIN_PRECISIONS = ('fp16', 'bf16')
LAYOUT_PRECISIONS = ('bf16', 'fp16')
LR, WEIGHT_DECAY, GAMMA = 0.002, 5e-4, 9.0
LABEL_RATIO = 0.2                     # the CBC ratio of the paper's first round
EVAL_PROTOCOL = ('--scales', '1.0', '0.75', '--flip')
# Checks of the chain (generous: they catch a broken device path, not rounding).
MIOU_TOLERANCE = 0.02                 # |mIoU on the device - mIoU on the CPU| of one checkpoint
LABEL_DIFFERENCE_TOLERANCE = 0.05     # share of pixels whose fp16 and fp32 pseudo labels differ
SYNC_WARNING = 'synchroniz'           # what torch's sync debug mode says ("...synchronizing CUDA operation")


@dataclass(frozen=True)
class Plan:
    """Sizes and counts of one run of the script: the GPU plan or the --small smoke plan."""
    name: str
    chain_images: dict          # make_synthetic_voc arguments
    chain_flags: tuple          # main.py flags of every chain run
    supervised_flags: tuple     # state 2
    self_training_flags: tuple  # state 1
    backbone: str
    train_size: tuple
    train_batch: int
    train_warmup: int
    train_steps: int
    image_size: tuple           # the synthetic photos of the labeling and evaluation loaders
    canvas: tuple               # the evaluation padding (VOC: 505x505)
    infer_batch: int
    unique_images: int          # photos generated; the lists repeat them (hard links)
    pass_images: int            # images per labeling / evaluation pass
    infer_warmup: int           # bare inference: untimed batches
    infer_batches: int          # bare inference: timed batches
    sync_steps: int             # training steps under the sync debug mode
    time_limit_s: float         # measurements not started by then are skipped (and count as failed)


GPU_PLAN = Plan(
    name='gpu',
    chain_images={'num_train': 64, 'num_val': 16},
    chain_flags=('--backbone', 'resnet14', '--crop-size', '64', '64', '--eval-size', '96', '128',
                 '--batch-size', '8', '--workers', '2', '--split', '8', '--sets-id', '0', '--save-every', '0'),
    # 40 steps of 8 of the 8 labeled images: predictions beyond background, so that the CPU and
    # fp32 comparisons below compare something.
    supervised_flags=('--init-epochs', '40', '--val-num-steps', '10', '--lr', '0.02'),
    self_training_flags=('--iters', '1', '--st-epochs', '1', '--init-epochs', '0', '--gamma', '9',
                         '--st-lr', '0.01', '--val-num-steps', '7'),
    backbone='resnet101', train_size=(321, 321), train_batch=8, train_warmup=8, train_steps=40,
    image_size=(375, 500), canvas=(505, 505), infer_batch=8, unique_images=16, pass_images=320,
    infer_warmup=5, infer_batches=40, sync_steps=8, time_limit_s=450.0)

SMALL_PLAN = Plan(
    name='small',
    chain_images={'num_train': 10, 'num_val': 2, 'height_range': (24, 32), 'width_range': (32, 48)},
    chain_flags=('--backbone', 'resnet14', '--crop-size', '24', '24', '--eval-size', '32', '48',
                 '--batch-size', '4', '--workers', '0', '--split', '8', '--sets-id', '0', '--save-every', '0'),
    supervised_flags=('--init-epochs', '2', '--val-num-steps', '2', '--lr', '0.01'),
    self_training_flags=('--iters', '1', '--st-epochs', '1', '--init-epochs', '0', '--gamma', '9',
                         '--st-lr', '0.01', '--val-num-steps', '4'),
    backbone='resnet14', train_size=(32, 32), train_batch=2, train_warmup=1, train_steps=1,
    image_size=(24, 32), canvas=(32, 32), infer_batch=2, unique_images=2, pass_images=4,
    infer_warmup=1, infer_batches=1, sync_steps=4, time_limit_s=600.0)


# --- the report ------------------------------------------------------------------------------

class Report:
    """The JSON report, written again after every part (atomically), and the list of failures."""

    def __init__(self, path, started):
        self.path = Path(path)
        self.started = started
        self.data = {'report': 'bench_gpu', 'failures': []}

    def fail(self, where, message):
        self.data['failures'].append(f'{where}: {message}')

    def elapsed(self):
        return time.perf_counter() - self.started

    def save(self):
        self.data['wall_s'] = round(self.elapsed(), 1)
        self.data['ok'] = not self.data['failures']
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + '.tmp')
        temporary.write_text(json.dumps(self.data, indent=1, default=str) + '\n')
        os.replace(temporary, self.path)


def error_text(error):
    return f'{type(error).__name__}: {" ".join(str(error).split())[:500]}'


def recorded(report, where, function, *args):
    """Run one measurement; an exception becomes a failure in the report and {'error': ...} in its
    place, so the other measurements still run. Measurements not started before the plan's time
    limit are skipped, and count as failed (the check did not finish)."""
    if report.elapsed() > report.data['settings']['time_limit_s']:
        report.fail(where, 'skipped: the time limit was reached')
        return {'error': 'skipped: the time limit was reached'}
    try:
        return function(*args)
    except Exception as error:   # noqa: BLE001 - every failure is recorded, not fatal
        report.fail(where, error_text(error))
        with contextlib.suppress(Exception):   # after an out-of-memory error; a broken context raises
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return {'error': error_text(error), 'traceback': traceback.format_exc()[-2000:]}
    finally:
        report.save()


# --- environment -----------------------------------------------------------------------------

def environment(device):
    """What the figures were measured with."""
    env = {'date': datetime.now(timezone.utc).isoformat(timespec='seconds'),
           'python': platform.python_version(), 'torch': torch.__version__,
           'torchvision': torchvision.__version__, 'cuda': torch.version.cuda,
           'cudnn': torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           'platform': platform.platform(), 'cpu': cpu_name(), 'cpu_count': os.cpu_count(),
           'device': str(device), 'load_average_at_start': load_text(), 'gpu': None}
    if device.type == 'cuda':
        properties = torch.cuda.get_device_properties(device)
        env['gpu'] = {'name': properties.name, 'memory_gib': round(properties.total_memory / 2 ** 30, 1),
                      'capability': f'{properties.major}.{properties.minor}',
                      'multiprocessors': properties.multi_processor_count,
                      'bf16_supported': torch.cuda.is_bf16_supported(),
                      'driver': nvidia_driver(),
                      'tf32': {'cudnn_conv': torch.backends.cudnn.allow_tf32,
                               'matmul': torch.backends.cuda.matmul.allow_tf32}}
    return env


def nvidia_driver():
    """The driver version from nvidia-smi, if it is there (torch does not report it)."""
    if shutil.which('nvidia-smi') is None:
        return None
    try:
        output = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return output.strip().splitlines()[0] if output.strip() else None


# --- 1. the chain through the command line ---------------------------------------------------

def run_cli(argv, cwd, isolate, timeout=300):
    """One main.py run: its exit status, wall time and the tail of its output.

    `isolate`: a fresh Python process (on a GPU: CUDA state and memory of its own; the wall time
    includes starting Python and CUDA); else main.main(argv) in this process, with the working
    folder changed and the output captured (fast on a CPU, where an import costs seconds).
    """
    started = time.perf_counter()
    if isolate:
        try:
            completed = subprocess.run([sys.executable, str(MAIN), *argv], cwd=cwd, capture_output=True,
                                       text=True, timeout=timeout, env=dict(os.environ, TQDM_DISABLE='1'))
            status, output = completed.returncode, completed.stdout + completed.stderr
        except subprocess.TimeoutExpired as expired:
            status, output = None, f'timed out after {timeout} s\n{text(expired.stdout)}{text(expired.stderr)}'
    else:
        status, output = run_in_process(argv, cwd)
    return {'exit_status': status, 'wall_s': round(time.perf_counter() - started, 2),
            'output_tail': output[-1500:] if status != 0 else output[-300:]}


def text(output):
    """Captured output as text (a timed-out run's partial output may come as bytes)."""
    if isinstance(output, bytes):
        return output.decode(errors='replace')
    return output or ''


def run_in_process(argv, cwd):
    """main.main(argv) run from `cwd` with its output captured: (exit status, output). An
    exception that main.main lets through is this run's failure (status 1), not the script's."""
    import main   # the repository's main.py

    buffer = io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            try:
                status = main.main(list(argv))
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:   # noqa: BLE001 - an unexpected error is this run's result
                traceback.print_exc()
                status = 1
    finally:
        os.chdir(previous)
    return status, buffer.getvalue()


def key_results(state, results):
    """What each state's results.json says that matters here."""
    if results is None:
        return {}
    if state in (1, 2):
        keys = {'best_miou': results.get('best_miou'), 'last_miou': results.get('last_miou')}
        if state == 2:
            keys['steps'] = results.get('steps')
        else:
            keys['start_miou'] = results.get('start_miou')
            keys['rounds'] = [{'ratio': r.get('ratio'), 'labeled_share': r.get('labeled_share'),
                               'thresholds': threshold_list(r.get('thresholds'), results)}
                              for r in results.get('rounds', [])]
        return keys
    if state == 0:
        return {'labeled_share': results.get('labeled_share'), 'count': results.get('count'),
                'thresholds': threshold_list(results.get('thresholds'), results),
                'pseudo_label_miou': results.get('pseudo_label_miou'), 'seconds': results.get('seconds')}
    return {'miou': results.get('miou'), 'pixel_accuracy': results.get('pixel_accuracy'),
            'protocol': results.get('protocol')}


def threshold_list(thresholds, results):
    """Thresholds as a list in class order (results.json keys them by class name)."""
    if isinstance(thresholds, dict):
        names = results.get('class_names') or list(thresholds)
        return [thresholds[name] for name in names]
    return thresholds


class Chain:
    """The chain's runs, each recorded as it finishes; a run whose input a failed run should have
    made is skipped (and recorded so)."""

    def __init__(self, report, work, data_root, plan, device, isolate):
        self.report, self.work, self.plan, self.device, self.isolate = report, work, plan, device, isolate
        self.data_root = data_root
        self.runs = report.data['chain']['runs']

    def run(self, name, state, precision, *flags, device=None, needs=None):
        device = device or str(self.device)
        argv = ['--state', str(state), '--exp-name', name, '--precision', precision, '--device', device,
                '--data-root', str(self.data_root), *self.plan.chain_flags, *flags,
                '--results-file', str(self.work / 'results' / f'{name}.json')]
        record = {'name': name, 'state': state, 'precision': precision, 'device': device,
                  'argv': argv}
        missing = [str(path) for path in (needs or []) if not (self.work / path).is_file()]
        if missing:
            record.update(exit_status=None, skipped=f'{", ".join(missing)} missing (an earlier run failed)')
            self.report.fail(f'chain {name}', record['skipped'])
        else:
            record.update(run_cli(argv, self.work, self.isolate))
            results_path = self.work / 'results' / f'{name}.json'
            results = json.loads(results_path.read_text()) if results_path.is_file() else None
            record['results'] = key_results(state, results)
            if record['exit_status'] != 0:
                self.report.fail(f'chain {name}', f'exit status {record["exit_status"]}: '
                                 f'{last_line(record["output_tail"])}')
            elif results is None:
                self.report.fail(f'chain {name}', 'exit status 0 but no results.json')
        self.runs.append(record)
        self.report.save()
        return record


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ''


def run_chain(report, plan, work, device, isolate):
    """States 2, 0, 1, 3 in fp16 and bf16; CPU evaluation of the device checkpoints; CBC
    thresholds of fp16 against fp32 from one checkpoint."""
    data_root = work / 'chain_data'
    make_synthetic_voc(data_root, seed=1, **plan.chain_images)
    report.data['chain'] = {'data': dict(plan.chain_images, root=str(data_root)),
                            'mode': 'subprocess per run' if isolate else 'main.main() in this process',
                            'runs': [], 'cpu_vs_device': {}, 'fp16_vs_fp32_labels': None}
    chain = Chain(report, work, data_root, plan, device, isolate)
    for precision in CHAIN_PRECISIONS:
        supervised, labels, selftrained = f'sup_{precision}', f'labels_{precision}', f'dst_{precision}'
        chain.run(supervised, 2, precision, *plan.supervised_flags)
        chain.run(labels, 0, precision, '--continue-from', f'{supervised}.pt', '--label-ratio',
                  str(LABEL_RATIO), needs=[f'{supervised}.pt'])
        chain.run(selftrained, 1, precision, '--continue-from', f'{supervised}.pt',
                  *plan.self_training_flags, needs=[f'{supervised}.pt'])
        on_device = chain.run(f'eval_{precision}', 3, precision, '--continue-from', f'{selftrained}.pt',
                              *EVAL_PROTOCOL, needs=[f'{selftrained}.pt'])
        on_cpu = chain.run(f'eval_{precision}_on_cpu', 3, 'fp32', '--continue-from', f'{selftrained}.pt',
                           *EVAL_PROTOCOL, device='cpu', needs=[f'{selftrained}.pt'])
        report.data['chain']['cpu_vs_device'][precision] = compare_miou(report, precision, on_device, on_cpu)
    fp32 = chain.run('labels_fp32', 0, 'fp32', '--continue-from', 'sup_fp16.pt', '--label-ratio',
                     str(LABEL_RATIO), needs=['sup_fp16.pt'])
    fp16 = next(run for run in chain.runs if run['name'] == 'labels_fp16')
    report.data['chain']['fp16_vs_fp32_labels'] = compare_labels(report, work, fp16, fp32)
    report.save()


def compare_miou(report, precision, on_device, on_cpu):
    """The same checkpoint scored on the device (in `precision`) and on the CPU (fp32)."""
    device_miou = (on_device.get('results') or {}).get('miou')
    cpu_miou = (on_cpu.get('results') or {}).get('miou')
    if device_miou is None or cpu_miou is None:
        return {'checkpoint': f'dst_{precision}.pt', 'device_miou': device_miou, 'cpu_miou': cpu_miou,
                'difference': None, 'agree': None}
    difference = device_miou - cpu_miou
    agree = abs(difference) <= MIOU_TOLERANCE
    if not agree:
        report.fail(f'chain cpu_vs_device {precision}', f'mIoU {device_miou:.4f} on the device, '
                    f'{cpu_miou:.4f} on the CPU (tolerance {MIOU_TOLERANCE})')
    return {'checkpoint': f'dst_{precision}.pt', 'device_precision': precision, 'device_miou': device_miou,
            'cpu_miou': cpu_miou, 'difference': difference, 'tolerance': MIOU_TOLERANCE, 'agree': agree}


def compare_labels(report, work, fp16, fp32):
    """Per-class thresholds (fp16 - fp32) and the share of pixels whose pseudo label differs,
    over every label both runs wrote."""
    if not all('thresholds' in (run.get('results') or {}) for run in (fp16, fp32)):
        return {'error': 'a labeling run failed or reported no thresholds'}
    low, high = fp16['results']['thresholds'], fp32['results']['thresholds']
    differences = [a - b for a, b in zip(low, high)]
    folder16 = work / 'logs' / fp16['name'] / 'pseudo_labels'
    folder32 = work / 'logs' / fp32['name'] / 'pseudo_labels'
    pixels = differing = labeled_once = images = 0
    for path in sorted(folder32.glob('*.png')):
        with Image.open(path) as image32, Image.open(folder16 / path.name) as image16:
            a, b = np.asarray(image16), np.asarray(image32)
        pixels += a.size
        differing += int((a != b).sum())
        labeled_once += int(((a == 255) != (b == 255)).sum())
        images += 1
    share = differing / max(pixels, 1)
    agree = images > 0 and share <= LABEL_DIFFERENCE_TOLERANCE
    if not agree:
        report.fail('chain fp16_vs_fp32_labels', f'{share:.4f} of the pixels differ over {images} labels '
                    f'(tolerance {LABEL_DIFFERENCE_TOLERANCE})')
    return {'checkpoint': 'sup_fp16.pt', 'ratio': LABEL_RATIO, 'thresholds_fp16': low, 'thresholds_fp32': high,
            'threshold_differences': differences,
            'max_abs_threshold_difference': max(abs(d) for d in differences),
            'labeled_share_fp16': fp16['results']['labeled_share'],
            'labeled_share_fp32': fp32['results']['labeled_share'],
            'images': images, 'pixels': pixels, 'differing_pixel_share': share,
            'labeled_in_one_only_share': labeled_once / max(pixels, 1),
            'tolerance': LABEL_DIFFERENCE_TOLERANCE, 'agree': agree}


# --- 2. DeepLabV2 at the paper's sizes -------------------------------------------------------

def project_runtime(device, precision, workers=0, channels_last=None):
    """The Runtime main.py builds for this device and precision (channels-last: its default)."""
    amp_dtype = AUTOCAST_DTYPES[precision]
    if channels_last is None:
        channels_last = use_channels_last(device, amp_dtype)
    return Runtime(device=device, amp_dtype=amp_dtype, workers=workers, channels_last=channels_last)


def set_layout(model, channels_last):
    """The model's memory layout, as main.py sets it (context.build_model)."""
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class GpuMemory:
    """Peak memory allocated on the device during one phase (None on a CPU)."""

    def __init__(self, device):
        self.device = device

    def reset(self):
        if self.device.type == 'cuda':
            synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self):
        if self.device.type != 'cuda':
            return None
        synchronize(self.device)
        return round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)


def timed(device, function):
    """Wall seconds of function(), the device synchronized before and after."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def figures(images, seconds, peak_mb, **conditions):
    return dict(images_per_s=round(images / seconds, 3), images=images, seconds=round(seconds, 4),
                peak_memory_mb=peak_mb, **conditions)


def loss_scale(scaler):
    """float16's loss scale (None without loss scaling), read outside the timed regions: it halves
    at every skipped step (and grows only after 2,000 good ones), so a scale that fell while timing
    counts the skipped steps, which do less work than real ones."""
    return scaler.get_scale() if scaler.is_enabled() else None


def random_labels(batch, size, generator):
    """uint8 classes with about 10% ignored (255), like VOC's void band."""
    labels = torch.randint(0, NUM_CLASSES, (batch, *size), generator=generator, dtype=torch.uint8)
    labels[torch.rand((batch, *size), generator=generator) < 0.1] = 255
    return labels


def quiet_hooks(device, log):
    """No checkpoints, no scalars; validation returns an empty matrix (NaN scores, never a best)."""
    def ignore(*_):
        return None
    return LoopHooks(validate=lambda: ConfusionMatrix(NUM_CLASSES, device=device), on_best=ignore,
                     on_validated=ignore, save_last=ignore, log=log, scalar=ignore)


def calibrate_batch_norm(model, images):
    """BatchNorm statistics of one forward pass on `images`, so that the random network behaves in
    evaluation mode as in training mode. With the initial statistics (mean 0, variance 1) nothing
    normalises the residual stream: ResNet-101's layer4 reaches 1e5 in evaluation mode, beyond
    float16's range, and labeling then refuses the NaN probabilities (a diverged network)."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None   # a cumulative average: after one pass, that pass's statistics
    model.train()
    with torch.no_grad():
        model(images)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


class Bench:
    """The network, its starting weights and the fixed device batches of section 2."""

    def __init__(self, plan, device, workers, work):
        self.plan, self.device, self.workers, self.work = plan, device, workers, work
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        self.model = deeplab_v2(NUM_CLASSES, backbone=plan.backbone, pretrained_backbone=False).to(device)
        self.memory = GpuMemory(device)
        batch, size = plan.train_batch, plan.train_size
        images = torch.randn(batch, 3, *size, generator=generator).to(device)
        labels = random_labels(batch, size, generator).to(device)
        calibrate_batch_norm(self.model, images)
        self.initial = {key: value.clone() for key, value in self.model.state_dict().items()}
        self.train_batch = step_batch(images, labels, split_index=batch // 2)   # half pseudo-labeled
        self.canvas_images = torch.randn(plan.infer_batch, 3, *plan.canvas, generator=generator).to(device)
        self.canvas_labels = random_labels(plan.infer_batch, plan.canvas, generator).to(device)

    def fresh(self, channels_last):
        """The starting weights in the layout asked for, no gradients: every training row starts
        from the same network."""
        self.model.load_state_dict(self.initial)
        self.model.zero_grad(set_to_none=True)
        return set_layout(self.model, channels_last)

    # training ------------------------------------------------------------------------------
    def train_ours(self, precision):
        """utils.training.train_loop as the states call it, on the fixed self-training batch."""
        runtime = project_runtime(self.device, precision)
        model = self.fresh(runtime.channels_last)
        optimizer = build_optimizer(model, LR, WEIGHT_DECAY, fused=runtime.fused_optimizer)
        scaler, loss = runtime.grad_scaler(), DynamicLoss(GAMMA)
        hooks = quiet_hooks(self.device, lambda _: None)

        def phase(steps):
            for group in optimizer.param_groups:   # poly decay ended at 0 in the previous phase
                group['lr'] = LR
            state = TrainState(model, optimizer, build_scheduler(optimizer, steps), scaler, steps)
            train_loop(state, itertools.repeat(self.train_batch, steps), loss, runtime, hooks,
                       val_every=steps + 1, save_every=0, num_classes=NUM_CLASSES,
                       tag=f'bench-{precision}')

        self.memory.reset()
        phase(self.plan.train_warmup)
        scale = loss_scale(scaler)
        seconds = timed(self.device, lambda: phase(self.plan.train_steps))
        return figures(self.plan.train_batch * self.plan.train_steps, seconds, self.memory.peak_mb(),
                       warmup_steps=self.plan.train_warmup, steps=self.plan.train_steps,
                       channels_last=runtime.channels_last, loss_scale=[scale, loss_scale(scaler)])

    def train_bare(self, precision, channels_last=None):
        """Forward, the same loss, backward, the same SGD step: nothing else."""
        runtime = project_runtime(self.device, precision, channels_last=channels_last)
        model = self.fresh(runtime.channels_last)
        model.train()
        optimizer = build_optimizer(model, LR, WEIGHT_DECAY, fused=runtime.fused_optimizer)
        scaler, loss_fn = runtime.grad_scaler(), DynamicLoss(GAMMA)
        batch = self.train_batch
        images = batch.images.contiguous(memory_format=torch.channels_last) if runtime.channels_last else batch.images
        count = max(batch.valid_pixels, 1)

        def step():
            with runtime.autocast():
                out = model(images)['out']
            total, _ = loss_fn.sum_and_count(upsample(out.float(), batch.labels.shape[-2:]), batch.labels,
                                             batch.split_index)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total / count).backward()
            scaler.step(optimizer)
            scaler.update()

        self.memory.reset()
        for _ in range(self.plan.train_warmup):
            step()
        scale = loss_scale(scaler)
        seconds = timed(self.device, lambda: [step() for _ in range(self.plan.train_steps)])
        return figures(self.plan.train_batch * self.plan.train_steps, seconds, self.memory.peak_mb(),
                       warmup_steps=self.plan.train_warmup, steps=self.plan.train_steps,
                       channels_last=runtime.channels_last, loss_scale=[scale, loss_scale(scaler)])

    def host_syncs(self, precision):
        """train_loop under torch.cuda.set_sync_debug_mode('warn'): the "synchronizing" warnings
        counted between the loop's requests for consecutive batches, i.e. per step."""
        if self.device.type != 'cuda':
            return {'per_step': None, 'reason': 'the sync debug mode exists on CUDA only'}
        runtime = project_runtime(self.device, precision)
        model = self.fresh(runtime.channels_last)
        optimizer = build_optimizer(model, LR, WEIGHT_DECAY, fused=runtime.fused_optimizer)
        scaler, loss = runtime.grad_scaler(), DynamicLoss(GAMMA)
        steps = self.plan.sync_steps

        def phase(batches):
            state = TrainState(model, optimizer, build_scheduler(optimizer, steps), scaler, steps)
            train_loop(state, batches, loss, runtime, quiet_hooks(self.device, lambda _: None),
                       val_every=steps + 1, save_every=0, num_classes=NUM_CLASSES,
                       tag=f'syncs-{precision}')

        phase(itertools.repeat(self.train_batch, steps))   # warm-up: cuDNN's search may synchronize
        synchronize(self.device)
        marks = []

        def marked():
            for _ in range(steps):
                marks.append(sum(SYNC_WARNING in str(w.message) for w in caught))
                yield self.train_batch

        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            torch.cuda.set_sync_debug_mode('warn')
            try:
                phase(marked())
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        total = sum(SYNC_WARNING in str(w.message) for w in caught)
        per_step = [after - before for before, after in zip(marks[1:], marks[2:])]
        examples = sorted({str(w.message)[:160] for w in caught if SYNC_WARNING in str(w.message)})
        return {'steps': steps, 'per_step': per_step, 'max_per_step': max(per_step) if per_step else None,
                'whole_phase': total, 'messages': examples[:5],
                'note': 'per_step: between the loop\'s requests for the 2nd..last batches; whole_phase '
                        'adds the start, the validation after the last step and the final checks. '
                        'Counted: what torch\'s sync debug mode reports (reads to the host, .item(), '
                        'stream synchronizations), not Event.synchronize()'}

    # inference -----------------------------------------------------------------------------
    def infer_bare(self, precision):
        """Forward, upsampling to the canvas, softmax, max, on a fixed device batch."""
        runtime = project_runtime(self.device, precision)
        model = self.fresh(runtime.channels_last).eval()
        images = self.canvas_images
        if runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)

        @torch.no_grad()
        def batch():
            with runtime.autocast():
                out = model(images)['out']
            torch.softmax(upsample(out.float(), self.plan.canvas), dim=1).max(dim=1)

        self.memory.reset()
        for _ in range(self.plan.infer_warmup):
            batch()
        seconds = timed(self.device, lambda: [batch() for _ in range(self.plan.infer_batches)])
        return figures(self.plan.infer_batch * self.plan.infer_batches, seconds, self.memory.peak_mb(),
                       warmup_batches=self.plan.infer_warmup, batches=self.plan.infer_batches,
                       channels_last=runtime.channels_last)

    def two_passes(self, source, one_pass):
        """A warm-up pass over `source`, then a timed one (the loader's workers persist between
        them, so worker start-up is not timed; it is paid once per labeling round, not per image)."""
        self.memory.reset()
        one_pass(source)
        seconds = timed(self.device, lambda: one_pass(source))
        return seconds

    def label_ours(self, precision, dataset, loader_fed):
        """utils.cbc.predict_unlabeled: maps at each image's own size into a PredictionStore,
        every 16th pixel into a SampleBuffer, copies behind the next forward."""
        runtime = project_runtime(self.device, precision, workers=self.workers)
        model = self.fresh(runtime.channels_last)
        source = self.loader(dataset, persistent=True) if loader_fed else self.device_batches(dataset, labels=False)

        def one_pass(batches):
            store = PredictionStore(4096 * 2 ** 20, self.work / 'prediction_cache')
            try:
                predict_unlabeled(model, batches, runtime, store, SampleBuffer(NUM_CLASSES))
            finally:
                store.close()

        seconds = self.two_passes(source, one_pass)
        return figures(self.plan.pass_images, seconds, self.memory.peak_mb(), warmup_passes=1,
                       workers=self.workers if loader_fed else None, channels_last=runtime.channels_last,
                       fed_by='loader' if loader_fed else 'device batches')

    def evaluate_ours(self, precision, dataset, loader_fed):
        """utils.training.evaluate: forward, upsampling, argmax, confusion matrix on the device."""
        runtime = project_runtime(self.device, precision, workers=self.workers)
        model = self.fresh(runtime.channels_last)
        source = self.loader(dataset, persistent=True) if loader_fed else self.device_batches(dataset, labels=True)
        seconds = self.two_passes(source,
                                  lambda batches: evaluate(model, batches, NUM_CLASSES, runtime, desc='bench'))
        return figures(self.plan.pass_images, seconds, self.memory.peak_mb(), warmup_passes=1,
                       workers=self.workers if loader_fed else None, channels_last=runtime.channels_last,
                       fed_by='loader' if loader_fed else 'device batches')

    def loader(self, dataset, persistent):
        return make_loader(dataset, batch_size=self.plan.infer_batch, workers=self.workers,
                           device=self.device, persistent=persistent)

    def device_batches(self, dataset, labels):
        """The pass's batches already on the device, in the dataset's item layout."""
        batch, own = self.plan.infer_batch, self.plan.image_size
        batches = []
        for first in range(0, self.plan.pass_images, batch):
            item = {'image': self.canvas_images, 'index': torch.arange(first, first + batch),
                    'own_size': torch.tensor([own] * batch), 'file_size': torch.tensor([own] * batch)}
            if labels:
                item['label'] = self.canvas_labels
            batches.append(item)
        return DeviceBatches(batches, dataset)


class DeviceBatches:
    """A replayable list of device batches that looks like a loader to the labeling pass (which
    names `loader.dataset` in its error messages)."""

    def __init__(self, batches, dataset):
        self.batches, self.dataset = batches, dataset

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def make_photo_lists(plan, root):
    """Synthetic photos of the plan's size (VOC's 375x500), repeated by hard links into two lists
    of pass_images names: unlabeled for labeling, with labels for evaluation."""
    height, width = plan.image_size
    make_synthetic_voc(root, num_train=plan.unique_images, num_val=plan.unique_images, seed=2,
                       height_range=(height, height), width_range=(width, width), labeled_fraction=2)
    lists = {'bench_unlabeled': ('synth_train', False), 'bench_val': ('synth_val', True)}
    for list_name, (source, with_labels) in lists.items():
        names = []
        for index in range(plan.pass_images):
            name, original = f'{list_name}_{index:05d}', f'{source}_{index % plan.unique_images:04d}'
            link(root / 'JPEGImages' / f'{original}.jpg', root / 'JPEGImages' / f'{name}.jpg')
            if with_labels:
                link(root / 'SegmentationClassAug' / f'{original}.png', root / 'SegmentationClassAug' / f'{name}.png')
            names.append(name)
        (root / 'ImageSets' / 'Segmentation' / f'{list_name}.txt').write_text('\n'.join(names) + '\n')
    info = dp.get_dataset_info('voc')
    transforms = dp.build_transforms(info, 'eval', eval_size=plan.canvas)
    return (dp.build_dataset(info, root, 'bench_unlabeled', 'unlabeled', transforms),
            dp.build_dataset(info, root, 'bench_val', 'gt', transforms))


def link(source, target):
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def ratio(ours, bare):
    if 'images_per_s' not in ours or 'images_per_s' not in bare:
        return None
    return round(ours['images_per_s'] / bare['images_per_s'], 3)


def run_network(report, plan, device, workers, work):
    """Section 2, each measurement recorded on its own."""
    configure_backends(device)   # cudnn.benchmark, as main.py sets it
    network = report.data['network'] = {
        'model': f'DeepLabV2-{plan.backbone} (random weights, 2-branch head, {NUM_CLASSES} classes)',
        'training': {}, 'host_syncs': {}, 'evaluation': {}, 'labeling': {}, 'layouts': {},
        'conditions': {'train_size': plan.train_size, 'train_batch': plan.train_batch,
                       'train_batch_pseudo_labeled': plan.train_batch // 2, 'gamma': GAMMA, 'lr': LR,
                       'weight_decay': WEIGHT_DECAY, 'momentum': 0.9,
                       'photos': plan.image_size, 'canvas': plan.canvas, 'infer_batch': plan.infer_batch,
                       'pass_images': plan.pass_images, 'loader_workers': workers,
                       'cudnn_benchmark': torch.backends.cudnn.benchmark}}
    bench = recorded(report, 'network setup', lambda: Bench(plan, device, workers, work))
    datasets = recorded(report, 'network photos', make_photo_lists, plan, work / 'photos')
    if isinstance(bench, dict) or isinstance(datasets, dict):
        return
    unlabeled, val = datasets
    for precision in PRECISIONS:
        ours = recorded(report, f'training {precision} ours', bench.train_ours, precision)
        bare = recorded(report, f'training {precision} bare', bench.train_bare, precision)
        network['training'][precision] = {'ours': ours, 'bare': bare, 'ours_over_bare': ratio(ours, bare)}
    for precision in PRECISIONS:
        network['host_syncs'][precision] = recorded(report, f'host syncs {precision}', bench.host_syncs, precision)
    for phase, measure, dataset in (('evaluation', bench.evaluate_ours, val),
                                    ('labeling', bench.label_ours, unlabeled)):
        for precision in PRECISIONS:
            ours = recorded(report, f'{phase} {precision} ours', measure, precision, dataset, True)
            on_device = recorded(report, f'{phase} {precision} ours, device batches', measure, precision,
                                 dataset, False)
            bare = recorded(report, f'{phase} {precision} bare', bench.infer_bare, precision)
            network[phase][precision] = {'ours': ours, 'ours_device_batches': on_device, 'bare': bare,
                                         'ours_over_bare': ratio(ours, bare),
                                         'device_batches_over_bare': ratio(on_device, bare)}
    for precision in LAYOUT_PRECISIONS:
        rows = {layout: recorded(report, f'layout {precision} {layout}', bench.train_bare, precision,
                                 layout == 'channels_last')
                for layout in ('channels_last', 'contiguous')}
        rows['channels_last_over_contiguous'] = ratio(rows['channels_last'], rows['contiguous'])
        network['layouts'][precision] = rows
    report.save()


# --- the summary -----------------------------------------------------------------------------

def number(value, digits=2):
    return '-' if value is None else f'{value:.{digits}f}'


def chain_row(run):
    results = run.get('results') or {}
    if 'best_miou' in results:
        key = f"best mIoU {number(results['best_miou'], 4)}"
    elif 'labeled_share' in results:
        key = f"labeled {number(results['labeled_share'], 4)}"
    elif 'miou' in results:
        key = f"mIoU {number(results['miou'], 4)}"
    else:
        key = run.get('skipped', last_line(run.get('output_tail', '')))[:60]
    return [run['name'], run['state'], run['precision'], run['device'],
            '-' if run['exit_status'] is None else run['exit_status'], number(run.get('wall_s'), 1), key]


def print_summary(data):
    env = data['environment']
    gpu = env.get('gpu') or {}
    print(f"\n{data['settings']['plan']} plan on {env['device']}"
          f"{' (' + gpu['name'] + ')' if gpu else ''}: torch {env['torch']}, torchvision "
          f"{env['torchvision']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, python {env['python']}, "
          f"{env['date']}")
    chain = data.get('chain')
    if chain:
        print(f"\nchain ({chain['mode']}):")
        print(format_table([chain_row(run) for run in chain['runs']],
                           ['run', 'state', 'precision', 'device', 'exit', 'wall s', 'result']))
        for precision, row in chain['cpu_vs_device'].items():
            print(f"{row['checkpoint']}: mIoU {number(row['device_miou'], 4)} on the device ({precision}), "
                  f"{number(row['cpu_miou'], 4)} on the CPU (fp32), agree: {row['agree']}")
        labels = chain.get('fp16_vs_fp32_labels') or {}
        if 'differing_pixel_share' in labels:
            print(f"CBC labels of sup_fp16.pt, fp16 vs fp32: largest threshold difference "
                  f"{labels['max_abs_threshold_difference']:.2e}, {labels['differing_pixel_share']:.5f} of "
                  f"{labels['pixels']} pixels differ, agree: {labels['agree']}")
    network = data.get('network')
    if network:
        print(f"\n{network['model']}:")
        rows = []
        for phase in ('training', 'evaluation', 'labeling'):
            for precision, row in network[phase].items():
                on_device = row.get('ours_device_batches') or {}
                rows.append([phase, precision, number(row['ours'].get('images_per_s'), 1),
                             number(on_device.get('images_per_s'), 1) if phase != 'training' else '',
                             number(row['bare'].get('images_per_s'), 1), number(row['ours_over_bare']),
                             number(row['ours'].get('peak_memory_mb'), 0),
                             number(row['bare'].get('peak_memory_mb'), 0)])
        print(format_table(rows, ['phase', 'precision', 'ours img/s', 'ours, device batches img/s',
                                  'bare img/s', 'ours/bare', 'ours peak MB', 'bare peak MB']))
        rows = [[precision, number(row['channels_last'].get('images_per_s'), 1),
                 number(row['contiguous'].get('images_per_s'), 1), number(row['channels_last_over_contiguous'])]
                for precision, row in network['layouts'].items()]
        print()
        print(format_table(rows, ['bare training', 'channels-last img/s', 'contiguous img/s', 'ratio']))
        for precision, row in network['host_syncs'].items():
            print(f"host syncs per training step ({precision}): "
                  f"{row.get('per_step', row.get('error'))}"
                  + (f", whole phase {row['whole_phase']}" if 'whole_phase' in row else '')
                  + (f" ({row['reason']})" if 'reason' in row else ''))
    print(f"\nwall time {data['wall_s']} s; failures: {len(data['failures'])}")
    for failure in data['failures']:
        print(f'  {failure}')


# --- command line ----------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--out', default='bench_gpu.json', help='the JSON report')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--small', action='store_true',
                        help='resnet14 and tiny sizes everywhere: the CI smoke run (seconds on a CPU)')
    parser.add_argument('--workers', type=int, default=None,
                        help='loader workers of the labeling and evaluation passes; default main.py\'s '
                             '(min(4, CPUs)), 0 with --small')
    parser.add_argument('--isolate', choices=('auto', 'yes', 'no'), default='auto',
                        help='chain runs as main.py subprocesses (yes) or main.main() in this process '
                             '(no); auto: subprocesses on CUDA')
    parser.add_argument('--parts', nargs='+', choices=('chain', 'network'), default=['chain', 'network'])
    parser.add_argument('--work-dir', default=None, help='where data and runs go; default a temporary '
                        'folder, removed at the end')
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device here (use --device cpu --small)')
    if args.workers is None:
        args.workers = 0 if args.small else min(4, os.cpu_count() or 1)
    return args


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    plan = SMALL_PLAN if args.small else GPU_PLAN
    isolate = {'yes': True, 'no': False}.get(args.isolate, args.device.type == 'cuda')
    report = Report(args.out, started)
    report.data['settings'] = dict(asdict(plan), plan=plan.name, device=str(args.device),
                                   workers=args.workers, isolate=isolate, parts=args.parts,
                                   command=' '.join([Path(sys.argv[0]).name] + sys.argv[1:]))
    report.data['environment'] = environment(args.device)
    report.save()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix='bench_gpu-'))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if 'chain' in args.parts:
            recorded(report, 'chain', run_chain, report, plan, work, args.device, isolate)
        if 'network' in args.parts:
            recorded(report, 'network', run_network, report, plan, args.device, args.workers, work)
    finally:
        report.data['environment']['load_average_at_end'] = load_text()
        report.save()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print_summary(report.data)
    print(f'report: {report.path}')
    return 0 if report.data['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
