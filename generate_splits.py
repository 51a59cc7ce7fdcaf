"""Labeled/unlabeled split lists of the training set (SPEC section 2).

The paper's splits come from one seeded random stream shuffled three times, so reproducing them
byte for byte depends on three things kept here on purpose: the input is the *sorted* full list,
the shuffles accumulate (set 1 reshuffles set 0's order, it does not start again from the sorted
list), and the fractions never draw from the stream, so their number and order do not change any
file. The output format is one name per line, '\\n' endings, a final newline.

Usage:
    python generate_splits.py --dataset voc --list voc_trainaug_sorted.txt
    python generate_splits.py --dataset city --list CITY_ROOT/data_lists/train.txt --out DIR
    python generate_splits.py --dataset my_data.yaml --fractions 4,8

Everything about the dataset comes from its description (utils/dataset_description.py): the
default fractions (`split_fractions`: the paper's for VOC and Cityscapes), the default list
(`train_list`, under the data root) and where the files go. For VOC and Cityscapes, whose
descriptions name the shipped folder (`splits`: data_splits/<dataset>), every run reads the
paper's splits from there: a missing file may be added but none changed, so the paper's list
regenerates the paper's splits, and any other list is refused before anything is written. The
same holds for any `--out` that names the shipped folders, whatever the path: the shipped splits
are never changed. For a dataset of one's own the files go to its own list folder (or `--out`,
never into data_splits/), and `main.py --split N --sets-id K` finds them there. Where the labels
can be read, each labeled set's class pixel shares are printed, so that a split that misses a
class shows.

VOC's description names no training list: the full train+aug list is not part of the VOC download
(it is assembled from SBD), so `--list` gives it.
"""
import math
import random
import sys
from pathlib import Path

from utils.errors import InputError
from utils.flags import OneLineParser
from utils.files import atomic_path

REPO_DIR = Path(__file__).resolve().parent
PAPER_SEED = 7777
PAPER_NUM_SETS = 3



def fraction_name(fraction):
    """The file-name prefix of a fraction.

    The paper names its non-integer fractions after the nearest integer (105.82 -> 106,
    29.75 -> 30), rounding halves up rather than to even so that 2.5 reads as 3, as a person would.
    """
    if float(fraction).is_integer():
        return str(int(fraction))
    return str(math.floor(fraction + 0.5))


def check_fractions(fractions):
    """Fractions must be > 1 (the prefix '1' is the whole list) and give distinct file names.

    Raises ValueError: callers decide which flag or argument to blame.
    """
    if not fractions:
        raise ValueError('no fractions given')
    seen = {}
    for fraction in fractions:
        if not math.isfinite(fraction) or fraction <= 1:
            raise ValueError(f'fraction {fraction!r} must be a finite number greater than 1')
        name = fraction_name(fraction)
        if name == '1':
            raise ValueError(f'fraction {fraction!r} would be named 1, which is the whole list')
        if name in seen:
            raise ValueError(f'fractions {seen[name]!r} and {fraction!r} both give file name {name}')
        seen[name] = fraction
    return [seen[name] for name in seen]


def labeled_count(total, fraction):
    """How many names are labeled: int(total / fraction), bumped by one when that leaves a last
    training batch of a single image (k % 8 == 1), which batch norm cannot handle, unless the
    bump would label every name (a list of two at 1/2: one labeled, one not)."""
    count = int(total / fraction)
    if count % 8 == 1 and count + 1 < total:
        count += 1
    return count


def make_splits(names, fractions, seed=PAPER_SEED, num_sets=PAPER_NUM_SETS):
    """Every split file's lines, keyed by file name, in the order the paper writes them.

    `names` is not modified. Raises ValueError on bad fractions, on too few names for a fraction
    to label even one of them, or on num_sets < 1.
    """
    fractions = check_fractions(list(fractions))
    if num_sets < 1:
        raise ValueError(f'num_sets must be at least 1, got {num_sets}')
    order = list(names)
    for fraction in fractions:
        count = labeled_count(len(order), fraction)
        if count < 1 or count >= len(order):
            raise ValueError(f'{len(order)} names are too few for fraction {fraction!r}: '
                             f'{"no name would be labeled" if count < 1 else "no name would be left unlabeled"}')
    rng = random.Random(seed)
    splits = {}
    for set_id in range(num_sets):
        rng.shuffle(order)
        splits[f'1_labeled_{set_id}.txt'] = list(order)
        for fraction in fractions:
            count = labeled_count(len(order), fraction)
            prefix = fraction_name(fraction)
            splits[f'{prefix}_labeled_{set_id}.txt'] = order[:count]
            splits[f'{prefix}_unlabeled_{set_id}.txt'] = order[count:]
    return splits


def read_list(path, sort=False):
    """The names of a list file, read as every list is (data_processing.read_numbered_list:
    UTF-8, one name a line, none twice), in sorted order.

    The paper's splits are defined on the sorted list, so an unsorted one is refused unless
    `sort` asks to sort it here; a silently different order would give different splits. The
    import is local because data_processing brings torch, seconds of start-up that
    cityscapes_data_lists.py (which imports this module) and `--help` do not need.
    """
    from data_processing import read_numbered_list

    entries = read_numbered_list(path)
    names = [name for _, name in entries]
    if sort:
        return sorted(names)
    for (_, previous), (number, name) in zip(entries, entries[1:]):
        if name < previous:
            raise InputError(f'list file {path} is not sorted ({name!r} on line {number} '
                             f'comes after {previous!r}); pass --sort to sort it first')
    return names


def file_bytes(lines):
    """A split file's content: one line per entry, '\\n' endings, a final newline, UTF-8."""
    return ''.join(f'{line}\n' for line in lines).encode('utf-8')


def write_lines_atomic(path, lines):
    """Write one line per entry with '\\n' endings and a final newline, atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(file_bytes(lines))


def first_changed_file(folder, contents):
    """The first file (in writing order) that exists in `folder` with other bytes than
    `contents` gives it, or None when every file is absent or byte-identical."""
    for file_name, data in contents.items():
        path = folder / file_name
        try:
            if path.exists() and (not path.is_file() or path.read_bytes() != data):
                return file_name
        except OSError as error:
            raise InputError(f'{path} cannot be read to compare it: {error.strerror}') from None
    return None


def files_to_write_into_shipped(folder, contents):
    """The files to write into the paper's shipped split folder: only those it lacks.

    The folder holds the splits every run reads by default, so it may only be completed, never
    changed: regenerating the paper's splits from the paper's list writes nothing, and any other
    list is refused, before anything is written, naming the first file that would change.
    """
    changed = first_changed_file(folder, contents)
    if changed is not None:
        raise InputError(f'{folder} holds the shipped splits and {changed} would change; '
                         'pass --out DIR to write these splits elsewhere')
    return {name: data for name, data in contents.items() if not (folder / name).exists()}


def refuse_changes_unless_overwrite(folder, contents, overwrite):
    """Splits written before are what earlier runs trained on: another seed or list must not
    replace them silently (nor leave a folder of two seeds' files), only with --overwrite."""
    # the requested fractions' files first: 1_labeled_K (the whole list, shuffled) is named last
    in_order = dict(sorted(contents.items(), key=lambda item: item[0].startswith('1_')))
    changed = None if overwrite else first_changed_file(folder, in_order)
    if changed is not None:
        raise InputError(f'{folder / changed} exists with other ids (written before, from another list, seed or '
                         f'--sets); pass --overwrite to replace the splits, or --out DIR to write them elsewhere')


def other_split_files(folder, contents):
    """Split files in `folder` that this run does not write (other fractions or set ids): left as
    they are, but named, since they may come from another seed or list."""
    return sorted(path.name for path in folder.glob('*_labeled_*.txt') if path.name not in contents)


def prepare_out_dir(out_dir):
    """Create the output folder, blaming --out when that is impossible."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f'--out {out_dir} exists and is not a folder')
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f'--out {out_dir} cannot be created: {error.strerror}') from None
    return out_dir


def parse_fractions(text):
    """--fractions as comma-separated numbers, e.g. '2,4,8,105.82'."""
    try:
        fractions = [float(part) for part in text.split(',') if part.strip()]
    except ValueError:
        raise InputError(f'--fractions {text!r} must be comma-separated numbers') from None
    try:
        return check_fractions(fractions)
    except ValueError as error:
        raise InputError(f'--fractions {text!r}: {error}') from None


def build_parser():
    parser = OneLineParser(
        prog='generate_splits.py',
        description='Write the labeled/unlabeled split lists of the paper (or new ones).')
    parser.add_argument('--dataset', required=True, metavar='{voc,city,FILE}',
                        help='voc, city (the paper\'s fractions and shipped folder), or a dataset description '
                             'file (its split_fractions, training list and list folder)')
    parser.add_argument('--list', default=None, type=Path,
                        help='the full training list, sorted, one name per line (default for a description '
                             'file: its train_list)')
    parser.add_argument('--out', type=Path, default=None,
                        help='output folder (default: for voc and city the shipped splits, '
                             'data_splits/PASCAL_VOC_2012 or data_splits/Cityscapes beside this script, where '
                             'only missing files are written and none is changed; for a description file the '
                             'dataset\'s own list folder)')
    parser.add_argument('--data-root', default=None,
                        help='the dataset\'s root, where the description\'s root is not it')
    parser.add_argument('--seed', type=int, default=PAPER_SEED,
                        help=f'random seed (default {PAPER_SEED}, the paper\'s)')
    parser.add_argument('--sets', type=int, default=PAPER_NUM_SETS,
                        help=f'how many set ids to write (default {PAPER_NUM_SETS})')
    parser.add_argument('--fractions', default=None,
                        help='comma-separated 1/s fractions instead of the description\'s split_fractions '
                             '(the paper\'s for voc and city; 2,4,8 by default), e.g. "2,4,8"; a non-integer s is '
                             'named after the nearest integer')
    parser.add_argument('--sort', action='store_true',
                        help='sort the list first instead of refusing an unsorted one')
    parser.add_argument('--no-shares', action='store_true',
                        help='do not read the labels to print each labeled set\'s class pixel shares')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace split files written before with other ids (never the shipped ones)')
    return parser


def write_split_files(out_dir, contents, blame):
    """Write every file atomically; a failure names the folder by the flag it came from."""
    for file_name, data in contents.items():
        try:
            with atomic_path(out_dir / file_name) as temporary:
                temporary.write_bytes(data)
        except OSError as error:
            raise InputError(f'{blame}: cannot write {file_name}: {error.strerror}') from None


def shipped_root():
    """The folder of the paper's shipped splits; nothing under it is ever changed."""
    return (REPO_DIR / 'data_splits').resolve()


def inside_shipped(folder):
    return Path(folder).resolve().is_relative_to(shipped_root())


def writes_its_shipped_folder(info, folder):
    """Only VOC's and Cityscapes' own descriptions may complete their own shipped split folder;
    any other description (whatever its `splits` says) or folder under data_splits/ is refused."""
    from utils.dataset_description import DESCRIPTIONS_DIR, SHIPPED

    shipped_description = (info.description is not None and Path(info.description).resolve().parent ==
                           DESCRIPTIONS_DIR.resolve() and Path(info.description).name in SHIPPED.values())
    return (shipped_description and info.splits_dir is not None
            and Path(folder).resolve() == Path(info.splits_dir).resolve())


def read_dataset(value):
    """The DatasetInfo of --dataset (a function of its own, so that tests can point a shipped
    dataset's splits folder at a copy)."""
    import data_processing as dp

    return dp.get_dataset_info(value)


def choose_dataset(args):
    """(dataset info, its root or None, default fractions, list, default out folder). A dataset
    with shipped splits needs no root (its list is given); the class shares then are not printed."""
    import data_processing as dp

    info = read_dataset(args.dataset)
    try:
        root = dp.resolve_root(info, args.data_root)
    except InputError:
        if info.splits_dir is None:
            raise
        root = None
    list_path = args.list
    if list_path is None:
        if info.train_list is None or root is None:
            where = 'names no train_list' if info.train_list is None else 'has no data root here'
            raise InputError(f'--list: {info.description} {where}; pass --list, the full training list')
        list_path = dp.find_list(info, root, info.train_list)
    out = info.splits_dir if info.splits_dir is not None else root / info.list_dir
    if args.out is None and inside_shipped(out) and not writes_its_shipped_folder(info, out):
        key = 'splits' if info.splits_dir is not None else 'lists'
        raise InputError(f'{info.description}: {key}: {out} is inside the shipped splits {shipped_root()}, which '
                         f'hold the paper\'s splits of VOC and Cityscapes; point it elsewhere or pass --out DIR')
    if args.out is not None and info.splits_dir is None and inside_shipped(args.out):
        raise InputError(f'--out {args.out} is inside the shipped splits {shipped_root()}, which hold the paper\'s '
                         f'splits of VOC and Cityscapes; write the splits of {info.name} elsewhere (default: '
                         f'{out})')
    return info, root, info.split_fractions, list_path, out


def run(args):
    info, root, default_fractions, list_path, default_out = choose_dataset(args)
    if args.fractions is None:
        try:
            fractions = check_fractions(list(default_fractions))
        except ValueError as error:
            raise InputError(f'{info.description}: split_fractions: {error}; or pass --fractions') from None
    else:
        fractions = parse_fractions(args.fractions)
    if args.sets < 1:
        raise InputError(f'--sets must be at least 1, got {args.sets}')
    names = read_list(list_path, sort=args.sort)
    try:
        splits = make_splits(names, fractions, seed=args.seed, num_sets=args.sets)
    except ValueError as error:
        raise InputError(f'list file {list_path}: {error}') from None
    contents = {file_name: file_bytes(lines) for file_name, lines in splits.items()}
    out_dir = default_out if args.out is None else args.out
    if inside_shipped(out_dir):
        out_dir = Path(out_dir)
        if not writes_its_shipped_folder(info, out_dir):
            raise InputError(f'--out {out_dir} is inside the shipped splits {shipped_root()}; only {info.name}\'s '
                             f'own shipped folder may be completed there: pass --out DIR elsewhere')
        written = files_to_write_into_shipped(out_dir, contents)
        write_split_files(out_dir, written, f'shipped split folder {out_dir}')
        print(f'wrote {len(written)} of {len(contents)} split files for {len(names)} names to '
              f'{out_dir}; the other {len(contents) - len(written)} were there already, '
              'byte-identical')
    else:
        out_dir = prepare_out_dir(out_dir)
        refuse_changes_unless_overwrite(out_dir, contents, args.overwrite)
        write_split_files(out_dir, contents, f'--out {out_dir}')
        print(f'wrote {len(contents)} split files for {len(names)} names to {out_dir}')
        others = other_split_files(out_dir, contents)
        if others:
            print(f'note: {len(others)} labeled lists there were not written by this run ({", ".join(others[:3])}'
                  f'{", ..." if len(others) > 3 else ""}): they stay as they were, from whatever list and seed made '
                  f'them')
    if not args.no_shares and (info.splits_dir is None or labels_present(info, root, names)):
        print_class_shares(info, root, splits, names)


def print_class_shares(info, root, splits, names):
    """Each labeled set's class pixel shares (ignored pixels aside), read from the labels, so
    that a set missing a class shows before a run is spent on it."""
    from utils.data_check import class_pixels_of_ids

    if not labels_present(info, root, names):
        where = f'under {root}' if root is not None else '(no dataset root found; pass --data-root)'
        print(f'class pixel shares: not computed, the labels are not {where}')
        return
    pixels = class_pixels_of_ids(info, root, names, info.subset_of('train'))
    print(f'class pixel shares of the labeled sets (ignored pixels aside; {info.name}, '
          f'{info.num_classes} classes):')
    print(f'  {"all":<22} {share_text(info, sum(pixels.values()))}')
    for file_name, ids in splits.items():
        if '_labeled_' not in file_name or file_name.startswith('1_'):
            continue
        total = sum(pixels[name] for name in ids)
        print(f'  {file_name[:-4] + f" ({len(ids)})":<22} {share_text(info, total)}')


def labels_present(info, root, names):
    return root is not None and info.label_path(root, names[0], info.subset_of('train')).is_file()


def share_text(info, counts):
    total = max(int(counts.sum()), 1)
    parts = []
    for index, name in enumerate(info.class_names):
        share = counts[index] / total
        parts.append(f'{name} {share * 100:.1f}%' + (' MISSING' if counts[index] == 0 else ''))
    return ', '.join(parts)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except InputError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
