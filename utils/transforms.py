"""Paired image/label transforms (spec section 3), fast enough to feed a GPU from a few cores.

Every transform is called as `transform(image, label, generator=None)` and returns the pair;
`label` may be None (unlabeled images). Images arrive as decoded uint8 tensors [3, H, W] and stay
uint8 until `Normalize`, the last step of every chain, which returns float32; labels are uint8
[H, W] with 255 for "ignore" from file to loss. (Float images work too: tests feed coordinate
images through the chains.)

Randomness comes from `generator`, a torch.Generator the dataset seeds per sample from (seed,
epoch, position), so a sample's augmentation does not depend on which loader worker draws it or
on anything drawn before: a resumed run sees exactly the augmentations it would have seen.
Without a generator the global torch generator is used.

Training draws one scale factor f, scales, pads, crops and flips, but computes only the pixels of
the crop (`ScaleCropFlip`): each output pixel is interpolated straight from the decoded image at
the place a full resize would have put it, so the result is the crop of the full resize without
resizing the whole image first. The geometry is torch's `interpolate(size=(int(f*h), int(f*w)))`:
images bilinear with align_corners=False, labels 'nearest-exact', which picks for every output
pixel the source pixel nearest to the point the bilinear sample is centred on (torch's plain
'nearest' is shifted by up to half a source pixel against it). Fixed-size resizes and padding use
torchvision.transforms.v2 on tv_tensors, which keeps uint8 and the same geometry.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from utils.labels import IGNORE_INDEX  # noqa: F401  (re-exported)


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, label=None, generator=None):
        for transform in self.transforms:
            image, label = transform(image, label, generator)
        return image, label

    def __repr__(self):
        return 'Compose(' + ', '.join(repr(t) for t in self.transforms) + ')'


# --- the sampling positions of torch's interpolate, for any subset of output pixels -------------

def linear_taps(in_size, out_size, positions):
    """For output pixels `positions` of a bilinear resize in_size -> out_size (align_corners
    False): the two source indices and the weight of the second, in torch's float32 arithmetic."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = scale * (positions.astype(np.float32) + np.float32(0.5)) - np.float32(0.5)
    source = np.maximum(source, np.float32(0.0))
    first = source.astype(np.int64)
    weight = np.clip(source - first.astype(np.float32), 0.0, 1.0).astype(np.float32)
    second = np.where(first < in_size - 1, first + 1, first)
    return first, second, weight


def nearest_exact_taps(in_size, out_size, positions):
    """Source index of each output pixel of a 'nearest-exact' resize, as torch computes it:
    floor((dst + 0.5) * scale) with a float32 scale, clamped to the last pixel."""
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    source = np.floor(((positions.astype(np.float64) + 0.5) * scale).astype(np.float32))
    return np.minimum(source.astype(np.int64), in_size - 1)


def sample_image(image, rows, cols):
    """Bilinear samples of `image` [C, H, W] at the output rows/cols of a resize to `size`:
    `rows` and `cols` are (positions, size) pairs; returns float32 [C, len(rows), len(cols)]."""
    (row_positions, out_h), (col_positions, out_w) = rows, cols
    height, width = image.shape[-2:]
    top, bottom, row_weight = linear_taps(height, out_h, row_positions)
    left, right, col_weight = linear_taps(width, out_w, col_positions)
    row_weight = torch.from_numpy(row_weight).view(1, -1, 1)
    col_weight = torch.from_numpy(col_weight).view(1, 1, -1)
    upper = image.index_select(1, torch.from_numpy(top)).float()
    lower = image.index_select(1, torch.from_numpy(bottom)).float()
    blended = upper + (lower - upper) * row_weight
    left_part = blended.index_select(2, torch.from_numpy(left))
    right_part = blended.index_select(2, torch.from_numpy(right))
    return left_part + (right_part - left_part) * col_weight


def sample_label(label, rows, cols):
    """Nearest-exact samples of `label` [H, W] at the same output rows/cols; keeps the dtype."""
    (row_positions, out_h), (col_positions, out_w) = rows, cols
    height, width = label.shape[-2:]
    row_index = nearest_exact_taps(height, out_h, row_positions)
    col_index = nearest_exact_taps(width, out_w, col_positions)
    return torch.from_numpy(label.numpy()[row_index][:, col_index])


def resize_region_uint8(image, scaled, top, left, height, width):
    """Rows top..top+height, columns left..left+width of `image` (uint8 [3, H, W]) resized to
    `scaled`, as uint8: the geometry of `sample_image`, rounded to integers.

    The whole image goes through torch's SIMD uint8 kernel, which takes a channels-last view
    (the decoded HWC buffer) without a copy: at these sizes that is faster than interpolating
    only the crop's pixels, which the kernel cannot do (it has no sub-pixel offset).
    """
    resized = F.interpolate(image[None], size=tuple(scaled), mode='bilinear', align_corners=False,
                            antialias=False)[0]
    return resized[:, top:top + height, left:left + width].contiguous()


def scaled_size(height, width, factor):
    """The size RandomScale gives: (int(f*h), int(f*w)), at least one pixel."""
    return max(int(factor * height), 1), max(int(factor * width), 1)


# --- transforms -------------------------------------------------------------------------------

class Resize:
    """Resize to a fixed (height, width): Cityscapes' 512x1024 base size, or `--no-aug` crops.
    torchvision v2 on uint8: bilinear without antialiasing for the image, nearest-exact for the
    label (the same geometry as ScaleCropFlip)."""

    def __init__(self, size):
        self.size = tuple(int(s) for s in size)

    def __call__(self, image, label=None, generator=None):
        if tuple(image.shape[-2:]) != self.size:
            image = TF.resize(tv_tensors.Image(image), list(self.size), InterpolationMode.BILINEAR,
                              antialias=False).as_subclass(torch.Tensor)
        if label is not None:
            label = resize_label(label, self.size)
        return image, label

    def __repr__(self):
        return f'Resize({self.size})'


def resize_label(label, size):
    """Nearest-exact resize of an integer label map [H, W] (aligned with `Resize`'s image).

    torch's interpolate, not torchvision's mask resize: before torchvision 0.28 that ignores the
    interpolation asked for and uses plain 'nearest', half a pixel off from the image.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(label.shape[-2:]) == size:
        return label
    return F.interpolate(label[None, None], size=size, mode='nearest-exact')[0, 0]


class ScaleCropFlip:
    """Random scale (one factor f in [min_scale, max_scale] for both sides), pad bottom/right to
    the crop size if smaller (image 0, label 255), random crop, horizontal flip with p = 0.5: the
    spec's training chain in one step that computes only the cropped pixels.

    Draws, in order: f, the crop's top and left, the flip; the same draws as applying the steps
    one after another, so the result equals resize -> pad -> crop -> flip up to float rounding.
    """

    def __init__(self, crop_size, min_scale=0.5, max_scale=1.5, flip_prob=0.5):
        self.crop_size = tuple(int(s) for s in crop_size)
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.flip_prob = flip_prob

    def draw(self, height, width, generator):
        factor = torch.empty(()).uniform_(self.min_scale, self.max_scale, generator=generator).item()
        scaled_h, scaled_w = scaled_size(height, width, factor)
        crop_h, crop_w = self.crop_size
        top = int(torch.randint(0, max(scaled_h, crop_h) - crop_h + 1, (), generator=generator))
        left = int(torch.randint(0, max(scaled_w, crop_w) - crop_w + 1, (), generator=generator))
        flip = torch.rand((), generator=generator).item() < self.flip_prob
        return (scaled_h, scaled_w), top, left, flip

    def __call__(self, image, label=None, generator=None):
        height, width = image.shape[-2:]
        (scaled_h, scaled_w), top, left, flip = self.draw(height, width, generator)
        crop_h, crop_w = self.crop_size
        # The part of the crop window that lies on the scaled image; the rest is padding.
        inside_h, inside_w = min(scaled_h - top, crop_h), min(scaled_w - left, crop_w)
        rows = (np.arange(top, top + inside_h), scaled_h)
        cols = (np.arange(left, left + inside_w), scaled_w)
        if image.dtype == torch.uint8:
            region = resize_region_uint8(image, (scaled_h, scaled_w), top, left, inside_h, inside_w)
        else:
            region = sample_image(image, rows, cols)
        out_image, out_label = region, None if label is None else sample_label(label, rows, cols)
        if (inside_h, inside_w) != (crop_h, crop_w):
            out_image, out_label = pad_pair(out_image, out_label, self.crop_size)
        if flip:
            out_image = out_image.flip(-1)
            out_label = None if out_label is None else out_label.flip(-1)
        return out_image, out_label

    def __repr__(self):
        return (f'ScaleCropFlip(crop={self.crop_size}, scale=[{self.min_scale}, {self.max_scale}], '
                f'flip={self.flip_prob})')


class ZeroPad:
    """Evaluation padding to a fixed canvas (VOC: 505x505) so images batch without resizing.

    An image larger than the canvas is an error: cropping would drop pixels from the scores.
    """

    def __init__(self, size):
        self.size = tuple(int(s) for s in size)

    def __call__(self, image, label=None, generator=None):
        height, width = image.shape[-2:]
        if height > self.size[0] or width > self.size[1]:
            raise ValueError(f'image is {height}x{width}, larger than the evaluation canvas '
                             f'{self.size[0]}x{self.size[1]} (--eval-size)')
        return pad_pair(image, label, self.size)

    def __repr__(self):
        return f'ZeroPad({self.size})'


def pad_pair(image, label, size):
    """Pad bottom and right up to at least `size` (image 0, label 255); never crops."""
    pad_h = max(int(size[0]) - image.shape[-2], 0)
    pad_w = max(int(size[1]) - image.shape[-1], 0)
    if pad_h == 0 and pad_w == 0:
        return image, label
    padding = [0, 0, pad_w, pad_h]   # left, top, right, bottom
    image = TF.pad(tv_tensors.Image(image), padding, fill=0).as_subclass(torch.Tensor)
    if label is not None:
        label = TF.pad(tv_tensors.Mask(label), padding, fill=IGNORE_INDEX).as_subclass(torch.Tensor)
    return image, label


class Normalize:
    """Turn the 0..255 RGB image (uint8 or float) into the network's float32 input.

    ImageNet initialisation: RGB scaled to [0, 1], then (x - mean) / std. The Caffe-converted COCO
    weights expect BGR in 0..255 minus a BGR mean, std 1: pass `bgr=True, scale=1.0`.
    """

    def __init__(self, mean, std, bgr=False, scale=1.0 / 255.0):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.bgr = bgr
        self.scale = scale

    def __call__(self, image, label=None, generator=None):
        if self.bgr:
            image = image.flip(0)
        # (x * scale - mean) / std exactly as written: precomputed scale / std and mean / std
        # differ in the last bit, which moves CBC thresholds by a few float32 ulps. The first
        # operation makes a new tensor, so the caller's image is never changed.
        image = image.contiguous().float() * self.scale
        return image.sub_(self.mean).div_(self.std), label

    def invert(self, image):
        """Back to 0..255 RGB (for pictures and alignment tests)."""
        image = (image * self.std + self.mean) / self.scale
        return image.flip(0) if self.bgr else image

    def __repr__(self):
        return f'Normalize(bgr={self.bgr}, scale={self.scale})'
