"""Segmentation scores from a confusion matrix: pixel accuracy, per-class IoU and mIoU.

The matrix stays on the device the predictions come from so evaluation never copies whole label
maps to the host; only the small C x C matrix is read back when the scores are computed.

Unlike the original, mIoU averages only the classes that occur (in the labels or the
predictions): on a small validation set (valtiny) some classes never show up, and averaging
their 0/0 made the whole score NaN.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from utils.device import host_values, to_host


@dataclass
class SegmentationScores:
    """Scores of one evaluation; NaN marks a value that is undefined rather than zero."""

    pixel_accuracy: float
    iou: list[float]
    miou: float
    present_classes: list[int] = field(default_factory=list)
    absent_classes: list[int] = field(default_factory=list)
    num_pixels: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.iou)

    def to_dict(self, class_names: list[str] | None = None) -> dict:
        """JSON-ready copy: NaN becomes None (JSON has no NaN); classes named when names given."""
        names = _check_names(class_names, self.num_classes)
        label = (lambda c: names[c]) if names is not None else (lambda c: c)
        key = (lambda c: names[c]) if names is not None else str
        return {
            'pixel_accuracy': _json_float(self.pixel_accuracy),
            'miou': _json_float(self.miou),
            'iou': {key(c): _json_float(v) for c, v in enumerate(self.iou)},
            'present_classes': [label(c) for c in self.present_classes],
            'absent_classes': [label(c) for c in self.absent_classes],
            'num_pixels': int(self.num_pixels),
        }


class ConfusionMatrix:
    """Counts of (ground truth, prediction) pairs: rows are ground truth, columns predictions.

    Target values outside [0, num_classes) (the 255 'ignore' label) are skipped, so the same
    update works for VOC's void border and Cityscapes' unlabeled pixels.
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64,
                                  device=device if device is not None else 'cpu')

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, target: torch.Tensor, prediction: torch.Tensor, check: bool = True) -> None:
        """Add one batch; shapes may differ as long as both hold the same number of pixels.

        Nothing here waits for the device: ignored pixels are counted into a spare cell that is
        dropped, instead of being removed by boolean indexing (whose size the host must read).
        `check=False` skips the range check of the predictions, which needs the host to look at
        them; an argmax over C classes is in range by construction.
        """
        if target.numel() != prediction.numel():
            raise ValueError(f'target {tuple(target.shape)} and prediction '
                             f'{tuple(prediction.shape)} hold different numbers of pixels')
        for name, tensor in (('target', target), ('prediction', prediction)):
            if tensor.is_floating_point() or tensor.is_complex():
                raise ValueError(f'{name} must hold integer class indices, got {tensor.dtype} '
                                 '(pass argmax of the logits, not the logits)')
        n = self.num_classes
        target = target.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        prediction = prediction.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        if check and prediction.numel():
            # A prediction out of range would silently land in another cell of the matrix.
            low, high = host_values(torch.stack(torch.aminmax(prediction)))
            if low < 0 or high >= n:
                raise ValueError(f'predictions must lie in [0, {n}), got values in [{low}, {high}]')
        keep = (target >= 0) & (target < n)
        cells = torch.where(keep, target * n + prediction, torch.full_like(target, n * n))
        if cells.device.type == 'cpu':
            counts = torch.bincount(cells, minlength=n * n + 1)
        else:   # bincount on a GPU reads the largest value back to size its output
            counts = torch.zeros(n * n + 1, dtype=torch.int64, device=cells.device)
            counts.index_add_(0, cells, torch.ones_like(cells))
        self.matrix += counts[:n * n].view(n, n)

    def merge(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
        """Add another matrix's counts into this one (e.g. to combine runs or shards)."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f'can only merge a ConfusionMatrix, got {type(other).__name__}')
        if other.num_classes != self.num_classes:
            raise ValueError(f'cannot merge a {other.num_classes}-class matrix into a '
                             f'{self.num_classes}-class one')
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def __iadd__(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
        return self.merge(other)

    def all_reduce(self) -> None:
        """Sum the matrix over all processes so each one scores the whole validation set.

        A no-op without an initialised process group, so single-process code can call it blindly.
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> SegmentationScores:
        """Scores from the counts so far; computed in float64 on the host from the C x C matrix."""
        m = to_host(self.matrix).to(torch.float64)
        true_positive = m.diagonal()
        false_positive = m.sum(dim=0) - true_positive
        false_negative = m.sum(dim=1) - true_positive
        union = true_positive + false_positive + false_negative
        total = m.sum().item()

        present = [c for c in range(self.num_classes) if union[c].item() > 0]
        absent = [c for c in range(self.num_classes) if union[c].item() == 0]
        iou = [true_positive[c].item() / union[c].item() if union[c].item() > 0 else math.nan
               for c in range(self.num_classes)]
        miou = sum(iou[c] for c in present) / len(present) if present else math.nan
        pixel_accuracy = true_positive.sum().item() / total if total > 0 else math.nan
        return SegmentationScores(pixel_accuracy=pixel_accuracy, iou=iou, miou=miou,
                                  present_classes=present, absent_classes=absent,
                                  num_pixels=int(total))


def format_table(scores: SegmentationScores, class_names: list[str] | None = None) -> str:
    """Per-class IoU table for the console and logs, followed by the summary lines."""
    names = _check_names(class_names, scores.num_classes)
    if names is None:
        names = [str(c) for c in range(scores.num_classes)]
    width = max([len('class')] + [len(name) for name in names])
    lines = [f'{"class":<{width}}  {"IoU (%)":>8}', '-' * (width + 10)]
    for name, value in zip(names, scores.iou):
        shown = 'absent' if math.isnan(value) else f'{100 * value:.2f}'
        lines.append(f'{name:<{width}}  {shown:>8}')
    lines.append('-' * (width + 10))
    lines.append(f'pixel accuracy: {_percent(scores.pixel_accuracy)}')
    lines.append(f'mIoU: {_percent(scores.miou)} over {len(scores.present_classes)} of '
                 f'{scores.num_classes} classes')
    if scores.absent_classes:
        absent_names = ', '.join(names[c] for c in scores.absent_classes)
        lines.append(f'absent (in neither labels nor predictions, left out of mIoU): '
                     f'{absent_names}')
    return '\n'.join(lines)


def _percent(value: float) -> str:
    return 'n/a' if math.isnan(value) else f'{100 * value:.2f}%'


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _check_names(class_names: list[str] | None, num_classes: int) -> list[str] | None:
    """A name list of the wrong length would silently mislabel every row after the mismatch."""
    if class_names is None:
        return None
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(f'got {len(names)} class names for {num_classes} classes')
    return names
