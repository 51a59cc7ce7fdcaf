"""Figures of a DST-CBC run: label maps beside their image, self-training rounds, per-class IoU and
the confusion matrix.

    python visualize.py rounds logs/ss_voc_106-0_round*/results.json --out rounds.png
    python visualize.py classes logs/fs_voc_106-0/results.json logs/ss_voc_106-0/results.json --out classes.png
    python visualize.py confusion logs/eval/results.json --out confusion.png [--no-normalize]
    python visualize.py panels --checkpoint fs_voc_106-0.pt --data-root VOC2012 --list val --count 4 \
        [--images ID ...] [--pseudo-dir logs/ss_voc_106-0/pseudo_labels] --out panels.png

`panels` runs a checkpoint over a few images of a list (the only command that needs torch, imported
when it runs) and draws image, ground truth, prediction, pseudo label and confidence per image.

The drawing functions are pure: each builds its own `matplotlib.figure.Figure` (never through
pyplot, so no window, no figure left registered anywhere and nothing to close) and returns it;
those given a path also save it there. Every file is written to `<name>.<pid>.tmp` beside the
target and then renamed over it, so a reader never sees half a PNG.

IoU and mIoU values are fractions 0..1 everywhere in the project; the figures show percent.
"""
import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use('Agg')

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from utils.flags import OneLineParser  # noqa: E402
from utils.labels import IGNORE_INDEX  # noqa: E402

# Palettes and class names come in as arguments (data_processing.VOC_COLORS, CITY_COLORS, ...).

# Ignored pixels are drawn white: neither the VOC nor the Cityscapes palette uses it (tested).
IGNORED_COLOR = (255, 255, 255)
IGNORED_COLOR_NAME = 'white'

DPI = 100                      # every figure; sizes below are in inches

# Label-map panels (draw_panel, save_panels): one row per image, panels PANEL_WIDTH wide and as
# tall as the image's aspect ratio makes them (kept within PANEL_ASPECT_RANGE of the width).
PANEL_WIDTH = 2.4
PANEL_ASPECT_RANGE = (0.25, 2.0)
PANEL_GAP = 0.2                # between panels of a row
ROW_GAP = 0.15                 # between rows
PANEL_TITLE_SPACE = 0.3        # above each row, for the panel titles
FIGURE_TITLE_SPACE = 0.4       # above everything, when a title is given
ROW_NAME_SPACE = 0.3           # left of the rows, when a row has a name
MARGIN = 0.15                  # around the whole figure
COLORBAR_SPACE = 0.6           # right of the confidence panel: pad, bar and tick labels
COLORBAR_PAD, COLORBAR_WIDTH = 0.08, 0.12
LEGEND_COLUMN_WIDTH = 1.5      # one column of legend entries
LEGEND_ENTRY_HEIGHT = 0.2

CONFIDENCE_CMAP = 'viridis'

# Column keys of a panel row, in order, with the titles of their panels.
PANEL_COLUMNS = ('image', 'ground_truth', 'prediction', 'pseudo_label', 'confidence')
PANEL_TITLES = {
    'image': 'image',
    'ground_truth': 'ground truth',
    'prediction': 'prediction',
    'pseudo_label': f'pseudo label ({IGNORED_COLOR_NAME} = ignored)',
    'confidence': 'confidence',
}
LABEL_COLUMNS = ('ground_truth', 'prediction', 'pseudo_label')

ROUNDS_FIGSIZE = (7.0, 4.5)    # plot_rounds: 700 x 450 pixels
CLASS_IOU_WIDTH, CLASS_IOU_BASE_HEIGHT, CLASS_IOU_ROW_HEIGHT = 8.0, 1.4, 0.35
CONFUSION_CELL, CONFUSION_EXTRA, CONFUSION_MIN_SIDE = 0.42, 2.6, 5.0
CONFUSION_TEXT_MAX_CLASSES = 25


# --------------------------------------------------------------------------------------- saving

def save_figure(fig, path):
    """Write `fig` to `path` atomically (a temporary file in the same folder, then a rename),
    creating the folder. The format follows the suffix (PNG unless it names another one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower().lstrip('.')
    file_format = suffix if suffix in fig.canvas.get_supported_filetypes() else 'png'
    temporary = path.parent / f'{path.name}.{os.getpid()}.tmp'
    try:
        fig.savefig(temporary, format=file_format, dpi=fig.dpi)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _new_figure(width, height, **kwargs):
    """A figure of whole pixels at DPI (so the saved file's size is exactly width x height x DPI,
    rounded), not registered with pyplot."""
    return Figure(figsize=(round(width * DPI) / DPI, round(height * DPI) / DPI), dpi=DPI, **kwargs)


def _percent(value):
    return 'n/a' if value is None else f'{value * 100:.2f}%'


def _fraction_or_none(value, what):
    """A 0..1 value, or None for a missing one (None, or NaN from a loose JSON writer)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f'{what} must be a number or None, got {value!r}')
    value = float(value)
    return None if math.isnan(value) else value


# ----------------------------------------------------------------------------------- label maps

def colorize(label, colors):
    """An HxW label map (class index per pixel, 255 = ignored) as an HxWx3 uint8 RGB image.

    `colors` is the palette, one (r, g, b) per class index; ignored pixels become IGNORED_COLOR.
    A value that is neither a class index nor 255 raises ValueError.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f'a label map must be HxW, got shape {label.shape}')
    if label.dtype.kind not in 'ui':
        raise ValueError(f'a label map must hold integers, got {label.dtype}')
    palette = np.asarray(colors, dtype=np.int64)
    if palette.ndim != 2 or palette.shape[1] != 3 or not 1 <= len(palette) <= IGNORE_INDEX:
        raise ValueError(f'the palette must be 1 to {IGNORE_INDEX} (r, g, b) triples')
    bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= len(palette)))
    if bad.any():
        values = sorted(int(value) for value in np.unique(label[bad]))[:5]
        raise ValueError(f'label values {values} are neither classes 0..{len(palette) - 1} '
                         f'nor {IGNORE_INDEX} (ignored)')
    lookup = np.zeros((256, 3), dtype=np.uint8)
    lookup[:len(palette)] = palette
    lookup[IGNORE_INDEX] = IGNORED_COLOR
    return lookup[label.astype(np.uint8)]


def _as_rgb(image):
    """HxWx3 uint8 from uint8 RGB, a grayscale HxW map, or floats in 0..1."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'the image must be HxWx3 (RGB) or HxW, got shape {image.shape}')
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind == 'f':
        return (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f'the image must be uint8 (0..255) or floats (0..1), got {image.dtype}')


def _check_row(row, index):
    """The row's arrays, checked: an image, and label/confidence maps of its height and width."""
    if row.get('image') is None:
        raise ValueError(f'row {index}: no image')
    checked = {'image': _as_rgb(row['image'])}
    height, width = checked['image'].shape[:2]
    for key in PANEL_COLUMNS[1:]:
        value = row.get(key)
        if value is None:
            checked[key] = None
            continue
        value = np.asarray(value)
        if value.shape != (height, width):
            raise ValueError(f'row {index}: {key.replace("_", " ")} has shape {value.shape}, '
                             f'the image is {height}x{width}')
        if key == 'confidence':
            if value.dtype.kind not in 'fiu':
                raise ValueError(f'row {index}: the confidence map must hold numbers')
            value = value.astype(np.float64)
        checked[key] = value
    return checked


def _legend_entries(rows, colors, class_names):
    """(handles, labels): the classes present in any label map shown, then 'ignored' if any is."""
    present, ignored = set(), False
    for row in rows:
        for key in LABEL_COLUMNS:
            if row[key] is not None:
                values = np.unique(row[key])
                ignored = ignored or bool((values == IGNORE_INDEX).any())
                present.update(int(value) for value in values if value != IGNORE_INDEX)
    handles, labels = [], []
    for index in sorted(present):
        handles.append(Patch(facecolor=np.asarray(colors[index]) / 255.0, edgecolor='0.3',
                             linewidth=0.5))
        labels.append(str(class_names[index]))
    if ignored:
        handles.append(Patch(facecolor=np.asarray(IGNORED_COLOR) / 255.0, edgecolor='0.3',
                             linewidth=0.5))
        labels.append('ignored')
    return handles, labels


def _panel_height(image):
    height, width = image.shape[:2]
    low, high = PANEL_ASPECT_RANGE
    return PANEL_WIDTH * min(max(height / width, low), high)


def _draw_rows(rows, colors, class_names, title=None):
    """One figure, one row per dict of `rows` (keys: PANEL_COLUMNS and optional 'name').

    The columns are those that any row has (a row lacking one leaves its cell empty); the legend
    lists the classes of every label map shown. The layout is computed in inches, so the saved
    size is known: see the constants above.
    """
    if len(colors) != len(class_names):
        raise ValueError(f'{len(colors)} colours but {len(class_names)} class names')
    if not rows:
        raise ValueError('no rows to draw')
    checked = [_check_row(row, index) for index, row in enumerate(rows)]
    columns = [key for key in PANEL_COLUMNS if any(row[key] is not None for row in checked)]
    for row in checked:    # validate every label map before drawing anything
        for key in LABEL_COLUMNS:
            if row[key] is not None:
                colorize(row[key], colors)
    names = [row.get('name') for row in rows]
    handles, labels = _legend_entries(checked, colors, class_names)

    heights = [_panel_height(row['image']) for row in checked]
    body_height = PANEL_TITLE_SPACE * len(rows) + sum(heights) + ROW_GAP * (len(rows) - 1)
    top_space = MARGIN + (FIGURE_TITLE_SPACE if title else 0.0)
    name_space = ROW_NAME_SPACE if any(names) else 0.0
    entries_per_column = max(1, int(body_height / LEGEND_ENTRY_HEIGHT) - 1)
    legend_columns = math.ceil(len(labels) / entries_per_column) if labels else 0
    panels_width = len(columns) * PANEL_WIDTH + (len(columns) - 1) * PANEL_GAP
    if 'confidence' in columns:
        panels_width += COLORBAR_SPACE
    legend_width = (PANEL_GAP + legend_columns * LEGEND_COLUMN_WIDTH) if legend_columns else 0.0
    width = MARGIN + name_space + panels_width + legend_width + MARGIN
    height = top_space + body_height + MARGIN
    fig = _new_figure(width, height)
    width, height = fig.get_size_inches()   # whole pixels; fractions below use these

    def box(left, top, box_width, box_height):    # inches from the top left -> figure fractions
        return [left / width, 1.0 - (top + box_height) / height, box_width / width, box_height / height]

    if title:
        fig.text(0.5, 1.0 - (MARGIN + FIGURE_TITLE_SPACE / 2) / height, title,
                 ha='center', va='center', fontsize=12)
    top = top_space
    for row, name, panel_height in zip(checked, names, heights):
        top += PANEL_TITLE_SPACE
        if name:
            fig.text((MARGIN + name_space / 2) / width, 1.0 - (top + panel_height / 2) / height,
                     str(name), rotation=90, ha='center', va='center', fontsize=9)
        left = MARGIN + name_space
        for key in columns:
            ax = fig.add_axes(box(left, top, PANEL_WIDTH, panel_height))
            ax.set_axis_off()
            ax.set_title(PANEL_TITLES[key], fontsize=9)
            value = row[key]
            if value is None:
                ax.text(0.5, 0.5, 'none', ha='center', va='center', fontsize=9, color='0.5',
                        transform=ax.transAxes)
            elif key == 'image':
                ax.imshow(value, interpolation='nearest', aspect='auto')
            elif key == 'confidence':
                shown = ax.imshow(value, cmap=CONFIDENCE_CMAP, vmin=0.0, vmax=1.0,
                                  interpolation='nearest', aspect='auto')
                cax = fig.add_axes(box(left + PANEL_WIDTH + COLORBAR_PAD, top, COLORBAR_WIDTH,
                                       panel_height))
                fig.colorbar(shown, cax=cax).ax.tick_params(labelsize=7)
            else:
                ax.imshow(colorize(value, colors), interpolation='nearest', aspect='auto')
                # A thin frame, so ignored (white) pixels at the border stay visible.
                ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False,
                                       edgecolor='0.75', linewidth=0.6, clip_on=False))
            left += PANEL_WIDTH + PANEL_GAP
        top += panel_height + ROW_GAP
    if labels:
        legend_left = width - MARGIN - legend_columns * LEGEND_COLUMN_WIDTH
        fig.legend(handles, labels, loc='upper left', ncol=legend_columns, fontsize=8,
                   frameon=False, borderaxespad=0.0, handlelength=1.2, columnspacing=0.8,
                   bbox_to_anchor=(legend_left / width, 1.0 - (top_space + PANEL_TITLE_SPACE) / height))
    return fig


def draw_panel(image, ground_truth, prediction, pseudo_label, confidence, colors, class_names,
               title=None):
    """One row of panels for one image: the image, its ground truth, the prediction, the pseudo
    label (255 = ignored, drawn in IGNORED_COLOR) and the confidence map (max softmax probability
    per pixel, 0..1, with a colorbar). A map given as None is left out. A legend lists the classes
    present in the label maps shown (and 'ignored' when a pixel is 255). Returns the Figure."""
    return _draw_rows([{'image': image, 'ground_truth': ground_truth, 'prediction': prediction,
                        'pseudo_label': pseudo_label, 'confidence': confidence}],
                      colors, class_names, title=title)


def save_panels(rows, path, colors, class_names, title=None):
    """Several images in one figure, one row each (the columns of draw_panel), written to `path`.

    `rows` are dicts with keys image, ground_truth, prediction, pseudo_label, confidence and name
    (missing keys count as None; the name is written left of its row). Returns the Figure."""
    fig = _draw_rows(list(rows), colors, class_names, title=title)
    save_figure(fig, path)
    return fig


# ------------------------------------------------------------------------------ training curves

def plot_rounds(rounds, path=None, title=None, start_miou=None, val_label='val mIoU'):
    """Self-training progress: pseudo-label share, pseudo-label mIoU and val mIoU (percent) per
    round, lines with markers. `rounds` are dicts with `round` (1-based), `labeled_share`,
    `pseudo_label_miou` and `val_miou` (fractions, None where unknown); None values are left out,
    never drawn as 0. `start_miou`, when given, is the val mIoU at round 0 (the starting
    checkpoint). `val_label` names the validation line (e.g. 'valtiny mIoU' when the rounds were
    validated on valtiny). Saved to `path` when given; returns the Figure (lines labelled as in
    the legend).
    """
    points = {'pseudo-label share': [], 'pseudo-label mIoU': [], 'val mIoU': []}
    start_miou = _fraction_or_none(start_miou, 'start_miou')
    if start_miou is not None:
        points['val mIoU'].append((0, start_miou))
    seen = set()
    for entry in rounds:
        number = entry.get('round')
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or number < 1:
            raise ValueError(f'a round number must be an int >= 1, got {number!r}')
        if number in seen:
            raise ValueError(f'round {number} is given twice')
        seen.add(number)
        for key, series in (('labeled_share', 'pseudo-label share'),
                            ('pseudo_label_miou', 'pseudo-label mIoU'), ('val_miou', 'val mIoU')):
            value = _fraction_or_none(entry.get(key), f'round {number} {key}')
            if value is not None:
                points[series].append((int(number), value))
    if not any(points.values()):
        raise ValueError('nothing to plot: no round has a value')

    fig = _new_figure(*ROUNDS_FIGSIZE, layout='constrained')
    ax = fig.add_subplot()
    styles = {'pseudo-label share': dict(marker='s', color='tab:orange', linestyle='--'),
              'pseudo-label mIoU': dict(marker='^', color='tab:green', linestyle='-.'),
              'val mIoU': dict(marker='o', color='tab:blue', linestyle='-')}
    highest = 0.0
    for series, values in points.items():
        if not values:
            continue
        values.sort()
        xs = [x for x, _ in values]
        ys = [y * 100 for _, y in values]
        highest = max(highest, max(ys))
        ax.plot(xs, ys, label=val_label if series == 'val mIoU' else series, linewidth=1.5,
                markersize=6, **styles[series])
        for x, y in zip(xs, ys):
            ax.annotate(f'{y:.1f}', (x, y), textcoords='offset points', xytext=(0, 6),
                        ha='center', fontsize=7, color=styles[series]['color'])
    ticks = sorted({x for values in points.values() for x, _ in values})
    ax.set_xticks(ticks)
    ax.set_xticklabels(['start' if tick == 0 else str(tick) for tick in ticks])
    ax.set_xlim(ticks[0] - 0.5, ticks[-1] + 0.5)
    ax.set_ylim(0, min(100.0, highest * 1.15 + 5))
    ax.set_xlabel('round')
    ax.set_ylabel('percent')
    ax.grid(True, alpha=0.3)
    ax.legend(loc='best', fontsize=8)
    ax.set_title(title or 'self-training by round')
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_class_iou(class_names, supervised_iou, dstcbc_iou, path=None,
                   labels=('supervised', 'DST-CBC')):
    """Per-class IoU (percent) of two models as grouped horizontal bars, the first class on top.

    Each IoU set is a {class_name: fraction or None} dict or a list in class order; None (a
    class absent from the evaluation) gets no bar and an 'n/a' mark. The title gives each side's
    mIoU, the mean of its non-None values. Saved to `path` when given; returns the Figure.
    """
    class_names = [str(name) for name in class_names]
    sides = [_iou_list(class_names, values, label)
             for values, label in ((supervised_iou, labels[0]), (dstcbc_iou, labels[1]))]
    count = len(class_names)
    fig = _new_figure(CLASS_IOU_WIDTH, CLASS_IOU_BASE_HEIGHT + CLASS_IOU_ROW_HEIGHT * count,
                      layout='constrained')
    ax = fig.add_subplot()
    bar_height = 0.38
    summary = []
    for side, (values, label, color) in enumerate(zip(sides, labels, ('tab:gray', 'tab:blue'))):
        offset = (side - 0.5) * bar_height
        present = [(index, value * 100) for index, value in enumerate(values) if value is not None]
        ax.barh([index + offset for index, _ in present], [value for _, value in present],
                height=bar_height, color=color, label=label)
        for index, value in present:
            ax.text(value + 0.8, index + offset, f'{value:.1f}', va='center', fontsize=7)
        for index, value in enumerate(values):
            if value is None:
                ax.text(0.8, index + offset, 'n/a', va='center', fontsize=7, color='0.4',
                        style='italic')
        known = [value for value in values if value is not None]
        summary.append(f'{label} mIoU {_percent(sum(known) / len(known) if known else None)}')
    ax.set_yticks(range(count))
    ax.set_yticklabels(class_names, fontsize=8)
    ax.set_ylim(count - 0.5, -0.5)       # first class on top
    ax.set_xlim(0, 108)
    ax.set_xlabel('IoU (%)')
    ax.grid(True, axis='x', alpha=0.3)
    ax.legend(loc='lower right', fontsize=8)
    ax.set_title('per-class IoU: ' + ', '.join(summary), fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig


def _iou_list(class_names, values, label):
    """IoU values in class order from a {name: value} dict or a list (None where unknown)."""
    if isinstance(values, dict):
        unknown = sorted(set(map(str, values)) - set(class_names))
        if unknown:
            raise ValueError(f'{label}: IoU of unknown classes {unknown[:3]}')
        values = {str(key): value for key, value in values.items()}
        values = [values.get(name) for name in class_names]
    else:
        values = list(values)
        if len(values) != len(class_names):
            raise ValueError(f'{label}: {len(values)} IoU values for {len(class_names)} classes')
    return [_fraction_or_none(value, f'{label} IoU of {name}')
            for name, value in zip(class_names, values)]


def normalize_rows(matrix):
    """Each row divided by its sum (rows are ground truth, so each becomes the share of that
    class's pixels predicted as each class); a row of zeros stays zeros."""
    matrix = np.asarray(matrix, dtype=np.float64)
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros_like(matrix), where=sums > 0)


def _compact_count(value):
    value = int(round(value))
    if value == 0:
        return ''
    for limit, suffix in ((10 ** 9, 'G'), (10 ** 6, 'M'), (10 ** 3, 'k')):
        if value >= limit:
            return f'{value / limit:.0f}{suffix}'
    return str(value)


def plot_confusion(matrix, class_names, path=None, normalize=True):
    """The confusion matrix (rows = ground truth, columns = prediction) as an image with a
    colorbar and the class names on both axes; with `normalize` each row is divided by its sum.
    Cell values are written when there are at most CONFUSION_TEXT_MAX_CLASSES classes. Saved to
    `path` when given; returns the Figure."""
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f'the confusion matrix must be square C x C, got shape {counts.shape}')
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError('the confusion matrix must hold finite counts >= 0')
    count = counts.shape[0]
    class_names = [str(name) for name in (class_names if class_names is not None else range(count))]
    if len(class_names) != count:
        raise ValueError(f'{len(class_names)} class names for a {count}x{count} confusion matrix')
    shown = normalize_rows(counts) if normalize else counts
    side = max(CONFUSION_MIN_SIDE, CONFUSION_CELL * count + CONFUSION_EXTRA)
    fig = _new_figure(side + 1.0, side, layout='constrained')
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap='Blues', vmin=0.0, vmax=1.0 if normalize else max(shown.max(), 1.0),
                      interpolation='nearest')
    fig.colorbar(image, ax=ax, shrink=0.8,
                 label='share of the ground-truth class' if normalize else 'pixels')
    ax.set_xticks(range(count))
    ax.set_yticks(range(count))
    fontsize = max(5.0, min(9.0, 150.0 / count))
    ax.set_xticklabels(class_names, rotation=60, ha='right', rotation_mode='anchor', fontsize=fontsize)
    ax.set_yticklabels(class_names, fontsize=fontsize)
    ax.set_xlabel('prediction')
    ax.set_ylabel('ground truth')
    if count <= CONFUSION_TEXT_MAX_CLASSES:
        threshold = (1.0 if normalize else max(shown.max(), 1.0)) / 2
        for row in range(count):
            for column in range(count):
                value = shown[row, column]
                text = (f'{value:.2f}' if value > 0 else '') if normalize else _compact_count(value)
                if text:
                    ax.text(column, row, text, ha='center', va='center', fontsize=fontsize * 0.8,
                            color='white' if value > threshold else 'black')
    total = counts.sum()
    accuracy = _percent(np.trace(counts) / total if total > 0 else None)
    ax.set_title(f'confusion matrix ({"rows normalised" if normalize else "pixel counts"}), '
                 f'pixel accuracy {accuracy}', fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig


# ------------------------------------------------------------------------ label maps of a model

PANELS_DEFAULT_COUNT = 4
# What a checkpoint that does not record its network was built as (utils/context.py's default).
DEFAULT_BACKBONE, DEFAULT_HEAD_BRANCHES = 'resnet101', 2


class PanelInputError(Exception):
    """Bad input to `compute_panels` (a file, a list, an image id, a flag): one line of text,
    naming the file where there is one."""


def compute_panels(checkpoint_path, data_root=None, dataset=None, list_name='val', image_ids=None,
                   count=PANELS_DEFAULT_COUNT, pseudo_dir=None, coco=None, eval_size=None,
                   device='cpu'):
    """Run a checkpoint over a few images of a list; returns (rows, info) for `save_panels`.

    `rows` holds one dict per image: 'name' (its id), 'image' (uint8 HxWx3 at the image's own
    size), 'ground_truth' (uint8 HxW, or None when the list's images have no label files),
    'prediction' (uint8 argmax of the class scores), 'confidence' (float32 max softmax
    probability), and 'pseudo_label' (`pseudo_dir`/<id>.png when given and present, else None).
    `info` is the dataset's DatasetInfo (palette and class names).

    The network is the one the checkpoint records ('architecture', else ResNet-101 with the
    two-branch head) with its class count. Images go through the evaluation chain at `eval_size`
    with `coco` normalisation (defaults: what the checkpoint's run used, else the dataset's), are
    scored on the padded canvas as evaluation and pseudo-labeling do, and cut back to their own
    size. `image_ids` picks images of the list by id; else its first `count`. Bad input raises
    PanelInputError with a one-line message.
    """
    import torch

    import data_processing as dp
    from models import deeplab_v2
    from utils.checkpoints import (check_classes, dataset_for_checkpoint, load_checkpoint, load_model_state,
                                   recorded_setting)
    from utils.errors import InputError
    from utils.inference import class_scores
    from utils.training import Runtime

    try:
        checkpoint = load_checkpoint(checkpoint_path)
        info, chosen_by = dataset_for_checkpoint(checkpoint, dataset)
        stored_classes = checkpoint.get('num_classes') or info.num_classes
        if stored_classes != info.num_classes:
            raise InputError(f'{checkpoint_path}: checkpoint has {stored_classes} classes but '
                             f'{info.title} ({chosen_by}) has {info.num_classes}; pass --dataset')
        check_classes(checkpoint, info, checkpoint_path)
        architecture = checkpoint.get('architecture') or {}
        model = deeplab_v2(int(stored_classes),
                           backbone=architecture.get('backbone', DEFAULT_BACKBONE),
                           head_branches=architecture.get('head_branches', DEFAULT_HEAD_BRANCHES))
        load_model_state(model, checkpoint, checkpoint_path)
        try:
            runtime = Runtime(torch.device(device))
        except RuntimeError as error:
            raise InputError(f'--device {device}: {error}') from None
        if runtime.device.type == 'cuda' and not torch.cuda.is_available():
            raise InputError(f'--device {device}: CUDA is not available here')
        model.to(runtime.device).eval()

        coco = bool(recorded_setting(checkpoint, 'coco')) if coco is None else coco
        eval_size = tuple(eval_size or recorded_setting(checkpoint, 'eval_size') or info.eval_size)
        root = dp.resolve_root(info, data_root)
        list_path = find_panel_list(info, root, list_name, chosen_by)
        names = dp.read_list(list_path)
        if image_ids:
            missing = [name for name in image_ids if name not in names]
            if missing:
                raise InputError(f'{list_path}: no image {missing[0]!r} in this list')
            indices = [names.index(name) for name in image_ids]
        else:
            indices = list(range(min(count, len(names))))
        if pseudo_dir is not None and not Path(pseudo_dir).is_dir():
            raise InputError(f'{pseudo_dir}: no such pseudo-label folder')

        transforms = dp.build_transforms(info, 'eval', coco=coco, eval_size=eval_size)
        subset = info.subset_of(list_name)
        labeled = all(info.label_path(root, names[index], subset).is_file() for index in indices)
        data = dp.SegmentationDataset(info, root, names, subset, transforms,
                                      mode='gt' if labeled else 'unlabeled', list_path=list_path)
        rows = []
        for index in indices:
            if not data.image_path(index).is_file():
                raise InputError(f'{data.image_path(index)}: file not found (listed in {list_path})')
            item = data[index]
            own_height, own_width = (int(size) for size in item['own_size'])
            images = item['image'][None].to(runtime.device)
            scores = class_scores(model, images, images.shape[-2:], runtime)
            probabilities = torch.softmax(scores[0, :, :own_height, :own_width].float(), dim=0)
            confidence, prediction = probabilities.max(dim=0)
            picture = dp.load_image(data.image_path(index))
            if tuple(picture.shape[-2:]) != (own_height, own_width):   # Cityscapes' base resize
                picture = torch.nn.functional.interpolate(
                    picture[None].float(), size=(own_height, own_width), mode='bilinear',
                    align_corners=False, antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
            row = {'name': names[index], 'image': picture.permute(1, 2, 0).numpy().copy(),
                   'ground_truth': None, 'prediction': prediction.to(torch.uint8).cpu().numpy(),
                   'confidence': confidence.cpu().numpy(), 'pseudo_label': None}
            if labeled:
                row['ground_truth'] = item['label'][:own_height, :own_width].numpy().copy()
            if pseudo_dir is not None:
                path = dp.pseudo_label_path(pseudo_dir, names[index])
                if path.is_file():
                    pseudo = dp.load_label_file(path, info.num_classes).numpy()
                    if pseudo.shape != (own_height, own_width):
                        raise InputError(f'{path}: pseudo label is {pseudo.shape[0]}x{pseudo.shape[1]} '
                                         f'but its image is {own_height}x{own_width}')
                    row['pseudo_label'] = pseudo
            rows.append(row)
    except InputError as error:
        raise PanelInputError(str(error)) from None
    return rows, info


def find_panel_list(info, root, list_name, chosen_by):
    """The list, or a message that says which dataset was looked for and why, when the root
    does not hold that dataset at all (a Cityscapes checkpoint pointed at a VOC root)."""
    import data_processing as dp
    from utils.errors import InputError

    try:
        return dp.find_list(info, root, list_name)
    except InputError:
        if not (Path(root) / info.list_dir).is_dir():
            raise InputError(f'{root} holds no {info.title} dataset (no {info.list_dir}/ folder), but '
                             f'{info.title} is {chosen_by}: pass --dataset for the data at --data-root, or the '
                             f'{info.title} root') from None
        raise


def argument_text(value):
    """A command-line value as the UTF-8 text the lists are read as (utils: lists are UTF-8
    whatever the locale): under LC_ALL=C Python decodes argv as ASCII with escapes, so a
    non-ASCII id would match nothing."""
    try:
        return os.fsencode(value).decode('utf-8')
    except UnicodeDecodeError:
        return value


# --------------------------------------------------------------------------------- results files

STATE_NAMES = {0: 'pseudo-labeling', 1: 'self-training', 2: 'supervised', 3: 'evaluation'}


def load_results(path):
    """A results.json as a dict; OSError or ValueError (with a short reason) otherwise."""
    with open(path, encoding='utf-8') as file:
        try:
            results = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f'not valid JSON ({error.msg}, line {error.lineno})') from None
    if not isinstance(results, dict):
        raise ValueError('not a results file (the JSON is not an object)')
    return results


def check_state(results, states):
    """Raise ValueError unless the results were written by one of `states` of main.py."""
    state = results.get('state')
    if isinstance(state, bool) or not isinstance(state, int) or state not in states:
        wanted = ' or '.join(f'{s} ({STATE_NAMES[s]})' for s in states)
        found = (f'state {state} ({STATE_NAMES[state]})' if isinstance(state, int) and state in STATE_NAMES
                 else 'no known state' if state is None else f'state {state!r}')
        raise ValueError(f'results of {found}, this needs state {wanted}')


def _round_entries(results):
    """The round dicts of one state-1 results dict, in plot_rounds' form."""
    check_state(results, (1,))
    entries = results.get('rounds')
    if not isinstance(entries, list):
        raise ValueError('no "rounds" list')
    converted = []
    for entry in entries:
        number = entry.get('round') if isinstance(entry, dict) else None
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f'a "rounds" entry has no round number >= 1 ({number!r})')
        converted.append({'round': number, **{
            key: _fraction_or_none(entry.get(source), f'round {number} {source}')
            for key, source in (('labeled_share', 'labeled_share'),
                                ('pseudo_label_miou', 'pseudo_label_miou'),
                                ('val_miou', 'best_miou_after'))}})
    return converted


def rounds_from_results(results_list):
    """(rounds, start_miou) for plot_rounds from one or more state-1 results dicts: one run with
    all its rounds, or a chain of one-round-per-process runs, in any order. Rounds come sorted;
    val_miou is each round's best_miou_after; start_miou is that of the results holding the
    earliest round (the chain's first file), or of the first dict when none has a round."""
    rounds, first = [], None
    for results in results_list:
        entries = _round_entries(results)
        earliest = min((entry['round'] for entry in entries), default=None)
        if first is None or (earliest is not None and (first[0] is None or earliest < first[0])):
            first = (earliest, results)
        rounds.extend(entries)
    if first is None:
        raise ValueError('no results given')
    numbers = [entry['round'] for entry in rounds]
    repeated = sorted({number for number in numbers if numbers.count(number) > 1})
    if repeated:
        raise ValueError(f'round {repeated[0]} appears in more than one results file')
    rounds.sort(key=lambda entry: entry['round'])
    return rounds, first[1].get('start_miou')


def validation_label(results_list):
    """The name of the rounds' validation line: 'valtiny mIoU' when every run validated on
    valtiny (its `val_list`), else 'val mIoU'."""
    lists = {results.get('val_list') for results in results_list}
    return 'valtiny mIoU' if lists == {'valtiny'} else 'val mIoU'


def class_iou_from_results(results):
    """(class_names, {class_name: IoU or None}) of a results dict: state 1 and 2 give their best
    validation's scores (`best_scores`), state 3 its evaluation's (`scores`)."""
    check_state(results, (1, 2, 3))
    key = 'scores' if results['state'] == 3 else 'best_scores'
    scores = results.get(key)
    if not isinstance(scores, dict) or not isinstance(scores.get('iou'), dict) or not scores['iou']:
        raise ValueError(f'no per-class IoU ("{key}" has no "iou"; did the run validate?)')
    iou = {str(name): _fraction_or_none(value, f'IoU of {name}') for name, value in scores['iou'].items()}
    names = [str(name) for name in (results.get('class_names') or list(iou))]
    unknown = sorted(set(iou) - set(names))
    if unknown:
        raise ValueError(f'IoU of classes not in "class_names": {unknown[:3]}')
    return names, iou


def confusion_from_results(results):
    """(matrix, class_names) of a state-3 results dict."""
    check_state(results, (3,))
    matrix = results.get('confusion_matrix')
    if not isinstance(matrix, list) or not matrix:
        raise ValueError('no "confusion_matrix"')
    if not all(isinstance(row, list) and len(row) == len(matrix) for row in matrix):
        raise ValueError('"confusion_matrix" is not a square list of lists')
    names = results.get('class_names')
    if not names:
        iou = (results.get('scores') or {}).get('iou')
        names = list(iou) if isinstance(iou, dict) and len(iou) == len(matrix) else None
    elif len(names) != len(matrix):
        raise ValueError(f'{len(names)} class names for a {len(matrix)}x{len(matrix)} confusion matrix')
    return matrix, names


# ------------------------------------------------------------------------------------------- CLI

class FileError(Exception):
    """A problem with one named file: printed as `error: <file>: <what>`."""

    def __init__(self, path, what):
        super().__init__(f'{path}: {what}')
        self.path, self.what = path, what


def _read(path, extract):
    """extract(load_results(path)), any failure blamed on `path`."""
    try:
        return extract(load_results(path))
    except FileNotFoundError:
        raise FileError(path, 'no such file') from None
    except IsADirectoryError:
        raise FileError(path, 'is a folder, not a results file') from None
    except UnicodeDecodeError:
        raise FileError(path, 'not UTF-8 text') from None
    except OSError as error:
        raise FileError(path, f'cannot be read: {error.strerror or error}') from None
    except ValueError as error:
        raise FileError(path, str(error)) from None


def _write(fig_maker, source, out):
    """Build a figure from what `source` held and save it to `out`."""
    try:
        fig = fig_maker()
    except ValueError as error:
        raise FileError(source, f'cannot be drawn: {error}') from None
    try:
        save_figure(fig, out)
    except OSError as error:
        raise FileError(out, f'cannot be written: {error.strerror or error}') from None
    print(f'wrote {out}')
    return 0


def command_rounds(args):
    """Rounds of one or more state-1 results files (a run, or a chain of one-round runs)."""
    owner, per_file = {}, []
    for path in args.results:
        results, entries = _read(path, lambda results: (results, _round_entries(results)))
        for entry in entries:
            if entry['round'] in owner:
                raise FileError(path, f'round {entry["round"]} is also in {owner[entry["round"]]}')
            owner[entry['round']] = path
        per_file.append(results)
    rounds, start_miou = rounds_from_results(per_file)
    return _write(lambda: plot_rounds(rounds, title=args.title, start_miou=start_miou,
                                      val_label=validation_label(per_file)),
                  args.results[0], args.out)


def command_classes(args):
    """Per-class IoU of a supervised and a DST-CBC results file."""
    names, supervised = _read(args.supervised, class_iou_from_results)
    other_names, dstcbc = _read(args.dstcbc, class_iou_from_results)
    if other_names != names:
        raise FileError(args.dstcbc, f'its classes differ from those of {args.supervised}')
    return _write(lambda: plot_class_iou(names, supervised, dstcbc, labels=tuple(args.labels)),
                  args.dstcbc, args.out)


def command_confusion(args):
    """The confusion matrix of a state-3 results file."""
    matrix, names = _read(args.results, confusion_from_results)
    return _write(lambda: plot_confusion(matrix, names, normalize=args.normalize),
                  args.results, args.out)


def command_panels(args):
    """Image, ground truth, prediction, pseudo label and confidence of a few images of a list, as
    a checkpoint sees them."""
    if args.count < 1:
        raise PanelInputError(f'--count must be at least 1, got {args.count}')
    image_ids = [argument_text(name) for name in args.images] if args.images else None
    rows, info = compute_panels(args.checkpoint, data_root=args.data_root, dataset=args.dataset,
                                list_name=argument_text(args.list), image_ids=image_ids, count=args.count,
                                pseudo_dir=args.pseudo_dir, coco=args.coco, eval_size=args.eval_size,
                                device=args.device)
    title = args.title if args.title is not None else f'{Path(args.checkpoint).name} on {args.list}'
    return _write(lambda: _draw_rows(rows, info.colors, info.class_names, title=title or None),
                  args.checkpoint, args.out)


def build_parser():
    parser = OneLineParser(
        prog='visualize.py',
        description='Draw figures of DST-CBC runs from their results.json files.')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    rounds = commands.add_parser('rounds', help='pseudo-label share and quality, val mIoU per round')
    rounds.add_argument('results', nargs='+', type=Path, metavar='RESULTS.json',
                        help='state-1 results: one run, or one file per round of a chain')
    rounds.add_argument('--out', type=Path, default=Path('rounds.png'),
                        help='output image (default rounds.png)')
    rounds.add_argument('--title', default=None, help='figure title')
    rounds.set_defaults(handler=command_rounds)

    classes = commands.add_parser('classes', help='per-class IoU, supervised beside DST-CBC')
    classes.add_argument('supervised', type=Path, metavar='SUPERVISED_RESULTS.json')
    classes.add_argument('dstcbc', type=Path, metavar='DSTCBC_RESULTS.json')
    classes.add_argument('--out', type=Path, default=Path('classes.png'),
                         help='output image (default classes.png)')
    classes.add_argument('--labels', nargs=2, default=['supervised', 'DST-CBC'],
                         metavar=('FIRST', 'SECOND'), help='legend names of the two runs')
    classes.set_defaults(handler=command_classes)

    confusion = commands.add_parser('confusion', help='confusion matrix of an evaluation (state 3)')
    confusion.add_argument('results', type=Path, metavar='EVAL_RESULTS.json')
    confusion.add_argument('--out', type=Path, default=Path('confusion.png'),
                           help='output image (default confusion.png)')
    confusion.add_argument('--no-normalize', dest='normalize', action='store_false',
                           help='show pixel counts instead of row shares')
    confusion.set_defaults(handler=command_confusion)

    panels = commands.add_parser(
        'panels', help='image, ground truth, prediction, pseudo label and confidence through a checkpoint')
    panels.add_argument('--checkpoint', type=Path, required=True, metavar='X.pt',
                        help='a checkpoint written by main.py (or a converted one)')
    panels.add_argument('--data-root', type=Path, default=None, metavar='ROOT',
                        help='dataset folder (default: as main.py finds it)')
    panels.add_argument('--dataset', default=None, metavar='{voc,city,FILE}',
                        help='voc, city or a dataset description file; default: what the checkpoint records, '
                             'else voc')
    panels.add_argument('--list', default='val', help='the list the images come from (default val)')
    panels.add_argument('--images', nargs='+', default=None, metavar='ID',
                        help='ids of the list to show (default: its first --count)')
    panels.add_argument('--count', type=int, default=PANELS_DEFAULT_COUNT,
                        help=f'how many images when --images is not given (default {PANELS_DEFAULT_COUNT})')
    panels.add_argument('--pseudo-dir', type=Path, default=None, metavar='DIR',
                        help='pseudo labels to show: DIR/<id>.png where present (255 = ignored)')
    panels.add_argument('--coco', action='store_true', default=None,
                        help='Caffe input normalisation (default: what the checkpoint records)')
    panels.add_argument('--eval-size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='evaluation canvas (default: what the checkpoint records, else the dataset\'s)')
    panels.add_argument('--device', default='cpu', help='cpu (default), cuda, cuda:1 ...')
    panels.add_argument('--out', type=Path, default=Path('panels.png'),
                        help='output image (default panels.png)')
    panels.add_argument('--title', default=None,
                        help='figure title (default: "<checkpoint> on <list>"; "" for none)')
    panels.set_defaults(handler=command_panels)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FileError as error:
        print(f'error: {error.path}: {error.what}', file=sys.stderr)
        return 2
    except PanelInputError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
