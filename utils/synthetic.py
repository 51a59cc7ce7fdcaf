"""The embedded default data: a small synthetic segmentation set in the VOC layout.

Each image holds a few objects on a textured background. A class is a shape AND a texture
(striped disk, checkered triangle, ...) while colours are random, so colour alone does not give
the class away: a network needs many examples to learn it, which is what makes a labeled share of
1/8 clearly worse than full supervision and leaves room for self-training to help. Borders between
regions are marked 255, like VOC's void band. Everything derives from one seed.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image

# VOC class indices used by the synthetic objects (the names do not matter; 0 is background).
SHAPES = {1: 'disk', 2: 'square', 3: 'triangle', 4: 'ring'}
TEXTURES = {1: 'hstripes', 2: 'vstripes', 3: 'checker', 4: 'solid'}
NUM_SYNTHETIC_CLASSES = 1 + len(SHAPES)


def _shape_mask(kind, ys, xs, cy, cx, size, angle):
    """Boolean mask of one shape centred at (cy, cx) with radius-like `size`, rotated by `angle`."""
    dy, dx = ys - cy, xs - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    if kind == 'disk':
        return u ** 2 + v ** 2 <= size ** 2
    if kind == 'square':
        return (np.abs(u) <= 0.8 * size) & (np.abs(v) <= 0.8 * size)
    if kind == 'triangle':
        # Equilateral: inside three half-planes whose normals point 120 degrees apart.
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            theta = angle + k * 2 * np.pi / 3
            inside &= np.cos(theta) * dx + np.sin(theta) * dy <= 0.55 * size
        return inside
    if kind == 'ring':
        radius2 = u ** 2 + v ** 2
        return (radius2 <= size ** 2) & (radius2 >= (0.55 * size) ** 2)
    if kind == 'cross':
        arm = 0.3 * size
        return ((np.abs(u) <= arm) & (np.abs(v) <= size)) | ((np.abs(v) <= arm) & (np.abs(u) <= size))
    if kind == 'ellipse':
        return (u / (1.3 * size)) ** 2 + (v / (0.6 * size)) ** 2 <= 1.0
    raise ValueError(kind)


def _texture(kind, ys, xs, rng):
    """A 0/1 pattern that mixes an object's two colours."""
    period = rng.uniform(6.0, 10.0)   # coarse enough to survive a 0.5x random scale
    phase = rng.uniform(0, 2 * np.pi)
    if kind == 'hstripes':
        return np.sin(2 * np.pi * ys / period + phase) > 0
    if kind == 'vstripes':
        return np.sin(2 * np.pi * xs / period + phase) > 0
    if kind == 'dstripes':
        return np.sin(2 * np.pi * (xs + ys) / (1.4 * period) + phase) > 0
    if kind == 'checker':
        return (np.floor(ys / (period / 1.5)) + np.floor(xs / (period / 1.5))) % 2 == 0
    if kind == 'dots':
        return (np.sin(2 * np.pi * ys / period + phase) > 0.5) & (np.sin(2 * np.pi * xs / period) > 0.5)
    if kind == 'solid':
        return np.zeros_like(ys, dtype=bool)
    raise ValueError(kind)


def _random_color(rng):
    return rng.uniform(20, 235, size=3)


def make_sample(rng, height, width, object_classes=None, void_band=True):
    """One (image uint8 [H, W, 3], label uint8 [H, W]) pair. `object_classes` limits the objects
    drawn to those classes (default: any, drawn as the VOC-layout set always has); `void_band`
    marks boundaries 255."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    # Background: two blended colours under smooth noise plus thin distractor lines.
    low = rng.normal(size=(height // 8 + 2, width // 8 + 2))
    noise = np.kron(low, np.ones((8, 8)))[:height, :width]
    mix = (noise - noise.min()) / (np.ptp(noise) + 1e-6)
    image = (1 - mix[..., None]) * _random_color(rng) + mix[..., None] * _random_color(rng)
    for _ in range(rng.integers(1, 4)):
        theta, offset = rng.uniform(0, np.pi), rng.uniform(-width, width)
        line = np.abs(np.cos(theta) * xs + np.sin(theta) * ys - offset) < 1.0
        image[line] = _random_color(rng)
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(rng.integers(1, 4)):
        if object_classes is None:
            class_id = int(rng.integers(1, NUM_SYNTHETIC_CLASSES))
        else:
            class_id = int(object_classes[rng.integers(len(object_classes))])
        size = rng.uniform(0.16, 0.3) * min(height, width)
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        mask = _shape_mask(SHAPES[class_id], ys, xs, cy, cx, size, rng.uniform(0, np.pi))
        pattern = _texture(TEXTURES[class_id], ys, xs, rng)
        first, second = _random_color(rng), _random_color(rng)
        object_pixels = np.where(pattern[..., None], first, second)
        image[mask] = object_pixels[mask]
        label[mask] = class_id
    image += rng.normal(scale=6.0, size=image.shape)
    if not void_band:
        return np.clip(image, 0, 255).astype(np.uint8), label
    # A void band on both sides of every boundary, as VOC marks object outlines.
    edge = np.zeros_like(label, dtype=bool)
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    edge[:-1, :] |= label[1:, :] != label[:-1, :]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    label[edge] = 255
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_synthetic_voc(root, num_train=240, num_val=60, seed=0, height_range=(88, 96),
                       width_range=(112, 128), labeled_fraction=8, num_valtiny=0):
    """Write the set under `root` in the VOC layout and return (train ids, val ids).

    Lists in ImageSets/Segmentation: train.txt, val.txt, and, by the paper's split rule applied to
    this set (see generate_splits.py), <labeled_fraction>_labeled_<i>.txt / _unlabeled_<i>.txt and
    1_labeled_<i>.txt for set ids 0..2.

    `num_valtiny` > 0 adds valtiny.txt: a held-out selection list of its own images
    (synth_valtiny_XXXX), disjoint from val, for choosing checkpoints (main.py --valtiny) while
    val is only reported on. They are drawn after the val images from the same generator, so the
    train and val files are byte for byte those of the same seed without valtiny.
    """
    from generate_splits import make_splits  # the paper's split rule, shared with the real data

    root = Path(root)
    image_dir, label_dir = root / 'JPEGImages', root / 'SegmentationClassAug'
    list_dir = root / 'ImageSets' / 'Segmentation'
    for folder in (image_dir, label_dir, list_dir):
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_ids = [f'synth_train_{i:04d}' for i in range(num_train)]
    val_ids = [f'synth_val_{i:04d}' for i in range(num_val)]
    valtiny_ids = [f'synth_valtiny_{i:04d}' for i in range(num_valtiny)]
    for name in train_ids + val_ids + valtiny_ids:
        height = int(rng.integers(height_range[0], height_range[1] + 1))
        width = int(rng.integers(width_range[0], width_range[1] + 1))
        image, label = make_sample(rng, height, width)
        Image.fromarray(image).save(image_dir / f'{name}.jpg', quality=95)
        Image.fromarray(label).save(label_dir / f'{name}.png')
    lists = {'train.txt': train_ids, 'val.txt': val_ids}
    if valtiny_ids:
        lists['valtiny.txt'] = valtiny_ids
    lists.update(make_splits(sorted(train_ids), [labeled_fraction]))
    for file_name, names in lists.items():
        (list_dir / file_name).write_text(''.join(f'{name}\n' for name in names))
    if not valtiny_ids:
        # A valtiny.txt left by an earlier call would name images of another generation, and a
        # list in the dataset's folder wins over data_splits/: remove it.
        (list_dir / 'valtiny.txt').unlink(missing_ok=True)
    info = {'seed': seed, 'num_train': num_train, 'num_val': num_val, 'num_valtiny': num_valtiny,
            'list_sizes': {file_name: len(lists[file_name])
                           for file_name in ('train.txt', 'val.txt', 'valtiny.txt') if file_name in lists},
            'classes': SHAPES, 'textures': TEXTURES, 'labeled_fraction': labeled_fraction}
    (root / 'synthetic.json').write_text(json.dumps(info, indent=1))
    return train_ids, val_ids


# --- a dataset of one's own, unlike VOC --------------------------------------------------------

# Colour of each class in the masks; the last class, 'ring', is drawn in validation images only,
# so no labeled split holds it.
OWN_COLORS = {'background': (0, 0, 0), 'disk': (230, 25, 75), 'square': (60, 180, 75),
              'triangle': (0, 130, 200), 'ring': (255, 225, 25)}
OWN_SCENES = ('street', 'field', 'yard/north')


def make_synthetic_own(root, num_train=24, num_val=6, seed=0, height_range=(72, 88), width_range=(96, 120)):
    """A small dataset laid out as a user's own might be, unlike VOC: PNG images in nested
    folders `images/{train,val}/<scene>/<name>.png`, RGB colour masks beside them under
    `masks/.../<name>_mask.png` in OWN_COLORS, five classes, the last ('ring') only in the
    validation images. No lists and no description: describe_dataset.py makes those. Returns
    {'train': ids, 'val': ids} with ids as paths under images/ without the suffix."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    palette = np.asarray(list(OWN_COLORS.values()), dtype=np.uint8)
    ids = {'train': [], 'val': []}
    for subset, count, classes in (('train', num_train, (1, 2, 3)), ('val', num_val, (1, 2, 3, 4))):
        for number in range(count):
            name = f'{subset}/{OWN_SCENES[number % len(OWN_SCENES)]}/img_{number:04d}'
            height = int(rng.integers(height_range[0], height_range[1] + 1))
            width = int(rng.integers(width_range[0], width_range[1] + 1))
            drawn = (4,) if subset == 'val' and number == 0 else classes   # the first val image has a ring
            image, label = make_sample(rng, height, width, object_classes=drawn, void_band=False)
            for folder, suffix, pixels in (('images', '.png', image), ('masks', '_mask.png', palette[label])):
                path = root / folder / f'{name}{suffix}'
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
            ids[subset].append(name)
    return ids
