"""Paired image/label transforms (spec section 3).

Every transform is called as `transform(image, label)` and returns the pair; `label` may be None
(unlabeled images). Images are float tensors [3, H, W] in the 0..255 range until `Normalize`, the
last step of every chain (so padding with 0 means black, as in the original); labels are int64
tensors [H, W] with 255 for "ignore". Randomness comes from torch's generator, which DataLoader
seeds per worker, so a chain is reproducible under `torch.manual_seed`.

Alignment: images are resized bilinearly with align_corners=False and labels with 'nearest-exact',
which picks, for every output pixel, the source pixel nearest to the point the bilinear sample is
centred on. (torch's plain 'nearest' is shifted by up to half a source pixel against it.)
"""
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, label=None):
        for transform in self.transforms:
            image, label = transform(image, label)
        return image, label

    def __repr__(self):
        return 'Compose(' + ', '.join(repr(t) for t in self.transforms) + ')'


def resize_label(label, size):
    """Nearest-exact resize of an integer label map [H, W] (aligned with `resize_pair`'s image)."""
    size = (int(size[0]), int(size[1]))
    if tuple(label.shape[-2:]) == size:
        return label
    return F.interpolate(label[None, None].float(), size=size, mode='nearest-exact')[0, 0].long()


def resize_pair(image, label, size):
    """Resize to `size` = (height, width): image bilinear, label nearest (aligned, see module doc)."""
    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) != size:
        image = F.interpolate(image[None], size=size, mode='bilinear', align_corners=False)[0]
    if label is not None:
        label = resize_label(label, size)
    return image, label


def pad_pair(image, label, size):
    """Pad bottom and right up to at least `size` (image 0, label 255); never crops."""
    pad_h = max(int(size[0]) - image.shape[-2], 0)
    pad_w = max(int(size[1]) - image.shape[-1], 0)
    if pad_h == 0 and pad_w == 0:
        return image, label
    image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
    if label is not None:
        label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
    return image, label


class Resize:
    """Resize to a fixed (height, width): Cityscapes' 512x1024 base size, or `--no-aug` crops."""

    def __init__(self, size):
        self.size = tuple(size)

    def __call__(self, image, label=None):
        return resize_pair(image, label, self.size)

    def __repr__(self):
        return f'Resize({self.size})'


class RandomScale:
    """Scale both sides by ONE factor drawn uniformly from [min_scale, max_scale].

    The new size is (int(f*h), int(f*w)): the aspect-preserving "random scale fix" of the original.
    """

    def __init__(self, min_scale=0.5, max_scale=1.5):
        self.min_scale = min_scale
        self.max_scale = max_scale

    def __call__(self, image, label=None):
        factor = torch.empty(()).uniform_(self.min_scale, self.max_scale).item()
        height, width = image.shape[-2:]
        size = (max(int(factor * height), 1), max(int(factor * width), 1))
        return resize_pair(image, label, size)

    def __repr__(self):
        return f'RandomScale({self.min_scale}, {self.max_scale})'


class RandomCrop:
    """Crop (height, width) at a uniformly random place, padding bottom/right first if smaller."""

    def __init__(self, size):
        self.size = tuple(size)

    def __call__(self, image, label=None):
        image, label = pad_pair(image, label, self.size)
        crop_h, crop_w = self.size
        height, width = image.shape[-2:]
        top = int(torch.randint(0, height - crop_h + 1, ()).item())
        left = int(torch.randint(0, width - crop_w + 1, ()).item())
        image = image[:, top:top + crop_h, left:left + crop_w]
        if label is not None:
            label = label[top:top + crop_h, left:left + crop_w]
        return image, label

    def __repr__(self):
        return f'RandomCrop({self.size})'


class RandomHorizontalFlip:
    def __init__(self, flip_prob=0.5):
        self.flip_prob = flip_prob

    def __call__(self, image, label=None):
        if torch.rand(()).item() < self.flip_prob:
            image = image.flip(-1)
            if label is not None:
                label = label.flip(-1)
        return image, label

    def __repr__(self):
        return f'RandomHorizontalFlip({self.flip_prob})'


class ZeroPad:
    """Evaluation padding to a fixed canvas (VOC: 505x505) so images batch without resizing.

    An image larger than the canvas is an error: cropping would drop pixels from the scores.
    """

    def __init__(self, size):
        self.size = tuple(size)

    def __call__(self, image, label=None):
        height, width = image.shape[-2:]
        if height > self.size[0] or width > self.size[1]:
            raise ValueError(f'image is {height}x{width}, larger than the evaluation canvas '
                             f'{self.size[0]}x{self.size[1]} (--eval-size)')
        return pad_pair(image, label, self.size)

    def __repr__(self):
        return f'ZeroPad({self.size})'


class Normalize:
    """Turn the 0..255 RGB image into the network's input.

    ImageNet initialisation: RGB scaled to [0, 1], then (x - mean) / std. The Caffe-converted COCO
    weights expect BGR in 0..255 minus a BGR mean, std 1: pass `bgr=True, scale=1.0`.
    """

    def __init__(self, mean, std, bgr=False, scale=1.0 / 255.0):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.bgr = bgr
        self.scale = scale

    def __call__(self, image, label=None):
        if self.bgr:
            image = image.flip(0)
        image = (image * self.scale - self.mean) / self.std
        return image, label

    def invert(self, image):
        """Back to 0..255 RGB (for visualisation and alignment tests)."""
        image = (image * self.std + self.mean) / self.scale
        return image.flip(0) if self.bgr else image

    def __repr__(self):
        return f'Normalize(bgr={self.bgr}, scale={self.scale})'
