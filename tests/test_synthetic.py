"""The embedded default data: deterministic for a seed, VOC layout, varied, split by the paper's rule."""
import hashlib

import numpy as np
from PIL import Image

import data_processing as dp
from utils.synthetic import NUM_SYNTHETIC_CLASSES, make_synthetic_voc


def digest(root):
    files = sorted(p for p in root.rglob('*') if p.is_file() and p.name != 'synthetic.json')
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    make_synthetic_voc(tmp_path / 'a', num_train=16, num_val=4, seed=5)
    make_synthetic_voc(tmp_path / 'b', num_train=16, num_val=4, seed=5)
    make_synthetic_voc(tmp_path / 'c', num_train=16, num_val=4, seed=6)
    first, second, other = digest(tmp_path / 'a'), digest(tmp_path / 'b'), digest(tmp_path / 'c')
    assert first == second
    images = [name for name in first if name.startswith('JPEGImages')]
    assert len(images) == 20
    assert all(first[name] != other[name] for name in images)


def test_layout_lists_and_labels_load_through_the_data_layer(tmp_path):
    train, val = make_synthetic_voc(tmp_path, num_train=40, num_val=8, seed=0)
    lists = tmp_path / 'ImageSets' / 'Segmentation'
    labeled = (lists / '8_labeled_0.txt').read_text().split()
    unlabeled = (lists / '8_unlabeled_0.txt').read_text().split()
    assert len(labeled) == 5 and sorted(labeled + unlabeled) == sorted(train)   # int(40 / 8) = 5
    assert (lists / 'val.txt').read_text().split() == val
    dataset = dp.build_dataset(dp.VOC, tmp_path, 'train', 'gt', dp.build_transforms(dp.VOC, 'eval', eval_size=(96, 128)))
    seen, sizes = set(), set()
    for index in range(len(dataset)):
        image, label = dataset.load_pair(index)
        seen |= set(label.unique().tolist())
        sizes.add(tuple(image.shape[-2:]))
    assert seen == set(range(NUM_SYNTHETIC_CLASSES)) | {255}, 'every class, and a void band'
    assert len(sizes) > 5, 'images of varied sizes'
    with Image.open(tmp_path / 'JPEGImages' / f'{train[0]}.jpg') as image:
        pixels = np.asarray(image)
    assert pixels.std() > 20, 'textured, not flat'
