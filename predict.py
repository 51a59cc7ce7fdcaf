"""Segment new images with a trained checkpoint: the classes of every pixel, as files.

    python predict.py --dataset D --checkpoint CKPT --out DIR INPUT [INPUT ...]

INPUTs are image files, folders (walked recursively, links to folders followed), globs (quoted:
'photos/**/*.jpg') or list files (.txt: per line an image file, absolute or relative to the list's
folder, else a dataset id under the data root). An image reached twice is predicted once; a folder
holding predict.py's outputs is skipped. For each image, at its own size, keeping its path
relative to its input (below a list's folder, else its name) and its stem:
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
predicted window by window at its own size. Files that are not images, or that fail to decode,
are skipped, one line each. Refused in one line: a checkpoint for another class count or other
classes than the dataset's, an output folder inside an input folder (or an input inside it), two
images whose outputs would take one name, and a folder holding earlier outputs (unless
--overwrite, which removes them once every check has passed, before the first write).
"""
import sys

if sys.version_info < (3, 10):
    sys.exit(f'error: Python {sys.version.split()[0]} is older than 3.10, the oldest this program runs on')

from utils.stopping import end_on_stop_signals  # noqa: E402  (first, before the heavy imports)

if __name__ == '__main__':   # not in a spawned loader worker, which imports this file as __mp_main__
    end_on_stop_signals(130, 'stopped: {signal} while the program started; nothing was written\n')

import csv
import errno
import glob
import io
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from utils.flags import HelpFormatter, OneLineParser, non_negative_int, positive_int, positive_number  # noqa: E402

LIST_EXTENSIONS = {'.txt', '.lst'}
OUTPUT_FOLDERS = ('index', 'color', 'overlay', 'confidence')
SUMMARY_NAMES = ('summary.csv', 'summary.json', 'predictions.json')


def build_parser():
    parser = OneLineParser(prog='predict.py', description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
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
    network = parser.add_argument_group('network (for a checkpoint that records none; as main.py\'s flags)')
    network.add_argument('--backbone', default=None,
                         help='resnet101, resnet50 or resnet14: what the checkpoint\'s training run used '
                              '(default: what the checkpoint records, else resnet101)')
    network.add_argument('--head-branches', type=int, choices=(2, 4), default=None,
                         help='2 = the original\'s head, 4 = all four branches (default: what the checkpoint '
                              'records, else 2)')
    inference = parser.add_argument_group('inference (as state 3)')
    inference.add_argument('--scales', type=positive_number, nargs='+', default=[1.0],
                           help='average softmax probabilities over these input scales')
    inference.add_argument('--flip', action='store_true', help='also average over horizontal flips')
    inference.add_argument('--sliding-window', type=positive_int, nargs=2, default=None, metavar=('H', 'W'),
                           help='predict window by window (default: the description\'s window, if any)')
    inference.add_argument('--window-stride', type=positive_int, nargs=2, default=None, metavar=('H', 'W'))
    inference.add_argument('--eval-size', type=positive_int, nargs=2, default=None, metavar=('H', 'W'),
                           help='the padding canvas (default: what the checkpoint\'s run used, else the dataset\'s)')
    inference.add_argument('--coco', action='store_true', default=None,
                           help='Caffe input normalisation (default: what the checkpoint\'s run used)')
    inference.add_argument('--precision', choices=('fp32', 'fp16', 'bf16'), default=None)
    inference.add_argument('--mixed-precision', action='store_true')
    inference.add_argument('--device', default=None, help='cpu, cuda, cuda:1 ... (default: cuda if present)')
    inference.add_argument('--batch-size', type=positive_int, default=8, help='images per batch (over all processes)')
    inference.add_argument('--workers', type=non_negative_int, default=2, help='loading processes; also threads writing files')
    return parser


# --- the inputs ----------------------------------------------------------------------------------

class Inputs:
    """The images to predict, each with the path its outputs keep, and what was skipped."""

    def __init__(self):
        self.paths, self.stems, self.skipped = [], [], []
        self.folders = []       # real input folders, linked ones included (no output may land in one)
        self.origin = {}        # output stem -> (the file that gave it, the INPUT it came from)
        self.files = set()      # real paths taken: a file reached twice is predicted once
        self.outputs = {}       # folder -> whether it holds predict.py's outputs (asked once)

    def add(self, path, stem, given):
        from utils.errors import InputError

        real = os.path.realpath(path)
        if real in self.files:
            return
        stem = stem.replace('\\', '/')
        if not stem or stem.startswith('/') or '..' in stem.split('/'):
            raise InputError(f'{path}: its outputs would be written outside --out (as {stem}.png); give the '
                             f'file itself, or a pattern or list that names it without ".."')
        if stem in self.origin:
            raise InputError(name_clash(stem, self.origin[stem], (Path(path), given)))
        self.files.add(real)
        self.origin[stem] = (Path(path), given)
        self.paths.append(Path(path))
        self.stems.append(stem)

    def skip(self, path, why):
        self.skipped.append((str(path), why))
        print(f'skipped {path}: {why}')

    def holds_outputs(self, folder):
        """Does `folder` hold the outputs of a predict.py run (its predictions.json)? Said once
        per folder, as a skipped folder: a run that wrote into an input's folder would otherwise
        have its outputs predicted as photos by the next run over that folder."""
        folder = Path(folder)
        if folder not in self.outputs:
            self.outputs[folder] = written_by_predict(folder / 'predictions.json')
            if self.outputs[folder]:
                self.skip(f'{folder}/', 'outputs of predict.py')
        return self.outputs[folder]


def written_by_predict(path):
    """Is `path` a predictions.json this program wrote? Told by the fields it writes there."""
    try:
        meta = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return False
    return (isinstance(meta, dict) and 'checkpoint_sha256' in meta and isinstance(meta.get('outputs'), dict)
            and 'index' in meta['outputs'])


def name_clash(stem, first, second):
    """What to do about two images whose outputs would take one name, worded for how they came."""
    (one, one_input), (other, other_input) = first, second
    both = f'{one} and {other} would both be written as {stem}.png'
    if os.path.realpath(one.parent) == os.path.realpath(other.parent):
        return f'{both} (one name, two extensions, in one folder): rename one of them'
    if one_input == other_input:
        return f'{both} (both from {one_input}): rename one, or predict them into two --out folders'
    if Path(one_input).is_dir() and Path(other_input).is_dir():
        return (f'{both}: the input folders {one_input} and {other_input} hold the same path; predict each '
                f'folder into its own --out folder, or rename one')
    return (f'{both}: predict them into two --out folders, give one folder holding both (the outputs keep '
            f'the paths below it), or rename one')


def stem_of(relative):
    relative = Path(relative)
    return relative.with_suffix('').as_posix()


def normal(path):
    """`path` absolute, with `.` and `..` resolved lexically (the file is still read through the
    path as given: the operating system follows links where a lexical `..` cannot)."""
    return Path(os.path.normpath(os.path.abspath(path)))


def collect_inputs(values, info, data_root):
    """Expand every INPUT (file, folder, glob, list file) into Inputs."""
    from utils.errors import InputError

    inputs = Inputs()
    for value in values:
        path = Path(value)
        if path.is_dir():
            add_folder(inputs, path, value)
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            add_list(inputs, path, info, data_root)
        elif path.is_file():
            add_file(inputs, path, path.stem, value)
        elif glob.has_magic(value):
            add_glob(inputs, value)
        elif path.is_symlink():
            raise InputError(f'{value}: {link_problem(path)}')
        else:
            raise InputError(f'{value}: no such file or folder')
    if not inputs.paths:
        raise InputError('no image to predict among the inputs')
    return inputs


def add_folder(inputs, folder, given):
    """Every file below `folder`, in path order. Links to folders are followed, each real folder
    once (a link to a folder above it cannot loop), real subfolders before links so that a file
    keeps its own path where it has one; a link to nothing, a folder that cannot be read and a
    folder of predict.py's outputs are skipped, one line each."""
    from utils.files import walk_following_links

    found = []

    def unreadable(error):
        inputs.skip(f'{error.filename}/', f'cannot read the folder ({error.strerror})')

    for current, subfolders, names, seen_before in walk_following_links(folder, onerror=unreadable):
        if seen_before or inputs.holds_outputs(current):
            subfolders[:] = []
            continue
        inputs.folders.append(Path(os.path.realpath(current)))
        subfolders.sort(key=lambda name: (os.path.islink(os.path.join(current, name)), name))
        found.extend(Path(current) / name for name in names)
    for path in sorted(found):
        add_found(inputs, path, stem_of(path.relative_to(folder)), given)


def add_glob(inputs, pattern):
    """A glob's matches, each under its path below the folder before the pattern's first
    wildcard. Both are normalised first: a `..` after a wildcard ('f*/../f3/*.png') kept in a
    path wrote outputs outside --out, and reached one file under several names."""
    from utils.errors import InputError

    matches = sorted(Path(match) for match in glob.glob(pattern, recursive=True))
    if not matches:
        raise InputError(f'{pattern}: the pattern matches no file')
    base = glob_base(normal(pattern))
    for match in matches:
        where = normal(match)
        if not where.is_relative_to(base):
            raise InputError(f'{pattern}: {match} is not below {base}, the folder before the first wildcard once '
                             f'".." is resolved, so its outputs have no path below --out; give a pattern without '
                             f'".." after a wildcard')
        between = [folder for folder in where.parents if folder.is_relative_to(base)]
        if match.is_dir() or any(inputs.holds_outputs(folder) for folder in reversed(between)):
            continue
        add_found(inputs, match, stem_of(where.relative_to(base)), pattern)


def glob_base(pattern):
    """The folder a glob's matches are relative to: its part before the first magic component."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path('.')


def add_found(inputs, path, stem, given):
    """A path a folder walk or a glob found: a file, or else skipped with what it is."""
    if path.is_file():
        add_file(inputs, path, stem, given)
    elif path.is_symlink():
        inputs.skip(path, link_problem(path))
    elif not path.is_dir():
        inputs.skip(path, 'not a regular file')


def link_problem(path):
    """Why a symbolic link leads to no file or folder."""
    try:
        os.stat(path)
    except OSError as error:
        why = 'which does not exist' if error.errno == errno.ENOENT else f'which cannot be followed ({error.strerror})'
        return f'a link to {os.readlink(path)}, {why}'
    return 'a link to neither a file nor a folder'


def add_file(inputs, path, stem, given):
    from utils.images import IMAGE_EXTENSIONS

    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        inputs.skip(path, 'not an image file')
        return
    inputs.add(path, stem, given)


def add_list(inputs, list_path, info, data_root):
    """A list: a line naming an existing file (absolute, or relative to the list's folder, `..`
    allowed) is that file, its outputs under its path below the list's folder, or its name where
    it lies outside; any other line is a dataset id, found as the dataset finds it (what state
    3's --save-predictions names)."""
    import data_processing as dp
    from utils.errors import InputError

    folder = normal(list_path.parent)
    root, entries = None, 0
    for number, line in enumerate(dp.list_text(list_path, dp.list_bytes(list_path)).splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        entries += 1
        candidate = Path(line) if Path(line).is_absolute() else list_path.parent / line
        if candidate.is_file():
            where = normal(candidate)
            stem = stem_of(where.relative_to(folder)) if where.is_relative_to(folder) else candidate.stem
            add_file(inputs, candidate, stem, str(list_path))
            continue
        neither = (f'{list_path} line {number}: {line!r} is neither an existing file (absolute, or relative to '
                   f'{list_path.parent}) nor an id of {info.title}')
        try:
            dp.check_entry(list_path, number, line)
        except InputError:
            raise InputError(f'{neither} (an id names files inside the data root)') from None
        if root is None:
            try:
                root = dp.resolve_root(info, data_root)
            except InputError:
                raise InputError(f'{neither} (no data root: pass --data-root)') from None
        name = dp.normalise_id(line)
        image = info.image_path(root, name, info.subset_of(list_path.stem))
        if not image.is_file():
            raise InputError(f'{neither} ({image} not found)')
        inputs.add(image, name, str(list_path))
    if not entries:
        raise InputError(f'list file {list_path} is empty (no names)')


def check_flags(args):
    """The flags argparse's types do not check. (The ones predict.py shares with main.py take
    main.py's types, utils/flags.py: --scales nan was a traceback, --scales 0 every pixel class 0
    with exit 0.)"""
    from models import BACKBONES
    from utils.errors import InputError

    if not 0.0 <= args.opacity <= 1.0:
        raise InputError(f'argument --opacity: must lie in 0..1, got {args.opacity}')
    if args.backbone is not None and args.backbone not in BACKBONES:
        raise InputError(f'argument --backbone: must be one of {", ".join(sorted(BACKBONES))}, got {args.backbone}')


def remove_earlier_outputs(out):
    """--overwrite: the earlier run's outputs go (only the names this program writes), once every
    check has passed and before the first write. Kept, those of images not in this run outlived
    the summary and predictions.json, which describe this run only."""
    from utils.errors import OutputError
    from utils.files import write_failure

    removed = []
    for name in OUTPUT_FOLDERS + SUMMARY_NAMES:
        path = Path(out) / name
        if not (path.exists() or path.is_symlink()):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as error:
            raise OutputError(f'{path}: cannot remove this earlier output ({write_failure(error)}); remove it, '
                              f'or choose another --out') from None
        removed.append(f'{name}/' if name in OUTPUT_FOLDERS else name)
    if removed:
        print(f'--overwrite: removed the earlier outputs in {out} ({", ".join(removed)})')


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


def load_network(checkpoint, checkpoint_path, info, runtime, args):
    """The checkpoint's network on the device, in eval mode; a checkpoint for another class count
    or other classes than the dataset's is refused, naming both. The architecture is the flags',
    else the checkpoint's, else the paper's (as main.py resolves it)."""
    from models import deeplab_v2
    from utils.checkpoints import check_classes, description_warning, load_model_state
    from utils.context import DEFAULT_ARCHITECTURE
    from utils.errors import InputError

    classifier = checkpoint['model'].get('classifier.0.convs.0.weight')
    count = int(classifier.shape[0]) if classifier is not None else info.num_classes
    if count != info.num_classes:
        raise InputError(f'{checkpoint_path}: checkpoint has {count} classes but {info.description or info.name} '
                         f'has {info.num_classes} ({", ".join(info.class_names)}); pass the --dataset it was '
                         f'trained for')
    check_classes(checkpoint, info, checkpoint_path)
    warning = description_warning(checkpoint, info, checkpoint_path)
    if warning and runtime.is_main:
        print(f'warning: {warning}')
    recorded = checkpoint.get('architecture') or {}
    architecture = {key: getattr(args, key) if getattr(args, key) is not None else recorded.get(key, default)
                    for key, default in DEFAULT_ARCHITECTURE.items()}
    model = deeplab_v2(info.num_classes, **architecture)
    try:
        load_model_state(model, checkpoint, checkpoint_path)
    except InputError as error:
        unknown = [key for key in DEFAULT_ARCHITECTURE if key not in recorded and getattr(args, key) is None]
        if not unknown:
            raise
        flags = ' and '.join(f'--{key.replace("_", "-")}' for key in unknown)
        raise InputError(f'{error} (it records no {" or ".join(unknown)}, so {architecture["backbone"]} with a '
                         f'{architecture["head_branches"]}-branch head was assumed; pass {flags} as its training '
                         f'run used)') from None
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
        """The rows of every image written; the first write that failed raised once all have ended."""
        from utils.errors import RunError

        failure = None
        for future in self.pending:
            try:
                self.collect(future)
            except RunError as error:
                failure = failure or error
        self.pending = []
        self.pool.shutdown()
        if failure is not None:
            raise failure
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
            batch = decoded_part(batch, inputs)
            if batch is None:
                continue
            images, _ = runtime.to_device(batch)
            alone = bool(batch['oversize'][0])
            chosen = window_protocol if alone else protocol
            scores = class_scores(model, images, images.shape[-2:], runtime, chosen)
            for scores_one, index, own, file_size in zip(scores, batch['index'].tolist(),
                                                         batch['own_size'].tolist(), batch['file_size'].tolist()):
                prediction, confidence = prediction_and_confidence(scores_at_file_size(scores_one, own, file_size),
                                                                   probabilities=not chosen.single_view)
                writer.submit(inputs.paths[index], inputs.stems[index], prediction, confidence)


def decoded_part(batch, inputs):
    """The batch without its images that failed to decode (ImageFiles says why), each skipped
    with one line; None when none is left. One bad file costs its own prediction only."""
    errors = batch['error']
    if not any(errors):
        return batch
    indices = batch['index'].tolist()
    for index, error in zip(indices, errors):
        if error:
            inputs.skip(inputs.paths[index], error)
    keep = [position for position, error in enumerate(errors) if not error]
    if not keep:
        return None
    return {key: [value[position] for position in keep] if isinstance(value, list) else value[keep]
            for key, value in batch.items()}


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
    from utils.errors import InputError, Interrupted, RunError, StopRequested
    from utils.evaluation import protocol_from_flags
    from utils.experiment import AUTOCAST_DTYPES, choose_device, resolve_precision, slow_on_this_device
    from utils.training import Runtime
    from utils.versions import check_versions

    check_versions(torch.__version__, torchvision.__version__)
    check_flags(args)
    checkpoint = load_checkpoint(args.checkpoint)
    info, _ = dataset_for_checkpoint(checkpoint, args.dataset)
    inputs = collect_inputs(args.inputs, info, args.data_root)
    check_out(args.out, inputs, args.overwrite)
    sizes = read_sizes(inputs)
    device = distributed.init(choose_device(args.device), 1800)
    configure_backends(device)
    precision = resolve_precision(args.precision, args.mixed_precision, device)
    slow = slow_on_this_device(precision, device)
    if slow and distributed.is_main():
        print(f'warning: --precision {precision} on {device}{slow}', file=sys.stderr)
    runtime = Runtime(device=device, amp_dtype=AUTOCAST_DTYPES[precision], workers=args.workers,
                      rank=distributed.rank(), world_size=distributed.world_size(),
                      channels_last=use_channels_last(device, AUTOCAST_DTYPES[precision]), stop=stop)
    model = load_network(checkpoint, args.checkpoint, info, runtime, args)
    runtime.stop_point()
    coco = bool(recorded_setting(checkpoint, 'coco')) if args.coco is None else args.coco
    eval_size = args.eval_size or recorded_setting(checkpoint, 'eval_size') or info.eval_size
    dataset = dp.ImageFiles(info, inputs.paths, sizes, coco=coco, eval_size=eval_size)
    protocol = protocol_from_flags(args, info)
    if args.overwrite:
        failure = None
        if runtime.is_main:
            try:
                remove_earlier_outputs(args.out)
            except RunError as error:
                failure = error
        distributed.agree_on_errors(failure)   # no rank writes before the removal is done
    started = time.time()
    skipped_before = len(inputs.skipped)
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
    failed = distributed.gather_objects(inputs.skipped[skipped_before:])
    inputs.skipped[skipped_before:] = [item for part in failed for item in part]
    if not rows:
        raise InputError('no image among the inputs could be decoded (each one skipped above)')
    if runtime.is_main:
        write_summary(args.out, rows, info, args, args.checkpoint, file_sha256(args.checkpoint), inputs,
                      time.time() - started)
        print(f'{len(rows)} images predicted into {args.out} ({time.time() - started:.1f} s'
              + (f'; {len(inputs.skipped)} skipped' if inputs.skipped else '') + ')')


def main(argv=None):
    """Every expected failure is one line on stderr and an exit status, as in main.py; SIGINT and
    SIGTERM ask the run to stop between batches (utils/stopping.py)."""
    from utils import distributed
    from utils.device import SHARED_MEMORY_ADVICE, is_out_of_memory, is_shared_memory_exhausted
    from utils.errors import Interrupted, OutOfMemory, RunError, StopRequested, one_line
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
            if is_shared_memory_exhausted(error):
                print(f'error: {SHARED_MEMORY_ADVICE}', file=sys.stderr)
                return OutOfMemory.exit_status
            if not is_out_of_memory(error):
                raise
            print(f'error: out of memory: {one_line(error)[:300]} (lower --batch-size or --eval-size, or use '
                  f'--sliding-window)', file=sys.stderr)
            return OutOfMemory.exit_status
        finally:
            distributed.shutdown()
        if stop:
            print(f'stopped: {stop.signal_name} came as predict.py ended; every prediction was written',
                  file=sys.stderr)
            return Interrupted.exit_status
    return 0


if __name__ == '__main__':
    sys.exit(main())
