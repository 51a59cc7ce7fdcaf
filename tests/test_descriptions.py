"""Dataset description files, label encodings and describe_dataset.py, checked against values
worked out here by hand or by plain loops, not by the code under test.

- the shipped descriptions give VOC's and Cityscapes' facts of the spec (classes, palette, raw-id
  map, layout, sizes, normalisation) as literals;
- each encoding decodes labels as a per-pixel loop does, and refuses what it must with one line;
- a description that contradicts itself is refused naming the key;
- describe_dataset.py pairs files by the suffix they share, finds index and colour labels, 0/255
  masks and VOC-style 255 borders, and refuses what no description could fix;
- generate_splits.py on a description: its lists and folder by default, never data_splits/;
  the shipped splits are never changed, whatever path names them (issue 20, section 4);
- ids are compared as the files they name: `./x` is `x`, and two ids of one file are refused.
"""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data_processing as dp
import describe_dataset
import generate_splits
from helpers import call, run_main
from utils.cbc import undefined_threshold_notes
from utils.context import class_warnings
from utils.dataset_description import read_description
from utils.errors import InputError
from utils.label_encoding import LabelEncoding

VOC_NAMES = ('background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike '
             'person pottedplant sheep sofa train tvmonitor').split()


# --- the shipped descriptions ---------------------------------------------------------------------

def test_the_voc_description_holds_the_specs_facts():
    info = dp.get_dataset_info('voc')
    assert list(info.class_names) == VOC_NAMES
    # the PASCAL VOC palette, a few entries worked out from its bit rule by hand
    assert info.colors[0] == (0, 0, 0) and info.colors[1] == (128, 0, 0) and info.colors[15] == (192, 128, 128)
    assert info.colors[20] == (0, 64, 128)
    assert info.image_path('/r', '2007_000032', '') == Path('/r/JPEGImages/2007_000032.jpg')
    assert info.label_path('/r', '2007_000032', '') == Path('/r/SegmentationClassAug/2007_000032.png')
    assert (info.crop_size, info.eval_size, info.base_size) == ((321, 321), (505, 505), None)
    assert info.normalization == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False, 1 / 255)
    assert info.splits_dir == dp.REPO_DIR / 'data_splits' / 'PASCAL_VOC_2012'


def test_the_cityscapes_description_maps_the_specs_raw_ids():
    info = dp.get_dataset_info('city')
    spec = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    raw = np.arange(256, dtype=np.uint8)
    allowed = np.isin(raw, np.arange(34)) | (raw == 255)
    decoded = info.encoding.classes_of_values(raw[allowed].reshape(1, -1), 'x.png')
    for value, train_id in zip(raw[allowed].tolist(), decoded[0].tolist()):
        assert train_id == spec.get(value, 255), value
    with pytest.raises(InputError, match='label value 34'):
        info.encoding.classes_of_values(np.array([[7, 34]], dtype=np.uint8), 'x.png')
    assert info.encoding.raw_value_of_class() == (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                                                  31, 32, 33)
    assert info.image_path('/r', 'aachen/a_000001', info.subset_of('valtiny')) == \
        Path('/r/leftImg8bit/val/aachen/a_000001_leftImg8bit.png')
    assert info.label_path('/r', 'aachen/a', info.subset_of('30_labeled_0')) == \
        Path('/r/gtFine/train/aachen/a_gtFine_labelIds.png')
    assert (info.crop_size, info.base_size, info.full_size) == ((256, 512), (512, 1024), (1024, 2048))
    assert info.colors[0] == (128, 64, 128) and info.colors[18] == (119, 11, 32)


# --- encodings, against per-pixel loops -----------------------------------------------------------

def loop_decode(raw, table, ignored):
    out = np.empty(raw.shape, dtype=np.int64)
    for position, value in np.ndenumerate(raw):
        out[position] = table[value] if value in table else (255 if value in ignored else -1)
    return out


def test_index_and_values_encodings_decode_as_a_loop(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.choice([0, 1, 2, 255], size=(13, 17)).astype(np.uint8)
    index = LabelEncoding('index', 3)
    assert (index.classes_of_values(raw, 'x') == loop_decode(raw, {0: 0, 1: 1, 2: 2}, {255})).all()
    binary = LabelEncoding('values', 2, ignore_index=None, values=((0, 0), (255, 1)))
    mask = rng.choice([0, 255], size=(9, 8)).astype(np.uint8)
    assert (binary.classes_of_values(mask, 'x') == loop_decode(mask, {0: 0, 255: 1}, set())).all()
    reduced = LabelEncoding('values', 2, ignore_index=None, values=((1, 0), (2, 1)), ignore_values=(0,))
    small = rng.choice([0, 1, 2], size=(5, 6)).astype(np.uint16)   # a 16-bit file
    assert (reduced.classes_of_values(small, 'x') == loop_decode(small, {1: 0, 2: 1}, {0})).all()
    with pytest.raises(InputError, match=r'label value 3 \(found: 0, 1, 3\) is not any of label_values \(1, 2\), '
                                         r'nor ignored \(0\)'):
        reduced.classes_of_values(np.array([[0, 1, 3]], dtype=np.uint8), 'x')


def test_a_colour_mask_decodes_as_a_loop_and_names_an_unknown_colour(tmp_path):
    colors = ((0, 0, 0), (255, 0, 0), (0, 255, 0))
    encoding = LabelEncoding('rgb', 3, ignore_index=None, colors=colors, ignore_colors=((255, 255, 255),))
    rng = np.random.default_rng(1)
    palette = np.array(colors + ((255, 255, 255),), dtype=np.uint8)
    picks = rng.integers(0, 4, size=(11, 7))
    path = tmp_path / 'mask.png'
    Image.fromarray(palette[picks]).save(path)
    expected = np.where(picks == 3, 255, picks)
    assert (encoding.read(path) == expected).all()
    size, counts = encoding.survey(path)   # the up-front check counts the colours Pillow found
    assert size == (11, 7) and counts.tolist() == [int((picks == index).sum()) for index in range(3)]
    Image.fromarray(palette[picks]).convert('RGBA').save(path)   # alpha is no part of a colour
    assert (encoding.read(path) == expected).all()
    indexed = Image.fromarray(picks.astype(np.uint8), mode='P')   # a palette mask of the same colours
    indexed.putpalette([part for color in palette.tolist() for part in color])
    indexed.save(path)
    assert (encoding.read(path) == expected).all()
    assert encoding.survey(path)[1].tolist() == counts.tolist()
    pixels = palette[picks]
    pixels[2, 3] = pixels[6, 1] = (1, 2, 3)
    Image.fromarray(pixels).save(path)
    with pytest.raises(InputError, match=r'colour \(1, 2, 3\) is none of the 3 classes\' colours: 2 pixels, the '
                                         r'first at row 2, column 3'):
        encoding.read(path)


def test_a_jpeg_label_is_refused_whatever_its_name(tmp_path):
    path = tmp_path / 'label.png'
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path, format='JPEG')
    with pytest.raises(InputError, match='label file is a JPEG, a lossy format'):
        LabelEncoding('index', 2).read(path)


# --- descriptions that contradict themselves -------------------------------------------------------

BASE = """name: tiny
classes: [background, thing, other]
images: images/{id}.jpg
labels: labels/{id}.png
"""


@pytest.mark.parametrize('extra, named', [
    ('colors: [[0, 0, 0], [1, 1, 1]]\n', 'colors: 2 colours for 3 classes'),
    ('ignore_index: 1\n', "ignore_index: 1 lies inside the classes' range 0..2"),
    ('label_encoding: values\nlabel_values: {0: background, 5: 7}\n', 'label_values: maps to class 7, but there are 3'),
    ('label_encoding: values\nlabel_values: {0: 0, 1: 1}\nignore_values: [1]\n', 'label_values: 1 is both mapped'),
    ('label_encoding: rgb\ncolors: [[0, 0, 0], [9, 9, 9], [9, 9, 9]]\n', "classes 'thing' and 'other' share colour"),
    ('label_encoding: rgb\n', "colors: label_encoding: rgb needs each class's colour"),
    ('label_encodng: index\n', "unknown key 'label_encodng' (did you mean label_encoding?)"),
    ('eval: {fit: crop}\n', "eval: fit 'crop' is not one of pad, resize"),
    ('crop_size: [0, 10]\n', 'crop_size: must be [height, width]'),
    # a probe's findings: read as something else than written, or a traceback further on
    ('normalization: {bgr: "no"}\n', "normalization: bgr must be true or false, found 'no'"),
    ('normalization: {scale: abc}\n', "normalization: scale must be a positive number"),
    ('normalization: {scale: 0}\n', "normalization: scale must be a positive number"),
    ('normalization: {std: [.nan, 1, 1]}\n', 'normalization: std must be three finite numbers'),
    ('normalization: {mean: [.inf, 0, 0]}\n', 'normalization: mean must be three finite numbers'),
    ('split_fractions: [.inf]\n', 'split_fractions: must be a list of finite numbers s > 1'),
    ('train_list: ../../other/lists/train\n', "train_list: '../../other/lists/train' must name a list in"),
    ('name: other\n', "key 'name' is given twice (lines 1 and 5)"),
    ('eval: {fit: pad, fit: resize}\n', "key 'fit' is given twice"),
])
def test_a_description_that_contradicts_itself_names_the_key(tmp_path, extra, named):
    path = tmp_path / 'tiny.yaml'
    path.write_text(BASE + extra)
    with pytest.raises(InputError) as error:
        read_description(path)
    assert str(error.value).startswith(f'{path}: ') and named in str(error.value)


@pytest.mark.parametrize('text, named', [
    (BASE.replace('classes: [background, thing, other]', 'classes: [a, b, a]'), "'a' is listed twice"),
    (BASE.replace('images/{id}.jpg', 'images/{name}.jpg'), 'must name {id} once'),
    (BASE.replace('images/{id}.jpg', '../images/{id}.jpg'), 'must be a path inside the data root'),
    (BASE.replace('labels/{id}.png', 'labels/{subset}/{id}.png'), 'subsets: images or labels name {subset}'),
    (BASE.replace('labels/{id}.png', 'labels/{subset}/{id}.png') + 'subsets: {val: val}\n', 'subsets: needs a default'),
    ('name: x\nclasses: [a\n', 'is not valid YAML'),
    ('- a list\n', 'a dataset description is a mapping'),
    (BASE.replace('images/{id}.jpg', 'images/{id!r}.jpg'), 'without a format or conversion'),
    (BASE.replace('images/{id}.jpg', 'images/{id:>20}.jpg'), 'without a format or conversion'),
    (BASE.replace('images/{id}.jpg', 'images\\\\{id}.jpg'), 'separate folders with /'),
    (BASE.replace('[background, thing, other]', '[crack]'), 'is one class: a segmentation tells at least two apart'),
])
def test_descriptions_refused_for_their_form(tmp_path, text, named):
    path = tmp_path / 'tiny.yaml'
    path.write_text(text)
    with pytest.raises(InputError, match=named.replace('{', r'\{').replace('(', r'\(').replace(')', r'\)')
                       .replace('[', r'\[')):
        read_description(path)


def test_the_root_is_the_folder_of_the_file_unless_it_says_otherwise(tmp_path, monkeypatch):
    path = tmp_path / 'data' / 'tiny.yaml'
    path.parent.mkdir()
    path.write_text(BASE)
    assert dp.resolve_root(read_description(path)) == path.parent
    (tmp_path / 'elsewhere').mkdir()
    path.write_text(BASE + 'root: ../elsewhere\n')
    info = read_description(path)
    assert dp.resolve_root(info) == tmp_path / 'elsewhere'
    assert dp.resolve_root(info, str(tmp_path)) == tmp_path   # --data-root wins
    with pytest.raises(InputError, match='--dataset .*neither voc nor city nor a dataset description file'):
        dp.get_dataset_info(str(tmp_path / 'missing.yaml'))


def test_a_description_without_colours_gets_the_voc_palette(tmp_path):
    path = tmp_path / 'tiny.yaml'
    path.write_text(BASE)
    assert read_description(path).colors == ((0, 0, 0), (128, 0, 0), (0, 128, 0))


# --- warnings and notes ---------------------------------------------------------------------------

def test_class_warnings_name_absent_and_tiny_classes():
    info = read_description_text('name: t\nclasses: [bg, a, b, c]\nimages: i/{id}.png\nlabels: l/{id}.png\n')
    messages = class_warnings(info, '8_labeled_0', 5, np.array([99_000, 0, 999, 1]))
    # shares of the 100,000 labeled pixels: b 0.999% (not tiny), c 0.001% (tiny), a absent
    assert len(messages) == 2
    assert messages[0].startswith("class 'a' (1) appears in no image of the labeled list 8_labeled_0 (5 images)")
    assert '1e-5' in messages[0]
    assert messages[1] == "class with a tiny share of the labeled pixels of 8_labeled_0: 'c' (3) 0.001% (1 of " \
                          "100000): too few to learn it well"


def read_description_text(text, folder=None):
    import tempfile
    folder = Path(folder or tempfile.mkdtemp())
    path = folder / 'd.yaml'
    path.write_text(text)
    return read_description(path)


def test_undefined_thresholds_are_said_for_each_class_it_happens_to():
    # ratio 0.2: count x ratio < 1 for counts 0..4; count 5 gives exactly 1 (defined)
    notes = undefined_threshold_notes(('bg', 'a', 'b', 'c'), [100, 0, 4, 5], 0.2)
    assert len(notes) == 2
    assert notes[0].startswith("class 'a' (1): the network predicts it on no sampled pixel")
    assert notes[1].startswith("class 'b' (2): the network predicts it on only 4 sampled pixel(s)")
    grouped = undefined_threshold_notes(('bg', 'a', 'b'), [100, 0, 0], 0.2)   # one note for the classes alike
    assert grouped == ["classes 'a' (1), 'b' (2): the network predicts them on no sampled pixel, so at ratio 0.2 "
                       "their threshold is undefined and is 1e-05, the original's rule: every pixel predicted as one of "
                       "them is kept"]
    assert all('is 1e-05, the original\'s rule: every pixel predicted as it is kept' in note for note in notes)


# --- describe_dataset.py ---------------------------------------------------------------------------

def folders(tmp_path, labels, image_suffix='.jpg', label_suffix='.png', names=None):
    """images/ and labels/ with one image per label array (grey index labels, or RGB if 3-D)."""
    names = names or [f'n{i:02d}' for i in range(len(labels))]
    for name, label in zip(names, labels):
        for folder, suffix, array in (('images', image_suffix, np.full(label.shape[:2] + (3,), 90, np.uint8)),
                                      ('labels', label_suffix, label)):
            path = tmp_path / 'data' / folder / f'{name}{suffix}'
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    return tmp_path / 'data'


def describe(data, *extra):
    return call(describe_dataset, '--images', data / 'images', '--labels', data / 'labels', '--out',
                data / 'd.yaml', *extra)


def test_describe_finds_voc_style_borders_and_index_labels(tmp_path):
    label = np.zeros((20, 30), np.uint8)
    label[5:10, 5:10], label[10:12, :] = 2, 255
    other = np.ones((20, 30), np.uint8)
    data = folders(tmp_path, [label, other] * 3)
    status, out, err = describe(data)
    assert status == 0, err
    info = read_description(data / 'd.yaml')
    assert info.encoding.kind == 'index' and info.encoding.ignore_index == 255 and info.num_classes == 3
    assert '255 is taken as "no class"' in out
    assert info.class_names == ('class_0', 'class_1', 'class_2')
    # pixel shares: class 0 has 6 x (600 - 25 - 60) = 3090 of the 3 x 540 + 3 x 600 = 3420 + ... counted pixels
    counted = 3 * (600 - 60) + 3 * 600
    assert f'{3 * (600 - 25 - 60) / counted * 100:6.2f}%' in out


def test_describe_maps_binary_0_255_masks_to_two_classes(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 255
    data = folders(tmp_path, [mask] * 5, label_suffix='_mask.png')
    status, out, err = describe(data, '--classes', 'concrete,crack')
    assert status == 0, err
    info = read_description(data / 'd.yaml')
    assert info.encoding.kind == 'values' and info.class_names == ('concrete', 'crack')
    assert (info.encoding.classes_of_values(mask, 'x') == (mask == 255)).all()   # 255 is the crack, not ignored
    assert info.label_template == 'labels/{id}_mask.png'
    val = (data / 'lists' / 'val.txt').read_text().split()
    train = (data / 'lists' / 'train.txt').read_text().split()
    assert len(val) == 1 and sorted(train + val) == [f'n{i:02d}' for i in range(5)]   # a seeded 20%


@pytest.mark.parametrize('remove, named', [('labels/n01.png', '1 image has no label: '),
                                           ('images/n02.jpg', '1 label has no image: ')])
def test_describe_refuses_an_image_without_label_and_the_reverse(tmp_path, remove, named):
    data = folders(tmp_path, [np.zeros((8, 8), np.uint8)] * 4)
    (data / remove).unlink()
    status, out, err = describe(data)
    assert status == 2 and err.startswith(f'error: {named}') and err.count('\n') == 1
    assert not (data / 'd.yaml').exists()


def test_describe_refuses_lossy_labels_and_a_wrong_class_count(tmp_path):
    data = folders(tmp_path, [np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8)])
    status, _, err = describe(data, '--classes', 'a,b,c')
    assert status == 2 and '--classes names 3 classes, but the labels hold 2' in err
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / 'labels' / 'n00.png', format='JPEG')
    status, _, err = describe(data)
    assert status == 2 and 'n00.png: label file is a JPEG, a lossy format' in err


# --- generate_splits.py ----------------------------------------------------------------------------

def test_generate_splits_never_changes_the_shipped_splits_whatever_names_them(repo_root, tmp_path, monkeypatch):
    """Issue 20: `--out data_splits/PASCAL_VOC_2012` overwrote the paper's 39 splits."""
    copy = tmp_path / 'repo'
    shutil.copytree(repo_root / 'data_splits', copy / 'data_splits')
    monkeypatch.setattr(generate_splits, 'REPO_DIR', copy)
    shipped = copy / 'data_splits' / 'PASCAL_VOC_2012'
    before = {path.name: path.read_bytes() for path in shipped.iterdir()}
    mine = tmp_path / 'mine.txt'
    mine.write_text(''.join(f'img{i:04d}\n' for i in range(300)))
    for out in (shipped, copy / 'data_splits' / '..' / 'data_splits' / 'PASCAL_VOC_2012'):
        status, out_text, err = call(generate_splits, '--dataset', 'voc', '--list', mine, '--out', out)
        assert status == 2 and 'shipped splits' in err and out_text == ''
    assert {path.name: path.read_bytes() for path in shipped.iterdir()} == before


def test_generate_splits_of_a_description_goes_to_its_list_folder_and_never_data_splits(tmp_path, repo_root):
    data = folders(tmp_path, [np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8)] * 6)
    status, _, err = describe(data)
    assert status == 0, err
    status, out, err = call(generate_splits, '--dataset', data / 'd.yaml', '--fractions', '3', '--sets', '1')
    assert status == 0, err
    train = (data / 'lists' / 'train.txt').read_text().split()
    assert (data / 'lists' / '3_labeled_0.txt').read_text().split() + \
        (data / 'lists' / '3_unlabeled_0.txt').read_text().split() != []
    assert sorted((data / 'lists' / '3_labeled_0.txt').read_text().split()
                  + (data / 'lists' / '3_unlabeled_0.txt').read_text().split()) == train
    assert 'class pixel shares of the labeled sets' in out
    status, _, err = call(generate_splits, '--dataset', data / 'd.yaml', '--out', repo_root / 'data_splits' / 'x')
    assert status == 2 and 'is inside the shipped splits' in err
    assert not (repo_root / 'data_splits' / 'x').exists()


def test_generate_splits_of_a_description_never_replaces_splits_silently(tmp_path, repo_root):
    """A probe's findings: another --seed rewrote the splits silently (and left the other fractions
    of the old seed beside them); a description whose `splits` names data_splits/ wrote there; a
    list of two at 1/2 labeled both and left an empty unlabeled list; fractions of the description
    that name one file twice were blamed on the list."""
    data = folders(tmp_path, [np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8)] * 6)
    assert describe(data)[0] == 0
    lists = data / 'lists'
    assert call(generate_splits, '--dataset', data / 'd.yaml', '--fractions', '2,4', '--sets', '1')[0] == 0
    before = {path.name: path.read_bytes() for path in lists.iterdir()}
    status, out, err = call(generate_splits, '--dataset', data / 'd.yaml', '--fractions', '2', '--sets', '1',
                            '--seed', '1')
    assert status == 2 and out == '' and err.count('\n') == 1
    assert f"{lists / '2_labeled_0.txt'} exists with other ids" in err and '--overwrite' in err
    assert {path.name: path.read_bytes() for path in lists.iterdir()} == before
    status, out, err = call(generate_splits, '--dataset', data / 'd.yaml', '--fractions', '2', '--sets', '1',
                            '--seed', '1', '--overwrite')
    assert status == 0, err
    assert (lists / '2_labeled_0.txt').read_bytes() != before['2_labeled_0.txt']
    assert 'note: 1 labeled lists there were not written by this run (4_labeled_0.txt)' in out
    status, _, err = call(generate_splits, '--dataset', data / 'd.yaml', '--fractions', '2', '--sets', '1',
                          '--seed', '1')
    assert status == 0, err   # the same splits again: nothing changes, nothing refused

    description = data / 'd.yaml'
    text = description.read_text()
    description.write_text(text + f'splits: {os.path.relpath(repo_root / "data_splits" / "MINE", data)}\n')
    status, _, err = call(generate_splits, '--dataset', description, '--fractions', '2', '--sets', '1')
    assert status == 2 and 'splits: ' in err and 'is inside the shipped splits' in err
    assert not (repo_root / 'data_splits' / 'MINE').exists()
    description.write_text(text.replace('lists: lists', 'split_fractions: [2, 2.2]\nlists: lists'))
    status, _, err = call(generate_splits, '--dataset', description, '--out', tmp_path / 'other')
    assert status == 2 and f'{description}: split_fractions: fractions 2.0 and 2.2 both give file name 2' in err

    two = tmp_path / 'two.txt'
    two.write_text('a\nb\n')
    status, _, err = call(generate_splits, '--dataset', data / 'd.yaml', '--list', two, '--fractions', '2',
                          '--sets', '1', '--out', tmp_path / 'two', '--no-shares')
    assert status == 0, err
    assert [len((tmp_path / 'two' / f'2_{kind}_0.txt').read_text().split()) for kind in ('labeled', 'unlabeled')] \
        == [1, 1]
    one = tmp_path / 'one.txt'
    one.write_text('a\n')
    status, _, err = call(generate_splits, '--dataset', data / 'd.yaml', '--list', one, '--fractions', '1.5',
                          '--sets', '1', '--out', tmp_path / 'one', '--no-shares')
    assert status == 2 and 'too few for fraction' in err


def test_generate_splits_for_voc_writes_nothing_into_another_shipped_folder(tmp_path, repo_root):
    mine = tmp_path / 'mine.txt'
    mine.write_text(''.join(f'img{i:04d}\n' for i in range(300)))
    status, _, err = call(generate_splits, '--dataset', 'voc', '--list', mine, '--fractions', '3',
                          '--out', repo_root / 'data_splits' / 'Cityscapes')
    assert status == 2 and "only voc's own shipped folder" in err
    assert not (repo_root / 'data_splits' / 'Cityscapes' / '3_labeled_0.txt').exists()


# --- ids are the files they name ------------------------------------------------------------------

def test_an_id_written_two_ways_is_one_id(tmp_path):
    """Issue 20: `./x` in a list was another id than `x`: state 0 reported 57 labels and wrote 56."""
    path = tmp_path / 'list.txt'
    path.write_text('a\nb/c\n./a\n')
    with pytest.raises(InputError, match=r"has 'a' \(line 1\) and './a' \(line 3\), which name the same files"):
        dp.read_list(path)
    path.write_text('./a\nb//c\nd/\n')
    assert dp.read_list(path) == ['a', 'b/c', 'd']


def test_two_ids_of_one_image_file_are_refused_before_the_first_step(synthetic_voc, tmp_path):
    root = tmp_path / 'voc'
    shutil.copytree(synthetic_voc, root)
    names = (root / 'ImageSets' / 'Segmentation' / '8_labeled_0.txt').read_text().split()
    alias = 'alias_of_first'
    for folder, suffix in (('JPEGImages', '.jpg'), ('SegmentationClassAug', '.png')):
        (root / folder / f'{alias}{suffix}').symlink_to(root / folder / f'{names[0]}{suffix}')
    with open(root / 'ImageSets' / 'Segmentation' / '8_labeled_0.txt', 'a') as file:
        file.write(f'{alias}\n')
    work = tmp_path / 'work'
    work.mkdir()
    completed = run_main(work, '--state', '2', '--data-root', root, '--split', '8', '--exp-name', 'run',
                         '--backbone', 'resnet14', '--crop-size', '48', '48', '--workers', '0', '--device', 'cpu',
                         '--eval-size', '96', '128', '--init-epochs', '1')
    assert completed.returncode == 2, completed.stderr
    assert f"ids '{names[0]}' (line 1) and '{alias}' (line {len(names) + 1}) name the same image file" in completed.stderr


def test_describe_writes_a_root_when_the_file_lies_elsewhere(tmp_path):
    """The description may live apart from the data: its root then says where the data is, and
    the lists still go under the data root."""
    data = folders(tmp_path, [np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8)] * 3,
                   names=[f'a/n{i}' for i in range(3)] + [f'b/c/n{i}' for i in range(3)])
    out = tmp_path / 'elsewhere' / 'mine.yaml'
    out.parent.mkdir()
    status, _, err = call(describe_dataset, '--images', data / 'images', '--labels', data / 'labels', '--out', out,
                          '--name', 'mine')
    assert status == 0, err
    info = read_description(out)
    root = dp.resolve_root(info)
    assert root == data and info.name == 'mine'
    assert info.image_path(root, 'b/c/n1', '') == data / 'images' / 'b' / 'c' / 'n1.jpg'
    listed = (data / 'lists' / 'train.txt').read_text().split() + (data / 'lists' / 'val.txt').read_text().split()
    assert sorted(listed) == sorted([f'a/n{i}' for i in range(3)] + [f'b/c/n{i}' for i in range(3)])
    status, _, err = call(describe_dataset, '--images', data / 'images', '--labels', data / 'labels', '--out', out)
    assert status == 2 and 'exists; pass --overwrite' in err   # nothing it wrote is replaced unasked
