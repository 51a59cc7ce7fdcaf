"""The Cityscapes list files the datasets read: ROOT/data_lists/{train,val,test}.txt (SPEC section 2).

Cityscapes ships no list files, only folders, so the order of a list has to be fixed by a rule that
anyone can re-run and get the same bytes: cities sorted, then names sorted within a city. The
paper's splits were generated from the train list made this way, so a different order would not
reproduce them.

Usage:
    python cityscapes_data_lists.py --root /data/cityscapes
"""
import sys
from pathlib import Path

from generate_splits import write_lines_atomic
from utils.errors import InputError
from utils.flags import OneLineParser

SPLITS = ('train', 'val', 'test')
LABELED_SPLITS = ('train', 'val')  # the public test labels are all void: nothing to check
IMAGE_SUFFIX = '_leftImg8bit.png'
LABEL_SUFFIX = '_gtFine_labelIds.png'


def image_dir(root):
    """ROOT/leftImg8bit, checked, because without it every split would look merely absent."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f'--root {root} is not a folder')
    images = root / 'leftImg8bit'
    if not images.is_dir():
        raise InputError(f'--root {root} has no leftImg8bit folder ({images} is missing)')
    return images


def list_split(root, split):
    """Entries '<city>/<name>' of one split, cities sorted and names sorted within a city.

    For labeled splits every image must have its gtFine labelIds file: a list that names a missing
    label would only fail later, in the middle of training. Raises InputError naming the first
    missing label, or the split folder if it is missing or holds no images.
    """
    split_dir = image_dir(root) / split
    if not split_dir.is_dir():
        raise InputError(f'split folder {split_dir} is missing')
    entries = []
    for city_dir in sorted((path for path in split_dir.iterdir() if path.is_dir()),
                           key=lambda path: path.name):
        names = sorted(path.name[:-len(IMAGE_SUFFIX)] for path in city_dir.iterdir()
                       if path.name.endswith(IMAGE_SUFFIX) and path.is_file())
        entries.extend(f'{city_dir.name}/{name}' for name in names)
    if not entries:
        raise InputError(f'split folder {split_dir} has no <city>/*{IMAGE_SUFFIX} images')
    if split in LABELED_SPLITS:
        label_root = Path(root) / 'gtFine' / split
        for entry in entries:
            label = label_root / f'{entry}{LABEL_SUFFIX}'
            if not label.is_file():
                raise InputError(f'label file {label} is missing (needed by image {entry})')
    return entries


def run(root):
    root = Path(root)
    images = image_dir(root)
    present = [split for split in SPLITS if (images / split).is_dir()]
    if not present:
        raise InputError(f'--root {root}: {images} holds none of the folders {", ".join(SPLITS)}')
    lists = {}
    for split in SPLITS:
        if split in present:
            lists[split] = list_split(root, split)
        else:
            print(f'note: {images / split} is missing; skipping the {split} list')
    out_dir = root / 'data_lists'
    try:
        out_dir.mkdir(exist_ok=True)
        for split, entries in lists.items():
            write_lines_atomic(out_dir / f'{split}.txt', entries)
    except OSError as error:
        raise InputError(f'cannot write lists into {out_dir}: {error.strerror}') from None
    for split, entries in lists.items():
        print(f'{out_dir / (split + ".txt")}: {len(entries)} entries')


def build_parser():
    parser = OneLineParser(
        prog='cityscapes_data_lists.py',
        description='Write ROOT/data_lists/{train,val,test}.txt from a Cityscapes download.')
    parser.add_argument('--root', required=True, type=Path,
                        help='Cityscapes root holding leftImg8bit/ and gtFine/')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args.root)
    except InputError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
