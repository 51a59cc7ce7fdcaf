"""Segment new images with a trained checkpoint: the classes of every pixel, as files.

    python predict.py --dataset D --checkpoint CKPT --out DIR INPUT [INPUT ...]

INPUTs are image files, folders (walked recursively), globs (quoted: 'photos/**/*.jpg') or list
files (.txt: one image path per line, relative to the list, or a dataset id under the data root).
For each image, at its own size, keeping its path relative to its input and its stem:
- DIR/index/<path>.png    class indices, the dataset's palette embedded (any viewer shows the
                          colours, any program reads the indices)
- DIR/color/<path>.png    the class colours (RGB)
- DIR/overlay/<path>.jpg  the colours over the image (--opacity)
- DIR/confidence/<path>.png or .npy (with --confidence): the probability of the chosen class,
                          as 16-bit (value = round(p * 65535)) or float32
- DIR/summary.csv (or .json): one row per image: its size, each class's pixel share, the mean
  confidence; DIR/predictions.json: the classes, colours, checkpoint and options.

The inference is the evaluation's (utils/inference.py: scales, flip, sliding window, precision,
device, batches, several processes under torchrun), so the same checkpoint and options give the
classes state 3 writes with --save-predictions. An image larger than the evaluation canvas is
predicted window by window at its own size. Files that are not images are skipped, one line each.
Refused in one line: a checkpoint for another class count or other classes than the dataset's, an
output folder inside an input folder (or an input inside it), and a folder holding earlier
outputs (unless --overwrite).
"""
import sys

if sys.version_info < (3, 10):
    sys.exit(f'error: Python {sys.version.split()[0]} is older than 3.10, the oldest this program runs on')

from utils.stopping import end_on_stop_signals  # noqa: E402  (first, before the heavy imports)

if __name__ == '__main__':   # not in a spawned loader worker, which imports this file as __mp_main__
    end_on_stop_signals(130, 'stopped: {signal} while the program started; nothing was written\n')

import argparse
import csv
import glob
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LIST_EXTENSIONS = {'.txt', '.lst'}
OUTPUT_FOLDERS = ('index', 'color', 'overlay', 'confidence')
SUMMARY_NAMES = ('summary.csv', 'summary.json', 'predictions.json')


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='image files, folders, globs or list files')
    parser.add_argument('--dataset', default=None, metavar='{voc,city,FILE}',
                        help='the dataset the checkpoint was trained for: its classes, colours, evaluation size '
                             'and normalisation (default: the one the checkpoint records, else voc)')
    parser.add_argument('--checkpoint', required=True, help='a checkpoint written by main.py')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--data-root', default=None, help='where list files\' dataset ids are (default: the '
                                                          'dataset\'s root)')
    parser.add_argument('--overwrite', action='store_true', help='replace the outputs of an earlier run in --out')
    parser.add_argument('--opacity', type=float, default=0.5, help='of the colours in the overlays, 0..1')
    parser.add_argument('--confidence', choices=('none', 'png16', 'npy'), default='none',
                        help='also write the confidence map (probability of the chosen class)')
    parser.add_argument('--summary', choices=('csv', 'json'), default='csv', help='format of the per-image summary')
    inference = parser.add_argument_group('inference (as state 3)')
    inference.add_argument('--scales', type=float, nargs='+', default=[1.0],
                           help='average softmax probabilities over these input scales')
    inference.add_argument('--flip', action='store_true', help='also average over horizontal flips')
    inference.add_argument('--sliding-window', type=int, nargs=2, default=None, metavar=('H', 'W'),
                           help='predict window by window (default: the description\'s window, if any)')
    inference.add_argument('--window-stride', type=int, nargs=2, default=None, metavar=('H', 'W'))
    inference.add_argument('--eval-size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                           help='the padding canvas (default: what the checkpoint\'s run used, else the dataset\'s)')
    inference.add_argument('--coco', action='store_true', default=None,
                           help='Caffe input normalisation (default: what the checkpoint\'s run used)')
    inference.add_argument('--precision', choices=('fp32', 'fp16', 'bf16'), default=None)
    inference.add_argument('--mixed-precision', action='store_true')
    inference.add_argument('--device', default=None, help='cpu, cuda, cuda:1 ... (default: cuda if present)')
    inference.add_argument('--batch-size', type=int, default=8, help='images per batch (over all processes)')
    inference.add_argument('--workers', type=int, default=2, help='loading processes; also threads writing files')
    return parser


# --- the inputs ----------------------------------------------------------------------------------

class Inputs:
    """The images to predict, each with the path its outputs keep, and what was skipped."""

    def __init__(self):
        self.paths, self.stems, self.skipped = [], [], []
        self.folders = []       # input folders (no output may land in one)
        self.origin = {}        # output stem -> the input that gave it

    def add(self, path, stem, given):
        stem = stem.replace('\\', '/')
        if stem in self.origin:
            from utils.errors import InputError
            raise InputError(f'{path} and {self.origin[stem]} would both be written as {stem}.png: predict them '
                             f'into two --out folders, or give their folders rather than the files')
        self.origin[stem] = path
        self.paths.append(Path(path))
        self.stems.append(stem)

    def skip(self, path, why):
        self.skipped.append((str(path), why))
        print(f'skipped {path}: {why}')


def stem_of(relative):
    relative = Path(relative)
    return relative.with_suffix('').as_posix()


def collect_inputs(values, info, data_root):
    """Expand every INPUT (file, folder, glob, list file) into Inputs."""
    from utils.errors import InputError

    inputs = Inputs()
    for value in values:
        path = Path(value)
        if path.is_dir():
            inputs.folders.append(path.resolve())
            found = sorted(candidate for candidate in path.rglob('*') if candidate.is_file())
            for candidate in found:
                add_file(inputs, candidate, stem_of(candidate.relative_to(path)))
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            add_list(inputs, path, info, data_root)
        elif path.is_file():
            add_file(inputs, path, path.stem)
        elif glob.has_magic(value):
            matches = sorted(Path(match) for match in glob.glob(value, recursive=True))
            if not matches:
                raise InputError(f'{value}: the pattern matches no file')
            base = glob_base(value)
            for match in matches:
                if match.is_file():
                    add_file(inputs, match, stem_of(match.relative_to(base)))
        else:
            raise InputError(f'{value}: no such file or folder')
    if not inputs.paths:
        raise InputError('no image to predict among the inputs')
    return inputs


def glob_base(pattern):
    """The folder a glob's matches are relative to: its part before the first magic component."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path('.')


def add_file(inputs, path, stem):
    from utils.images import IMAGE_EXTENSIONS

    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        inputs.skip(path, 'not an image file')
        return
    inputs.add(path, stem, path)


def add_list(inputs, list_path, info, data_root):
    """A list: each line an image path (relative to the list's folder, or absolute), or else a
    dataset id, found as the dataset finds it (what state 3's --save-predictions names)."""
    import data_processing as dp
    from utils.errors import InputError

    root = None
    for number, line in dp.read_numbered_list(list_path):
        candidate = Path(line) if Path(line).is_absolute() else list_path.parent / line
        if candidate.is_file():
            add_file(inputs, candidate, stem_of(line) if not Path(line).is_absolute() else candidate.stem)
            continue
        if root is None:
            try:
                root = dp.resolve_root(info, data_root)
            except InputError:
                raise InputError(f'{list_path} line {number}: {line!r} is no file, nor an id of {info.title} '
                                 f'(no data root: pass --data-root)') from None
        image = info.image_path(root, line, info.subset_of(list_path.stem))
        if not image.is_file():
            raise InputError(f'{list_path} line {number}: {line!r} is no file, nor an id of {info.title} '
                             f'({image} not found)')
        inputs.add(image, line, image)


def read_sizes(inputs):
    """(height, width) of every input from its header; files that are not images are skipped."""
    from utils.errors import InputError
    from utils.images import image_size

    kept_paths, kept_stems, sizes = [], [], []
    for path, stem in zip(inputs.paths, inputs.stems):
        try:
            sizes.append(image_size(path))
        except InputError as error:
            inputs.skip(path, str(error).split(': ', 1)[-1])
            continue
        kept_paths.append(path)
        kept_stems.append(stem)
    inputs.paths, inputs.stems = kept_paths, kept_stems
    if not inputs.paths:
        raise InputError('no readable image among the inputs')
    return sizes


def check_out(out, inputs, overwrite):
    """--out must not be an input folder or inside one, hold no input, and hold no earlier
    outputs unless --overwrite."""
    from utils.errors import InputError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f'--out {out} is a file; name a folder')
    where = out.resolve()
    for folder in inputs.folders:
        if where == folder or where.is_relative_to(folder):
            raise InputError(f'--out {out} is inside the input folder {folder}: the outputs would mix with the '
                             f'images (and be read as inputs next time); choose a folder outside it')
    inside = next((path for path in inputs.paths if path.resolve().is_relative_to(where)), None)
    if inside is not None:
        raise InputError(f'--out {out} holds the input {inside}; choose another folder')
    earlier = [where / name for name in OUTPUT_FOLDERS + SUMMARY_NAMES if (where / name).exists()]
    if earlier and not overwrite:
        raise InputError(f'--out {out} holds the outputs of an earlier run ({earlier[0]}); choose another folder, '
                         f'or add --overwrite to replace them')


# --- the network and the loop --------------------------------------------------------------------

def batches_of(oversize, batch_size):
    """Index batches: images that fit the canvas together, in order; an oversize one alone (it is
    predicted window by window at its own size)."""
    batches, current = [], []
    for index, alone in enumerate(oversize):
        if alone:
            batches.append([index])
            continue
        current.append(index)
        if len(current) == batch_size:
            batches.append(current)
            current = []
    if current:
        batches.append(current)
    return batches


def load_network(checkpoint, checkpoint_path, info, runtime):
    """The checkpoint's network on the device, in eval mode; a checkpoint for another class count
    or other classes than the dataset's is refused, naming both."""
    from models import deeplab_v2
    from utils.checkpoints import check_classes, load_model_state
    from utils.errors import InputError

    classifier = checkpoint['model'].get('classifier.0.convs.0.weight')
    count = int(classifier.shape[0]) if classifier is not None else info.num_classes
    if count != info.num_classes:
        raise InputError(f'{checkpoint_path}: checkpoint has {count} classes but {info.description or info.name} '
                         f'has {info.num_classes} ({", ".join(info.class_names)}); pass the --dataset it was '
                         f'trained for')
    check_classes(checkpoint, info, checkpoint_path)
    architecture = checkpoint.get('architecture') or {}
    model = deeplab_v2(info.num_classes, backbone=architecture.get('backbone', 'resnet101'),
                       head_branches=architecture.get('head_branches', 2))
    load_model_state(model, checkpoint, checkpoint_path)
    model = model.to(runtime.device).eval()
    if runtime.channels_last:
        import torch
        model = model.to(memory_format=torch.channels_last)
    return model


class Writer:
    """Writes one image's files in a thread pool (PNG and JPEG encoding run outside the GIL) and
    keeps its summary row."""

    def __init__(self, out, info, args, threads):
        self.out = Path(out)
        self.info = info
        self.args = args
        self.threads = max(threads, 1)
        self.pool = ThreadPoolExecutor(self.threads)
        self.pending = []
        self.rows = []

    def submit(self, path, stem, prediction, confidence):
        self.pending.append(self.pool.submit(self.write, path, stem, prediction, confidence))
        if len(self.pending) > 4 * self.threads:
            self.collect(self.pending.pop(0))

    def collect(self, future):
        self.rows.append(future.result())

    def finish(self):
        for future in self.pending:
            self.collect(future)
        self.pending = []
        self.pool.shutdown()
        return self.rows

    def write(self, path, stem, prediction, confidence):
        import numpy as np
        from PIL import Image

        import data_processing as dp
        from utils.predictions import (color_array, confidence_png, overlay_array, palette_image, save_image,
                                       save_npy)

        info = self.info
        save_image(palette_image(prediction, info.colors), self.out / 'index' / f'{stem}.png')
        colors = color_array(prediction, info.colors)
        save_image(Image.fromarray(colors), self.out / 'color' / f'{stem}.png')
        picture = dp.load_image(path).permute(1, 2, 0).numpy()
        save_image(Image.fromarray(overlay_array(picture, colors, self.args.opacity)),
                   self.out / 'overlay' / f'{stem}.jpg', quality=90)
        if self.args.confidence == 'png16':
            save_image(confidence_png(confidence), self.out / 'confidence' / f'{stem}.png')
        elif self.args.confidence == 'npy':
            save_npy(confidence.astype(np.float32), self.out / 'confidence' / f'{stem}.npy')
        counts = np.bincount(prediction.reshape(-1), minlength=info.num_classes)[:info.num_classes]
        row = {'image': str(path), 'output': stem, 'height': int(prediction.shape[0]),
               'width': int(prediction.shape[1]), 'mean_confidence': round(float(confidence.mean()), 6)}
        row.update({f'share_{name}': round(float(count) / prediction.size, 6)
                    for name, count in zip(info.class_names, counts.tolist())})
        return row


def predict(model, dataset, inputs, runtime, protocol, args, writer):
    """Every batch of this process's share through the network, each image's prediction and
    confidence at its file size handed to the writer."""
    import torch
    from tqdm import tqdm

    from utils import distributed
    from utils.inference import Protocol, class_scores
    from utils.predictions import prediction_and_confidence, scores_at_file_size
    from utils.training import make_loader

    per_rank = max(args.batch_size // runtime.world_size, 1)
    mine = distributed.shard(batches_of(dataset.oversize, per_rank))
    loader = make_loader(dataset, batch_sampler=mine, workers=runtime.workers, device=runtime.device)
    window_protocol = Protocol(scales=protocol.scales, flip=protocol.flip,
                               window=protocol.window or dataset.canvas, stride=protocol.stride)
    with torch.no_grad():
        batches = tqdm(loader, desc='predict', dynamic_ncols=True, disable=None if runtime.is_main else True)
        for batch in runtime.stop.until_stopped(batches):
            images, _ = runtime.to_device(batch)
            alone = bool(batch['oversize'][0])
            chosen = window_protocol if alone else protocol
            scores = class_scores(model, images, images.shape[-2:], runtime, chosen)
            for scores_one, index, own, file_size in zip(scores, batch['index'].tolist(),
                                                         batch['own_size'].tolist(), batch['file_size'].tolist()):
                prediction, confidence = prediction_and_confidence(scores_at_file_size(scores_one, own, file_size),
                                                                   probabilities=not chosen.single_view)
                writer.submit(inputs.paths[index], inputs.stems[index], prediction, confidence)


def write_summary(out, rows, info, args, checkpoint_path, checkpoint_sha256, inputs, seconds):
    from utils.experiment import write_json
    from utils.files import atomic_path, guarded_write

    out = Path(out)
    rows = sorted(rows, key=lambda row: row['output'])
    if args.summary == 'csv':
        text = io.StringIO()
        table = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator='\n')
        table.writeheader()
        table.writerows(rows)
        with guarded_write(out / 'summary.csv', 'summary'), atomic_path(out / 'summary.csv') as temporary:
            temporary.write_text(text.getvalue(), encoding='utf-8')
    else:
        write_json(out / 'summary.json', rows)
    write_json(out / 'predictions.json', {
        'dataset': info.name, 'description': str(info.description) if info.description else None,
        'classes': list(info.class_names), 'colors': [list(color) for color in info.colors],
        'checkpoint': str(checkpoint_path), 'checkpoint_sha256': checkpoint_sha256, 'count': len(rows),
        'skipped': [{'path': path, 'why': why} for path, why in inputs.skipped],
        'options': {key: value for key, value in vars(args).items() if key not in ('inputs',)},
        'outputs': {'index': 'class indices, palette PNG', 'color': 'class colours, RGB PNG',
                    'overlay': f'colours over the image at opacity {args.opacity}, JPEG',
                    'confidence': {'none': None, 'png16': 'probability of the chosen class x 65535, 16-bit PNG',
                                   'npy': 'probability of the chosen class, float32 .npy'}[args.confidence]},
        'seconds': round(seconds, 3)})


def run(args, stop):
    import torch
    import torchvision

    import data_processing as dp
    from utils import distributed
    from utils.cbc import file_sha256
    from utils.checkpoints import dataset_for_checkpoint, load_checkpoint, recorded_setting
    from utils.device import configure_backends, use_channels_last
    from utils.errors import InputError, Interrupted, StopRequested
    from utils.evaluation import protocol_from_flags
    from utils.experiment import AUTOCAST_DTYPES, choose_device, resolve_precision
    from utils.training import Runtime
    from utils.versions import check_versions

    check_versions(torch.__version__, torchvision.__version__)
    if not 0.0 <= args.opacity <= 1.0:
        raise InputError(f'--opacity {args.opacity} must lie in 0..1')
    if args.batch_size < 1 or args.workers < 0:
        raise InputError('--batch-size must be at least 1 and --workers at least 0')
    checkpoint = load_checkpoint(args.checkpoint)
    info, _ = dataset_for_checkpoint(checkpoint, args.dataset)
    inputs = collect_inputs(args.inputs, info, args.data_root)
    check_out(args.out, inputs, args.overwrite)
    sizes = read_sizes(inputs)
    device = distributed.init(choose_device(args.device), 1800)
    configure_backends(device)
    precision = resolve_precision(args.precision, args.mixed_precision, device)
    runtime = Runtime(device=device, amp_dtype=AUTOCAST_DTYPES[precision], workers=args.workers,
                      rank=distributed.rank(), world_size=distributed.world_size(),
                      channels_last=use_channels_last(device, AUTOCAST_DTYPES[precision]), stop=stop)
    model = load_network(checkpoint, args.checkpoint, info, runtime)
    runtime.stop_point()
    coco = bool(recorded_setting(checkpoint, 'coco')) if args.coco is None else args.coco
    eval_size = args.eval_size or recorded_setting(checkpoint, 'eval_size') or info.eval_size
    dataset = dp.ImageFiles(info, inputs.paths, sizes, coco=coco, eval_size=eval_size)
    protocol = protocol_from_flags(args, info)
    started = time.time()
    writer = Writer(args.out, info, args, max(args.workers, 1))
    try:
        predict(model, dataset, inputs, runtime, protocol, args, writer)
    except StopRequested:
        with stop.saving():
            written = len(writer.finish())
        raise Interrupted(f'{stop.signal_name}: {written} of {len(inputs.paths)} images were predicted into '
                          f'{args.out}, each one\'s files complete; run the same command with --overwrite to '
                          f'predict them all') from None
    finally:
        rows = writer.finish()
    rows = [row for part in distributed.gather_objects(rows) for row in part]
    if runtime.is_main:
        write_summary(args.out, rows, info, args, args.checkpoint, file_sha256(args.checkpoint), inputs,
                      time.time() - started)
        print(f'{len(rows)} images predicted into {args.out} ({time.time() - started:.1f} s'
              + (f'; {len(inputs.skipped)} skipped' if inputs.skipped else '') + ')')


def main(argv=None):
    """Every expected failure is one line on stderr and an exit status, as in main.py; SIGINT and
    SIGTERM ask the run to stop between batches (utils/stopping.py)."""
    from utils import distributed
    from utils.device import is_out_of_memory
    from utils.errors import Interrupted, RunError, StopRequested, one_line
    from utils.stopping import StopRequest

    args = build_parser().parse_args(argv)
    stop = StopRequest()
    with stop.on_signals():
        try:
            run(args, stop)
        except StopRequested:
            print(f'stopped: {stop.signal_name} as predict.py started; nothing was written', file=sys.stderr)
            return Interrupted.exit_status
        except RunError as error:
            print(f'{error.prefix}: {one_line(error)}', file=sys.stderr)
            return error.exit_status
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            print(f'error: out of memory: {one_line(error)[:300]} (lower --batch-size or --eval-size, or use '
                  f'--sliding-window)', file=sys.stderr)
            return 6
        finally:
            distributed.shutdown()
        if stop:
            print(f'stopped: {stop.signal_name} came as predict.py ended; every prediction was written',
                  file=sys.stderr)
            return Interrupted.exit_status
    return 0


if __name__ == '__main__':
    sys.exit(main())
