"""From a batch of normalised images to class scores at the label size: the paper's single scale,
and, for evaluation, multi-scale, flipped and sliding-window inference.

The network's logits come out at 1/8 of its input and are upsampled bilinearly with
align_corners=True (spec section 4). With one scale, no flip and no window the logits themselves
are returned, so the argmax is exactly the paper's protocol; otherwise the softmax probabilities
of every view are averaged at the label size before the argmax, the usual test-time
augmentation of DeepLab-style evaluation.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def upsample(logits, size):
    """Logits at 1/8 to the label size: bilinear, align_corners=True (spec section 4)."""
    return F.interpolate(logits, size=tuple(int(s) for s in size), mode='bilinear', align_corners=True)


@dataclass(frozen=True)
class Protocol:
    """How evaluation looks at each image; the default is the paper's (single scale, no flip)."""
    scales: tuple = (1.0,)
    flip: bool = False
    window: tuple | None = None      # sliding window (height, width), None = whole image
    stride: tuple | None = None      # window stride, default 2/3 of the window

    @property
    def single_view(self):
        return tuple(self.scales) == (1.0,) and not self.flip and self.window is None

    def to_dict(self):
        return {'scales': [float(s) for s in self.scales], 'flip': bool(self.flip),
                'sliding_window': None if self.window is None else list(self.window),
                'window_stride': None if self.window is None else list(self.window_stride)}

    @property
    def window_stride(self):
        if self.window is None:
            return None
        return tuple(self.stride or (max(self.window[0] * 2 // 3, 1), max(self.window[1] * 2 // 3, 1)))


def forward_logits(model, images, runtime):
    return runtime.forward(model, images).float()


def view_probabilities(model, images, size, runtime, scales, flip):
    """Sum over scales (and flips) of the softmax probabilities at `size`; returns (sum, count)."""
    height, width = images.shape[-2:]
    total, count = None, 0
    for scale in scales:
        if scale == 1.0:
            scaled = images
        else:
            scaled_size = (max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1))
            scaled = F.interpolate(images, size=scaled_size, mode='bilinear', align_corners=False)
        views = [(scaled, False)] + ([(scaled.flip(-1), True)] if flip else [])
        for view, flipped in views:
            logits = upsample(forward_logits(model, view, runtime), size)
            if flipped:
                logits = logits.flip(-1)
            probabilities = torch.softmax(logits, dim=1)
            total = probabilities if total is None else total + probabilities
            count += 1
    return total, count


def window_starts(length, window, stride):
    """Window positions covering 0..length, the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


@torch.no_grad()
def class_scores(model, images, size, runtime, protocol=Protocol()):
    """Scores [N, C, *size] whose argmax is the prediction: logits (single view) or averaged
    probabilities (several views)."""
    if protocol.single_view:
        return upsample(forward_logits(model, images, runtime), size)
    if protocol.window is None:
        total, count = view_probabilities(model, images, size, runtime, protocol.scales, protocol.flip)
        return total / count
    # Sliding window over the input (at label size): each window's views are averaged into the
    # pixels it covers, and every pixel is divided by the number of windows covering it.
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=tuple(size), mode='bilinear', align_corners=False)
    window_h, window_w = protocol.window
    stride_h, stride_w = protocol.window_stride
    height, width = size
    total = coverage = None
    for top in window_starts(height, window_h, stride_h):
        for left in window_starts(width, window_w, stride_w):
            crop = images[:, :, top:top + window_h, left:left + window_w]
            summed, count = view_probabilities(model, crop, crop.shape[-2:], runtime,
                                               protocol.scales, protocol.flip)
            if total is None:
                total = summed.new_zeros((summed.shape[0], summed.shape[1], height, width))
                coverage = summed.new_zeros((1, 1, height, width))
            total[:, :, top:top + crop.shape[-2], left:left + crop.shape[-1]] += summed / count
            coverage[:, :, top:top + crop.shape[-2], left:left + crop.shape[-1]] += 1
    return total / coverage
