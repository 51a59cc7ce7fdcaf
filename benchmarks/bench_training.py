#!/usr/bin/env python
"""Training and evaluation throughput of DeepLabV2 as this project runs it.

Training runs utils.training.train_loop itself on self-training batches: forward under the run's
autocast, logits upsampled to the crop (align_corners=True), DynamicLoss with the first half of
the batch pseudo-labeled (spec section 5), loss.item(), backward through the GradScaler, SGD step
(momentum 0.9, weight decay 5e-4), poly scheduler step, the train confusion matrix on the labeled
half, and the loop's bookkeeping; its hooks (validation, checkpoints, logging) are stubs, and it
validates only once, with the stub, after the last step. Evaluation runs utils.training.evaluate
itself: forward, upsample to the padded size, argmax, confusion matrix. Both are fed the same
random tensors, already on the device, over and over, so the figures are the network's and the
loops', not the data loader's. A step's time runs from the loop asking for its batch to the loop
asking for the next one (the device synchronized first), the last step's to the loop's return.

Precisions: float32, and bfloat16 under torch.autocast (what --mixed-precision means on a CPU);
on CUDA also float16 with a GradScaler (what --mixed-precision means there). Each precision runs
in a fresh process: evaluation first, then training, so that the peak RSS read after each phase
(ru_maxrss) is that phase's own high-water mark; on CUDA, torch.cuda.max_memory_allocated is reset
before each phase. Warm-up steps are not timed.

    python benchmarks/bench_training.py                  # resnet14, 80x80 crops, < 1 minute on CPU
    python benchmarks/bench_training.py --threads 1      # steadier on a busy machine
    python benchmarks/bench_training.py --device cuda --backbone resnet101 \\
        --crop-size 321 321 --batch-size 8 --eval-size 505 505 --steps 50 --warmup 5
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch

# benchmarks/common.py; importing it puts the repository root on sys.path for the imports below.
from common import (cpu_seconds, format_table, load_text, machine_text, max_rss_mb,
                    print_load_at_start, print_result, run_in_child, synchronize)
from models import deeplab_v2
from utils.losses import DynamicLoss
from utils.metrics import SegmentationScores
from utils.training import (LoopHooks, Runtime, TrainState, build_optimizer, build_scheduler,
                            evaluate, train_loop)

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
PAPER_COMMAND = ('python benchmarks/bench_training.py --device cuda --backbone resnet101 '
                 '--crop-size 321 321 --batch-size 8 --eval-size 505 505 --eval-batch-size 8 '
                 '--steps 50 --warmup 5 --eval-steps 20')


def reset_cuda_peak(device):
    if device.type == 'cuda':
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mb(device):
    if device.type != 'cuda':
        return None
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def random_labels(batch, size, num_classes, device, generator):
    """Class indices with about 10% of the pixels 255 (ignored), like VOC's void band."""
    labels = torch.randint(0, num_classes, (batch, *size), generator=generator)
    labels[torch.rand((batch, *size), generator=generator) < 0.1] = 255
    return labels.to(device)


def clock(device):
    """(wall, CPU) seconds now, after the device has finished its queued work."""
    synchronize(device)
    return time.perf_counter(), cpu_seconds()


def clocked_batches(batch, warmup, steps, device, marks):
    """Yield `batch` warmup + steps times; before each of the last `steps`, append clock() to
    `marks`, so that consecutive marks bound one step of the loop that draws the batches."""
    for index in range(warmup + steps):
        if index >= warmup:
            marks.append(clock(device))
        yield batch


def step_times(marks):
    """Each step's wall time, and the CPU time of all of them, from the marks (the last one taken
    after the loop returned)."""
    walls = [wall for wall, _ in marks]
    return [end - start for start, end in zip(walls, walls[1:])], marks[-1][1] - marks[0][1]


def not_validated():
    """The validation hook: scores that are NaN, so the loop records no new best."""
    return SegmentationScores(pixel_accuracy=math.nan, iou=[], miou=math.nan)


def ignore(*_):
    return None


STUB_HOOKS = LoopHooks(validate=not_validated, on_best=ignore, save_last=ignore, log=ignore,
                       scalar=ignore)


def measure(precision, config):
    """Evaluation, then training, in one precision; returns a JSON-ready dict."""
    device = torch.device(config['device'])
    torch.set_num_threads(config['threads'])
    torch.manual_seed(config['seed'])
    generator = torch.Generator().manual_seed(config['seed'])
    runtime = Runtime(device, PRECISIONS[precision])
    num_classes = config['num_classes']
    model = deeplab_v2(num_classes, backbone=config['backbone']).to(device)
    result = {'precision': precision, 'rss_after_build_mb': max_rss_mb()}

    # Evaluation (first, so that its peak RSS is not hidden under training's).
    eval_batch, eval_size = config['eval_batch_size'], tuple(config['eval_size'])
    eval_images = torch.randn(eval_batch, 3, *eval_size, generator=generator).to(device)
    eval_labels = random_labels(eval_batch, eval_size, num_classes, device, generator)
    marks = []
    reset_cuda_peak(device)
    evaluate(model, clocked_batches((eval_images, eval_labels), config['eval_warmup'],
                                    config['eval_steps'], device, marks), num_classes, runtime)
    marks.append(clock(device))
    result['eval_times'], result['eval_cpu'] = step_times(marks)
    result['eval_peak_rss_mb'] = max_rss_mb()
    result['eval_cuda_peak_mb'] = cuda_peak_mb(device)

    # Training: train_loop over warmup + steps self-training batches, one phase of that length.
    batch, crop = config['batch_size'], tuple(config['crop_size'])
    images = torch.randn(batch, 3, *crop, generator=generator).to(device)
    labels = random_labels(batch, crop, num_classes, device, generator)
    loss_fn = DynamicLoss(config['gamma'])
    losses = []

    def recorded_loss(logits, targets, split_index):
        """The loss train_loop asks for, kept (detached, read after the timing) for the report."""
        loss = loss_fn(logits, targets, split_index)
        losses.append(loss.detach())
        return loss

    total_steps = config['warmup'] + config['steps']
    optimizer = build_optimizer(model, lr=config['lr'], weight_decay=5e-4)
    state = TrainState(model, optimizer, build_scheduler(optimizer, total_steps),
                       runtime.grad_scaler(), total_steps)
    marks = []
    reset_cuda_peak(device)
    train_loop(state, clocked_batches((images, labels, config['pseudo_count']), config['warmup'],
                                      config['steps'], device, marks),
               recorded_loss, runtime, STUB_HOOKS, val_every=total_steps + 1, save_every=0,
               stop=None, num_classes=num_classes, tag=f'bench-{precision}')
    marks.append(clock(device))
    result['train_times'], result['train_cpu'] = step_times(marks)
    result['train_peak_rss_mb'] = max_rss_mb()
    result['train_cuda_peak_mb'] = cuda_peak_mb(device)
    result['losses'] = [loss.item() for loss in losses]
    return result


def run_child(precision, config_json):
    print_result(measure(precision, json.loads(config_json)))


def run_measurement(precision, config):
    return run_in_child(__file__, precision, ['--child', precision, '--config', json.dumps(config)])


def optional_mb(value):
    return '-' if value is None else f'{value:.0f}'


def default_precisions(device):
    if device.type != 'cuda':
        return ['fp32', 'bf16']
    return ['fp32'] + (['bf16'] if torch.cuda.is_bf16_supported() else []) + ['fp16']


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--backbone', default='resnet14', choices=('resnet14', 'resnet50', 'resnet101'))
    parser.add_argument('--crop-size', type=int, nargs=2, default=[80, 80], metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=8,
                        help='training batch; the first --pseudo-count samples are pseudo-labeled')
    parser.add_argument('--pseudo-count', type=int, default=None,
                        help='pseudo-labeled samples per batch; default half the batch (spec 8)')
    parser.add_argument('--gamma', type=float, default=9.0, help='DST gamma (the paper used 9 on VOC)')
    parser.add_argument('--lr', type=float, default=0.002)
    parser.add_argument('--steps', type=int, default=10, help='timed training steps')
    parser.add_argument('--warmup', type=int, default=2, help='untimed training steps first')
    parser.add_argument('--eval-size', type=int, nargs=2, default=[96, 128], metavar=('H', 'W'),
                        help='evaluation input (the padded size; VOC uses 505 505)')
    parser.add_argument('--eval-batch-size', type=int, default=None, help='default --batch-size')
    parser.add_argument('--eval-steps', type=int, default=8, help='timed evaluation batches')
    parser.add_argument('--eval-warmup', type=int, default=1, help='untimed evaluation batches first')
    parser.add_argument('--precisions', nargs='+', choices=tuple(PRECISIONS), default=None,
                        help='default: fp32 bf16 on CPU; fp32 bf16 fp16 on CUDA')
    parser.add_argument('--num-classes', type=int, default=21)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help='torch.set_num_threads')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--child', choices=tuple(PRECISIONS), help=argparse.SUPPRESS)
    parser.add_argument('--config', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    for name in ('batch_size', 'steps', 'eval_steps', 'threads', 'num_classes'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.warmup < 0 or args.eval_warmup < 0:
        parser.error('--warmup and --eval-warmup must be >= 0')
    if min(args.crop_size + args.eval_size) < 16:
        parser.error('--crop-size and --eval-size: at least 16 pixels a side')
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    args.pseudo_count = args.batch_size // 2 if args.pseudo_count is None else args.pseudo_count
    if not 0 <= args.pseudo_count <= args.batch_size:
        parser.error('--pseudo-count must lie in [0, --batch-size]')
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device here')
    args.precisions = args.precisions or default_precisions(device)
    if 'fp16' in args.precisions and device.type != 'cuda':
        parser.error('fp16 (with GradScaler) is measured on CUDA only; on CPU use bf16')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        run_child(args.child, args.config)
        return 0
    config = {key: getattr(args, key) for key in (
        'backbone', 'crop_size', 'batch_size', 'pseudo_count', 'gamma', 'lr', 'steps', 'warmup',
        'eval_size', 'eval_batch_size', 'eval_steps', 'eval_warmup', 'num_classes', 'threads',
        'device', 'seed')}
    device = torch.device(args.device)
    print(machine_text(args.threads, args.device))
    print(f'setup: {args.backbone} (random weights), train crop {args.crop_size[0]}x{args.crop_size[1]} '
          f'batch {args.batch_size} ({args.pseudo_count} pseudo-labeled, gamma {args.gamma:g}), '
          f'{args.warmup}+{args.steps} steps; eval {args.eval_size[0]}x{args.eval_size[1]} batch '
          f'{args.eval_batch_size}, {args.eval_warmup}+{args.eval_steps} batches')

    print_load_at_start(args.threads, args.device)
    results = []
    for precision in args.precisions:
        start = time.perf_counter()
        results.append(run_measurement(precision, config))
        print(f'  {precision}: measured in {time.perf_counter() - start:.1f} s')

    headers = ['precision', 'ms/step med', 'ms/step mean', 'steps/s', 'train img/s', 'CPU s/step',
               'ms/batch med', 'ms/batch mean', 'eval img/s', 'RSS eval MB', 'RSS train MB']
    if device.type == 'cuda':
        headers += ['CUDA eval MB', 'CUDA train MB']
    rows = []
    for result in results:
        train_median = statistics.median(result['train_times'])
        eval_median = statistics.median(result['eval_times'])
        row = [result['precision'], f'{train_median * 1000:.0f}',
               f"{statistics.mean(result['train_times']) * 1000:.0f}",
               f'{1 / train_median:.3f}', f'{args.batch_size / train_median:.2f}',
               f"{result['train_cpu'] / args.steps:.2f}",
               f'{eval_median * 1000:.0f}', f"{statistics.mean(result['eval_times']) * 1000:.0f}",
               f'{args.eval_batch_size / eval_median:.2f}',
               f"{result['eval_peak_rss_mb']:.0f}", f"{result['train_peak_rss_mb']:.0f}"]
        if device.type == 'cuda':
            row += [optional_mb(result['eval_cuda_peak_mb']), optional_mb(result['train_cuda_peak_mb'])]
        rows.append(row)
    print()
    print(format_table(rows, headers))
    print()
    for result in results:
        losses = result['losses']
        print(f"{result['precision']}: loss {losses[0]:.4f} -> {losses[-1]:.4f} over "
              f"{len(losses)} steps; RSS after building the model "
              f"{result['rss_after_build_mb']:.0f} MB")
    print('steps/s and img/s come from the median step time (less sensitive than the mean to '
          'short bursts of other jobs); CPU s/step = user + system time of the measuring '
          'process per step, all threads. RSS = peak resident set size of the measuring process '
          '(ru_maxrss), read after evaluation and then after training; each precision is its own '
          'process.')
    print()
    print(f'load average at end: {load_text()}')
    print()
    print('the paper setting (ResNet-101, 321x321 crops, batch 8; VOC eval padded to 505x505) on a GPU:')
    print(f'  {PAPER_COMMAND}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
