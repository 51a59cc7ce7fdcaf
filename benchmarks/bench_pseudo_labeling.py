#!/usr/bin/env python
"""One-pass CBC pseudo-labeling (ours) against the original's two passes, same data, same model.

Spec section 7 defines the labels; section 13 says the original ran the network twice over the
unlabeled set (pass 1 for the class thresholds, pass 2 for the labels) and that one pass is
enough. This script measures what the single pass buys:

  ours (in memory)   utils.cbc.generate_pseudo_labels with the default --label-memory-mb budget
  ours (spilled)     the same with a zero budget, so every prediction map goes to disk and back
  original (2 pass)  an emulation of the original's scheme: pass 1 grows a device buffer of
                     sampled (probability, class) pairs with torch.cat per image and moves it
                     into per-class numpy arrays with np.concatenate whenever it exceeds
                     --original-buffer-mb (the original's buffer_size=100); sort; thresholds;
                     pass 2 runs the network again, masks class by class and writes the PNGs;
                     then the labels are read back and scored against the ground truth (the
                     original's test_labels step; ours scores them while writing).

The emulation uses the spec's alignment (logits upsampled to the padded evaluation size, then cut
back to the image's own size) instead of the original's 321x321 defect, so that both sides must
produce the very same labels; the script checks that they do.

Each measurement runs in a fresh Python process, so that peak RSS (ru_maxrss) belongs to that
method alone and no method inherits another's warm caches. Two warm-up batches (not timed) run
first in every process.

    python benchmarks/bench_pseudo_labeling.py                      # ~1 minute on 2 idle cores
    python benchmarks/bench_pseudo_labeling.py --threads 1          # steadier on a busy machine
    python benchmarks/bench_pseudo_labeling.py --backbone resnet101 --images 60
    python benchmarks/bench_pseudo_labeling.py --eval-size 505 505  # VOC's padded size (slow)
"""
import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# benchmarks/common.py; importing it puts the repository root on sys.path for the imports below.
from common import (cpu_seconds, format_table, load_text, machine_text, max_rss_mb,
                    print_load_at_start, print_result, run_in_child, synchronize)
import data_processing as dp
from models import deeplab_v2
from utils import cbc
from utils.metrics import ConfusionMatrix
from utils.synthetic import make_synthetic_voc
from utils.training import Runtime, make_loader

METHODS = ('ours-memory', 'ours-spill', 'original')
TITLES = {
    'ours-memory': 'ours, 1 pass, maps in memory',
    'ours-spill': 'ours, 1 pass, maps spilled to disk',
    'original': 'original, 2 passes (emulated)',
}
DATA_FORMAT = 'bench-pseudo-data-v1'


# --------------------------------------------------------------------------------------------
# Measuring helpers
# --------------------------------------------------------------------------------------------
def png_pixels(path):
    with Image.open(path) as png:
        return png.size[0] * png.size[1]


class ForwardCounter:
    """Counts the network's forward calls and the images they carried (hook on the model)."""

    def __init__(self, model):
        self.calls = 0
        self.images = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs):
        self.calls += 1
        self.images += int(inputs[0].shape[0])

    def reset(self):
        self.calls = self.images = 0


class MeasuredStore(cbc.PredictionStore):
    """PredictionStore that also records its peak in-memory bytes and what it spilled to disk.

    Swapped in for utils.cbc.PredictionStore while ours runs; the store's behaviour is unchanged.
    """

    last = None

    def __init__(self, budget_bytes, spill_dir):
        super().__init__(budget_bytes, spill_dir)
        self.peak_bytes = 0
        self.spilled_bytes = 0
        self.puts = 0
        MeasuredStore.last = self

    def put(self, key, max_prob, predicted):
        spilled_before = self.spilled
        super().put(key, max_prob, predicted)
        self.puts += 1
        self.peak_bytes = max(self.peak_bytes, self.used_bytes)
        if self.spilled > spilled_before:
            self.spilled_bytes += (self.spill_dir / f'{key}.pt').stat().st_size


# --------------------------------------------------------------------------------------------
# The original's two passes (emulated; see the module docstring)
# --------------------------------------------------------------------------------------------
class SampleBuffer:
    """Pass 1's bookkeeping as the original did it.

    Sampled classes (int64) and probabilities (float32) are appended image by image with torch.cat
    to tensors on the device, and moved into one growing numpy array per class with np.concatenate
    whenever more than `buffer_mb` MiB worth (12 bytes a pixel, as the original counted) piled up.
    `buffer_mb=0` moves them after every image.
    """

    def __init__(self, num_classes, device, buffer_mb):
        self.num_classes = num_classes
        self.device = device
        self.limit = buffer_mb * 2 ** 20 / 12
        self.per_image = buffer_mb == 0
        self.per_class = [np.array([], dtype=np.float32) for _ in range(num_classes)]
        self.flushes = 0
        self.peak_buffer_pixels = 0
        self._reset()

    def _reset(self):
        self.classes = torch.tensor([], dtype=torch.int64, device=self.device)
        self.probs = torch.tensor([], dtype=torch.float32, device=self.device)

    def add_image(self, max_prob, predicted):
        self.classes = torch.cat([self.classes, predicted.flatten()[::cbc.SAMPLE_STRIDE]])
        self.probs = torch.cat([self.probs, max_prob.flatten()[::cbc.SAMPLE_STRIDE]])
        self.peak_buffer_pixels = max(self.peak_buffer_pixels, self.probs.numel())
        if self.per_image:
            self.flush()

    def end_batch(self):
        if not self.per_image and self.probs.numel() > self.limit:
            self.flush()

    def flush(self):
        for class_index in range(self.num_classes):
            chosen = self.probs[self.classes == class_index].cpu().numpy()
            self.per_class[class_index] = np.concatenate((self.per_class[class_index], chosen))
        self.flushes += 1
        self._reset()

    def thresholds(self, ratio):
        """Sort each class's values and pick its threshold by the rule of spec section 7."""
        result = []
        for values in self.per_class:
            values.sort()
            count = values.size
            if ratio >= 1 and count > 0:   # the original indexed [0] even when empty (a crash)
                result.append(float(values[0]))
            elif count * ratio < 1:
                result.append(cbc.EMPTY_CLASS_THRESHOLD)
            else:
                result.append(float(values[-int(count * ratio) - 1]))
        return result

    @property
    def sample_count(self):
        return int(sum(values.size for values in self.per_class))

    @property
    def sample_bytes(self):
        return int(sum(values.nbytes for values in self.per_class))


def image_predictions(model, images, own_sizes):
    """Forward one batch; yield (max probability, class) per image at its own size."""
    logits = model(images)['out']
    logits = F.interpolate(logits, size=images.shape[-2:], mode='bilinear', align_corners=True)
    for logit, (height, width) in zip(logits, own_sizes.tolist()):
        top = torch.softmax(logit[:, :height, :width], dim=0).max(dim=0)
        yield top.values, top.indices


@torch.no_grad()
def original_two_passes(model, dataset, loader, device, ratio, out_dir, buffer_mb):
    """Thresholds from pass 1, labels from pass 2, then the ground-truth check; returns a report."""
    model.eval()
    num_classes = dataset.info.num_classes
    phases = {}

    start = time.perf_counter()
    buffer = SampleBuffer(num_classes, device, buffer_mb)
    for images, _, own_sizes in loader:
        for max_prob, predicted in image_predictions(model, images.to(device), own_sizes):
            buffer.add_image(max_prob, predicted)
        buffer.end_batch()
    buffer.flush()
    synchronize(device)
    phases['pass 1 (sample)'] = time.perf_counter() - start

    start = time.perf_counter()
    thresholds = buffer.thresholds(ratio)
    phases['sort + thresholds'] = time.perf_counter() - start

    start = time.perf_counter()
    limits = torch.tensor(thresholds, dtype=torch.float32, device=device)
    labeled = ignored = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    for images, indices, own_sizes in loader:
        predictions = image_predictions(model, images.to(device), own_sizes)
        for index, (max_prob, label) in zip(indices.tolist(), predictions):
            for class_index in range(num_classes):
                label[(label == class_index) & (max_prob < limits[class_index])] = dp.IGNORE_INDEX
            labeled += (label != dp.IGNORE_INDEX).sum().item()
            ignored += (label == dp.IGNORE_INDEX).sum().item()
            array = label.cpu().numpy().astype(np.uint8)
            Image.fromarray(array).save(dp.pseudo_label_path(out_dir, dataset.names[index]))
    synchronize(device)
    phases['pass 2 (label + write)'] = time.perf_counter() - start

    start = time.perf_counter()
    quality = ConfusionMatrix(num_classes)
    for index, name in enumerate(dataset.names):
        label = dp.load_label_file(dp.pseudo_label_path(out_dir, name), num_classes)
        truth = dataset.load_label(index)
        quality.update(torch.where(label == dp.IGNORE_INDEX, dp.IGNORE_INDEX, truth), label)
    miou = quality.compute().miou
    phases['score vs ground truth'] = time.perf_counter() - start

    return {
        'thresholds': thresholds,
        'labeled_share': labeled / max(labeled + ignored, 1),
        'pseudo_label_miou': None if miou != miou else miou,
        'phases': phases,
        'sampled_pixels': buffer.sample_count,
        'sample_array_bytes': buffer.sample_bytes,
        'buffer_flushes': buffer.flushes,
        'peak_buffer_bytes': buffer.peak_buffer_pixels * 12,
    }


# --------------------------------------------------------------------------------------------
# One measurement (runs in its own process)
# --------------------------------------------------------------------------------------------
def run_child(method, config_path, run_dir):
    config = json.loads(Path(config_path).read_text())
    torch.set_num_threads(config['threads'])
    device = torch.device(config['device'])
    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)

    model = deeplab_v2(dp.VOC.num_classes, backbone=config['backbone'])
    checkpoint = torch.load(config['checkpoint'], map_location='cpu', weights_only=True)
    model.load_state_dict(checkpoint['model'])
    model.to(device).eval()
    counter = ForwardCounter(model)

    transforms = dp.build_transforms(dp.VOC, 'eval', eval_size=config['eval_size'])
    dataset = dp.build_dataset(dp.VOC, config['data_root'], 'train', 'unlabeled', transforms)
    loader = make_loader(dataset, batch_size=config['batch_size'], workers=config['workers'],
                         device=device)

    with torch.no_grad():   # warm-up: two batches, not timed, not counted
        for batch_number, (images, _, _) in enumerate(loader):
            model(images.to(device))
            if batch_number == 1:
                break
        synchronize(device)
    counter.reset()
    rss_before = max_rss_mb()
    labels_dir = run_dir / 'labels'
    result = {'method': method}

    cpu_start = cpu_seconds()
    start = time.perf_counter()
    if method == 'original':
        outcome = original_two_passes(model, dataset, loader, device, config['ratio'], labels_dir,
                                      config['original_buffer_mb'])
        synchronize(device)
        result['wall'] = time.perf_counter() - start
        result.update(outcome)
    else:
        budget_mb = config['memory_mb'] if method == 'ours-memory' else 0
        messages = []
        original_store = cbc.PredictionStore
        cbc.PredictionStore = MeasuredStore
        try:
            manifest = cbc.generate_pseudo_labels(
                model, dataset, loader, ratio=config['ratio'], pseudo_label_dir=labels_dir,
                checkpoint_path=config['checkpoint'], checkpoint_sha256=config['checkpoint_sha256'],
                experiment_name=f'bench-{method}', runtime=Runtime(device, None, config['workers']),
                memory_budget_mb=budget_mb, log=messages.append)
            synchronize(device)
            result['wall'] = time.perf_counter() - start
        finally:
            cbc.PredictionStore = original_store
        store = MeasuredStore.last
        result.update({
            'thresholds': manifest['thresholds'], 'labeled_share': manifest['labeled_share'],
            'pseudo_label_miou': manifest.get('pseudo_label_miou'), 'messages': messages,
            'budget_mb': budget_mb, 'store_peak_bytes': store.peak_bytes,
            'store_spilled': store.spilled, 'store_spilled_bytes': store.spilled_bytes,
            'store_puts': store.puts,
        })
    result['cpu'] = cpu_seconds() - cpu_start
    result.update({
        'images': len(dataset), 'forward_calls': counter.calls, 'forward_images': counter.images,
        'rss_before_mb': rss_before, 'peak_rss_mb': max_rss_mb(), 'labels_dir': str(labels_dir),
        'pixels': sum(png_pixels(path) for path in sorted(labels_dir.glob('*.png'))),
    })
    print_result(result)


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------
def prepare_data(work_dir, args):
    """Build the synthetic VOC tree, or reuse the one already in work_dir with the same settings."""
    settings = {'format': DATA_FORMAT, 'images': args.images, 'height': args.height,
                'width': args.width, 'seed': args.seed}
    root = work_dir / 'data'
    marker = root / 'bench_settings.json'
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        print(f'data: reusing {args.images} synthetic images in {root}')
        return root
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    make_synthetic_voc(root, num_train=args.images, num_val=0, seed=args.seed,
                       height_range=tuple(args.height), width_range=tuple(args.width))
    marker.write_text(json.dumps(settings))
    print(f'data: made {args.images} synthetic images in {root} '
          f'({time.perf_counter() - start:.1f} s)')
    return root


def prepare_model(work_dir, args):
    """A randomly initialised network saved once, so every process loads the same weights."""
    path = work_dir / f'model-{args.backbone}-seed{args.seed}.pt'
    if not path.is_file():
        torch.manual_seed(args.seed)
        model = deeplab_v2(dp.VOC.num_classes, backbone=args.backbone)
        torch.save({'model': model.state_dict()}, path)
    return path


def run_measurement(method, config_path, run_dir):
    return run_in_child(__file__, method, ['--child', method, '--config', str(config_path),
                                           '--run-dir', str(run_dir)])


def compare_labels(first_dir, second_dir):
    """(files compared, files that differ, differing pixels, total pixels, missing files)."""
    first = {path.name: path for path in Path(first_dir).glob('*.png')}
    second = {path.name: path for path in Path(second_dir).glob('*.png')}
    missing = sorted(set(first) ^ set(second))
    files = differ_files = differ_pixels = total = 0
    for name in sorted(set(first) & set(second)):
        a = np.array(Image.open(first[name]))
        b = np.array(Image.open(second[name]))
        files += 1
        total += a.size
        if a.shape != b.shape:
            differ_files += 1
            differ_pixels += max(a.size, b.size)
            continue
        count = int((a != b).sum())
        differ_pixels += count
        differ_files += count > 0
    return files, differ_files, differ_pixels, total, missing


def mb(value):
    return value / 2 ** 20


def describe_check(title, ours, other, comparison):
    files, differ_files, differ_pixels, total, missing = comparison
    gap = max(abs(a - b) for a, b in zip(ours['thresholds'], other['thresholds']))
    if not differ_pixels and not missing:
        print(f'  {title}: IDENTICAL ({files} label files, {total} pixels; '
              f'largest threshold difference {gap:.3g})')
        return True
    print(f'  {title}: DIFFERENT: {differ_pixels} of {total} pixels in {differ_files} of {files} '
          f'files differ; missing on one side: {len(missing)}; largest threshold difference {gap:.3g}')
    if gap > 0:
        print('    The thresholds differ, so the sampling or the sort-and-pick rule differs: the '
              'emulation follows spec section 7 line by line; check utils.cbc.class_thresholds.')
    else:
        print('    Same thresholds but different labels: the two forward passes of the emulation '
              'disagree with ours (a non-deterministic kernel), or the masking differs; suspect '
              'the emulation first if it runs on a non-deterministic device.')
    return False


def report(results, args, eval_size, comparisons_ok):
    by_method = {method: [r for r in results if r['method'] == method] for method in METHODS}
    headers = ['method', 'wall s best', 'wall s median', 'CPU s best', 'passes', 'fwd calls',
               'img/s best', 'peak RSS MB', 'RSS +MB', 'held MB', 'spilled']
    rows = []
    best = {}
    for method in METHODS:
        runs = by_method[method]
        walls = [r['wall'] for r in runs]
        last = runs[-1]
        best[method] = min(walls)
        if method == 'original':
            held = mb(last['sample_array_bytes'] + last['peak_buffer_bytes'])
            spilled = '-'
        else:
            held = mb(last['store_peak_bytes'])
            spilled = (f"{last['store_spilled']}/{last['images']} "
                       f"({mb(last['store_spilled_bytes']):.1f} MB)")
        rows.append([TITLES[method], f'{best[method]:.2f}', f'{statistics.median(walls):.2f}',
                     f"{min(r['cpu'] for r in runs):.1f}",
                     f"{last['forward_images'] / last['images']:g}", last['forward_calls'],
                     f"{last['images'] / best[method]:.1f}",
                     f"{max(r['peak_rss_mb'] for r in runs):.0f}",
                     f"{max(r['peak_rss_mb'] - r['rss_before_mb'] for r in runs):.0f}",
                     f'{held:.2f}', spilled])
    print()
    print(format_table(rows, headers))
    print()
    print(f"speed-up of ours over the original (best of {args.repeat}): "
          f"{best['original'] / best['ours-memory']:.2f}x in memory, "
          f"{best['original'] / best['ours-spill']:.2f}x spilled; spilling costs "
          f"{(best['ours-spill'] / best['ours-memory'] - 1) * 100:+.1f}% against in memory")
    original = by_method['original'][-1]
    phases = ', '.join(f'{name} {seconds:.2f} s' for name, seconds in original['phases'].items())
    print(f'original, by phase (last run): {phases}')
    print(f"original: {original['sampled_pixels']} sampled pixels in per-class arrays "
          f"({mb(original['sample_array_bytes']):.2f} MB), buffer peak "
          f"{mb(original['peak_buffer_bytes']):.2f} MB, {original['buffer_flushes']} flush(es) "
          f"to numpy (--original-buffer-mb {args.original_buffer_mb:g})")
    ours = by_method['ours-memory'][-1]
    print(f"ours: PredictionStore held {mb(ours['store_peak_bytes']):.2f} MB at its peak "
          f"(5 bytes a pixel x {ours['pixels']} pixels; budget {args.memory_mb} MB); "
          f"spilled run wrote {mb(by_method['ours-spill'][-1]['store_spilled_bytes']):.2f} MB of "
          f".pt files (budget 0)")
    for message in by_method['ours-spill'][-1]['messages']:
        if 'went to disk' in message:
            print(f'ours (spilled) said: {message}')
    print(f"labeled share {ours['labeled_share'] * 100:.2f}% (ours) / "
          f"{original['labeled_share'] * 100:.2f}% (original); pseudo-label mIoU vs ground truth "
          f"{_percent(ours['pseudo_label_miou'])} / {_percent(original['pseudo_label_miou'])}")
    print()
    print('columns: passes = images forwarded / images in the set; held MB = what the method keeps '
          'between the forward pass and the writing (ours: prediction maps in the store; original: '
          'the per-class sample arrays plus its device buffer at its peak); CPU s = user + system time '
          'of the measuring process; best = the fastest of the --repeat runs (the least disturbed by '
          'other jobs), median over them; RSS +MB = growth of '
          'peak RSS during the timed run; each row is its own process, after two untimed batches.')
    print(f'every label agrees: {"yes" if comparisons_ok else "NO (see above)"}')


def _percent(value):
    return 'n/a' if value is None else f'{value * 100:.2f}%'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--images', type=int, default=120, help='synthetic unlabeled images')
    parser.add_argument('--height', type=int, nargs=2, default=[88, 96], metavar=('MIN', 'MAX'),
                        help='image height range')
    parser.add_argument('--width', type=int, nargs=2, default=[112, 128], metavar=('MIN', 'MAX'),
                        help='image width range')
    parser.add_argument('--eval-size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='padded evaluation size; default: the largest image size '
                             '(VOC uses 505 505)')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--backbone', default='resnet14', choices=('resnet14', 'resnet50', 'resnet101'))
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help='torch.set_num_threads in every measuring process')
    parser.add_argument('--repeat', type=int, default=2,
                        help='measure each method this many times, interleaved (best and median '
                             'reported)')
    parser.add_argument('--ratio', type=float, default=0.2, help='CBC label ratio')
    parser.add_argument('--memory-mb', type=int, default=4096,
                        help="ours' in-memory budget (main.py's --label-memory-mb default)")
    parser.add_argument('--original-buffer-mb', type=float, default=100,
                        help="the original's device buffer before np.concatenate into the "
                             'per-class arrays (its buffer_size); 0 = after every image')
    parser.add_argument('--workers', type=int, default=0, help='DataLoader workers')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--seed', type=int, default=0, help='data and weights')
    parser.add_argument('--work-dir', default=None,
                        help='keep data, weights and labels here (reused across runs); '
                             'default: a temporary folder, removed at the end')
    parser.add_argument('--child', choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument('--config', help=argparse.SUPPRESS)
    parser.add_argument('--run-dir', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    if args.images < 8:
        parser.error('--images must be at least 8 (the synthetic set makes 1/8 splits)')
    for name in ('batch_size', 'threads', 'repeat'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.height[0] > args.height[1] or args.width[0] > args.width[1] or min(args.height + args.width) < 16:
        parser.error('--height/--width: MIN <= MAX, both at least 16')
    if args.eval_size and (args.eval_size[0] < args.height[1] or args.eval_size[1] < args.width[1]):
        parser.error('--eval-size must cover the largest image (padding never crops)')
    if not 0 < args.ratio:
        parser.error('--ratio must be positive')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        run_child(args.child, args.config, args.run_dir)
        return 0

    temporary = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix='bench-pseudo-')) if temporary else Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    eval_size = list(args.eval_size or (args.height[1], args.width[1]))
    print(machine_text(args.threads, args.device))
    print(f'setup: {args.images} images of {args.height[0]}-{args.height[1]} x '
          f'{args.width[0]}-{args.width[1]} px padded to {eval_size[0]}x{eval_size[1]}, '
          f'{args.backbone} (random weights), batch {args.batch_size}, ratio {args.ratio}, '
          f'repeat {args.repeat}')
    print_load_at_start(args.threads, args.device)
    try:
        data_root = prepare_data(work_dir, args)
        checkpoint = prepare_model(work_dir, args)
        config = {
            'data_root': str(data_root), 'checkpoint': str(checkpoint),
            'checkpoint_sha256': cbc.file_sha256(checkpoint), 'backbone': args.backbone,
            'eval_size': eval_size, 'batch_size': args.batch_size, 'threads': args.threads,
            'workers': args.workers, 'device': args.device, 'ratio': args.ratio,
            'memory_mb': args.memory_mb, 'original_buffer_mb': args.original_buffer_mb,
        }
        config_path = work_dir / 'bench_config.json'
        config_path.write_text(json.dumps(config, indent=1))

        results = []
        for repeat in range(args.repeat):
            for method in METHODS:
                result = run_measurement(method, config_path, work_dir / 'runs' / method)
                results.append(result)
                print(f'  run {repeat + 1}/{args.repeat} {TITLES[method]}: {result["wall"]:.2f} s')

        last = {r['method']: r for r in results[-len(METHODS):]}
        print()
        print('labels (last run of each method):')
        ok = describe_check('ours (in memory) vs original (2 passes)', last['ours-memory'],
                            last['original'], compare_labels(last['ours-memory']['labels_dir'],
                                                             last['original']['labels_dir']))
        ok &= describe_check('ours (spilled) vs ours (in memory)', last['ours-spill'],
                             last['ours-memory'], compare_labels(last['ours-spill']['labels_dir'],
                                                                 last['ours-memory']['labels_dir']))
        report(results, args, eval_size, ok)
        print(f'load average at end: {load_text()}')
        return 0 if ok else 1
    finally:
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
