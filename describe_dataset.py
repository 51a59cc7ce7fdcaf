"""Write a starting dataset description from your folders, so a first run needs no format learned.

    python describe_dataset.py --images DIR --labels DIR --out my_data.yaml [--classes a,b,c]

It pairs images and labels by name (the suffix every file name shares, and subfolders, found
rather than assumed: `x.jpg` with `x.png`, `a/x_leftImg8bit.png` with `a/x_mask.png`), sees
whether the labels are index PNGs or RGB colour masks, lists the values or colours found with
their pixel shares (each a class, named `class_<value>` unless `--classes` names them), and
proposes crop and evaluation sizes from the images' sizes. It writes the training and
validation lists into `<root>/lists/`: from `train`/`val` subfolders where the folders have them,
else a seeded random validation share. What it found is printed, and then the commands to run.

Refused in one line, as no description could fix them: an image without a label, a label
without an image, a label in a lossy format, a label of another size than its image, images or
labels with several extensions, labels that mix colour masks and index PNGs.
"""
import argparse
import json
import os
import random
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from utils.dataset_description import FORMAT, MAX_CLASSES, read_description
from utils.errors import InputError
from utils.files import atomic_path
from utils.images import IMAGE_EXTENSIONS
from utils.label_encoding import SINGLE_CHANNEL_MODES, refuse_lossy
from utils.labels import IGNORE_INDEX

SEPARATORS = '._-'
SUBSET_FOLDERS = ('train', 'val')
LARGEST_PADDED_SIDE = 1024     # beyond it evaluation resizes instead of padding to a canvas
CROP_CAP = 321                 # the paper's VOC crop: larger crops cost memory for little gain


def image_files(folder, extensions=IMAGE_EXTENSIONS):
    """Relative POSIX paths of the image files under `folder` (recursive, sorted), and of the
    other files skipped."""
    found, skipped = [], []
    for path in sorted(Path(folder).rglob('*')):
        if path.is_file():
            relative = path.relative_to(folder).as_posix()
            (found if path.suffix.lower() in extensions else skipped).append(relative)
    return found, skipped


def common_suffix(names):
    """The file-name ending every name shares, cut to begin at a separator (`.`, `_`, `-`), so
    that `img_001.png` and `img_011.png` share `.png`, not `1.png`."""
    shared = os.path.commonprefix([name[::-1] for name in names])[::-1]
    for position, character in enumerate(shared):
        if character in SEPARATORS:
            return shared[position:]
    return ''


def ids_by_suffix(paths, folder, what):
    """{id: relative path} with the shared suffix cut off, and the suffix."""
    if not paths:
        raise InputError(f'--{what} {folder}: no image files found in it')
    suffix = common_suffix([Path(path).name for path in paths])
    if not suffix.startswith('.') and '.' not in suffix:
        extensions = sorted({Path(path).suffix.lower() for path in paths})
        raise InputError(f'--{what} {folder}: the files have several extensions ({", ".join(extensions)}); a '
                         f'description names one, so convert them to one format')
    return {path[:-len(suffix)]: path for path in paths}, suffix


def pair(image_dir, label_dir):
    """(ids, image suffix, label suffix), refusing an image without a label or the reverse."""
    images, skipped_images = image_files(image_dir)
    labels, skipped_labels = image_files(label_dir, IMAGE_EXTENSIONS | {'.jpe'})
    image_ids, image_suffix = ids_by_suffix(images, image_dir, 'images')
    label_ids, label_suffix = ids_by_suffix(labels, label_dir, 'labels')
    lonely_images = sorted(set(image_ids) - set(label_ids))
    lonely_labels = sorted(set(label_ids) - set(image_ids))
    if lonely_images:
        raise InputError(f'{len(lonely_images)} image{"s have" if len(lonely_images) > 1 else " has"} no label: '
                         f'{Path(image_dir) / image_ids[lonely_images[0]]} (looked for '
                         f'{Path(label_dir) / (lonely_images[0] + label_suffix)}); add the labels or move the '
                         f'images out of --images')
    if lonely_labels:
        raise InputError(f'{len(lonely_labels)} label{"s have" if len(lonely_labels) > 1 else " has"} no image: '
                         f'{Path(label_dir) / label_ids[lonely_labels[0]]} (looked for '
                         f'{Path(image_dir) / (lonely_labels[0] + image_suffix)}); add the images or move the '
                         f'labels out of --labels')
    return sorted(image_ids), image_suffix, label_suffix, skipped_images + skipped_labels


def survey_label(path, image_path):
    """What one label holds: ('index', {value: pixels}) or ('rgb', {(r, g, b): pixels}), and its
    image's (height, width), after checking its format and that its size is its image's."""
    with Image.open(path) as label:
        refuse_lossy(label, path)
        with Image.open(image_path) as image:
            if image.size != label.size:
                raise InputError(f'{path}: label is {label.size[1]}x{label.size[0]} but its image {image_path} '
                                 f'is {image.size[1]}x{image.size[0]}')
        size = (label.size[1], label.size[0])
        if label.mode in SINGLE_CHANNEL_MODES:
            values, counts = np.unique(np.asarray(label), return_counts=True)
            return 'index', dict(zip(values.tolist(), counts.tolist())), size
        rgb = np.asarray(label.convert('RGB'))
    codes = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    values, counts = np.unique(codes, return_counts=True)
    return 'rgb', {((code >> 16) & 255, (code >> 8) & 255, code & 255): count
                   for code, count in zip(values.tolist(), counts.tolist())}, size


def survey(image_dir, label_dir, ids, image_suffix, label_suffix, threads):
    """(kind, {value or colour: pixels}, image sizes) over every label, in threads."""
    def one(name):
        label_path, image_path = Path(label_dir) / (name + label_suffix), Path(image_dir) / (name + image_suffix)
        return (name, *survey_label(label_path, image_path))

    with ThreadPoolExecutor(max(threads, 1)) as pool:
        results = list(pool.map(one, ids))
    kinds = {}
    for name, kind, _, _ in results:
        kinds.setdefault(kind, name)
    if len(kinds) > 1:
        raise InputError(f'the labels mix colour masks and index PNGs (colour: {kinds["rgb"] + label_suffix}, '
                         f'index: {kinds["index"] + label_suffix}); make them all one kind')
    totals = {}
    for _, _, counts, _ in results:
        for key, count in counts.items():
            totals[key] = totals.get(key, 0) + count
    return next(iter(kinds)), totals, [size for *_, size in results]


def choose_classes(kind, totals, ignore):
    """The class values (or colours) in order, the ignore value, and what was decided, in words."""
    notes = []
    if kind == 'rgb':
        return sorted(totals), None, notes
    values = sorted(totals)
    if ignore == 'auto':
        if IGNORE_INDEX in values and len(values) > 1 and values != [0, IGNORE_INDEX]:
            ignore = IGNORE_INDEX
            notes.append(f'{IGNORE_INDEX} is taken as "no class" (ignored), as in VOC; pass --ignore none to make it a class')
        elif values == [0, IGNORE_INDEX]:
            ignore = None
            notes.append(f'0/{IGNORE_INDEX} masks: {IGNORE_INDEX} is taken as a class (mapped to class 1); pass '
                         f'--ignore {IGNORE_INDEX} to ignore it instead')
        else:
            ignore = None
    elif ignore == 'none':
        ignore = None
    else:
        ignore = int(ignore)
    return [value for value in values if value != ignore], ignore, notes


def propose_sizes(sizes):
    """(crop, eval mapping, notes) from the images' (height, width)."""
    heights, widths = [size[0] for size in sizes], [size[1] for size in sizes]
    side = min(statistics.median(heights), statistics.median(widths), CROP_CAP)
    crop = max(8 * int((side - 1) // 8) + 1, 9)
    largest = (max(heights), max(widths))
    if max(largest) <= LARGEST_PADDED_SIDE:
        canvas = [8 * -(-(side - 1) // 8) + 1 for side in largest]   # 8k + 1, as VOC's 505
        return [crop, crop], {'fit': 'pad', 'size': canvas}, []
    common = max(set(sizes), key=sizes.count)
    scale = LARGEST_PADDED_SIDE / max(common)
    size = [max(int(round(common[0] * scale)), 8), max(int(round(common[1] * scale)), 8)]
    note = (f'images up to {largest[0]}x{largest[1]}: evaluation resizes them to {size[0]}x{size[1]} (as '
            f'Cityscapes\' 512x1024) rather than padding; add eval window: [h, w] for a sliding window')
    return [crop, crop], {'fit': 'resize', 'size': size}, [note]


def split_lists(ids, val_share, seed):
    """(train ids, val ids, how): by train/val subfolders where every id has one, else a seeded
    random validation share of the sorted ids."""
    tops = {name.split('/', 1)[0] for name in ids}
    if '/' in ''.join(ids) and tops <= set(SUBSET_FOLDERS) and len(tops) == 2:
        return ([name for name in ids if name.startswith('train/')], [name for name in ids if name.startswith('val/')],
                'from the train/ and val/ subfolders')
    if not 0 < val_share < 1:
        raise InputError(f'--val-share {val_share} must lie between 0 and 1')
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    count = min(max(int(round(len(order) * val_share)), 1), len(order) - 1)
    if count < 1:
        raise InputError(f'{len(ids)} image: too few for a training and a validation list')
    return (sorted(order[count:]), sorted(order[:count]),
            f'a random {val_share:.0%} for validation (--val-share, seed {seed})')


def yaml_text(value):
    """A scalar or flow list in YAML (JSON's syntax is YAML's flow syntax)."""
    return json.dumps(value, ensure_ascii=False)


def description_text(name, classes, colors, kind, values, ignore, image_template, label_template, crop,
                     evaluation, root_line):
    lines = ['# Written by describe_dataset.py: check the class names, then train (README: "Your own data").',
             f'format: {FORMAT}',
             f'name: {yaml_text(name)}',
             f'classes: {yaml_text(classes)}',
             f'colors: {yaml_text([list(color) for color in colors])}'
             + ('   # as drawn in the masks' if kind == 'rgb' else '   # for pictures and predictions')]
    if root_line:
        lines.append(root_line)
    lines += [f'images: {yaml_text(image_template)}',
              f'labels: {yaml_text(label_template)}']
    if kind == 'rgb':
        lines.append('label_encoding: rgb                    # colour masks; add ignore_colors: [[r, g, b]] for void')
    elif values == list(range(len(values))):
        lines.append('label_encoding: index                  # a label value is its class\'s position')
        lines.append(f'ignore_index: {ignore if ignore is not None else IGNORE_INDEX}'
                     + ('                      # "no class"' if ignore is not None else
                        '                      # not in the labels; the value that would mean "no class"'))
    else:
        lines.append('label_encoding: values                 # label values mapped to classes')
        lines.append(f'label_values: {{{", ".join(f"{value}: {position}" for position, value in enumerate(values))}}}')
        if ignore is not None:
            lines.append(f'ignore_index: {ignore}')
    lines += ['lists: lists                           # train.txt, val.txt and the splits of generate_splits.py',
              'train_list: train',
              'val_list: val',
              f'crop_size: {yaml_text(crop)}',
              f'eval: {{fit: {evaluation["fit"]}, size: {yaml_text(evaluation["size"])}}}',
              'normalization: imagenet']
    return '\n'.join(lines) + '\n'


def write_text(path, text):
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding='utf-8')


def run(args):
    image_dir, label_dir, out = Path(args.images), Path(args.labels), Path(args.out)
    for folder, flag in ((image_dir, '--images'), (label_dir, '--labels')):
        if not folder.is_dir():
            raise InputError(f'{flag} {folder}: no such folder')
    images_at, labels_at = image_dir.resolve(), label_dir.resolve()
    if images_at.is_relative_to(labels_at) or labels_at.is_relative_to(images_at):
        raise InputError('--images and --labels must be two separate folders, neither inside the other: keep the '
                         'labels in a folder of their own')
    root = Path(os.path.commonpath([image_dir.resolve(), label_dir.resolve()]))
    lists_dir = root / 'lists'
    outputs = [out, lists_dir / 'train.txt', lists_dir / 'val.txt']
    existing = [path for path in outputs if path.exists()]
    if existing and not args.overwrite:
        raise InputError(f'{existing[0]} exists; pass --overwrite to replace what describe_dataset.py wrote before')
    ids, image_suffix, label_suffix, skipped = pair(image_dir, label_dir)
    for path in skipped:
        print(f'skipped {path}: not an image file')
    kind, totals, sizes = survey(image_dir, label_dir, ids, image_suffix, label_suffix, args.threads)
    values, ignore, notes = choose_classes(kind, totals, args.ignore)
    if len(values) > MAX_CLASSES:
        raise InputError(f'the labels hold {len(values)} different {"colours" if kind == "rgb" else "values"}; '
                         f'at most {MAX_CLASSES} classes fit: are these labels, or photographs?')
    if args.classes:
        classes = [name.strip() for name in args.classes.split(',')]
        if len(classes) != len(values) or not all(classes):
            raise InputError(f'--classes names {len(classes)} classes, but the labels hold {len(values)} '
                             f'{"colours" if kind == "rgb" else "class values"}: give one name per class, in the order '
                             f'listed by a run without --classes')
    elif kind == 'rgb':
        classes = [f'class_{r}_{g}_{b}' for r, g, b in values]
    else:
        classes = [f'class_{value}' for value in values]
    from utils.dataset_description import voc_palette
    colors = values if kind == 'rgb' else voc_palette(len(values))
    crop, evaluation, size_notes = propose_sizes(sizes)
    train_ids, val_ids, how = split_lists(ids, args.val_share, args.seed)
    image_template = f'{image_dir.resolve().relative_to(root).as_posix()}/{{id}}{image_suffix}'
    label_template = f'{label_dir.resolve().relative_to(root).as_posix()}/{{id}}{label_suffix}'
    folder = out.resolve().parent
    root_line = None if folder == root else f'root: {yaml_text(os.path.relpath(root, folder))}'
    name = args.name or ''.join(character if character.isalnum() or character in '_.-' else '_'
                                for character in root.name) or 'my_data'
    text = description_text(name, classes, colors, kind, values, ignore, image_template, label_template, crop,
                            evaluation, root_line)
    write_text(lists_dir / 'train.txt', ''.join(f'{name}\n' for name in train_ids))
    write_text(lists_dir / 'val.txt', ''.join(f'{name}\n' for name in val_ids))
    write_text(out, text)
    read_description(out)   # what was written must read back (a bug here is a bug, not bad input)
    report(out, root, ids, image_suffix, label_suffix, kind, values, ignore, classes, totals, notes + size_notes,
           sizes, crop, evaluation, train_ids, val_ids, how, lists_dir)


def report(out, root, ids, image_suffix, label_suffix, kind, values, ignore, classes, totals, notes, sizes, crop,
           evaluation, train_ids, val_ids, how, lists_dir):
    counted = sum(count for key, count in totals.items() if key != ignore)
    print(f'{len(ids)} image/label pairs under {root}: images *{image_suffix}, labels *{label_suffix}')
    print(f'labels are {"RGB colour masks" if kind == "rgb" else "index PNGs"}; '
          f'{len(values)} classes, by pixel share:')
    for position, (value, name) in enumerate(zip(values, classes)):
        shown = f'colour {list(value)}' if kind == 'rgb' else f'value {value}'
        print(f'  {position:3d}  {name:<24} {shown:<22} {totals[value] / max(counted, 1) * 100:6.2f}%')
    if ignore is not None and ignore in totals:
        print(f'  ignored: value {ignore}, {totals[ignore]} pixels')
    for note in notes:
        print(f'note: {note}')
    heights, widths = [size[0] for size in sizes], [size[1] for size in sizes]
    print(f'image sizes: {min(heights)}..{max(heights)} x {min(widths)}..{max(widths)}; proposed crop_size '
          f'{crop}, evaluation {evaluation["fit"]} to {evaluation["size"]}')
    print(f'lists: {len(train_ids)} training and {len(val_ids)} validation ids, {how}, in {lists_dir}')
    print(f'wrote {out}')
    print('next:')
    print(f'  python generate_splits.py --dataset {out} --fractions 4,8')
    print(f'  python main.py --state 2 --dataset {out} --split 8 --sets-id 0 --exp-name sup_8_0')


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', required=True, help='folder of the images (searched recursively)')
    parser.add_argument('--labels', required=True, help='folder of the label files (searched recursively)')
    parser.add_argument('--out', required=True, help='the description file to write (.yaml)')
    parser.add_argument('--classes', default=None, help='class names, comma-separated, in the order listed')
    parser.add_argument('--name', default=None, help='the dataset\'s short name (default: its folder\'s)')
    parser.add_argument('--ignore', default='auto',
                        help='the label value meaning "no class": a number, none, or auto (255 when other '
                             'values are there too, as VOC)')
    parser.add_argument('--val-share', type=float, default=0.2,
                        help='share of the ids for validation when there are no train/ and val/ subfolders')
    parser.add_argument('--seed', type=int, default=0, help='seed of that random validation share')
    parser.add_argument('--threads', type=int, default=4, help='threads reading the labels')
    parser.add_argument('--overwrite', action='store_true', help='replace a description and lists written before')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except InputError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
