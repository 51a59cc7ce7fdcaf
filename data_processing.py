"""Datasets: where the data lives, split lists, and the dataset classes (spec 2 and 3).

What a dataset is (classes, colours, layout, label encoding, sizes) comes from its description
file, read by utils/dataset_description.py into the `DatasetInfo` used here; PASCAL VOC and
Cityscapes are the two shipped descriptions in datasets/. `SegmentationDataset` reads images and
labels in one of three modes: ground truth, pseudo labels from a folder, or no label (for
pseudo-labeling). Lists are checked as they are read (entries that escape the root), files for
existence when a dataset is built; utils/data_check.py decodes every file before training starts.
"""
import posixpath
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils import transforms as T
from utils.dataset_description import (COCO, IMAGENET, SHIPPED, DatasetInfo,  # noqa: F401  (used as dp.*)
                                       file_name, full_resolution, get_dataset_info, resolve_root)
from utils.errors import InputError
from utils.images import read_image
from utils.label_encoding import has_values_outside

REPO_DIR = Path(__file__).resolve().parent
DATA_SPLITS_DIR = REPO_DIR / 'data_splits'
IGNORE_INDEX = T.IGNORE_INDEX

IMAGENET_MEAN, IMAGENET_STD = IMAGENET['mean'], IMAGENET['std']
COCO_MEAN_BGR = COCO['mean']   # Caffe DeepLab weights: BGR, 0..255, std 1

# The two shipped descriptions, read once (tests, benchmarks and pictures name them).
VOC = get_dataset_info('voc')
CITYSCAPES = get_dataset_info('city')
VOC_CLASSES, VOC_COLORS = VOC.class_names, VOC.colors
CITY_CLASSES, CITY_COLORS = CITYSCAPES.class_names, CITYSCAPES.colors
DATASETS = tuple(SHIPPED)      # the names --dataset knows besides a description file


def list_folders(info, root):
    """Where a dataset's lists are looked for, first to last: its own list folder (val.txt lives
    there), then the shipped splits folder of the description (data_splits/...), where it has one."""
    return [Path(root) / info.list_dir] + ([info.splits_dir] if info.splits_dir is not None else [])


def find_list(info, root, list_name):
    """A list in the dataset's own list folder wins; else the shipped splits folder."""
    candidates = [folder / f'{list_name}.txt' for folder in list_folders(info, root)]
    for path in candidates:
        if path.is_file():
            return path
    raise InputError(f'list {list_name}.txt not found in {" or ".join(str(path.parent) for path in candidates)}')


# Byte-order marks of the encodings an editor may save a list in instead of UTF-8; UTF-32's come
# first because UTF-32-LE's begins with UTF-16-LE's.
FOREIGN_BYTE_ORDER_MARKS = (
    (b'\xff\xfe\x00\x00', 'UTF-32'), (b'\x00\x00\xfe\xff', 'UTF-32'),
    (b'\xff\xfe', 'UTF-16'), (b'\xfe\xff', 'UTF-16'))


def list_bytes(path):
    """The raw content of a list file, or InputError naming it."""
    if not path.exists():
        raise InputError(f'list file {path} does not exist')
    if not path.is_file():
        raise InputError(f'list file {path} is not a file')
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f'list file {path} cannot be read ({error.strerror})') from None


def list_text(path, data):
    """A list's bytes decoded as UTF-8, a leading byte-order mark dropped.

    The decoding is fixed rather than the locale's, so a run under LC_ALL=C reads non-ASCII ids
    as any other run does; a BOM left in place would make the first id name a file that does not
    exist. Any other encoding is refused, since its ids would name files that do not exist either.
    """
    for mark, encoding in FOREIGN_BYTE_ORDER_MARKS:
        if data.startswith(mark):
            raise InputError(f'list file {path} is saved as {encoding}; save it as UTF-8')
    try:
        text = data.decode('utf-8-sig')
    except UnicodeDecodeError as error:
        line = data.count(b'\n', 0, error.start) + 1
        raise InputError(f'list file {path} is not UTF-8 text (line {line}); save it as UTF-8') from None
    if '\0' in text:   # UTF-16 without a byte-order mark decodes as UTF-8 with NULs between letters
        raise InputError(f'list file {path} holds NUL bytes (UTF-16 text?); save it as UTF-8')
    return text


def check_entry(path, number, name):
    """An id names files under the data root: no absolute path, no `..`, no drive, no space, and
    nothing invisible (a stray byte-order mark or a no-break space would name a missing file)."""
    parts = name.replace('\\', '/').split('/')
    if name.startswith(('/', '\\')) or '..' in parts or ':' in parts[0] or ' ' in name:
        raise InputError(f'{path} line {number}: entry {name!r} is not a plain id inside the data root')
    hidden = next((character for character in name if not character.isprintable()), None)
    if hidden is not None:
        raise InputError(f'{path} line {number}: entry {name!r} holds an invisible character '
                         f'U+{ord(hidden):04X}')


def normalise_id(name):
    """An id as the file path it names: `./x`, `x/` and `a//b` name the files of `x` and `a/b`,
    so they are the same id (one image trained twice as often, or two label writers writing
    one file, otherwise)."""
    return posixpath.normpath(name)


def read_numbered_list(path):
    """The (line number, id) pairs of a list file, one id a line, in file order: every list
    (dataset lists, split lists, generate_splits.py's input) is read here, one way.

    Surrounding whitespace, blank lines and Windows line endings are ignored, and ids are
    compared as the paths they name (`normalise_id`). Refused with one line naming the file: a
    missing or unreadable file, text that is not UTF-8, an entry that is not a plain id inside
    the data root, an id listed twice (it would be trained on twice, and two label writers would
    write its pseudo label at once), and a list without ids.
    """
    path = Path(path)
    text = list_text(path, list_bytes(path))
    entries, first_line = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        written = line.strip()
        if not written:
            continue
        check_entry(path, number, written)
        name = normalise_id(written)
        if name in first_line:
            line, first = first_line[name]
            if first == written:
                raise InputError(f'list file {path} has {name!r} twice (lines {line} and {number})')
            raise InputError(f'list file {path} has {first!r} (line {line}) and {written!r} (line {number}), '
                             f'which name the same files')
        first_line[name] = (number, written)
        entries.append((number, name))
    if not entries:
        raise InputError(f'list file {path} is empty (no names)')
    return entries


def read_list(path):
    """The ids of a list file in file order (see `read_numbered_list` for what is refused)."""
    return [name for _, name in read_numbered_list(path)]


def load_image(path):
    """Image file -> uint8 tensor [3, H, W], RGB, the pixels a viewer shows (16-bit grey scaled,
    transparency over white, EXIF orientation ignored), or InputError naming the file: see
    utils/images.py. A plain RGB file gives a view of its decoded HWC array, no copy.

    Pillow decodes (torchvision's decoders are deprecated since 0.29 in favour of TorchCodec).
    """
    return read_image(path)


def read_label_array(path):
    """Index PNG -> numpy array [H, W] of its indices, or InputError naming the file.

    PIL rather than torchvision decodes labels because a palette PNG (VOC's SegmentationClass)
    must give its indices, not its colours.
    """
    try:
        with Image.open(path) as png:
            if png.mode not in ('L', 'P', 'I', 'I;16'):
                raise InputError(f'{path}: label must be a single-channel index PNG, found mode {png.mode}')
            return np.array(png)
    except (OSError, ValueError) as error:
        raise InputError(f'{path}: cannot read label ({error})') from None


def check_label_values(array, path, num_values):
    """Values must lie in 0..num_values-1 or be 255; the first bad value is named."""
    if array.dtype == np.uint8:
        if not has_values_outside(array, num_values):
            return
    elif not (((array >= num_values) & (array != IGNORE_INDEX)) | (array < 0)).any():
        return
    bad = ((array >= num_values) & (array != IGNORE_INDEX)) | (array < 0)
    raise InputError(f'{path}: label value {int(array[bad].flat[0])} outside 0..{num_values - 1} '
                     f'and {IGNORE_INDEX}')


def load_label_file(path, num_values):
    """Index PNG -> uint8 tensor [H, W]; values must lie in 0..num_values-1 or be 255."""
    array = read_label_array(path)
    check_label_values(array, path, num_values)
    return torch.from_numpy(array if array.dtype == np.uint8 else array.astype(np.uint8))


class SegmentationDataset(torch.utils.data.Dataset):
    """Images of one list with ground truth, pseudo labels, or no label.

    An item is asked for by index, or by (index, seed) from the training samplers: the seed
    drives that sample's augmentation (utils/transforms.py), so it does not depend on the loader
    worker or on the order of draws. Every item is a dict:
      'image'    float32 [3, h, w], normalised
      'label'    uint8 [h, w] (modes 'gt' and 'pseudo'; 255 = ignore)
      'index'    position in the list
      'own_size' (height, width) labels are written at: the image's own size (Cityscapes: after
                 the 512x1024 base resize), before any evaluation padding
      'file_size' (height, width) of the image file
    Modes: 'gt' (ground truth), 'pseudo' (labels read from pseudo_label_dir/<name>.png, already
    train ids), 'unlabeled' (no label; for pseudo-labeling).
    """

    MODES = ('gt', 'pseudo', 'unlabeled')

    def __init__(self, info, root, names, subset, transforms, mode='gt', pseudo_label_dir=None,
                 list_path=None, line_numbers=None):
        if mode not in self.MODES:
            raise ValueError(f'mode must be one of {self.MODES}')
        if mode == 'pseudo' and pseudo_label_dir is None:
            raise ValueError('mode "pseudo" needs pseudo_label_dir')
        self.info = info
        self.root = Path(root)
        self.names = list(names)
        self.subset = subset
        self.transforms = transforms
        self.mode = mode
        self.pseudo_label_dir = Path(pseudo_label_dir) if pseudo_label_dir else None
        self.list_path = list_path
        self.line_numbers = list(line_numbers) if line_numbers is not None else None

    def __len__(self):
        return len(self.names)

    @property
    def has_labels(self):
        return self.mode != 'unlabeled'

    def image_path(self, index):
        return self.info.image_path(self.root, self.names[index], self.subset)

    def label_path(self, index):
        if self.mode == 'pseudo':
            return pseudo_label_path(self.pseudo_label_dir, self.names[index])
        return self.info.label_path(self.root, self.names[index], self.subset)

    def ground_truth_path(self, index):
        """Where this image's ground truth would be (also for unlabeled and pseudo modes)."""
        return self.info.label_path(self.root, self.names[index], self.subset)

    def listed_at(self, index):
        """' (listed in <list>, line <n>)' for messages about entry `index`."""
        if not self.list_path:
            return ''
        line = f', line {self.line_numbers[index]}' if self.line_numbers else ''
        return f' (listed in {self.list_path}{line})'

    def check_files(self, with_labels=None):
        """Stop on the first missing image (or label) before any work starts."""
        with_labels = self.has_labels if with_labels is None else with_labels
        for index in range(len(self)):
            paths = [self.image_path(index)] + ([self.label_path(index)] if with_labels else [])
            for path in paths:
                if not path.is_file():
                    raise InputError(f'{path}: file not found{self.listed_at(index)}')
        return self

    def load_ground_truth(self, index, path=None):
        """Ground truth at the image's file size as class indices (255 = ignore), decoded as
        the description says (Cityscapes: raw ids mapped to train ids; colour masks mapped
        through the colours)."""
        path = path or self.ground_truth_path(index)
        return torch.from_numpy(self.info.encoding.read(path))

    def load_label(self, index):
        """The label at the image's own size in train ids (pseudo labels are stored so)."""
        if self.mode == 'pseudo':
            return load_label_file(self.label_path(index), self.info.num_classes)
        return self.load_ground_truth(index, self.label_path(index))

    def load_pair(self, index):
        image = load_image(self.image_path(index))
        if self.mode == 'unlabeled':
            return image, None
        label = self.load_label(index)
        if self.mode == 'gt' and tuple(label.shape) != tuple(image.shape[-2:]):
            raise InputError(f'{self.label_path(index)}: label is {tuple(label.shape)} but image '
                             f'{self.image_path(index)} is {tuple(image.shape[-2:])}')
        return image, label

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        image, label = self.load_pair(index)
        file_size = tuple(image.shape[-2:])
        own_size = tuple(self.info.base_size or file_size)
        if self.mode == 'pseudo' and tuple(label.shape) != own_size:
            raise InputError(f'{self.label_path(index)}: pseudo label is {tuple(label.shape)} '
                             f'but its image is labeled at {own_size}')
        try:
            image, label = self.transforms(image, label, generator)
        except ValueError as error:
            raise InputError(f'{self.image_path(index)}: {error}') from None
        item = {'image': image, 'index': index, 'own_size': torch.tensor(own_size),
                'file_size': torch.tensor(file_size)}
        if label is not None:
            item['label'] = label
        return item


class ImageFiles(torch.utils.data.Dataset):
    """Images that are no dataset's (predict.py's inputs), each predicted at its own size.

    With a padding evaluation, an image that fits the canvas is padded to it (so images batch,
    as evaluation does); a larger one is left at its size, and predicted alone, window by window
    (`oversize`). With a resizing one (Cityscapes' 512x1024), every image is resized first.
    Items are those of `SegmentationDataset` without a label, plus 'oversize' and 'error'.

    An image that fails to decode (a cut-off BMP or TIFF, a PNG whose compressed data is corrupt
    under valid checksums: the check before the run reads headers and checksums, not every
    pixel) gives an item whose 'error' says why ('' for the others), so that one bad file costs
    its own prediction rather than the run; its image is a stand-in of the batch's shape.
    """

    def __init__(self, info, paths, sizes, coco=False, eval_size=None):
        self.info = info
        self.paths = [Path(path) for path in paths]
        self.canvas = tuple(eval_size or info.eval_size)
        self.oversize = [info.base_size is None and (height > self.canvas[0] or width > self.canvas[1])
                         for height, width in sizes]
        self.fitting = build_transforms(info, 'eval', coco=coco, eval_size=self.canvas)
        self.alone = T.Compose(self.fitting.transforms[-1:])   # normalisation only

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        error = ''
        try:
            image = load_image(path)
        except InputError as failure:
            error = str(failure).removeprefix(f'{path}: ')
            image = torch.zeros((3, 1, 1), dtype=torch.uint8)
        file_size = tuple(image.shape[-2:])
        own_size = tuple(self.info.base_size or file_size)
        image, _ = (self.alone if self.oversize[index] and not error else self.fitting)(image, None)
        return {'image': image, 'index': index, 'own_size': torch.tensor(own_size),
                'file_size': torch.tensor(file_size), 'oversize': self.oversize[index], 'error': error}


def pseudo_label_path(pseudo_label_dir, name):
    return Path(pseudo_label_dir) / file_name(f'{name}.png')


def build_transforms(info, kind, coco=False, crop_size=None, eval_size=None):
    """The chains of spec section 3. kind: 'train', 'eval' (also used for labeling) or 'no_aug'.

    Normalisation comes last, as in the original, so padding is black before normalising.
    """
    crop_size = tuple(crop_size or info.crop_size)
    eval_size = tuple(eval_size or info.eval_size)
    mean, std, bgr, scale = (COCO['mean'], COCO['std'], True, COCO['scale']) if coco else info.normalization
    normalize = T.Normalize(mean, std, bgr=bgr, scale=scale)
    steps = [T.Resize(info.base_size)] if info.base_size else []
    if kind == 'train':
        steps += [T.ScaleCropFlip(crop_size, 0.5, 1.5, 0.5)]
    elif kind == 'no_aug':
        steps += [T.Resize(crop_size)]
    elif kind == 'eval':
        if info.base_size is None:
            steps += [T.ZeroPad(eval_size)]
    else:
        raise ValueError(f'unknown transform kind {kind!r}')
    return T.Compose(steps + [normalize])


def build_dataset(info, root, list_name, mode, transforms, pseudo_label_dir=None, check=True):
    """Read a list (see `find_list`), build the dataset and check that its files exist (the
    thorough check, decoding every file, is utils/data_check.py's)."""
    list_path = find_list(info, root, list_name)
    entries = read_numbered_list(list_path)
    dataset = SegmentationDataset(info, root, [name for _, name in entries], info.subset_of(list_name), transforms,
                                  mode=mode, pseudo_label_dir=pseudo_label_dir, list_path=list_path,
                                  line_numbers=[number for number, _ in entries])
    return dataset.check_files() if check else dataset
