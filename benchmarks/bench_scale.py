#!/usr/bin/env python
"""Pseudo-labeling at the paper's scale: time per phase, process peak RSS and disk, against an
emulation of the original's two passes on the same maps.

A real DST-CBC round labels 10,476 VOC images of about 375x500 (1/106 split) or 2,876 Cityscapes
images of 512x1024 (1/30). A stand-in network returns random logits at 1/8 of its input (seeded
per image, so both passes of the original see the same maps), which leaves exactly the
pseudo-labeling machinery to measure: upsampling, softmax, sampling, the prediction store (RAM up
to --memory-mb, then one spill file), the exact thresholds, the label writers.

Rows (each in a fresh process, so that ru_maxrss is its own):
  ours          utils.cbc.generate_pseudo_labels, the code main.py runs
  original      the original's scheme, emulated: pass 1 forwards every image and keeps every 16th
                pixel's (probability, class) in per-class numpy arrays grown by np.concatenate
                every 100 images (its buffer); np.sort per class; thresholds; pass 2 forwards
                every image again and writes the labels (the spec's alignment, so both give the
                same labels, which is checked)
and, on the sampled pixels alone (VOC scale: ~123 M), the threshold step three ways:
  ours          utils.cbc.exact_thresholds on a SampleBuffer (two histogram passes)
  partition     per-class arrays selected in place with np.partition (the floor to compare with)
  original      per-class arrays grown by concatenation, then np.sort

`--cli` instead runs main.py --state 0 (resnet14) twice, over 200 and 2,000 synthetic images of
240x320 with --label-memory-mb 8, and reports the two processes' peak RSS.

    python benchmarks/bench_scale.py --dataset voc            # full VOC 1/106 size (~15 min)
    python benchmarks/bench_scale.py --dataset city           # full Cityscapes 1/30 size
    python benchmarks/bench_scale.py --dataset voc --images 500 --memory-mb 64   # a quick look
    python benchmarks/bench_scale.py --thresholds-only        # the threshold step alone
    python benchmarks/bench_scale.py --cli                    # the main.py RSS comparison
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import (REPO_DIR, current_rss_mb, format_table, load_text, machine_text, max_rss_mb,
                    phase_peak_mb, print_result, reset_peak_rss, run_in_child)
from utils import cbc
from utils.inference import upsample
from utils.training import Runtime

SCALES = {   # dataset: (images, (height, width) of the maps, canvas fed to the network, classes)
    'voc': (10476, ((375, 500), (500, 375)), (505, 505), 21),
    'city': (2876, ((512, 1024),), (512, 1024), 19),
}
CLASS_SHARE = (0.7,)   # background's share of the predicted pixels; the rest spread evenly


class StandInNetwork(torch.nn.Module):
    """Random logits at 1/8 of the input, the same for an image every time it is seen."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.indices = None

    def forward(self, images):
        height, width = -(-images.shape[-2] // 8), -(-images.shape[-1] // 8)
        logits = []
        for index in self.indices:
            generator = torch.Generator().manual_seed(int(index))
            scores = torch.randn(self.num_classes, height, width, generator=generator) * 3.0
            scores[0] += 2.0   # background dominates, as on VOC
            logits.append(scores)
        return {'out': torch.stack(logits)}


class StandInInfo:
    def __init__(self, key, num_classes):
        self.name = key
        self.num_classes = num_classes
        self.class_names = tuple(f'class{c}' for c in range(num_classes))


class StandInDataset(torch.utils.data.Dataset):
    """What generate_pseudo_labels asks of a dataset, without decoding files: a black canvas of
    the evaluation size and each image's own size."""

    def __init__(self, key, count, sizes, canvas, num_classes):
        self.info = StandInInfo(key, num_classes)
        self.names = [f'image_{index:05d}' for index in range(count)]
        self.sizes = [sizes[index % len(sizes)] for index in range(count)]
        self.canvas = canvas
        self.list_path = f'stand-in list of {count} images'

    def __len__(self):
        return len(self.names)

    def __getitem__(self, index):
        size = torch.tensor(self.sizes[index])
        return {'image': torch.zeros(3, *self.canvas), 'index': index, 'own_size': size, 'file_size': size}

    def image_path(self, index):
        return Path(self.names[index])

    def ground_truth_path(self, index):
        return Path('/nonexistent') / self.names[index]   # no ground truth: no quality score


class IndexedLoader:
    """Batches in order, telling the stand-in network which images it sees."""

    def __init__(self, dataset, network, batch_size):
        self.dataset, self.network, self.batch_size = dataset, network, batch_size   # noqa: E501
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)

    def __iter__(self):
        for batch in self.loader:
            self.network.indices = batch['index'].tolist()
            yield batch

    def __len__(self):
        return len(self.loader)


def folder_bytes(folder):
    return sum(path.stat().st_size for path in Path(folder).rglob('*') if path.is_file())


# --- the two labelings -------------------------------------------------------------------------

def run_ours(config, work):
    dataset = StandInDataset(config['dataset'], config['images'], config['sizes'], config['canvas'],
                             config['classes'])
    network = StandInNetwork(config['classes'])
    loader = IndexedLoader(dataset, network, config['batch_size'])
    folder = work / 'ours'
    baseline = max_rss_mb()
    started = time.time()
    manifest = cbc.generate_pseudo_labels(
        network, dataset, loader, ratio=0.2, pseudo_label_dir=folder, checkpoint_path='stand-in',
        checkpoint_sha256='0' * 64, experiment_name='bench', runtime=Runtime(torch.device('cpu')),
        memory_budget_mb=config['memory_mb'], log=lambda message: None, cache_root=work,
        threads=config['writers'])
    return {'seconds': manifest['seconds'], 'total': time.time() - started, 'rss_before': baseline,
            'rss_peak': max_rss_mb(), 'cache': manifest['prediction_cache'],
            'labels_mb': folder_bytes(folder) / 2 ** 20, 'thresholds': manifest['thresholds'],
            'labeled_share': manifest['labeled_share']}


def predicted_maps(network, loader):
    """The spec's per-image maps, as the original computed them (one image at a time)."""
    for batch in loader:
        logits = upsample(network(batch['image'])['out'].float(), batch['image'].shape[-2:])
        for logit, index, (height, width) in zip(logits, batch['index'].tolist(), batch['own_size'].tolist()):
            max_prob, predicted = torch.softmax(logit[:, :height, :width], dim=0).max(dim=0)
            yield index, max_prob.numpy(), predicted.numpy().astype(np.uint8)


def run_original(config, work):
    """The original's two passes (emulated): see the module docstring."""
    dataset = StandInDataset(config['dataset'], config['images'], config['sizes'], config['canvas'],
                             config['classes'])
    network = StandInNetwork(config['classes'])
    folder = work / 'original'
    folder.mkdir(parents=True, exist_ok=True)
    baseline = max_rss_mb()
    started = time.time()
    per_class = [np.zeros(0, dtype=np.float32) for _ in range(config['classes'])]
    buffer_probs, buffer_classes = [], []

    def flush():
        probs, classes = np.concatenate(buffer_probs), np.concatenate(buffer_classes)
        for class_index in range(config['classes']):
            per_class[class_index] = np.concatenate([per_class[class_index], probs[classes == class_index]])
        buffer_probs.clear()
        buffer_classes.clear()

    for count, (_, max_prob, predicted) in enumerate(predicted_maps(network, IndexedLoader(dataset, network, config['batch_size'])), 1):
        buffer_probs.append(max_prob.reshape(-1)[::16].copy())
        buffer_classes.append(predicted.reshape(-1)[::16].copy())
        if count % 100 == 0:
            flush()
    if buffer_probs:
        flush()
    pass_one = time.time()
    thresholds = []
    for values in per_class:
        values = np.sort(values)
        count = len(values)
        if count * 0.2 < 1:
            thresholds.append(cbc.EMPTY_CLASS_THRESHOLD)
        else:
            thresholds.append(float(values[-int(count * 0.2) - 1]))
    sorted_at = time.time()
    limits = np.asarray(thresholds, dtype=np.float32)
    for index, max_prob, predicted in predicted_maps(network, IndexedLoader(dataset, network, config['batch_size'])):
        label = np.where(max_prob >= limits[predicted], predicted, 255).astype(np.uint8)
        Image.fromarray(label, mode='L').save(folder / f'{dataset.names[index]}.png')
    finished = time.time()
    return {'seconds': {'pass 1': round(pass_one - started, 3), 'sort + thresholds': round(sorted_at - pass_one, 3),
                        'pass 2 + write': round(finished - sorted_at, 3)},
            'total': finished - started, 'rss_before': baseline, 'rss_peak': max_rss_mb(),
            'labels_mb': folder_bytes(folder) / 2 ** 20, 'thresholds': thresholds}


# --- the threshold step alone ------------------------------------------------------------------

def image_samples(config):
    """Per image, every 16th pixel's (probability, class), generated image by image (seeded)."""
    for index in range(config['images']):
        height, width = config['sizes'][index % len(config['sizes'])]
        count = -(-height * width // 16)
        rng = np.random.default_rng(index)
        classes = np.where(rng.random(count) < CLASS_SHARE[0], 0,
                           rng.integers(1, config['classes'], count)).astype(np.uint8)
        probs = rng.uniform(1.0 / config['classes'], 1.0, count).astype(np.float32)
        yield probs, classes


def threshold_at(values, ratio, select):
    count = len(values)
    if ratio >= 1 and count:
        return float(values.min())
    if count * ratio < 1:
        return cbc.EMPTY_CLASS_THRESHOLD
    return select(values, count - int(count * ratio) - 1)


def partition_select(values, position):
    values.partition(position)   # in place
    return float(values[position])


def sort_select(values, position):
    values.sort()                # in place, as the original
    return float(values[position])


def run_thresholds(config, method):
    """Accumulate the samples image by image as the method does, then select the thresholds;
    seconds and peak RSS of each phase (the peak reset between them)."""
    classes_count, ratio = config['classes'], 0.2
    reset_peak_rss()
    start_rss, started = current_rss_mb(), time.time()
    if method == 'ours':
        buffer = cbc.SampleBuffer(classes_count)
        for probs, classes in image_samples(config):
            buffer.add(probs, classes)
        samples = buffer.count
    elif method == 'partition':
        # The floor: the samples kept as they come, then each class's values selected in place.
        parts = [(probs, classes) for probs, classes in image_samples(config)]
        all_probs = np.concatenate([p for p, _ in parts])
        all_classes = np.concatenate([c for _, c in parts])
        del parts
        samples = len(all_probs)
    else:
        # The original: a buffer grown by torch.cat per image, moved into per-class numpy arrays
        # grown by np.concatenate whenever it exceeds 100 MB / 12 bytes a pixel.
        limit = 100 * 1024 * 1024 / 12
        buffer_labels = torch.tensor([], dtype=torch.int64)
        buffer_probs = torch.tensor([], dtype=torch.float32)
        per_class = [np.array([], dtype=np.float32) for _ in range(classes_count)]
        for probs, classes in image_samples(config):
            buffer_labels = torch.cat([buffer_labels, torch.from_numpy(classes).long()])
            buffer_probs = torch.cat([buffer_probs, torch.from_numpy(probs)])
            if buffer_probs.shape[0] > limit:
                for class_index in range(classes_count):
                    per_class[class_index] = np.concatenate(
                        (per_class[class_index], buffer_probs[buffer_labels == class_index].numpy()))
                buffer_labels = torch.tensor([], dtype=torch.int64)
                buffer_probs = torch.tensor([], dtype=torch.float32)
        for class_index in range(classes_count):
            per_class[class_index] = np.concatenate(
                (per_class[class_index], buffer_probs[buffer_labels == class_index].numpy()))
        del buffer_labels, buffer_probs
        samples = sum(len(values) for values in per_class)
    accumulated, accumulate_peak = time.time(), phase_peak_mb()
    held = current_rss_mb()
    reset_peak_rss()
    if method == 'ours':
        thresholds = cbc.exact_thresholds(buffer, ratio)
    elif method == 'partition':
        thresholds = [threshold_at(all_probs[all_classes == c], ratio, partition_select)
                      for c in range(classes_count)]
    else:
        thresholds = [threshold_at(values, ratio, sort_select) for values in per_class]
    selected = time.time()
    return {'samples': samples, 'accumulate_s': accumulated - started, 'select_s': selected - accumulated,
            'held_mb': held - start_rss, 'accumulate_peak_mb': accumulate_peak - start_rss,
            'select_extra_mb': phase_peak_mb() - held, 'thresholds': thresholds}


# --- main.py RSS against the number of images --------------------------------------------------

def cli_runs(args):
    from utils.synthetic import make_synthetic_voc
    from models import deeplab_v2
    from utils.checkpoints import save_checkpoint

    work = Path(args.work_dir or tempfile.mkdtemp(prefix='bench-scale-cli-'))
    root = work / 'voc'
    if not (root / 'synthetic.json').is_file():
        make_synthetic_voc(root, num_train=2000, num_val=2, seed=0, height_range=(240, 240),
                           width_range=(320, 320))
    names = (root / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()
    for count in (200, 2000):
        (root / 'ImageSets' / 'Segmentation' / f'n{count}_unlabeled_0.txt').write_text(
            ''.join(f'{name}\n' for name in names[:count]))
    torch.manual_seed(0)
    save_checkpoint(work / 'labeler.pt', deeplab_v2(21, backbone='resnet14'), num_classes=21,
                    extra={'architecture': {'backbone': 'resnet14', 'head_branches': 2}})
    rows, peaks = [], {}
    for count in (200, 2000):
        command = [sys.executable, str(REPO_DIR / 'main.py'), '--state', '0', '--exp-name', f'n{count}',
                   '--data-root', str(root), '--split', f'n{count}', '--continue-from', 'labeler.pt',
                   '--eval-size', '240', '320', '--batch-size', '8', '--label-memory-mb', '8',
                   '--workers', '0', '--device', 'cpu']
        started = time.time()
        process = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   env=dict(os.environ, TQDM_DISABLE='1', OMP_NUM_THREADS=str(args.threads)))
        _, status, usage = os.wait4(process.pid, 0)
        if status != 0:
            raise SystemExit(f'main.py failed: {process.stderr.read()[-2000:]}')
        manifest = json.loads((work / 'logs' / f'n{count}' / 'pseudo_labels' / 'pseudo_labels.json').read_text())
        peaks[count] = usage.ru_maxrss / 1024
        samples_mb = manifest['prediction_cache']["sampled_pixels"] * 4 / 2 ** 20
        rows.append([f'{count} images', f'{time.time() - started:.0f}', f'{peaks[count]:.0f}',
                     manifest['prediction_cache']['spilled_maps'], f'{samples_mb:.1f}'])
    print(format_table(rows, ['main.py --state 0, 240x320, budget 8 MB', 'wall s', 'peak RSS MB',
                              'maps spilled', 'samples MB']))
    extra_samples = (json.loads((work / 'logs' / 'n2000' / 'pseudo_labels' / 'pseudo_labels.json').read_text())
                     ['prediction_cache']["sampled_pixels"] * 4 / 2 ** 20)
    print(f'difference in peak RSS: {peaks[2000] - peaks[200]:.0f} MB for 1,800 more maps '
          f'({1800 * 240 * 320 * 5 / 2 ** 20:.0f} MB of maps, {extra_samples:.1f} MB of samples in all)')
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


# --- driver ------------------------------------------------------------------------------------

def config_for(args, dataset):
    images, sizes, canvas, classes = SCALES[dataset]
    return {'dataset': dataset, 'images': args.images or images, 'sizes': [list(s) for s in sizes],
            'canvas': list(canvas), 'classes': classes, 'memory_mb': args.memory_mb,
            'batch_size': args.batch_size, 'writers': args.writers}


def child(args):
    torch.set_num_threads(args.threads)
    config = json.loads(args.config)
    work = Path(args.run_dir)
    if args.child.startswith('thresholds-'):
        result = run_thresholds(config, args.child.split('-', 1)[1])
    elif args.child == 'ours':
        result = run_ours(config, work)
    else:
        result = run_original(config, work)
    print_result(result)


def measure(name, args, config, run_dir):
    return run_in_child(__file__, name, ['--child', name, '--config', json.dumps(config), '--run-dir',
                                         str(run_dir), '--threads', str(args.threads)])


def labels_equal(first, second):
    differing = 0
    for path in Path(first).glob('*.png'):
        with Image.open(path) as a, Image.open(Path(second) / path.name) as b:
            differing += int((np.asarray(a) != np.asarray(b)).sum())
    return differing


def report_labeling(args, dataset):
    config = config_for(args, dataset)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix=f'bench-scale-{dataset}-'))
    work.mkdir(parents=True, exist_ok=True)
    print(f'\n{dataset}: {config["images"]} maps of {" or ".join("x".join(map(str, s)) for s in config["sizes"])}, '
          f'canvas {"x".join(map(str, config["canvas"]))}, {config["classes"]} classes, budget '
          f'{config["memory_mb"]} MB, {config["writers"]} writer thread(s)')
    ours = measure('ours', args, config, work)
    original = measure('original', args, config, work) if not args.skip_original else None
    rows = [['ours, 1 pass', f'{ours["total"]:.0f}',
             ', '.join(f'{k} {v:.1f}' for k, v in ours['seconds'].items()),
             f'{ours["rss_peak"] - ours["rss_before"]:.0f}', f'{ours["rss_peak"]:.0f}',
             f'{ours["cache"]["spill_bytes"] / 2 ** 20:.0f} + {ours["labels_mb"]:.0f}']]
    if original:
        rows.append(['original, 2 passes (emulated)', f'{original["total"]:.0f}',
                     ', '.join(f'{k} {v:.1f}' for k, v in original['seconds'].items()),
                     f'{original["rss_peak"] - original["rss_before"]:.0f}', f'{original["rss_peak"]:.0f}',
                     f'0 + {original["labels_mb"]:.0f}'])
    print(format_table(rows, ['labeling', 'wall s', 'phases (s)', 'RSS growth MB', 'peak RSS MB',
                              'disk MB (cache + labels)']))
    cache = ours['cache']
    print(f'ours: {cache["memory_bytes"] / 2 ** 20:.0f} MB of maps in memory, {cache["spilled_maps"]} maps '
          f'spilled ({cache["spill_bytes"] / 2 ** 30:.2f} GB), {cache["sampled_pixels"] / 1e6:.1f} M sampled '
          f'pixels ({cache["sampled_pixels"] * 4 / 2 ** 20:.0f} MB); growth allowed by the budget + samples '
          f'+ 1 GB: {config["memory_mb"] + cache["sampled_pixels"] * 4 / 2 ** 20 + 1024:.0f} MB')
    if original:
        same = ours['thresholds'] == original['thresholds']
        differing = labels_equal(work / 'ours', work / 'original')
        print(f'labels: {"IDENTICAL" if differing == 0 and same else f"{differing} pixels differ"}'
              f'{"" if same else " (thresholds differ)"}')
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


def report_thresholds(args, dataset):
    config = config_for(args, dataset)
    results = {method: measure(f'thresholds-{method}', args, config, '.')
               for method in ('ours', 'partition', 'original')}
    titles = {'ours': 'ours: SampleBuffer, two histogram passes',
              'partition': 'floor: kept as they come, np.partition per class',
              'original': 'original: torch.cat buffer, concatenated classes, sort'}
    rows = []
    total = {method: result['accumulate_s'] + result['select_s'] for method, result in results.items()}
    for method, result in results.items():
        rows.append([titles[method], f'{result["accumulate_s"]:.1f}', f'{result["select_s"]:.2f}',
                     f'{total[method]:.1f}', f'{total["original"] / total[method]:.1f}x',
                     f'{total[method] / total["partition"]:.2f}x',
                     f'{result["held_mb"]:.0f}', f'{result["accumulate_peak_mb"]:.0f}',
                     f'{result["select_extra_mb"]:.0f}'])
    same = results['ours']['thresholds'] == results['partition']['thresholds'] == results['original']['thresholds']
    print(f'\n{dataset} thresholds over {results["ours"]["samples"] / 1e6:.1f} M sampled pixels of '
          f'{config["images"]} images (thresholds identical: {same})')
    print(format_table(rows, ['threshold step', 'gather s', 'select s', 'total s', 'faster than original',
                              'time vs floor', 'samples held MB', 'gather peak MB', 'select extra MB']))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dataset', choices=('voc', 'city', 'both'), default='voc')
    parser.add_argument('--images', type=int, default=None, help='default: the paper\'s scale')
    parser.add_argument('--memory-mb', type=int, default=4096, help='--label-memory-mb')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--writers', type=int, default=2, help='label-writing threads')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per process')
    parser.add_argument('--work-dir', default=None, help='keep files here (default: a temporary folder)')
    parser.add_argument('--thresholds-only', action='store_true')
    parser.add_argument('--skip-original', action='store_true', help='labeling: ours only')
    parser.add_argument('--cli', action='store_true', help='main.py peak RSS over 200 and 2,000 images')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    parser.add_argument('--config', help=argparse.SUPPRESS)
    parser.add_argument('--run-dir', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    print(machine_text(args.threads, 'cpu'))
    print(f'load average at start: {load_text()}')
    if args.cli:
        return cli_runs(args)
    for dataset in (('voc', 'city') if args.dataset == 'both' else (args.dataset,)):
        report_thresholds(args, dataset)
        if not args.thresholds_only:
            report_labeling(args, dataset)
    print(f'load average at end: {load_text()}')


if __name__ == '__main__':
    main()
