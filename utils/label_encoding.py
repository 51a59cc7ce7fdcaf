"""How a dataset's label files say which class a pixel is, and the checks that catch the mistakes
users make with them before the first training step.

Three encodings, one per way label files are made:
- `index`: a single-channel PNG (grey or palette) whose value is the class's position; the ignore
  value (255 by default) and any `ignore_values` mean "no class".
- `values`: a single-channel PNG whose raw values are mapped to classes by a table (Cityscapes'
  34 raw ids to its 19 train ids; a binary mask saved as 0/255; ADE-style labels whose 0 is
  "other"). A raw value not in the table and not ignored is an error, never a silent ignore.
- `rgb`: colour masks, each class drawn in its colour; `ignore_colors` mean "no class". A colour
  that is no class's is an error naming it, its pixel count and where it first appears.

Every label comes out as uint8 class indices with 255 for ignored pixels, the form the rest of
the program works in. A lossy file (a JPEG label: compression changes the values at every edge)
is refused whatever its name says.
"""
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from utils.errors import InputError
from utils.labels import IGNORE_INDEX

KINDS = ('index', 'values', 'rgb')
SINGLE_CHANNEL_MODES = ('L', 'P', 'I', 'I;16', 'I;16B', 'I;16L')
LOSSY_FORMATS = {'JPEG': 'a JPEG', 'MPO': 'a JPEG (MPO)', 'JPEG2000': 'a JPEG 2000', 'WEBP': 'a WebP'}
INVALID = -1                    # in a value table: a raw value no class has and that is not ignored
ALPHA_BITS = np.uint32(0xFF000000)
SHOWN_VALUES = 8


def color_code(color):
    """An (r, g, b) colour as the uint32 a little-endian RGBA pixel with full alpha reads as."""
    red, green, blue = (int(part) for part in color)
    return red | (green << 8) | (blue << 16) | (0xFF << 24)


def listing(values, limit=SHOWN_VALUES):
    values = [int(value) for value in values]
    shown = ', '.join(map(str, values[:limit]))
    return shown + (f', ... ({len(values)} in all)' if len(values) > limit else '')


@dataclass(frozen=True)
class LabelEncoding:
    """How label files encode classes (see the module docstring). `source` names the setting a
    user changes to fix a refused label (the description file)."""
    kind: str
    num_classes: int
    ignore_index: int | None = IGNORE_INDEX
    values: tuple = ()               # ((raw value, class index or IGNORE_INDEX), ...) for 'values'
    ignore_values: tuple = ()        # raw values that mean "no class" besides ignore_index
    colors: tuple = ()               # one (r, g, b) per class for 'rgb'
    ignore_colors: tuple = ()        # colours that mean "no class" for 'rgb'
    source: str = 'the dataset description'

    # --- reading a file ----------------------------------------------------------------------
    def read(self, path):
        """The label file at `path` as uint8 class indices [H, W] (255 = ignore), or InputError
        naming the file and what to change."""
        try:
            with Image.open(path) as image:
                self.check_file(image, path)
                if self.kind == 'rgb':
                    return self.classes_of_colors(color_array(image, path), path)
                array = np.array(image)
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise cannot_read(path, error) from None
        return self.classes_of_values(array, path)

    def survey(self, path):
        """((height, width), pixels of each class) of the label file at `path`, refused as `read`
        refuses it: the up-front data check of every label. Pillow counts the file's values (or
        colours) in C and the counts are mapped, rather than every pixel; a label that holds a
        value or colour no class has is read again by `read`, whose message says where."""
        try:
            with Image.open(path) as image:
                self.check_file(image, path)
                size = (image.height, image.width)
                if self.kind == 'rgb':
                    counts = self.color_counts(image)
                elif image.mode in ('L', 'P'):
                    counts = self.value_counts(np.asarray(image.histogram(), dtype=np.int64))
                else:
                    counts = None   # 16 and 32-bit labels: mapped pixel by pixel
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise cannot_read(path, error) from None
        if counts is None:
            label = self.read(path)
            counts = np.bincount(label.reshape(-1), minlength=256)[:self.num_classes]
        return size, counts

    def check_file(self, image, path):
        """A label must not be lossy, and an index label must have one channel."""
        refuse_lossy(image, path)
        if self.kind != 'rgb' and image.mode not in SINGLE_CHANNEL_MODES:
            hint = (f'; if the labels are colour masks, set label_encoding: rgb and the classes\' colors '
                    f'in {self.source}' if image.mode in ('RGB', 'RGBA') else '')
            raise InputError(f'{path}: label must be a single-channel index PNG, found mode {image.mode}{hint}')

    def value_counts(self, histogram):
        """Class pixel counts from a 256-bin histogram of raw values; None when a value is no
        class's and not ignored (read() then says which)."""
        table = value_table(self, 256)
        if histogram[table == INVALID].any():
            return None
        kept = (table != INVALID) & (table != IGNORE_INDEX)
        return np.bincount(table[kept], weights=histogram[kept], minlength=self.num_classes).astype(np.int64)

    def color_counts(self, image):
        """Class pixel counts of a colour mask from its colours; None when a colour is none of
        the classes' (or the mask is no plain RGB image): read() then says which and where."""
        if image.mode == 'P' and 'transparency' not in image.info:
            colors = palette_colors(image)   # a palette mask: its indices counted, their colours looked up
        elif image.mode == 'RGB':
            colors = image.getcolors(len(self.colors) + len(self.ignore_colors))
        else:
            return None
        if colors is None:
            return None   # more colours than the classes and ignored ones have
        lookup = {tuple(color): index for index, color in enumerate(self.colors)}
        ignored = {tuple(color) for color in self.ignore_colors}
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for count, color in colors:
            if color in lookup:
                counts[lookup[color]] += count
            elif color not in ignored:
                return None
        return counts

    # --- single-channel labels ---------------------------------------------------------------
    def plain_index(self):
        """Identity for 0..C-1, 255 ignored, nothing else: VOC's labels, checked in one pass."""
        return self.kind == 'index' and self.ignore_index == IGNORE_INDEX and not self.ignore_values

    def classes_of_values(self, array, path):
        if array.dtype == np.uint8 and self.plain_index():
            if not has_values_outside(array, self.num_classes):
                return array
        table = value_table(self, 65536 if array.dtype != np.uint8 else 256)
        if array.dtype != np.uint8 and (array.min() < 0 or array.max() >= len(table)):
            raise self.unknown_values(array, path, table)
        mapped = np.take(table, array.astype(np.intp, copy=False) if array.dtype != np.uint8 else array)
        if (mapped == INVALID).any():
            raise self.unknown_values(array, path, table)
        return mapped.astype(np.uint8)

    def unknown_values(self, array, path, table):
        found = np.unique(array)
        bad = [value for value in found.tolist() if value < 0 or value >= len(table) or table[value] == INVALID]
        classes = f'the {self.num_classes} classes'
        if self.kind == 'index':
            known = f'{classes} (0..{self.num_classes - 1})'
            fix = (f'map them with label_encoding: values and label_values (e.g. {{{bad[0]}: <class>}}) or '
                   f'list them under ignore_values in {self.source}')
        else:
            mapped = sorted(raw for raw, _ in self.values)
            known = f'any of label_values ({listing(mapped)})'
            fix = f'add them to label_values or ignore_values in {self.source}'
        ignored = self.ignore_values + ((self.ignore_index,) if self.ignore_index is not None else ())
        ignored_text = f', nor ignored ({listing(sorted(ignored))})' if ignored else ', and nothing is ignored'
        return InputError(f'{path}: label value{"s" if len(bad) > 1 else ""} {listing(bad)} (found: '
                          f'{listing(found)}) {"are" if len(bad) > 1 else "is"} not {known}{ignored_text}; {fix}')

    # --- colour masks ------------------------------------------------------------------------
    def classes_of_colors(self, codes, path):
        """RGBA codes (uint32 [H, W], alpha dropped) -> class indices."""
        mapped = np.take(color_table(self), np.bitwise_and(codes, np.uint32(0xFFFFFF)))
        if (mapped == UNKNOWN_COLOR).any():
            raise self.unknown_color(codes, mapped, path)
        return mapped

    def unknown_color(self, codes, mapped, path):
        unknown = mapped == UNKNOWN_COLOR
        rows, columns = np.nonzero(unknown)
        first = int(codes[rows[0], columns[0]])
        color = (first & 0xFF, (first >> 8) & 0xFF, (first >> 16) & 0xFF)
        count = int((codes[unknown] == first).sum())
        others = len(np.unique(codes[unknown])) - 1
        more = f'; {others} more unknown colour{"s" if others > 1 else ""}' if others else ''
        return InputError(f'{path}: colour {color} is none of the {self.num_classes} classes\' colours: {count} '
                          f'pixel{"s" if count > 1 else ""}, the first at row {int(rows[0])}, column '
                          f'{int(columns[0])}{more}; add it to colors (a class) or ignore_colors in {self.source}')

    # --- writing predictions back in the files' own values -------------------------------------
    def raw_value_of_class(self):
        """For 'values': per class, the smallest raw value that maps to it (Cityscapes: train id ->
        label id, what its benchmark server reads); None for the other encodings."""
        if self.kind != 'values':
            return None
        raws = {}
        for raw, target in sorted(self.values):
            if target != IGNORE_INDEX:
                raws.setdefault(target, raw)
        return tuple(raws.get(index, IGNORE_INDEX) for index in range(self.num_classes))


UNKNOWN_COLOR = 254


def refuse_lossy(image, path):
    """A label file in a lossy format (whatever its name says) is refused in one line."""
    lossy = LOSSY_FORMATS.get(image.format)
    if lossy and not (image.format == 'WEBP' and getattr(image, 'lossless', False)):
        raise InputError(f'{path}: label file is {lossy}, a lossy format (compression changes the '
                         f'label values along every edge); save labels as PNG')


def cannot_read(path, error):
    return InputError(f'{path}: cannot read label ({" ".join(str(error).split())})')


@lru_cache(maxsize=8)
def value_table(encoding, size):
    """raw value -> class (0..C-1), IGNORE_INDEX, or INVALID, for raw values 0..size-1; made
    once per process and encoding (kept out of the encoding itself, which loader workers receive
    pickled)."""
    table = np.full(size, INVALID, dtype=np.int16)
    if encoding.kind == 'index':
        count = min(encoding.num_classes, size)
        table[:count] = np.arange(count)
    ignored = encoding.ignore_values + ((encoding.ignore_index,) if encoding.ignore_index is not None else ())
    for raw in ignored:
        if raw < size:
            table[raw] = IGNORE_INDEX
    for raw, target in encoding.values:
        if raw < size:
            table[raw] = target
    return table


@lru_cache(maxsize=2)
def color_table(encoding):
    """A 2^24-entry table from the low 24 bits of a pixel's RGBA code to its class, 255, or
    UNKNOWN_COLOR: 16 MB, made once per process, and one gather per pixel whatever the number of
    classes."""
    table = np.full(1 << 24, UNKNOWN_COLOR, dtype=np.uint8)
    for index, color in enumerate(encoding.colors):
        table[color_code(color) & 0xFFFFFF] = index
    for color in encoding.ignore_colors:
        table[color_code(color) & 0xFFFFFF] = IGNORE_INDEX
    return table


def has_values_outside(array, num_classes):
    """Does a uint8 label hold a value outside 0..C-1 and 255? One pass: v - C wraps around in
    uint8 and lands below 255 - C exactly for the values C..254."""
    if num_classes >= IGNORE_INDEX:
        return False
    shifted = array - np.uint8(num_classes)
    return bool((shifted < IGNORE_INDEX - num_classes).any())


def palette_colors(image):
    """[(pixels, (r, g, b))] of a palette image, from the counts of its indices."""
    palette = image.getpalette() or []
    colors = {}
    for index, count in enumerate(image.histogram()):
        if count:
            color = tuple(palette[3 * index:3 * index + 3]) if 3 * index + 3 <= len(palette) else (0, 0, 0)
            colors[color] = colors.get(color, 0) + count
    return [(count, color) for color, count in colors.items()]


def color_array(image, path):
    """A colour mask as uint32 RGBA codes [H, W] with full alpha (palette, grey and RGBA masks
    converted: a colour mask is judged by the colours it shows)."""
    if image.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
        raise InputError(f'{path}: a {image.mode} image is no colour mask; set label_encoding: index or values')
    rgb = image if image.mode == 'RGB' else image.convert('RGB')
    return np.asarray(rgb.convert('RGBA')).view('<u4')[..., 0]
