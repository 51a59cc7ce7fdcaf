#!/usr/bin/env python
"""Training and evaluation throughput of DeepLabV2 as this project runs it, in one process or several.

Training runs utils.training.train_loop itself on self-training batches: forward under the run's
autocast, logits upsampled to the crop (align_corners=True), DynamicLoss with the first half of
the batch pseudo-labeled (spec section 5), the loss agreed over the processes, backward through the
GradScaler (and DDP's gradient all-reduce when several processes train), SGD step (momentum 0.9,
weight decay 5e-4), poly scheduler step, the train confusion matrix on the labeled half, and the
loop's bookkeeping; its hooks (validation, checkpoints, logging) are stubs, and it validates only
once, with the stub, after the last step. Evaluation runs utils.training.evaluate itself: forward,
upsample to the padded size, argmax, confusion matrix (summed over the processes at the end).
Both are fed the same random tensors, already on the device, over and over, so the figures are
the network's and the loops', not the data loader's. A step's time runs from the loop asking for
its batch to the loop asking for the next one (the device synchronized first), the last step's to
the loop's return.

Processes (--processes 1 2): for each count N the script starts N measuring processes at once as
one gloo (CPU) or NCCL (CUDA) process group, through the torchrun environment variables that
utils.distributed.init reads; each takes its contiguous part of the same global batch
(utils.distributed.split_batch) and trains the DDP model of Runtime.parallel, as main.py does.
A step of the global batch lasts as long as its slowest process; images/s are the global batch's.
On a CPU each process gets max(1, cores // N) threads unless --threads says otherwise, so the
processes never ask for more threads than there are cores. Launched by torchrun (WORLD_SIZE in the
environment) the script is one of those processes and measures in place, rank 0 printing.

Precisions: float32, and bfloat16 under torch.autocast (what --mixed-precision means on a CPU
that computes bfloat16 natively; elsewhere it is emulated 10-100x slower, so it is left out unless
asked for); on CUDA also float16 with a GradScaler. Each precision and process count runs in fresh
processes: evaluation first, then training, so that the peak RSS read after each phase (ru_maxrss,
the largest process's) is that phase's own high-water mark; on CUDA
torch.cuda.max_memory_allocated is reset before each phase. Warm-up steps are not timed.

    python benchmarks/bench_training.py                  # resnet14, 80x80 crops, 1 and 2 processes
    python benchmarks/bench_training.py --threads 1 --repeat 3   # steadier on a busy machine
    torchrun --nproc_per_node 4 benchmarks/bench_training.py --device cuda --backbone resnet101 \\
        --crop-size 321 321 --batch-size 8 --eval-size 505 505 --steps 50 --warmup 5
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

# benchmarks/common.py; importing it puts the repository root on sys.path for the imports below.
from common import (cpu_seconds, format_table, free_port, load_text, machine_text, max_rss_mb,
                    print_load_at_start, print_result, run_in_children, synchronize)
from models import deeplab_v2
from utils import distributed
from utils.experiment import cpu_has_fast_bfloat16
from utils.losses import DynamicLoss
from utils.metrics import ConfusionMatrix
from utils.training import (LoopHooks, Runtime, TrainState, build_optimizer, build_scheduler,
                            evaluate, train_loop)

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
PAPER_ARGUMENTS = ('--device cuda --backbone resnet101 --crop-size 321 321 --batch-size 8 '
                   '--eval-size 505 505 --eval-batch-size 8 --steps 50 --warmup 5 --eval-steps 20')
TIMEOUT_SECONDS = 600   # a collective waiting longer than this fails instead of hanging
NO_BF16 = ('bf16 left out: this CPU has no native bfloat16 (utils.experiment.cpu_has_fast_bfloat16'
           '() is False), so autocast would emulate it some 10-100x slower than fp32 and main.py '
           'trains such a CPU in fp32; measure it anyway with --precisions fp32 bf16')


def reset_cuda_peak(device):
    if device.type == 'cuda':
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mb(device):
    if device.type != 'cuda':
        return None
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def random_labels(batch, size, num_classes, generator):
    """uint8 class indices with about 10% of the pixels 255 (ignored), like VOC's void band."""
    labels = torch.randint(0, num_classes, (batch, *size), generator=generator, dtype=torch.uint8)
    labels[torch.rand((batch, *size), generator=generator) < 0.1] = 255
    return labels


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


class RecordedLoss:
    """DynamicLoss as train_loop asks for it (sum_and_count), keeping this process's sum and
    pixel count of every step (detached, read after the timing) to report the global loss."""

    def __init__(self, gamma):
        self.loss = DynamicLoss(gamma)
        self.parts = []

    def sum_and_count(self, logits, labels, split_index):
        total, count = self.loss.sum_and_count(logits, labels, split_index)
        self.parts.append((total.detach(), count.detach()))
        return total, count


def stub_hooks(num_classes, device):
    """No logging, no checkpoints; validation returns an empty matrix (NaN scores, never a best)."""
    def ignore(*_):
        return None
    return LoopHooks(validate=lambda: ConfusionMatrix(num_classes, device=device), on_best=ignore,
                     on_validated=ignore, save_last=ignore, log=ignore, scalar=ignore)


def my_part(size):
    """This process's contiguous part of a global batch of `size`, as a slice."""
    part = distributed.split_batch(range(size))
    return slice(part.start, part.stop)


def measure(precision, config, device):
    """Evaluation, then training, in one precision, by this process on its part of every global
    batch; returns this process's JSON-ready figures."""
    torch.set_num_threads(config['threads'])
    torch.manual_seed(config['seed'])
    generator = torch.Generator().manual_seed(config['seed'])
    runtime = Runtime(device, PRECISIONS[precision], rank=distributed.rank(),
                      world_size=distributed.world_size())
    num_classes = config['num_classes']
    model = deeplab_v2(num_classes, backbone=config['backbone']).to(device)
    result = {'rss_after_build_mb': max_rss_mb()}

    # Evaluation (first, so that its peak RSS is not hidden under training's).
    eval_batch, eval_size = config['eval_batch_size'], tuple(config['eval_size'])
    eval_images = torch.randn(eval_batch, 3, *eval_size, generator=generator)
    eval_labels = random_labels(eval_batch, eval_size, num_classes, generator)
    part = my_part(eval_batch)
    batch = {'image': eval_images[part].to(device), 'label': eval_labels[part].to(device)}
    marks = []
    reset_cuda_peak(device)
    evaluate(model, clocked_batches(batch, config['eval_warmup'], config['eval_steps'], device, marks),
             num_classes, runtime, desc=f'bench-eval-{precision}')
    marks.append(clock(device))
    result['eval_times'], result['eval_cpu'] = step_times(marks)
    result['eval_peak_rss_mb'] = max_rss_mb()
    result['eval_cuda_peak_mb'] = cuda_peak_mb(device)

    # Training: train_loop over warmup + steps self-training batches, one phase of that length.
    batch_size, crop = config['batch_size'], tuple(config['crop_size'])
    images = torch.randn(batch_size, 3, *crop, generator=generator)
    labels = random_labels(batch_size, crop, num_classes, generator)
    part = my_part(batch_size)
    pseudo_here = min(max(config['pseudo_count'] - part.start, 0), part.stop - part.start)
    batch = (images[part].to(device), labels[part].to(device), pseudo_here)
    loss = RecordedLoss(config['gamma'])
    total_steps = config['warmup'] + config['steps']
    optimizer = build_optimizer(model, lr=config['lr'], weight_decay=5e-4)
    state = TrainState(model, optimizer, build_scheduler(optimizer, total_steps),
                       runtime.grad_scaler(), total_steps)
    marks = []
    reset_cuda_peak(device)
    train_loop(state, clocked_batches(batch, config['warmup'], config['steps'], device, marks),
               loss, runtime, stub_hooks(num_classes, device), val_every=total_steps + 1,
               save_every=0, num_classes=num_classes, tag=f'bench-{precision}',
               train_model=runtime.parallel(model), frozen_bn=config['frozen_bn'])
    marks.append(clock(device))
    result['train_times'], result['train_cpu'] = step_times(marks)
    result['train_peak_rss_mb'] = max_rss_mb()
    result['train_cuda_peak_mb'] = cuda_peak_mb(device)
    result['loss_parts'] = [(float(total), int(count)) for total, count in loss.parts]
    return result


def combine(results, precision, threads):
    """One result for the global batch from every process's: a step lasts as long as its slowest
    process, CPU time adds up, memory is the largest process's, the loss is the global batch's."""
    combined = {'precision': precision, 'processes': len(results), 'threads': threads}
    for phase in ('eval', 'train'):
        combined[f'{phase}_times'] = [max(step) for step in zip(*(r[f'{phase}_times'] for r in results))]
        combined[f'{phase}_cpu'] = sum(r[f'{phase}_cpu'] for r in results)
        combined[f'{phase}_peak_rss_mb'] = max(r[f'{phase}_peak_rss_mb'] for r in results)
        peaks = [r[f'{phase}_cuda_peak_mb'] for r in results]
        combined[f'{phase}_cuda_peak_mb'] = None if None in peaks else max(peaks)
    combined['rss_after_build_mb'] = max(r['rss_after_build_mb'] for r in results)
    steps = zip(*(r['loss_parts'] for r in results))
    combined['losses'] = [sum(t for t, _ in step) / max(sum(c for _, c in step), 1) for step in steps]
    return combined


def measure_here(precision, config, device):
    """measure() on every process of the group; rank 0 returns the combined result, the others None."""
    gathered = distributed.gather_objects(measure(precision, config, device))
    return combine(gathered, precision, config['threads']) if distributed.is_main() else None


def threads_for(processes, requested):
    """--threads, else the cores shared out: N processes x threads never exceed the cores."""
    return requested or max(1, (os.cpu_count() or 1) // processes)


def run_measurement(precision, processes, config):
    """`processes` fresh processes forming one process group (a plain process for 1); rank 0's
    combined result."""
    config = dict(config, threads=threads_for(processes, config['threads']))
    port = str(free_port())
    environments = [{'RANK': str(rank), 'LOCAL_RANK': str(rank), 'WORLD_SIZE': str(processes),
                     'LOCAL_WORLD_SIZE': str(processes), 'MASTER_ADDR': '127.0.0.1',
                     'MASTER_PORT': port, 'OMP_NUM_THREADS': str(config['threads'])}
                    for rank in range(processes)]
    arguments = ['--child', precision, '--config', json.dumps(config)]
    return run_in_children(__file__, f'{precision} x{processes}', arguments, environments)[0]


def run_child(precision, config_json):
    config = json.loads(config_json)
    device = distributed.init(torch.device(config['device']), TIMEOUT_SECONDS)
    try:
        result = measure_here(precision, config, device)
        if result is not None:
            print_result(result)
    finally:
        distributed.shutdown()


def pooled(runs):
    """One row's figures from its repeated runs: step times pooled, CPU time and memory likewise."""
    first = runs[0]
    return dict(first, **{
        'train_times': [t for run in runs for t in run['train_times']],
        'eval_times': [t for run in runs for t in run['eval_times']],
        'train_cpu': statistics.mean(run['train_cpu'] for run in runs),
        'eval_cpu': statistics.mean(run['eval_cpu'] for run in runs),
        'eval_peak_rss_mb': max(run['eval_peak_rss_mb'] for run in runs),
        'train_peak_rss_mb': max(run['train_peak_rss_mb'] for run in runs)})


def optional_mb(value):
    return '-' if value is None else f'{value:.0f}'


def print_report(results, args, device):
    """The table, one row per precision and process count, then the losses and the notes."""
    headers = ['precision', 'procs', 'threads', 'ms/step med', 'ms/step mean', 'steps/s',
               'train img/s', 'speed-up', 'CPU s/step', 'ms/batch med', 'ms/batch mean',
               'eval img/s', 'RSS eval MB', 'RSS train MB']
    if device.type == 'cuda':
        headers += ['CUDA eval MB', 'CUDA train MB']
    single = {r['precision']: statistics.median(r['train_times']) for r in results if r['processes'] == 1}
    rows = []
    for result in results:
        train_median = statistics.median(result['train_times'])
        eval_median = statistics.median(result['eval_times'])
        one = single.get(result['precision'])
        row = [result['precision'], result['processes'], result['threads'],
               f'{train_median * 1000:.0f}', f"{statistics.mean(result['train_times']) * 1000:.0f}",
               f'{1 / train_median:.3f}', f'{args.batch_size / train_median:.2f}',
               '-' if one is None else f'{one / train_median:.2f}x',
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
    reference = {r['precision']: r['losses'] for r in results if r['processes'] == 1}
    for result in results:
        losses, same = result['losses'], reference.get(result['precision'])
        check = ''
        if same is not None and result['processes'] > 1:
            check = (f"; largest difference to 1 process "
                     f"{max(abs(a - b) for a, b in zip(losses, same)):.2e}"
                     f"{'' if args.frozen_bn else ' (BatchNorm normalises over each process share)'}")
        print(f"{result['precision']} x{result['processes']}: loss {losses[0]:.4f} -> "
              f"{losses[-1]:.4f} over {len(losses)} steps{check}; RSS after building the model "
              f"{result['rss_after_build_mb']:.0f} MB")
    print('ms/step: a step of the global batch (its slowest process); steps/s, img/s and speed-up '
          '(against 1 process) come from the median step time, less sensitive than the mean to '
          'short bursts of other jobs. CPU s/step = user + system time of all measuring '
          'processes per step, all threads. RSS = peak resident set size (ru_maxrss) of the '
          'largest measuring process, read after evaluation and then after training; '
          + ('under torchrun all rows run in the same processes.' if args.launched else
             'each row runs in processes of its own.'))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--backbone', default='resnet14', choices=('resnet14', 'resnet50', 'resnet101'))
    parser.add_argument('--crop-size', type=int, nargs=2, default=[80, 80], metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=8,
                        help='global training batch; the first --pseudo-count samples are pseudo-labeled')
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
                        help='default: fp32 (and bf16 where the CPU has it natively) on CPU; '
                             'fp32 bf16 fp16 on CUDA')
    parser.add_argument('--processes', type=int, nargs='+', default=[1, 2],
                        help='process counts to measure, each sharing the same global batch '
                             '(ignored under torchrun, whose WORLD_SIZE decides)')
    parser.add_argument('--repeat', type=int, default=1,
                        help='run every row this many times, interleaved; step times are pooled')
    parser.add_argument('--num-classes', type=int, default=21)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads per process; default cores // processes')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--frozen-bn', action='store_true',
                        help='BatchNorm in eval mode while training (main.py --frozen-bn): the loss '
                             'then does not depend on the process count')
    parser.add_argument('--child', choices=tuple(PRECISIONS), help=argparse.SUPPRESS)
    parser.add_argument('--config', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    args.launched = 'WORLD_SIZE' in os.environ
    if args.launched:
        args.processes = [int(os.environ['WORLD_SIZE'])]
    for name in ('batch_size', 'steps', 'eval_steps', 'num_classes', 'repeat'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.threads is not None and args.threads < 1:
        parser.error('--threads must be at least 1')
    if min(args.processes) < 1:
        parser.error('--processes must be at least 1')
    if args.warmup < 0 or args.eval_warmup < 0:
        parser.error('--warmup and --eval-warmup must be >= 0')
    if min(args.crop_size + args.eval_size) < 16:
        parser.error('--crop-size and --eval-size: at least 16 pixels a side')
    args.eval_batch_size = args.eval_batch_size or args.batch_size
    if min(args.batch_size, args.eval_batch_size) < max(args.processes):
        parser.error('every process needs a sample: --batch-size and --eval-batch-size must be at '
                     'least the largest process count')
    args.pseudo_count = args.batch_size // 2 if args.pseudo_count is None else args.pseudo_count
    if not 0 <= args.pseudo_count <= args.batch_size:
        parser.error('--pseudo-count must lie in [0, --batch-size]')
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device here')
    args.skipped = None
    if args.precisions is None:
        if device.type == 'cuda':
            args.precisions = ['fp32'] + (['bf16'] if torch.cuda.is_bf16_supported() else []) + ['fp16']
        elif cpu_has_fast_bfloat16():
            args.precisions = ['fp32', 'bf16']
        else:
            args.precisions, args.skipped = ['fp32'], NO_BF16
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
        'device', 'seed', 'frozen_bn')}
    device = torch.device(args.device)
    if args.launched:   # torchrun started this process as one of WORLD_SIZE: measure in place
        local = int(os.environ.get('LOCAL_WORLD_SIZE', os.environ['WORLD_SIZE']))
        config['threads'] = threads_for(local, args.threads)
        device = distributed.init(device, TIMEOUT_SECONDS)
    speaking = distributed.is_main()
    thread_counts = {n: threads_for(n, config['threads']) for n in args.processes}
    if speaking:
        print(machine_text('/'.join(str(thread_counts[n]) for n in args.processes), args.device))
        print(f'processes: {", ".join(map(str, args.processes))} ({args.device}, '
              f'{"NCCL" if device.type == "cuda" else "gloo"} when several), threads per process '
              f'{", ".join(str(thread_counts[n]) for n in args.processes)}'
              f'{" (torchrun)" if args.launched else ""}')
        print(f'setup: {args.backbone} (random weights), train crop {args.crop_size[0]}x'
              f'{args.crop_size[1]} global batch {args.batch_size} ({args.pseudo_count} pseudo-labeled, '
              f'gamma {args.gamma:g}), {args.warmup}+{args.steps} steps; eval '
              f'{args.eval_size[0]}x{args.eval_size[1]} global batch {args.eval_batch_size}, '
              f'{args.eval_warmup}+{args.eval_steps} batches; {args.repeat} run(s) of each row')
        if args.skipped:
            print(args.skipped)
        print_load_at_start(max(n * t for n, t in thread_counts.items()), args.device)

    runs = {(precision, n): [] for precision in args.precisions for n in args.processes}
    try:
        for repeat in range(args.repeat):
            for key in runs:
                start = time.perf_counter()
                if args.launched:
                    result = measure_here(key[0], config, device)
                else:
                    result = run_measurement(*key, config)
                if speaking:
                    runs[key].append(result)
                    print(f'  {key[0]} x{key[1]} run {repeat + 1}: '
                          f"{statistics.median(result['train_times']) * 1000:.0f} ms/step, measured "
                          f'in {time.perf_counter() - start:.1f} s (load {load_text()})', flush=True)
    finally:
        distributed.shutdown()
    if not speaking:
        return 0
    print_report([pooled(rows) for rows in runs.values()], args, device)
    if args.launched and len(runs) > 1:
        print('(so the RSS of a later row includes the earlier rows\' peaks)')
    print()
    print(f'load average at end: {load_text()}')
    print()
    print('the paper setting (ResNet-101, 321x321 crops, global batch 8; VOC eval padded to '
          '505x505) on N GPUs, one process per GPU:')
    print(f'  torchrun --nproc_per_node N benchmarks/bench_training.py {PAPER_ARGUMENTS}')
    print(f'  python benchmarks/bench_training.py {PAPER_ARGUMENTS} --processes 1 N   '
          '# the script starts them')
    return 0


if __name__ == '__main__':
    sys.exit(main())
