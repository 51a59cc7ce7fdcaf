"""describe_dataset.py on the folders users have, each case one a tester found: bad flags, files
that cannot be read, an --out that cannot work, file names the lists cannot hold, values the
description reader refuses, linked folders, train/val/test folders, anti-aliased colour masks, a
single class, and messages that say what to rename. Whatever it refuses, it refuses in one line
(exit 2) before writing anything, and what it writes the rest of the program reads.
"""
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import describe_dataset
import generate_splits
from helpers import call
from utils.dataset_description import read_description

SIZE = (12, 16)


def two_classes(number):
    """A 12x16 index label of classes 0 and 1, the edge moving with `number`."""
    label = np.zeros(SIZE, np.uint8)
    label[:, : 4 + number % 8] = 1
    return label


def write_pairs(data, names, label=two_classes, image_suffix='.jpg', label_suffix='.png', images='images',
                labels='labels'):
    """One label per name, and an image of its size (grey), under data/images and data/labels."""
    for number, name in enumerate(names):
        mask = label(number)
        for folder, suffix, array in ((images, image_suffix, np.full(mask.shape[:2] + (3,), 90, np.uint8)),
                                      (labels, label_suffix, mask)):
            path = Path(data) / folder / f'{name}{suffix}'
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    return Path(data)


def describe(data, *extra, images='images', labels='labels', out='d.yaml'):
    return call(describe_dataset, '--images', data / images, '--labels', data / labels, '--out', data / out,
                *extra)


def refused(result, *fragments):
    """Exit 2 and one line on stderr, holding every fragment."""
    status, out, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith('error: '), (status, err)
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def snapshot(folder):
    """Every file under `folder` with its bytes: what a refused run must leave as it was."""
    return {path: path.read_bytes() for path in Path(folder).rglob('*') if path.is_file()}


# --- 1. the flags ------------------------------------------------------------------------------------

@pytest.mark.parametrize('value', ['abc', '-1', '70000'])
def test_a_bad_ignore_value_is_one_line_naming_the_flag(tmp_path, value):
    data = write_pairs(tmp_path, ['a', 'b'])
    line = refused(describe(data, '--ignore', value), '--ignore', 'auto, none, a label value 0..65535 or a colour R,G,B')
    assert repr(value) in line
    assert not (data / 'd.yaml').exists()


def test_help_says_the_order_classes_are_named_in():
    status, out, _ = call(describe_dataset, '--help')
    assert status == 0
    assert 'label values ascending, colours by (r, g, b) ascending' in ' '.join(out.split())


# --- 2. files that cannot be read ------------------------------------------------------------------

@pytest.mark.parametrize('broken, content', [
    ('labels/b.png', 'truncated'), ('labels/b.png', b''), ('images/b.jpg', b'not an image at all')])
def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, broken, content):
    data = write_pairs(tmp_path, ['a', 'b', 'c'])
    path = data / broken
    path.write_bytes(path.read_bytes()[:60] if content == 'truncated' else content)
    refused(describe(data), f'{path}: cannot read', 'replace the')
    assert not (data / 'd.yaml').exists() and not (data / 'lists').exists()


def test_hidden_files_are_skipped_with_a_line(tmp_path):
    data = write_pairs(tmp_path, ['a', 'b', 'c'])
    (data / 'labels' / '._a.png').write_bytes(b'\x00\x05\x16\x07 AppleDouble')   # macOS's copy of a's metadata
    (data / 'images' / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1')
    status, out, err = describe(data)
    assert status == 0, err
    assert f'skipped {data / "labels" / "._a.png"}: a hidden file' in out
    assert f'skipped {data / "images" / ".DS_Store"}: a hidden file' in out


# --- 3. an --out that cannot work -------------------------------------------------------------------

def test_an_out_that_cannot_work_is_refused_before_anything_is_replaced(tmp_path):
    data = write_pairs(tmp_path, ['a', 'b', 'c', 'd', 'e'])
    status, _, err = describe(data)
    assert status == 0, err
    before = snapshot(data)
    (data / 'folder.yaml').mkdir()
    refused(describe(data, '--overwrite', out='folder.yaml'), '--out', 'is a folder')
    refused(describe(data, '--overwrite', out='images/d.yaml'), 'lies inside --images')
    refused(describe(data, '--overwrite', out='labels/d.yaml'), 'lies inside --labels')
    refused(describe(data, '--overwrite', out='d.txt'), 'ends in .yaml (or .yml)')
    assert snapshot(data) == before


# --- 4. file names a list cannot hold ----------------------------------------------------------------

@pytest.mark.parametrize('bad, why', [('IMG 0', 'not a plain id'), ('C:x', 'not a plain id'),
                                      ('tab\there', 'invisible character U+0009')])
def test_file_names_the_list_reader_refuses_are_refused_up_front(tmp_path, bad, why):
    data = write_pairs(tmp_path, ['a', 'b', bad, f'{bad}1'])
    line = refused(describe(data), '2 file names cannot be ids in a list', repr(str(data / 'images' / f'{bad}.jpg')),
                   why, 'rename them')
    assert 'spaces to _' in line
    assert not (data / 'd.yaml').exists() and not (data / 'lists').exists()


# --- 5. every value the reader checks is checked before writing --------------------------------------

@pytest.mark.parametrize('folder, name', [('données', 'donnees'), ('_scratch', 'scratch'), ('été 2', 'ete_2')])
def test_the_default_name_is_one_the_reader_accepts(tmp_path, folder, name):
    data = write_pairs(tmp_path / folder, ['a', 'b', 'c'])
    status, _, err = describe(data)
    assert status == 0, err
    assert read_description(data / 'd.yaml').name == name


@pytest.mark.parametrize('flags, named', [
    (['--name', 'my data'], "--name 'my data': a dataset name is letters, digits"),
    (['--classes', 'a,a'], "--classes: 'a' is given twice (names 1 and 2)"),
    (['--classes', 'a,,b'], 'name 2 of 3 is empty')])
def test_a_value_the_reader_refuses_names_the_flag_and_replaces_nothing(tmp_path, flags, named):
    data = write_pairs(tmp_path, ['a', 'b', 'c'])
    status, _, err = describe(data)
    assert status == 0, err
    before = snapshot(data)
    line = refused(describe(data, '--overwrite', *flags), named)
    assert 'd.yaml' not in line
    assert snapshot(data) == before


# --- 6. and 10. links -------------------------------------------------------------------------------

def test_linked_subfolders_are_followed_once_and_broken_links_reported(tmp_path):
    data = write_pairs(tmp_path / 'data', ['a', 'b', 'c'])
    elsewhere = write_pairs(tmp_path / 'elsewhere', ['x', 'y'])
    for folder in ('images', 'labels'):
        (data / folder / 'more').symlink_to(elsewhere / folder, target_is_directory=True)
    (data / 'images' / 'loop').symlink_to(data / 'images', target_is_directory=True)
    (data / 'images' / 'gone.jpg').symlink_to(tmp_path / 'nowhere.jpg')
    status, out, err = describe(data)
    assert status == 0, err
    lists = [(data / 'lists' / f'{list_name}.txt').read_text().split() for list_name in ('train', 'val')]
    listed = sorted(lists[0] + lists[1])
    assert listed == ['a', 'b', 'c', 'more/x', 'more/y']
    assert f'skipped {data / "images" / "gone.jpg"}: a broken link (to {tmp_path / "nowhere.jpg"}' in out
    assert f'skipped {data / "images" / "loop"}/: a link to {data / "images"}, a folder searched already' in out


def test_the_lists_land_beside_linked_folders_as_given(tmp_path):
    real = write_pairs(tmp_path / 'store', ['a', 'b', 'c'], images='photos', labels='masks')
    data = tmp_path / 'project'
    data.mkdir()
    (data / 'images').symlink_to(real / 'photos', target_is_directory=True)
    (data / 'labels').symlink_to(real / 'masks', target_is_directory=True)
    status, _, err = describe(data)
    assert status == 0, err
    assert (data / 'lists' / 'train.txt').is_file() and not (tmp_path / 'store' / 'lists').exists()
    info = read_description(data / 'd.yaml')
    assert info.image_template == 'images/{id}.jpg' and info.default_root == data.resolve()
    assert info.image_path(info.default_root, 'a', '').is_file()


def test_folders_with_no_common_folder_but_the_filesystem_root_are_refused(tmp_path):
    other_top = Path('/dev/shm')
    if not os.access(other_top, os.W_OK) or Path(os.path.commonpath([tmp_path, other_top])) != Path('/'):
        pytest.skip('needs a writable folder under another top-level folder than the tests\' tmp_path')
    labels = other_top / f'describe_test_{os.getpid()}'
    try:
        data = write_pairs(tmp_path, ['a', 'b'], labels=labels)
        refused(call(describe_dataset, '--images', data / 'images', '--labels', labels, '--out', data / 'd.yaml'),
                'share no folder but /', 'put both folders under one folder')
    finally:
        for path in sorted(labels.rglob('*'), reverse=True):
            path.unlink()
        labels.rmdir()


# --- 7. train/, val/ and other top folders ----------------------------------------------------------

def test_train_val_and_test_folders_make_their_own_lists(tmp_path):
    names = ['train/a', 'train/b', 'train/c', 'val/d', 'test/e', 'test/f', 'extra/g']
    data = write_pairs(tmp_path, names)
    status, out, err = describe(data)
    assert status == 0, err
    lists = data / 'lists'
    assert (lists / 'train.txt').read_text().split() == ['train/a', 'train/b', 'train/c']
    assert (lists / 'val.txt').read_text().split() == ['val/d']
    assert (lists / 'test.txt').read_text().split() == ['test/e', 'test/f']
    assert (lists / 'extra.txt').read_text().split() == ['extra/g']
    assert 'from the train/ and val/ subfolders' in out
    assert f'lists: test/ (2 ids) in {lists / "test.txt"}, used for neither training nor validation' in out
    status, _, err = call(generate_splits, '--dataset', data / 'd.yaml', '--fractions', '3', '--sets', '1')
    assert status == 0, err


def test_without_val_a_seeded_share_of_train_validates(tmp_path):
    data = write_pairs(tmp_path, [f'train/n{i}' for i in range(5)] + ['test/t0', 'test/t1'])
    status, out, err = describe(data)
    assert status == 0, err
    train = (data / 'lists' / 'train.txt').read_text().split()
    val = (data / 'lists' / 'val.txt').read_text().split()
    assert len(val) == 1 and sorted(train + val) == [f'train/n{i}' for i in range(5)]
    assert 'from the train/ subfolder (no val/): a random 20% of train/ for validation' in out
    assert (data / 'lists' / 'test.txt').read_text().split() == ['test/t0', 'test/t1']


def test_lists_are_not_changed_under_splits_made_from_them(tmp_path):
    """`--overwrite --seed 3` rewrote val.txt and left 4_labeled_0.txt made from the old lists: a
    labeled split of validation ids, found by --split 4 --sets-id 0 as if nothing had changed."""
    data = write_pairs(tmp_path, [f'n{i:02d}' for i in range(10)])
    assert describe(data)[0] == 0
    assert call(generate_splits, '--dataset', data / 'd.yaml', '--fractions', '4', '--sets', '1',
                '--no-shares')[0] == 0
    before = snapshot(data / 'lists')
    refused(describe(data, '--overwrite', '--seed', '3'), 'train.txt would change', 'split lists beside it',
            'move them away first')
    assert snapshot(data / 'lists') == before
    status, _, err = describe(data, '--overwrite')   # the same lists again: nothing stale
    assert status == 0, err
    assert snapshot(data / 'lists') == before


# --- 8. anti-aliased colour masks -------------------------------------------------------------------

COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)


def smoothed_mask(number):
    """A 40x40 colour mask of three classes, drawn at 10x10 and resized up bilinearly: its edges
    hold shades between the classes' colours, as an anti-aliased drawing's do."""
    small = np.zeros((10, 10), np.uint8)
    small[2:6, 2:6], small[6:9, 5 + number % 3:] = 1, 2
    return np.asarray(Image.fromarray(COLOURS[small]).resize((40, 40), Image.BILINEAR))


def sharp_mask(number):
    """A 40x40 colour mask of three classes and, in one image, a 4x4 patch of a fourth colour on
    the line between two of them (Cityscapes' truck between black and car)."""
    label = np.zeros((40, 40), np.uint8)
    label[5:20, 5:20], label[25:35, 10 + number:] = 1, 2
    mask = COLOURS[label]
    if number == 0:
        mask[30:34, 0:4] = (0, 0, 110)
    return mask


def test_anti_aliased_colour_masks_are_refused(tmp_path):
    data = write_pairs(tmp_path, ['a', 'b', 'c'], label=smoothed_mask)
    line = refused(describe(data), 'colours in the labels look like blends along the edges between',
                   'save them without anti-aliasing or smoothing', 'nearest-neighbour')
    assert 'between 3 class colours ([0, 0, 0], [0, 0, 255], [255, 0, 0]): e.g. [' in line
    assert re.search(r'e\.g\. \[\d+, \d+, \d+\], \d\.\d\d% of the pixels, lies between \[\d+, \d+, \d+\] and \[', line)
    assert f"in 3 of 3 masks ({data / 'labels' / 'a.png'}, {data / 'labels' / 'b.png'}, " in line
    # with --classes the blends are still what is said: the names are not what is wrong
    refused(describe(data, '--classes', 'a,b,c'), 'look like blends along the edges', 'save them without')
    sharp = write_pairs(tmp_path / 'one_smoothed', ['a', 'b', 'c', 'd'], label=sharp_mask)
    (sharp / 'labels' / 'c.png').write_bytes((data / 'labels' / 'c.png').read_bytes())
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(sharp / 'images' / 'c.jpg')
    refused(describe(sharp), 'in 1 of 4 masks', str(sharp / 'labels' / 'c.png'))
    assert not (data / 'd.yaml').exists()
    # a small class on the line between two others, with insides, is a class
    data = write_pairs(tmp_path / 'sharp', ['a', 'b', 'c', 'd'], label=sharp_mask)
    status, out, err = describe(data)
    assert status == 0, err
    assert read_description(data / 'd.yaml').colors == ((0, 0, 0), (0, 0, 110), (0, 0, 255), (255, 0, 0))


def void_mask(number):
    """A sharp colour mask of three classes with a white void border, as many annotation tools draw."""
    mask = sharp_mask(number + 1)
    mask[:2], mask[-2:] = 255, 255
    return mask


def test_a_void_colour_is_given_as_ignore_r_g_b(tmp_path):
    """The README's example: colour masks with white void, named with --classes, need the void
    colour said: `--ignore 255,255,255` writes it as ignore_colors, not a class."""
    data = write_pairs(tmp_path, ['a', 'b', 'c'], label=void_mask)
    refused(describe(data, '--classes', 'ground,thing,other'), '--classes names 3 classes, but the labels hold 4')
    refused(describe(data, '--ignore', '255'), 'colour masks', '--ignore R,G,B')
    status, out, err = describe(data, '--classes', 'ground,thing,other', '--ignore', '255,255,255')
    assert status == 0, err
    info = read_description(data / 'd.yaml')
    assert info.class_names == ('ground', 'thing', 'other')
    assert info.colors == ((0, 0, 0), (0, 0, 255), (255, 0, 0))
    assert info.encoding.ignore_colors == ((255, 255, 255),)
    assert 'ignored: colour [255, 255, 255]' in out
    index_data = write_pairs(tmp_path / 'index', ['a', 'b'])
    refused(describe(index_data, '--ignore', '255,255,255'), 'index PNGs', '--ignore N')


# --- 9. messages that say what to rename ------------------------------------------------------------

def test_mixed_extensions_are_shown_as_found(tmp_path):
    data = write_pairs(tmp_path, ['a', 'b', 'c'])
    (data / 'images' / 'c.jpg').rename(data / 'images' / 'c.JPG')
    refused(describe(data), 'several extensions (.JPG (1), .jpg (2)); a description names one, so rename or convert')


def test_a_label_that_breaks_the_shared_ending_is_named(tmp_path):
    data = write_pairs(tmp_path, ['a0', 'a1', 'a2', 'a3'], label_suffix='_mask.png')
    (data / 'labels' / 'a3_mask.png').rename(data / 'labels' / 'a3.png')
    refused(describe(data), '3 images have no label', f'{data / "labels" / "a0_mask.png"} looks like its partner',
            f'1 file of --labels ({data / "labels" / "a3.png"}) does not end in _mask.png',
            'rename it to end in _mask.png')


# --- 11. a single class -----------------------------------------------------------------------------

def test_labels_of_a_single_class_are_refused(tmp_path):
    data = write_pairs(tmp_path, ['a', 'b', 'c'], label=lambda number: np.zeros(SIZE, np.uint8))
    refused(describe(data), 'the labels hold a single class, value 0', 'at least two classes')
    assert not (data / 'd.yaml').exists() and not (data / 'lists').exists()
