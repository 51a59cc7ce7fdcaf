"""A dataset is a file: the YAML description that one reader turns into the `DatasetInfo` every
other module receives.

PASCAL VOC and Cityscapes are two such files shipped in `datasets/`, read by this same code, and
a user's own data is a third: nothing outside this module asks which dataset it is. A
description says the class names (a label value is its class's position), their colours
(generated when absent: the PASCAL VOC palette, whose bit pattern spreads any count of classes
over distinct colours), where images and labels are and how an id names them, where the lists
are, how label files encode classes (utils/label_encoding.py), the crop and evaluation sizes,
how evaluation fits an image, and the input normalisation. README.md ("Your own data") shows a
complete file; `describe_dataset.py` writes one from a user's folders.

A description that contradicts itself (colours and classes of different counts, an ignore value
inside the classes' range, a mapping to a class that does not exist, an unknown key) is refused
in one line naming the file and the key, before anything reads data.
"""
import difflib
import hashlib
import json
import math
import os
import re
import string
from dataclasses import dataclass, replace
from pathlib import Path

from utils.errors import InputError
from utils.label_encoding import KINDS, LabelEncoding
from utils.labels import IGNORE_INDEX

REPO_DIR = Path(__file__).resolve().parents[1]
DESCRIPTIONS_DIR = REPO_DIR / 'datasets'
SHIPPED = {'voc': 'voc.yaml', 'city': 'cityscapes.yaml'}     # --dataset names of the shipped files
FORMAT = 'dstcbc-dataset-v1'
MAX_CLASSES = 254               # uint8 labels: 255 is "ignore", 254 marks an unknown colour
TEMPLATE_FIELDS = {'id', 'subset'}
NAME_PATTERN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')

IMAGENET = {'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225), 'bgr': False, 'scale': 1 / 255}
COCO = {'mean': (104.008, 116.669, 122.675), 'std': (1.0, 1.0, 1.0), 'bgr': True, 'scale': 1.0}  # Caffe: BGR 0..255
NORMALIZATIONS = {'imagenet': IMAGENET, 'coco': COCO}
EVAL_FITS = ('pad', 'resize')

KEYS = {
    'format': 'the format version, ' + FORMAT,
    'name': 'a short name, recorded in results (voc, city, cracks, ...)',
    'title': 'a human title',
    'classes': 'class names; a label value is its class\'s position',
    'colors': 'one [r, g, b] per class (default: the PASCAL VOC palette)',
    'root': 'the data root, relative to this file (default: the folder holding it)',
    'root_env': 'an environment variable that may name the root',
    'images': 'where an image is: a path under the root with {id} (and {subset})',
    'labels': 'where its label is, the same way',
    'subsets': 'list name -> the {subset} its ids live in, and default',
    'lists': 'the folder of the dataset\'s lists, under the root (default lists)',
    'splits': 'a folder of shipped split lists, relative to this file',
    'train_list': 'the full training list (the default of generate_splits.py --list)',
    'split_fractions': 'the labeled fractions 1/s generate_splits.py makes by default (default [2, 4, 8])',
    'val_list': 'the validation list (default val)',
    'label_encoding': 'index, values or rgb',
    'ignore_index': 'the label value that means no class (default 255)',
    'ignore_values': 'more label values that mean no class',
    'label_values': 'values encoding: label value -> class (position or name)',
    'ignore_colors': 'rgb encoding: colours that mean no class',
    'crop_size': 'the training crop [height, width] (default [321, 321])',
    'eval': 'evaluation: fit (pad or resize), size [h, w], window [h, w], full_size [h, w]',
    'normalization': 'imagenet (default), coco, or {mean, std, bgr, scale}',
}
EVAL_KEYS = ('fit', 'size', 'window', 'full_size')
NORMALIZATION_KEYS = ('mean', 'std', 'bgr', 'scale')


def voc_palette(num_colors=256):
    """PASCAL VOC's colour map: the bits of the class index spread over R, G and B, high bit
    first. Also the colours of every dataset that gives none: distinct for up to 256 classes,
    class 0 black."""
    colors = []
    for index in range(num_colors):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        colors.append((red, green, blue))
    return colors


@dataclass(frozen=True)
class DatasetInfo:
    """Everything the program knows about a dataset, read from its description."""
    name: str                     # recorded in results; the shipped ones are voc and city
    title: str
    class_names: tuple
    colors: tuple                 # one (r, g, b) per class
    image_template: str           # e.g. 'JPEGImages/{id}.jpg', relative to the root
    label_template: str
    subsets: tuple                # ((list name, subset), ...) and ('default', subset)
    list_dir: str                 # the dataset's own list folder, relative to its root
    splits_dir: Path | None       # shipped split lists (data_splits/...), or None
    split_fractions: tuple        # generate_splits.py's default fractions 1/s
    train_list: str | None
    val_list: str
    encoding: LabelEncoding
    crop_size: tuple              # training crop (height, width)
    eval_size: tuple              # pad: the canvas; resize: the size every image is resized to
    eval_fit: str                 # 'pad' or 'resize'
    eval_window: tuple | None     # sliding window of every evaluation, or None
    full_size: tuple | None       # --full-resolution: evaluate the files at this size, no resize
    normalization: tuple          # (mean, std, bgr, scale)
    root_env: str | None
    default_root: Path
    description: Path | None      # the file it was read from
    digest: str                   # SHA-256 of what the description says (comments aside)
    described: str = '{}'         # what it says, as JSON (which key changed, when the digest did)

    @property
    def key(self):
        return self.name

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def base_size(self):
        """The size every image is resized to first (fit: resize), or None (fit: pad)."""
        return self.eval_size if self.eval_fit == 'resize' else None

    def subset_of(self, list_name):
        """Which {subset} the ids of a list live in (Cityscapes: train, val, test)."""
        table = dict(self.subsets)
        return table.get(Path(list_name).stem, table.get('default', ''))

    def image_path(self, root, name, subset):
        return Path(root) / file_name(self.image_template.format(id=name, subset=subset))

    def label_path(self, root, name, subset):
        return Path(root) / file_name(self.label_template.format(id=name, subset=subset))


def file_name(text):
    """The path the file system knows for UTF-8 text: the text itself in a UTF-8 locale; under an
    ASCII one (LC_ALL=C without UTF-8 mode) Python names non-ASCII files by their bytes as escapes,
    so a list's non-ASCII id (lists are UTF-8 whatever the locale) names its file there too."""
    try:
        return os.fsdecode(text.encode('utf-8', 'surrogateescape'))
    except UnicodeError:
        return text


def dataset_meaning(info):
    """What a network trained on this dataset learned under, JSON-ready, kept in its checkpoints:
    how a label file says each class (values, ignore values, colours of colour masks) and how
    input pixels are normalised. The same class names read under another of these would score
    or predict otherwise in silence (a colour of two classes swapped in a description: 38% mIoU
    became 25%). Colours of index labels only draw pictures and are left out."""
    encoding = info.encoding
    label_encoding = {'kind': encoding.kind, 'ignore_index': encoding.ignore_index,
                      'values': [list(pair) for pair in encoding.values],
                      'ignore_values': list(encoding.ignore_values)}
    if encoding.kind == 'rgb':
        label_encoding.update(colors=[list(color) for color in encoding.colors],
                              ignore_colors=[list(color) for color in encoding.ignore_colors])
    mean, std, bgr, scale = info.normalization
    return {'label_encoding': label_encoding,
            'normalization': {'mean': list(mean), 'std': list(std), 'bgr': bgr, 'scale': scale}}


MEANING_EFFECTS = {
    'label_encoding': 'its labels said the classes otherwise (values or colours), so its scores compare other classes',
    'normalization': 'its input pixels were normalised otherwise, so it sees other inputs than it learned from',
}


def meaning_differences(recorded, info):
    """The keys of `dataset_meaning` in which `recorded` (a checkpoint's) differs from `info`'s;
    [] where the checkpoint records none (older ones, converted weights)."""
    if not isinstance(recorded, dict):
        return []
    now = json.loads(json.dumps(dataset_meaning(info)))
    return [key for key in now if key in recorded and recorded[key] != now[key]]


def meaning_warning(path, recorded_description, differences, info):
    """The one line that says a checkpoint is used under a description that means otherwise."""
    was = f' ({recorded_description})' if recorded_description else ''
    effects = '; '.join(MEANING_EFFECTS[key] for key in differences)
    verb = 'differs' if len(differences) == 1 else 'differ'
    return (f'{path} was trained under a description{was} whose {" and ".join(differences)} {verb} from '
            f'{info.description or info.name}\'s: {effects}; if that is not meant, pass the description it was '
            f'trained with')


def full_resolution(info):
    """The dataset evaluated at its files' own size (Cityscapes without its 512x1024 base resize,
    labels at 1024x2048, for sliding-window evaluation); a padded dataset is unchanged."""
    if info.eval_fit != 'resize':
        return info
    if info.full_size is None:
        raise InputError(f'--full-resolution: {info.description or info.name} gives no eval full_size')
    return replace(info, eval_fit='pad', eval_size=info.full_size)


# --- finding and reading a description ----------------------------------------------------------

def description_path(value):
    """The file that `--dataset VALUE` names: a shipped name (voc, city) or a path."""
    if value in SHIPPED:
        return DESCRIPTIONS_DIR / SHIPPED[value]
    path = Path(value)
    if path.is_dir():
        raise InputError(f'--dataset {value}: is a folder; name a dataset description file (.yaml)')
    if not path.is_file():
        raise InputError(f'--dataset {value!r}: neither {" nor ".join(SHIPPED)} nor a dataset description file '
                         f'(no such file; python describe_dataset.py writes one from your folders)')
    return path


def get_dataset_info(value):
    """The DatasetInfo of `--dataset VALUE`."""
    return read_description(description_path(value))


def read_description(path):
    """Read, check and resolve a description file (InputError naming the file and key)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError:
        raise InputError(f'{path}: dataset description is not UTF-8 text; save it as UTF-8') from None
    except OSError as error:
        raise InputError(f'{path}: cannot read dataset description ({error.strerror})') from None
    try:
        data = yaml.load(text, Loader=unique_key_loader())
    except DuplicateKey as error:
        raise InputError(f'{path}: key {error.key!r} is given twice (lines {error.first} and {error.second}): '
                         f'YAML would keep the last silently; keep one') from None
    except yaml.YAMLError as error:
        mark = getattr(error, 'problem_mark', None)
        where = f' (line {mark.line + 1}, column {mark.column + 1})' if mark is not None else ''
        problem = getattr(error, 'problem', None) or 'not valid YAML'
        raise InputError(f'{path}: dataset description is not valid YAML{where}: {problem}') from None
    return build_info(data, path)


class DuplicateKey(Exception):
    def __init__(self, key, first, second):
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


def unique_key_loader():
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: YAML
    keeps the last one silently, so a description edited by hand (a second `name:` or `eval:`
    further down) would say something other than what its reader sees first."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:   # an unhashable key: PyYAML's own error follows
                    break
                if first is not None:
                    raise DuplicateKey(key, first, key_node.start_mark.line + 1)
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


class Fields:
    """The description's mapping, read key by key; every error names the file and the key."""

    def __init__(self, data, path):
        self.data = data
        self.path = path

    def error(self, key, message):
        return InputError(f'{self.path}: {key}: {message}')

    def get(self, key, default=None):
        return self.data.get(key, default) if self.data.get(key) is not None else default

    def text(self, key, default=None, required=False):
        value = self.get(key, default)
        if value is None and required:
            raise self.error(key, f'missing ({KEYS[key]})')
        if value is not None and not isinstance(value, str):
            raise self.error(key, f'must be text, found {value!r}')
        return value

    def size(self, key, value, default=None):
        value = default if value is None else value
        if value is None:
            return None
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in value)):
            raise self.error(key, f'must be [height, width], two positive integers, found {value!r}')
        return tuple(value)


def build_info(data, path):
    path = Path(path)
    if not isinstance(data, dict):
        raise InputError(f'{path}: a dataset description is a mapping of keys (name, classes, images, ...), '
                         f'found {type(data).__name__}')
    unknown = [key for key in data if key not in KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), KEYS, n=1)
        hint = f' (did you mean {close[0]}?)' if close else f' (known: {", ".join(KEYS)})'
        raise InputError(f'{path}: unknown key {unknown[0]!r}{hint}')
    fields = Fields(data, path)
    if data.get('format') not in (None, FORMAT):
        raise fields.error('format', f'{data["format"]!r} is not {FORMAT}: written for another version?')
    name = fields.text('name', required=True)
    if not NAME_PATTERN.match(name):
        raise fields.error('name', f'{name!r} must be a plain name (letters, digits, _ . -)')
    classes = read_classes(fields)
    colors = read_colors(fields, len(classes))
    encoding = read_encoding(fields, classes, colors)
    images = read_template(fields, 'images')
    labels = read_template(fields, 'labels')
    subsets = read_subsets(fields, images, labels)
    folder = path.resolve().parent
    root = fields.text('root')
    splits = fields.text('splits')
    eval_fit, eval_size, window, full_size = read_eval(fields)
    normalization = read_normalization(fields)
    canonical = {key: data[key] for key in sorted(data) if key not in ('title',)}
    described = json.dumps(canonical, sort_keys=True, default=str)
    digest = hashlib.sha256(described.encode()).hexdigest()
    return DatasetInfo(
        name=name, title=fields.text('title', name), class_names=tuple(classes), colors=tuple(colors),
        image_template=images, label_template=labels, subsets=subsets,
        list_dir=read_relative(fields, 'lists', 'lists'),
        splits_dir=(folder / splits).resolve() if splits else None, split_fractions=read_fractions(fields),
        train_list=list_name(fields, 'train_list'), val_list=list_name(fields, 'val_list') or 'val',
        encoding=encoding, crop_size=fields.size('crop_size', data.get('crop_size'), (321, 321)),
        eval_size=eval_size, eval_fit=eval_fit, eval_window=window, full_size=full_size,
        normalization=normalization, root_env=fields.text('root_env'),
        default_root=(folder / root).resolve() if root else folder, description=path, digest=digest,
        described=described)


def read_fractions(fields):
    value = fields.data.get('split_fractions', [2, 4, 8])
    if (not isinstance(value, list) or not value
            or not all(is_number(part) and math.isfinite(part) and part > 1 for part in value)):
        raise fields.error('split_fractions', f'must be a list of finite numbers s > 1 (fractions 1/s), found {value!r}')
    return tuple(float(part) for part in value)


def read_classes(fields):
    classes = fields.data.get('classes')
    if not isinstance(classes, list) or not classes:
        raise fields.error('classes', 'missing or empty: a list of class names, background first if there is one')
    names = []
    for position, value in enumerate(classes):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
            raise fields.error('classes', f'entry {position} is {value!r}, not a name')
        names.append(str(value).strip())
    if len(names) < 2:
        raise fields.error('classes', f'{names} is one class: a segmentation tells at least two apart (e.g. '
                                      f'[background, {names[0]}])')
    seen = {}
    for position, class_name in enumerate(names):
        if class_name in seen:
            raise fields.error('classes', f'{class_name!r} is listed twice (positions {seen[class_name]} and {position})')
        seen[class_name] = position
    if len(names) > MAX_CLASSES:
        raise fields.error('classes', f'{len(names)} classes; at most {MAX_CLASSES} fit uint8 labels with 255 ignored')
    return names


def read_color(fields, key, value, position):
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(part, int) and not isinstance(part, bool) and 0 <= part <= 255 for part in value)):
        raise fields.error(key, f'entry {position} is {value!r}, not [r, g, b] with values 0..255')
    return tuple(value)


def read_colors(fields, num_classes):
    given = fields.data.get('colors')
    if given is None:
        return voc_palette(num_classes)
    if not isinstance(given, list):
        raise fields.error('colors', 'must be a list of [r, g, b], one per class')
    colors = [read_color(fields, 'colors', value, position) for position, value in enumerate(given)]
    if len(colors) != num_classes:
        fallback = ('' if fields.data.get('label_encoding') == 'rgb'   # colour masks need every class's colour
                    else ' (or none: the PASCAL VOC palette)')
        raise fields.error('colors', f'{len(colors)} colours for {num_classes} classes: give one per class{fallback}')
    return colors


def class_position(fields, key, target, classes):
    """A mapping's target: a class position, a class name, or 'ignore'."""
    if target == 'ignore':
        return IGNORE_INDEX
    if isinstance(target, int) and not isinstance(target, bool):
        if 0 <= target < len(classes):
            return target
        raise fields.error(key, f'maps to class {target}, but there are {len(classes)} classes (0..{len(classes) - 1})')
    if isinstance(target, str) and target in classes:
        return classes.index(target)
    raise fields.error(key, f'maps to {target!r}, which is no class (classes: {", ".join(classes)}; or ignore)')


def raw_value(fields, key, value, limit=65535):
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise fields.error(key, f'{value!r} is not a label value (an integer 0..{limit})')
    return value


def read_encoding(fields, classes, colors):
    kind = fields.text('label_encoding', 'index')
    if kind not in KINDS:
        raise fields.error('label_encoding', f'{kind!r} is not one of {", ".join(KINDS)}')
    data, count = fields.data, len(classes)
    for key, allowed in (('label_values', 'values'), ('ignore_colors', 'rgb')):
        if data.get(key) is not None and kind != allowed:
            raise fields.error(key, f'is for label_encoding: {allowed}, but this one is {kind}')
    if kind == 'rgb':
        for key in ('ignore_index', 'ignore_values'):
            if data.get(key) is not None:
                raise fields.error(key, 'colour masks have no ignore value: list ignore_colors instead')
        if data.get('colors') is None:
            raise fields.error('colors', 'label_encoding: rgb needs each class\'s colour, as drawn in the masks')
        ignore_colors = [read_color(fields, 'ignore_colors', value, position)
                         for position, value in enumerate(data.get('ignore_colors') or [])]
        first = {}
        for position, color in enumerate(colors):
            if color in first:
                raise fields.error('colors', f'classes {classes[first[color]]!r} and {classes[position]!r} share '
                                             f'colour {list(color)}: a mask could not tell them apart')
            first[color] = position
        for color in ignore_colors:
            if color in first:
                raise fields.error('ignore_colors', f'{list(color)} is also the colour of class {classes[first[color]]!r}')
        return LabelEncoding('rgb', count, ignore_index=None, colors=tuple(colors),
                             ignore_colors=tuple(ignore_colors), source=str(fields.path))
    values = []
    if kind == 'values':
        mapping = data.get('label_values')
        if not isinstance(mapping, dict) or not mapping:
            raise fields.error('label_values', 'label_encoding: values needs a mapping label value -> class')
        values = [(raw_value(fields, 'label_values', raw), class_position(fields, 'label_values', target, classes))
                  for raw, target in mapping.items()]
    ignore_values = [raw_value(fields, 'ignore_values', value) for value in (data.get('ignore_values') or [])]
    mapped = {raw for raw, _ in values}
    default_ignore = IGNORE_INDEX if IGNORE_INDEX not in mapped else None
    ignore_index = data.get('ignore_index', default_ignore)
    if ignore_index is not None:
        ignore_index = raw_value(fields, 'ignore_index', ignore_index)
    if kind == 'index':
        inside = [value for value in [ignore_index] + ignore_values if value is not None and value < count]
        if inside:
            raise fields.error('ignore_index' if inside[0] == ignore_index else 'ignore_values',
                               f'{inside[0]} lies inside the classes\' range 0..{count - 1}: it would be both a '
                               f'class and "no class"')
    both = sorted(mapped & (set(ignore_values) | ({ignore_index} if ignore_index is not None else set())))
    if both:
        raise fields.error('label_values', f'{both[0]} is both mapped to a class and ignored')
    return LabelEncoding(kind, count, ignore_index=ignore_index, values=tuple(sorted(values)),
                         ignore_values=tuple(sorted(set(ignore_values))), source=str(fields.path))


def read_template(fields, key):
    template = fields.text(key, required=True)
    try:
        parsed = [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(template)
                  if field is not None]
    except ValueError as error:
        raise fields.error(key, f'{template!r} is not a path template ({error})') from None
    fields_named = [field for field, _, _ in parsed]
    unknown = [field for field in fields_named if field not in TEMPLATE_FIELDS]
    if unknown or fields_named.count('id') != 1:
        raise fields.error(key, f'{template!r} must name {{id}} once (and may name {{subset}}): e.g. images/{{id}}.jpg')
    if any(spec or conversion for _, spec, conversion in parsed):
        raise fields.error(key, f'{template!r}: write {{id}} and {{subset}} plainly, without a format or conversion')
    if '\\' in template:
        raise fields.error(key, f'{template!r}: separate folders with /, on every system')
    parts = template.split('/')
    if template.startswith('/') or '..' in parts or ':' in parts[0]:
        raise fields.error(key, f'{template!r} must be a path inside the data root')
    return template


def read_subsets(fields, images, labels):
    mapping = fields.data.get('subsets')
    uses = '{subset}' in images or '{subset}' in labels
    if mapping is None:
        if uses:
            raise fields.error('subsets', 'images or labels name {subset}: say which list names which subset '
                                          '(e.g. {val: val, default: train})')
        return ()
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise fields.error('subsets', 'must map list names to folder names, e.g. {val: val, default: train}')
    if uses and 'default' not in mapping:
        raise fields.error('subsets', 'needs a default: the {subset} of the lists it does not name (the splits\' '
                                      'lists, e.g. 8_labeled_0)')
    return tuple(sorted(mapping.items()))


def read_relative(fields, key, default):
    value = fields.text(key, default)
    parts = value.replace('\\', '/').split('/')
    if value.startswith(('/', '\\')) or '..' in parts:
        raise fields.error(key, f'{value!r} must be a folder inside the data root')
    return value


def list_name(fields, key):
    """A list's name in the list folder (`train`, or `train.txt`); never a path out of it."""
    value = fields.text(key)
    if value is None:
        return None
    if value.endswith('.txt'):
        value = value[:-4]
    parts = value.replace('\\', '/').split('/')
    if not value.strip() or value.startswith(('/', '\\')) or '..' in parts or ':' in parts[0]:
        raise fields.error(key, f'{value!r} must name a list in the dataset\'s list folder (lists), e.g. train')
    return value


def read_eval(fields):
    evaluation = fields.data.get('eval') or {}
    if not isinstance(evaluation, dict):
        raise fields.error('eval', 'must be a mapping: {fit: pad, size: [505, 505]}')
    unknown = [key for key in evaluation if key not in EVAL_KEYS]
    if unknown:
        raise fields.error('eval', f'unknown key {unknown[0]!r} (known: {", ".join(EVAL_KEYS)})')
    fit = evaluation.get('fit', 'pad')
    if fit not in EVAL_FITS:
        raise fields.error('eval', f'fit {fit!r} is not one of {", ".join(EVAL_FITS)} (pad to a canvas, or resize '
                                   f'to a base size; add window for a sliding window)')
    size = fields.size('eval size', evaluation.get('size'), (505, 505))
    window = fields.size('eval window', evaluation.get('window'))
    full_size = fields.size('eval full_size', evaluation.get('full_size'))
    return fit, size, window, full_size


def read_normalization(fields):
    value = fields.data.get('normalization', 'imagenet')
    if isinstance(value, str):
        if value not in NORMALIZATIONS:
            raise fields.error('normalization', f'{value!r} is not imagenet, coco or a mapping {{mean, std}}')
        chosen = NORMALIZATIONS[value]
    elif isinstance(value, dict):
        unknown = [key for key in value if key not in NORMALIZATION_KEYS]
        if unknown:
            raise fields.error('normalization', f'unknown key {unknown[0]!r} (known: {", ".join(NORMALIZATION_KEYS)})')
        bgr = value.get('bgr', False)
        if not isinstance(bgr, bool):
            raise fields.error('normalization', f'bgr must be true or false, found {bgr!r}')
        scale = value.get('scale', IMAGENET['scale'])
        if not (is_number(scale) and math.isfinite(scale) and scale > 0):
            raise fields.error('normalization', f'scale must be a positive number (1/255 for pixels in 0..1, 1 for '
                                                f'0..255), found {scale!r}')
        chosen = dict(IMAGENET, bgr=bgr, scale=scale)
        for key in ('mean', 'std'):
            triple = value.get(key, chosen[key])
            if (not isinstance(triple, (list, tuple)) or len(triple) != 3
                    or not all(is_number(part) and math.isfinite(part) for part in triple)):
                raise fields.error('normalization', f'{key} must be three finite numbers, found {triple!r}')
            chosen[key] = tuple(float(part) for part in triple)
        if any(part <= 0 for part in chosen['std']):
            raise fields.error('normalization', 'std must be positive')
    else:
        raise fields.error('normalization', f'{value!r} is not imagenet, coco or a mapping {{mean, std}}')
    return (tuple(chosen['mean']), tuple(chosen['std']), bool(chosen['bgr']), float(chosen['scale']))


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def resolve_root(info, data_root=None):
    """--data-root, else the description's environment variable, else its root (relative to the
    file), else the folder holding the file; it must exist."""
    if data_root:
        root, source = Path(data_root), '--data-root'
    elif info.root_env and os.environ.get(info.root_env):
        root, source = Path(os.environ[info.root_env]), info.root_env
    else:
        setting = f' or {info.root_env}' if info.root_env else ''
        root, source = info.default_root, f'{info.description or "the description"} (set --data-root{setting})'
    if not root.is_dir():
        raise InputError(f'{info.title} root {root} does not exist (from {source})')
    return root
