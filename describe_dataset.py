"""Write a starting dataset description from your folders, so a first run needs no format learned.

    python describe_dataset.py --images DIR --labels DIR --out my_data.yaml [--classes a,b,c]

It pairs images and labels by name (the suffix every file name shares, and subfolders, found
rather than assumed: `x.jpg` with `x.png`, `a/x_leftImg8bit.png` with `a/x_mask.png`), sees
whether the labels are index PNGs or RGB colour masks, lists the values or colours found with
their pixel shares (each a class, named `class_<value>` unless `--classes` names them; values
ascending, colours by (r, g, b) ascending), and proposes crop and evaluation sizes from the
images' sizes. It writes the lists into `lists/` beside the two folders (in the folder holding
both, as given, links kept): where every id lies in a top-level subfolder and one is `train`,
train/ is the training list, val/ the validation list (else a seeded random share of train/), and
any other top folder (test/, ...) a list of its own that neither uses; otherwise a seeded random
validation share of all ids. What it found is printed, and then the commands to run.

Everything is checked before anything is written, so a refusal leaves earlier files as they were,
and what is written is what the rest of the program accepts. Refused in one line, as no
description could fix them: an image without a label, a label without an image, a file that
cannot be read, a label in a lossy format, a label of another size than its image, images or
labels with several extensions, labels that mix colour masks and index PNGs, labels of a single
class, colour masks whose edges were smoothed (anti-aliasing leaves blends of two classes'
colours), and file names the list reader would refuse as ids (a space, for one).
"""
import argparse
import json
import os
import random
import statistics
import sys
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from data_processing import check_entry, normalise_id
from utils.dataset_description import FORMAT, MAX_CLASSES, NAME_PATTERN, read_description, voc_palette
from utils.errors import InputError, RunError, one_line
from utils.flags import OneLineParser, positive_int
from utils.files import atomic_path, guarded_write, walk_following_links
from utils.images import IMAGE_EXTENSIONS, READ_ERRORS, image_size
from utils.label_encoding import SINGLE_CHANNEL_MODES, refuse_lossy
from utils.labels import IGNORE_INDEX

SEPARATORS = '._-'
TRAIN_FOLDER, VAL_FOLDER = 'train', 'val'
LARGEST_PADDED_SIDE = 1024     # beyond it evaluation resizes instead of padding to a canvas
CROP_CAP = 321                 # the paper's VOC crop: larger crops cost memory for little gain
LARGEST_LABEL_VALUE = 65535    # the description reader's limit for a raw label value
DESCRIPTION_SUFFIXES = ('.yaml', '.yml')
SHOWN_FILES = 3

# A colour is taken for a blend of two classes' colours along their edges (an anti-aliased or
# smoothed mask) when it is rare, lies on the line between two common colours that fill regions,
# and almost never fills a pixel's four neighbours: a real small class on that line by chance (Cityscapes' truck,
# caravan and trailer lie between black and car) has regions with insides, whereas a smoothed
# edge is a band one shade wide across.
BLEND_SHARE = 0.01             # rarer than this, a colour may be a blend; this common, a class blends lie between
BLEND_DISTANCE = 4.0           # how far (Euclidean, 0..255 units) from the line between two colours
BLEND_INSIDE_SHARE = 0.25      # a blend: fewer of its pixels than this have four neighbours alike


# --- finding the files ------------------------------------------------------------------------------

def image_files(folder, extensions=IMAGE_EXTENSIONS):
    """(relative POSIX paths of the image files under `folder`, [(relative path, why skipped)]),
    both sorted. Links to folders are followed, as a user who links a subfolder in expects, each
    real folder searched once so that a link to a folder above cannot loop; hidden files and
    folders (`.DS_Store`, macOS's `._x.png` copies, `.ipynb_checkpoints/`) are skipped, as they
    are no one's data."""
    found, skipped = [], []

    def relative(path):
        return Path(os.path.relpath(path, folder)).as_posix()

    def unreadable(error):
        skipped.append((relative(error.filename) + '/', f'cannot be searched ({error.strerror})'))

    for current, folders, files, seen_before in walk_following_links(folder, onerror=unreadable):
        if seen_before:
            skipped.append((relative(current) + '/', f'a link to {os.path.realpath(current)}, a folder searched '
                                                     f'already'))
            continue
        skipped += [(relative(os.path.join(current, name)) + '/', 'a hidden folder')
                    for name in folders if name.startswith('.')]
        folders[:] = sorted(name for name in folders if not name.startswith('.'))
        for name in files:
            path = os.path.join(current, name)
            if name.startswith('.'):
                skipped.append((relative(path), 'a hidden file'))
            elif not os.path.exists(path):
                skipped.append((relative(path), f'a broken link (to {os.readlink(path)}, which does not exist)'))
            elif not os.path.isfile(path):
                skipped.append((relative(path), 'not a regular file'))
            elif os.path.splitext(name)[1].lower() in extensions:
                found.append(relative(path))
            else:
                skipped.append((relative(path), 'not an image file'))
    return sorted(found), sorted(skipped)


def common_suffix(names):
    """The file-name ending every name shares, cut to begin at a separator (`.`, `_`, `-`), so
    that `img_001.png` and `img_011.png` share `.png`, not `1.png`."""
    shared = os.path.commonprefix([name[::-1] for name in names])[::-1]
    for position, character in enumerate(shared):
        if character in SEPARATORS:
            return shared[position:]
    return ''


def ids_by_suffix(paths, folder, flag):
    """{id: relative path} with the shared suffix cut off, and the suffix."""
    if not paths:
        raise InputError(f'{flag} {folder}: no image files found in it')
    suffix = common_suffix([Path(path).name for path in paths])
    if '.' not in suffix:
        counts = {}
        for path in paths:
            counts[Path(path).suffix] = counts.get(Path(path).suffix, 0) + 1
        found = ', '.join(f'{extension} ({count})' for extension, count in sorted(counts.items()))
        raise InputError(f'{flag} {folder}: the files have several extensions ({found}); a description names '
                         f'one, so rename or convert them to one')
    return {path[:-len(suffix)]: path for path in paths}, suffix


def pair(image_dir, label_dir):
    """(ids, image suffix, label suffix, skipped files), refusing an image without a label or the
    reverse."""
    images, skipped_images = image_files(image_dir)
    labels, skipped_labels = image_files(label_dir, IMAGE_EXTENSIONS | {'.jpe'})
    image_ids, image_suffix = ids_by_suffix(images, image_dir, '--images')
    label_ids, label_suffix = ids_by_suffix(labels, label_dir, '--labels')
    lonely_images = sorted(set(image_ids) - set(label_ids))
    lonely_labels = sorted(set(label_ids) - set(image_ids))
    skipped = ([(os.path.join(image_dir, path), why) for path, why in skipped_images]
               + [(os.path.join(label_dir, path), why) for path, why in skipped_labels])
    if lonely_images:
        first = lonely_images[0]
        raise InputError(f'{len(lonely_images)} image{"s have" if len(lonely_images) > 1 else " has"} no label: '
                         f'{Path(image_dir) / image_ids[first]} (looked for {Path(label_dir) / (first + label_suffix)})'
                         + (partner_hint(first, image_ids, '--images', image_dir, label_ids, '--labels', label_dir)
                            or '; add the labels or move the images out of --images'))
    if lonely_labels:
        first = lonely_labels[0]
        raise InputError(f'{len(lonely_labels)} label{"s have" if len(lonely_labels) > 1 else " has"} no image: '
                         f'{Path(label_dir) / label_ids[first]} (looked for {Path(image_dir) / (first + image_suffix)})'
                         + (partner_hint(first, label_ids, '--labels', label_dir, image_ids, '--images', image_dir)
                            or '; add the images or move the labels out of --labels'))
    return sorted(image_ids), image_suffix, label_suffix, skipped


def partner_hint(lonely, own_ids, flag, folder, other_ids, other_flag, other_folder):
    """Why `lonely` (an id of the `flag` folder) seems to have no partner when a file of the other
    folder plainly is its partner: a few files that do not end as the others do shorten the ending
    the names share (`a0_mask.png` ... and one `a3.png` share only `.png`, so `a0` looks for
    `a0.png`). '' when no file looks like its partner."""
    own_path = own_ids[lonely]
    for other_id in sorted(other_ids):
        if other_id.startswith(lonely) and other_id[len(lonely):len(lonely) + 1] in tuple(SEPARATORS):
            # the other folder's names run on past the id: the other folder's shared ending broke
            partner, ending = other_ids[other_id], other_ids[other_id][len(lonely):]
            breaking_flag, breaking_folder, files = other_flag, other_folder, other_ids.values()
            break
        if lonely.startswith(other_id) and lonely[len(other_id):len(other_id) + 1] in tuple(SEPARATORS):
            # this folder's names run on past the other's id: this folder's shared ending broke
            partner, ending = other_ids[other_id], own_path[len(other_id):]
            breaking_flag, breaking_folder, files = flag, folder, own_ids.values()
            break
    else:
        return ''
    breaking = sorted(path for path in files if not path.endswith(ending))
    if not breaking:
        return ''
    count = len(breaking)
    shown = ', '.join(str(Path(breaking_folder) / path) for path in breaking[:SHOWN_FILES])
    return (f'; {Path(other_folder) / partner} looks like its partner, but {count} file{"s" if count > 1 else ""} '
            f'of {breaking_flag} ({shown}{", ..." if count > SHOWN_FILES else ""}) '
            f'{"do" if count > 1 else "does"} not end in {ending} as the others do, so the names share only a '
            f'shorter ending: rename {"them" if count > 1 else "it"} to end in {ending}')


def refuse_unlisted_ids(ids, image_path_of):
    """Ids that the list reader (data_processing.check_entry, read_numbered_list) would refuse, or
    read back as other ids, are refused here by the reader's own rule: written into a list they
    would pass here and stop generate_splits.py and main.py later."""
    refused = []
    for name in ids:
        why = id_problem(name)
        if why:
            refused.append((name, why))
    if refused:
        name, why = refused[0]
        count = len(refused)
        several = count > 1
        raise InputError(f'{count} file name{"s" if several else ""} cannot be {"ids" if several else "an id"} in a '
                         f'list: {str(image_path_of(name))!r} ({why}); rename {"them" if several else "it"} (and '
                         f'{"their labels" if several else "its label"}) without spaces, \':\' or invisible '
                         f'characters, e.g. spaces to _')


def id_problem(name):
    """Why the list reader would refuse `name` as an id or read it as another, or None."""
    if name != name.strip():
        return 'it begins or ends with a blank, which a list drops'
    try:
        check_entry('list', 0, name)
    except InputError as error:
        text, entry = str(error), f'entry {name!r} '
        return 'it ' + text.split(entry, 1)[1] if entry in text else text
    if normalise_id(name) != name:
        return f'a list reads it as {normalise_id(name)!r}'
    return None


# --- what the labels hold ---------------------------------------------------------------------------

def survey_label(path, image_path):
    """What one label holds: ('index', {value: pixels}, {}) or ('rgb', {(r, g, b): pixels},
    {(r, g, b): pixels on an edge}), and its image's (height, width), after checking that both
    files read, the label's format, and that its size is its image's."""
    try:
        image_height, image_width = image_size(image_path)
    except InputError as error:
        raise InputError(f'{error}; replace the image, or remove it and its label') from None
    try:
        with Image.open(path) as label:
            refuse_lossy(label, path)
            if label.size != (image_width, image_height):
                raise InputError(f'{path}: label is {label.size[1]}x{label.size[0]} but its image {image_path} '
                                 f'is {image_height}x{image_width}')
            size = (label.size[1], label.size[0])
            if label.mode in SINGLE_CHANNEL_MODES:
                values, counts = np.unique(np.asarray(label), return_counts=True)
                if values[0] < 0 or values[-1] > LARGEST_LABEL_VALUE:
                    raise InputError(f'{path}: label values {values[0]}..{values[-1]} lie outside '
                                     f'0..{LARGEST_LABEL_VALUE}; save labels as 8- or 16-bit PNGs')
                return 'index', dict(zip(values.tolist(), counts.tolist())), {}, size
            rgb = np.asarray(label.convert('RGB'))
    except READ_ERRORS as error:
        raise InputError(f'{path}: cannot read label ({" ".join(str(error).split())}); replace the label, or remove '
                         f'it and its image') from None
    codes = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    values, counts = np.unique(codes, return_counts=True)
    edge_values, edge_counts = np.unique(codes[~inside(codes)], return_counts=True)
    return 'rgb', colour_counts(values, counts), colour_counts(edge_values, edge_counts), size


def inside(codes):
    """Pixels whose four neighbours are of their own colour (none on the image's border)."""
    result = np.zeros(codes.shape, bool)
    centre = codes[1:-1, 1:-1]
    result[1:-1, 1:-1] = ((centre == codes[:-2, 1:-1]) & (centre == codes[2:, 1:-1])
                          & (centre == codes[1:-1, :-2]) & (centre == codes[1:-1, 2:]))
    return result


def colour_counts(codes, counts):
    return {((code >> 16) & 255, (code >> 8) & 255, code & 255): count
            for code, count in zip(codes.tolist(), counts.tolist())}


def survey(image_dir, label_dir, ids, image_suffix, label_suffix, threads):
    """(kind, {value or colour: pixels}, {colour: pixels on an edge}, image sizes, {label path:
    the values or colours it holds}) over every label, in threads."""
    def one(name):
        label_path, image_path = Path(label_dir) / (name + label_suffix), Path(image_dir) / (name + image_suffix)
        return (name, *survey_label(label_path, image_path))

    with ThreadPoolExecutor(max(threads, 1)) as pool:
        results = list(pool.map(one, ids))
    kinds = {}
    for name, kind, *_ in results:
        kinds.setdefault(kind, name)
    if len(kinds) > 1:
        raise InputError(f'the labels mix colour masks and index PNGs (colour: {kinds["rgb"] + label_suffix}, '
                         f'index: {kinds["index"] + label_suffix}); make them all one kind')
    totals, edges = {}, {}
    for _, _, counts, edge_counts, _ in results:
        for table, source in ((totals, counts), (edges, edge_counts)):
            for key, count in source.items():
                table[key] = table.get(key, 0) + count
    held = {Path(label_dir) / (name + label_suffix): set(counts) for name, _, counts, _, _ in results}
    return next(iter(kinds)), totals, edges, [size for *_, size in results], held


def edge_blends(totals, edges):
    """The colours that look like blends of two common colours along their edges (see
    BLEND_SHARE): [(colour, share, (colour a, colour b))], the commonest first."""
    colours = list(totals)
    points = np.array(colours, dtype=np.float64)
    shares = np.array([totals[colour] for colour in colours], dtype=np.float64) / sum(totals.values())
    inside_shares = np.array([1 - edges.get(colour, 0) / totals[colour] for colour in colours])
    common = np.flatnonzero((shares >= BLEND_SHARE) & (inside_shares >= BLEND_INSIDE_SHARE))
    candidates = np.flatnonzero((shares < BLEND_SHARE) & (inside_shares < BLEND_INSIDE_SHARE))
    if len(common) < 2 or not len(candidates):
        return []
    nearest = np.full(len(candidates), np.inf)
    between = np.zeros((len(candidates), 2), int)
    for first, second in combinations(common, 2):
        start, direction = points[first], points[second] - points[first]
        offsets = points[candidates] - start
        along = np.clip(offsets @ direction / (direction @ direction), 0, 1)
        distance = np.linalg.norm(offsets - along[:, None] * direction, axis=1)
        closer = distance < nearest
        nearest[closer], between[closer] = distance[closer], (first, second)
    found = [(colours[candidates[row]], shares[candidates[row]], (colours[between[row, 0]], colours[between[row, 1]]))
             for row in np.flatnonzero(nearest <= BLEND_DISTANCE)]
    return sorted(found, key=lambda blend: -blend[1])


def blend_refusal(blends, totals, held):
    """The one line for smoothed masks, naming the masks that hold blends (a dataset of hundreds
    of masks may have a few drawn otherwise)."""
    colour, share, (first, second) = blends[0]
    blended = {blend for blend, _, _ in blends}
    masks = [str(path) for path, colours in held.items() if colours & blended]
    ends = sorted({end for _, _, pair_of in blends for end in pair_of})
    shown = ', '.join(str(list(end)) for end in ends[:4]) + (', ...' if len(ends) > 4 else '')
    return InputError(f'{len(blends)} of the {len(totals)} colours in the labels look like blends along the edges '
                      f'between {len(ends)} class colours ({shown}): e.g. {list(colour)}, {share:.2%} of the pixels, '
                      f'lies between {list(first)} and {list(second)}, in {len(masks)} of {len(held)} masks ('
                      f'{", ".join(masks[:SHOWN_FILES])}{", ..." if len(masks) > SHOWN_FILES else ""}): they were '
                      f'anti-aliased or smoothed: save them without anti-aliasing or smoothing (and resize them with '
                      f'nearest-neighbour), so that every pixel holds one class\'s colour')


def choose_classes(kind, totals, ignore):
    """The class values (or colours) in order, the ignore value, and what was decided, in words."""
    notes = []
    if kind == 'rgb':
        if isinstance(ignore, int):
            raise InputError(f'--ignore {ignore}: the labels are colour masks, whose "no class" is a colour: pass it '
                             f'as --ignore R,G,B (e.g. --ignore 255,255,255)')
        if not isinstance(ignore, tuple):
            return sorted(totals), None, notes
        if ignore not in totals:
            notes.append(f'--ignore {",".join(map(str, ignore))}: no label holds that colour; it is kept as '
                         f'ignore_colors all the same')
        return sorted(colour for colour in totals if colour != ignore), ignore, notes
    if isinstance(ignore, tuple):
        raise InputError(f'--ignore {",".join(map(str, ignore))}: the labels are index PNGs, whose "no class" is a '
                         f'value: pass it as --ignore N (e.g. --ignore 255)')
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
    return [value for value in values if value != ignore], ignore, notes


def refuse_too_few_classes(kind, values, ignore, totals, label_dir):
    if len(values) >= 2:
        return
    where = f'are these the masks (--labels {label_dir}), saved with their class values?'
    if not values:
        raise InputError(f'every label pixel is the ignored value {ignore}: no class is left; a segmentation needs '
                         f'at least two classes: {where}')
    found = f'colour {list(values[0])}' if kind == 'rgb' else f'value {values[0]}'
    besides = f' (besides the ignored {ignore})' if ignore is not None and ignore in totals else ''
    raise InputError(f'the labels hold a single class, {found}{besides}, in every pixel; a segmentation needs at '
                     f'least two classes: {where}')


def class_names(given, values, kind):
    """The names of the classes: --classes (already checked to be names), else class_<value>."""
    if given is None:
        return [f'class_{r}_{g}_{b}' for r, g, b in values] if kind == 'rgb' else [f'class_{value}' for value in values]
    if len(given) != len(values):
        raise InputError(f'--classes names {len(given)} classes, but the labels hold {len(values)} '
                         f'{"colours" if kind == "rgb" else "class values"}: give one name per class, in the '
                         f'order a run without --classes lists them (values ascending, colours by (r, g, b) '
                         f'ascending)')
    return given


# --- the flags ----------------------------------------------------------------------------------

def ignore_value(text):
    """--ignore: auto, none, a label value the description reader accepts, or a colour R,G,B
    (colour masks' void)."""
    if text in ('auto', 'none'):
        return text
    if text.strip().isdecimal() and int(text) <= LARGEST_LABEL_VALUE:
        return int(text)
    parts = text.split(',')
    if len(parts) == 3 and all(part.strip().isdecimal() and int(part) <= 255 for part in parts):
        return tuple(int(part) for part in parts)
    raise argparse.ArgumentTypeError(f'must be auto, none, a label value 0..{LARGEST_LABEL_VALUE} or a colour R,G,B, '
                                     f'got {text!r}')


def share(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < 1:
        raise argparse.ArgumentTypeError(f'must be a number between 0 and 1, got {text!r}')
    return value


def given_classes(text):
    """--classes as names, refused as the description reader would refuse them."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(',')]
    for position, name in enumerate(names, start=1):
        if not name:
            raise InputError(f'--classes {text!r}: name {position} of {len(names)} is empty; give one name per class, '
                             f'comma-separated')
    for position, name in enumerate(names):
        if names.index(name) != position:
            raise InputError(f'--classes: {name!r} is given twice (names {names.index(name) + 1} and {position + 1}); '
                             f'every class needs a name of its own')
    return names


def dataset_name(given, root):
    """--name, checked by the description reader's rule, or one made from the root folder's name
    by that rule: accents dropped, other characters _, no leading separator."""
    if given is not None:
        if not NAME_PATTERN.match(given):
            raise InputError(f'--name {given!r}: a dataset name is letters, digits, _ . and - (ASCII), beginning with '
                             f'a letter or digit, e.g. my_data')
        return given
    plain = unicodedata.normalize('NFKD', root.name).encode('ascii', 'ignore').decode('ascii')
    name = ''.join(character if character.isalnum() or character in '_.-' else '_' for character in plain)
    name = name.lstrip('_.-')
    return name if NAME_PATTERN.match(name) else 'my_data'


# --- where things go ----------------------------------------------------------------------------

def places(image_dir, label_dir, out):
    """The data root (the folder holding both folders as the user named them, links kept, so the
    lists land beside them), after refusing folders and an --out that cannot work."""
    for folder, flag in ((image_dir, '--images'), (label_dir, '--labels')):
        if not os.path.isdir(folder):
            raise InputError(f'{flag} {folder}: no such folder')
    images_at, labels_at = Path(image_dir).resolve(), Path(label_dir).resolve()
    images_given, labels_given = Path(os.path.abspath(image_dir)), Path(os.path.abspath(label_dir))
    if (images_at.is_relative_to(labels_at) or labels_at.is_relative_to(images_at)
            or images_given.is_relative_to(labels_given) or labels_given.is_relative_to(images_given)):
        raise InputError('--images and --labels must be two separate folders, neither inside the other: keep the '
                         'labels in a folder of their own')
    root = Path(os.path.commonpath([images_given, labels_given]))
    if root == Path(root.anchor):
        raise InputError(f'--images {image_dir} and --labels {label_dir} share no folder but {root}, where the lists '
                         f'would go: put both folders under one folder')
    if os.path.isdir(out):
        raise InputError(f'--out {out} is a folder; name the description file to write, e.g. {Path(out) / "data.yaml"}')
    if not str(out).endswith(DESCRIPTION_SUFFIXES):
        raise InputError(f'--out {out}: a description file\'s name ends in .yaml (or .yml), e.g. '
                         f'{Path(out).with_suffix(".yaml")}')
    out_at = Path(out).resolve()
    for folder, flag, at in ((image_dir, '--images', images_at), (label_dir, '--labels', labels_at)):
        if out_at.is_relative_to(at):
            raise InputError(f'--out {out} lies inside {flag} {folder}, among the data; write it beside the folders, '
                             f'e.g. {root / Path(out).name}')
        if (root / 'lists').resolve().is_relative_to(at):
            raise InputError(f'{flag} {folder}: the lists go to {root / "lists"}, inside it; rename the folder')
    return root


def refuse_clashes(out, written, overwrite):
    """--out must not be one of the lists, and nothing is replaced without --overwrite, nor a
    folder ever (a write onto one would fail after the files before it were replaced)."""
    out_at = Path(out).resolve()
    for path in written:
        if path.resolve() == out_at:
            raise InputError(f'--out {out} is the list {path} this run writes; name another description file')
    for path in [Path(out)] + written:
        if path.parent.exists() and not path.parent.is_dir():
            raise InputError(f'{path.parent} exists and is no folder; move it away, describe_dataset.py writes '
                             f'{path.name} into a folder of that name')
        if path.exists() and not path.is_file():
            raise InputError(f'{path} exists and is no file; move it away, describe_dataset.py writes a file there')
    existing = [path for path in [Path(out)] + written if path.exists()]
    if existing and not overwrite:
        raise InputError(f'{existing[0]} exists; pass --overwrite to replace what describe_dataset.py wrote before')


def refuse_stale_splits(lists_dir, lists):
    """Split lists made by generate_splits.py from the training list, beside lists this run would
    change (another --seed or --val-share, images added): they would still be found by
    `--split N --sets-id K`, holding ids now in validation, or gone."""
    changed = [path for path, names in lists.items()
               if path.is_file() and path.read_text(encoding='utf-8', errors='replace').split('\n')[:-1] != names]
    splits = sorted(lists_dir.glob('*_labeled_*.txt')) + sorted(lists_dir.glob('*_unlabeled_*.txt'))
    if changed and splits:
        raise InputError(f'{changed[0]} would change, and {len(splits)} split lists beside it ({splits[0].name}, ...) '
                         f'were made from the lists as they are: move them away first, then make new ones with '
                         f'generate_splits.py')


def split_lists(ids, val_share, seed):
    """(train ids, val ids, how, {other top folder: ids}). Where every id lies in a top-level
    subfolder and one is train/: train/ trains, val/ validates (else a seeded random share of
    train/), and any other top folder (test/, ...) is kept out of both, in a list of its own,
    since its images may be the ones a result is reported on. Otherwise a seeded random
    validation share of all ids."""
    by_top = {}
    for name in ids:
        top, _, rest = name.partition('/')
        by_top.setdefault(top if rest else None, []).append(name)
    if None not in by_top and TRAIN_FOLDER in by_top:
        others = {top: names for top, names in sorted(by_top.items()) if top not in (TRAIN_FOLDER, VAL_FOLDER)}
        if VAL_FOLDER in by_top:
            return by_top[TRAIN_FOLDER], by_top[VAL_FOLDER], 'from the train/ and val/ subfolders', others
        train, val, how = random_split(by_top[TRAIN_FOLDER], val_share, seed, 'train/')
        return train, val, f'from the train/ subfolder (no val/): {how}', others
    train, val, how = random_split(ids, val_share, seed, 'all ids')
    if TRAIN_FOLDER in by_top:
        loose = by_top[None]
        lie = 's lie' if len(loose) > 1 else ' lies'
        how += (f'; train/ is not used as the training list, since {len(loose)} id{lie} in no subfolder '
                f'(e.g. {loose[0]})')
    return train, val, how, {}


def random_split(ids, val_share, seed, what):
    if len(ids) < 2:
        raise InputError(f'{len(ids)} image in {what}: too few for a training and a validation list')
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    count = min(max(int(round(len(order) * val_share)), 1), len(order) - 1)
    return (sorted(order[count:]), sorted(order[:count]),
            f'a random {val_share:.0%} of {what} for validation (--val-share, seed {seed})')


# --- what is written ----------------------------------------------------------------------------

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


def yaml_text(value):
    """A scalar or flow list in YAML (JSON's syntax is YAML's flow syntax)."""
    return json.dumps(value, ensure_ascii=False)


def path_template(folder, suffix):
    """`folder/{id}suffix`, braces in the folder or suffix doubled so they stay literal."""
    def literal(text):
        return text.replace('{', '{{').replace('}', '}}')
    return f'{literal(folder)}/{{id}}{literal(suffix)}'


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
        lines.append('label_encoding: rgb                    # colour masks')
        lines.append(f'ignore_colors: {yaml_text([list(ignore)])}' if ignore is not None else
                     '# ignore_colors: [[r, g, b]]            # colours that mean "no class", if any')
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


def write_all(out, text, lists):
    """The description, read back before anything is written, then the lists and last the
    description, each atomically: a refusal or a failed write leaves the earlier files whole, and
    a description never names lists that were not written."""
    with guarded_write(out, 'the dataset description'), atomic_path(out) as temporary:
        temporary.write_text(text, encoding='utf-8')
        try:
            read_description(temporary)
        except InputError as error:   # a bug of this program, worded for its report
            raise InputError(f'{out}: describe_dataset.py composed a description that does not read back '
                             f'({str(error).replace(str(temporary), str(out))}); nothing was written, please '
                             f'report this') from None
        for path, names in lists.items():
            with guarded_write(path, 'list'), atomic_path(path) as list_temporary:
                list_temporary.write_text(''.join(f'{name}\n' for name in names), encoding='utf-8')


def run(args):
    image_dir, label_dir, out = args.images, args.labels, args.out
    given = given_classes(args.classes)
    root = places(image_dir, label_dir, out)
    name = dataset_name(args.name, root)
    lists_dir = root / 'lists'
    ids, image_suffix, label_suffix, skipped = pair(image_dir, label_dir)
    for path, why in skipped:
        print(f'skipped {path}: {why}')
    refuse_unlisted_ids(ids, lambda image_id: Path(image_dir) / (image_id + image_suffix))
    train_ids, val_ids, how, others = split_lists(ids, args.val_share, args.seed)
    lists = {lists_dir / 'train.txt': train_ids, lists_dir / 'val.txt': val_ids}
    lists.update({lists_dir / f'{top}.txt': names for top, names in others.items()})
    refuse_clashes(out, list(lists), args.overwrite)
    refuse_stale_splits(lists_dir, lists)

    kind, totals, edges, sizes, held = survey(image_dir, label_dir, ids, image_suffix, label_suffix, args.threads)
    values, ignore, notes = choose_classes(kind, totals, args.ignore)
    refuse_too_few_classes(kind, values, ignore, totals, label_dir)
    blends = edge_blends(totals, edges) if kind == 'rgb' else []
    if blends:   # before --classes is counted: the blends are the colours it does not name
        raise blend_refusal(blends, totals, held)
    classes = class_names(given, values, kind)
    if len(values) > MAX_CLASSES:
        raise InputError(f'the labels hold {len(values)} different {"colours" if kind == "rgb" else "values"}; '
                         f'at most {MAX_CLASSES} classes fit: are these labels, or photographs?')
    colors = values if kind == 'rgb' else voc_palette(len(values))
    crop, evaluation, size_notes = propose_sizes(sizes)
    image_template = path_template(Path(os.path.relpath(os.path.abspath(image_dir), root)).as_posix(), image_suffix)
    label_template = path_template(Path(os.path.relpath(os.path.abspath(label_dir), root)).as_posix(), label_suffix)
    folder, root_at = Path(out).resolve().parent, root.resolve()   # as the reader resolves them
    root_line = None if folder == root_at else f'root: {yaml_text(os.path.relpath(root_at, folder))}'
    text = description_text(name, classes, colors, kind, values, ignore, image_template, label_template, crop,
                            evaluation, root_line)
    write_all(out, text, lists)
    report(out, root, ids, image_suffix, label_suffix, kind, values, ignore, classes, totals, notes + size_notes,
           sizes, crop, evaluation, train_ids, val_ids, how, others, lists_dir)


def report(out, root, ids, image_suffix, label_suffix, kind, values, ignore, classes, totals, notes, sizes, crop,
           evaluation, train_ids, val_ids, how, others, lists_dir):
    counted = sum(count for key, count in totals.items() if key != ignore)
    print(f'{len(ids)} image/label pairs under {root}: images *{image_suffix}, labels *{label_suffix}')
    print(f'labels are {"RGB colour masks" if kind == "rgb" else "index PNGs"}; '
          f'{len(values)} classes, by pixel share:')
    for position, (value, name) in enumerate(zip(values, classes)):
        shown = f'colour {list(value)}' if kind == 'rgb' else f'value {value}'
        print(f'  {position:3d}  {name:<24} {shown:<22} {totals[value] / max(counted, 1) * 100:6.2f}%')
    if ignore is not None and ignore in totals:
        shown = f'colour {list(ignore)}' if kind == 'rgb' else f'value {ignore}'
        print(f'  ignored: {shown}, {totals[ignore]} pixels')
    for note in notes:
        print(f'note: {note}')
    heights, widths = [size[0] for size in sizes], [size[1] for size in sizes]
    print(f'image sizes: {min(heights)}..{max(heights)} x {min(widths)}..{max(widths)}; proposed crop_size '
          f'{crop}, evaluation {evaluation["fit"]} to {evaluation["size"]}')
    print(f'lists: {len(train_ids)} training and {len(val_ids)} validation ids, {how}, in {lists_dir}')
    for top, names in others.items():
        print(f'lists: {top}/ ({len(names)} ids) in {lists_dir / (top + ".txt")}, used for neither training nor '
              f'validation')
    print(f'wrote {out}')
    print('next:')
    print(f'  python generate_splits.py --dataset {out} --fractions 4,8')
    print(f'  python main.py --state 2 --dataset {out} --split 8 --sets-id 0 --exp-name sup_8_0')


def build_parser():
    parser = OneLineParser(prog='describe_dataset.py', description=__doc__.splitlines()[0])
    parser.add_argument('--images', required=True, help='folder of the images (searched recursively, links followed)')
    parser.add_argument('--labels', required=True, help='folder of the label files (searched recursively)')
    parser.add_argument('--out', required=True, help='the description file to write (.yaml)')
    parser.add_argument('--classes', default=None,
                        help='class names, comma-separated, in the order a run without --classes lists them: label '
                             'values ascending, colours by (r, g, b) ascending')
    parser.add_argument('--name', default=None, help='the dataset\'s short name (default: its folder\'s)')
    parser.add_argument('--ignore', default='auto', type=ignore_value,
                        help='what means "no class": a label value 0..65535, or for colour masks a colour R,G,B '
                             '(e.g. 255,255,255); none; or auto (for index labels 255 when other values are there '
                             'too, as VOC)')
    parser.add_argument('--val-share', type=share, default=0.2,
                        help='share of the ids (or of train/) for validation when there is no val/ subfolder')
    parser.add_argument('--seed', type=int, default=0, help='seed of that random validation share')
    parser.add_argument('--threads', type=positive_int, default=4, help='threads reading the labels')
    parser.add_argument('--overwrite', action='store_true', help='replace a description and lists written before')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except RunError as error:
        print(f'{error.prefix}: {one_line(error)}', file=sys.stderr)
        return error.exit_status
    return 0


if __name__ == '__main__':
    sys.exit(main())
