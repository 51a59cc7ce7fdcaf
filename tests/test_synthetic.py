"""The embedded default data: deterministic for a seed, VOC layout, varied, split by the paper's rule,
with a held-out selection list (valtiny) that leaves train and val unchanged."""
import hashlib
import json

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


def test_valtiny_is_a_held_out_list_disjoint_from_val_leaving_train_and_val_unchanged(tmp_path):
    make_synthetic_voc(tmp_path / 'plain', num_train=16, num_val=4, seed=5)
    train, val = make_synthetic_voc(tmp_path / 'tiny', num_train=16, num_val=4, seed=5, num_valtiny=3)
    lists = tmp_path / 'tiny' / 'ImageSets' / 'Segmentation'
    valtiny = (lists / 'valtiny.txt').read_text().split()
    assert valtiny == ['synth_valtiny_0000', 'synth_valtiny_0001', 'synth_valtiny_0002']
    assert not set(valtiny) & set(val) and not set(valtiny) & set(train)
    # Drawn after val from the same generator: every other file is byte for byte the same.
    plain, tiny = digest(tmp_path / 'plain'), digest(tmp_path / 'tiny')
    assert {name: tiny[name] for name in plain} == plain
    assert sorted(set(tiny) - set(plain)) == sorted(
        ['ImageSets/Segmentation/valtiny.txt'] + [f'JPEGImages/{name}.jpg' for name in valtiny]
        + [f'SegmentationClassAug/{name}.png' for name in valtiny])
    assert not (tmp_path / 'plain' / 'ImageSets' / 'Segmentation' / 'valtiny.txt').exists()
    # Its images are not copies of val's, and the sizes are on record.
    assert len({tiny[f'JPEGImages/{name}.jpg'] for name in valtiny + val}) == 7
    info = json.loads((tmp_path / 'tiny' / 'synthetic.json').read_text())
    assert info['num_valtiny'] == 3 and info['list_sizes'] == {'train.txt': 16, 'val.txt': 4, 'valtiny.txt': 3}
    assert json.loads((tmp_path / 'plain' / 'synthetic.json').read_text())['num_valtiny'] == 0


def test_valtiny_loads_from_the_dataset_folder_and_a_remake_without_it_removes_it(tmp_path):
    make_synthetic_voc(tmp_path, num_train=16, num_val=4, seed=1, num_valtiny=2)
    # The dataset's own list wins over the paper's data_splits/PASCAL_VOC_2012/valtiny.txt.
    assert dp.find_list(dp.VOC, tmp_path, 'valtiny') == tmp_path / 'ImageSets' / 'Segmentation' / 'valtiny.txt'
    dataset = dp.build_dataset(dp.VOC, tmp_path, 'valtiny', 'gt', dp.build_transforms(dp.VOC, 'eval', eval_size=(96, 128)))
    assert dataset.names == ['synth_valtiny_0000', 'synth_valtiny_0001']
    assert dataset[1]['label'].shape == (96, 128)
    # Made again without valtiny (another seed): no stale list naming the old images is left.
    make_synthetic_voc(tmp_path, num_train=16, num_val=4, seed=2)
    assert not (tmp_path / 'ImageSets' / 'Segmentation' / 'valtiny.txt').exists()
