"""A dataset of one's own, described by a file, from folders to predictions.

The own dataset (utils/synthetic.py `make_synthetic_own`) is unlike VOC on purpose: five classes,
RGB colour masks with a suffix of their own, PNG images in nested folders, and a class ('ring')
drawn in validation images only, so absent from every labeled split. Nothing is written by hand:
describe_dataset.py writes the description and the lists, generate_splits.py the splits.

- the whole chain from the command line: describe, splits, states 2, 1 (two rounds), 0 and 3,
  visualize and predict, with what each should have written;
- every mistake of the issue stops the run before the first step with one line naming the file,
  exit 2; the warnings (absent class, tiny class, validation ids also labeled) are said once, in
  the log and in results.json;
- predict.py gives the classes state 3 writes with --save-predictions, pixel for pixel, on real
  VOC photographs, and reads any image mode and images larger than the evaluation canvas.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import describe_dataset
import generate_splits
import paper_table
import predict
import visualize
from helpers import build_voc14_tree, call, confident_checkpoint, run_main
from utils.synthetic import OWN_COLORS, make_synthetic_own

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES_IN_FOUND_ORDER = ['background', 'triangle', 'square', 'disk', 'ring']   # colours sorted
OWN_FLAGS = ['--backbone', 'resnet14', '--crop-size', '48', '48', '--workers', '0', '--batch-size', '4',
             '--device', 'cpu']


def described(folder):
    """The own dataset under `folder`/shapes, described and split (fraction 4: 6 labeled)."""
    make_synthetic_own(folder / 'shapes')
    status, out, err = call(describe_dataset, '--images', folder / 'shapes' / 'images', '--labels',
                            folder / 'shapes' / 'masks', '--out', folder / 'shapes' / 'shapes.yaml',
                            '--classes', ','.join(CLASSES_IN_FOUND_ORDER))
    assert status == 0, err
    status, out, err = call(generate_splits, '--dataset', folder / 'shapes' / 'shapes.yaml', '--fractions', '4',
                            '--sets', '1')
    assert status == 0, err
    return folder / 'shapes'


@pytest.fixture(scope='module')
def own(build_once):
    """The described own dataset, read only: a test that changes it copies it first."""
    return build_once('own_shapes', described) / 'shapes'


@pytest.fixture(scope='module')
def own_checkpoint(build_once, own):
    """A state 2 checkpoint of the own dataset (one epoch)."""
    def train(folder):
        completed = run_main(folder, '--state', '2', '--dataset', own / 'shapes.yaml', '--split', '4',
                             '--exp-name', 'own_sup', '--init-epochs', '1', *OWN_FLAGS)
        assert completed.returncode == 0, completed.stderr[-3000:]
    return build_once('own_supervised', train) / 'own_sup.pt'


def copy_of(own, tmp_path):
    target = tmp_path / 'shapes'
    shutil.copytree(own, target)
    return target


def one_line_exit_2(completed, *fragments):
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith('error: '), completed.stderr[-2000:]
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


# --- the whole chain -------------------------------------------------------------------------------

def test_own_dataset_from_folders_to_predictions(tmp_path):
    data = tmp_path / 'data'
    ids = make_synthetic_own(data / 'shapes')
    # describe_dataset.py as a real process: nothing but the folders is given
    described_run = subprocess.run(
        [sys.executable, REPO_ROOT / 'describe_dataset.py', '--images', data / 'shapes' / 'images', '--labels',
         data / 'shapes' / 'masks', '--out', data / 'shapes' / 'shapes.yaml', '--classes',
         ','.join(CLASSES_IN_FOUND_ORDER)], capture_output=True, text=True, timeout=120)
    assert described_run.returncode == 0, described_run.stderr
    assert 'labels are RGB colour masks; 5 classes' in described_run.stdout
    assert 'images *.png, labels *_mask.png' in described_run.stdout
    description = data / 'shapes' / 'shapes.yaml'
    lists = data / 'shapes' / 'lists'
    assert (lists / 'train.txt').read_text().split() == sorted(ids['train'])
    assert (lists / 'val.txt').read_text().split() == sorted(ids['val'])

    status, out, err = call(generate_splits, '--dataset', description, '--fractions', '4', '--sets', '1')
    assert status == 0, err
    labeled = (lists / '4_labeled_0.txt').read_text().split()
    assert len(labeled) == 6 and (lists / '4_unlabeled_0.txt').is_file()
    assert 'ring 0.0% MISSING' in out   # the split's class shares show the missing class

    work = tmp_path / 'work'
    work.mkdir()
    common = ['--dataset', description, '--split', '4', '--sets-id', '0', *OWN_FLAGS]
    supervised = run_main(work, '--state', '2', '--exp-name', 'sup', '--init-epochs', '2', *common)
    assert supervised.returncode == 0, supervised.stderr[-3000:]
    sup_results = json.loads((work / 'logs' / 'sup' / 'results.json').read_text())
    assert sup_results['dataset'] == 'shapes' and sup_results['class_names'] == CLASSES_IN_FOUND_ORDER
    assert any("'ring' (4) appears in no image of the labeled list" in text for text in sup_results['warnings'])
    log = (work / 'logs' / 'sup' / 'run.log').read_text()
    assert log.count("warning: class 'ring' (4) appears in no image") == 1

    self_training = run_main(work, '--state', '1', '--exp-name', 'dst', '--continue-from', 'sup.pt',
                             '--init-epochs', '0', '--iters', '2', '--st-epochs', '1', '1', '--val-num-steps', '5',
                             *common)
    assert self_training.returncode == 0, self_training.stderr[-3000:]
    dst_results = json.loads((work / 'logs' / 'dst' / 'results.json').read_text())
    assert [entry['round'] for entry in dst_results['rounds']] == [1, 2]
    unlabeled = (lists / '4_unlabeled_0.txt').read_text().split()
    pseudo = work / 'logs' / 'dst' / 'pseudo_labels'
    for name in unlabeled:   # ids with nested folders keep them
        with Image.open(pseudo / f'{name}.png') as label:
            values = set(np.unique(np.asarray(label)).tolist())
        assert values <= {0, 1, 2, 3, 4, 255}

    labels_only = run_main(work, '--state', '0', '--exp-name', 'labels', '--continue-from', 'dst.pt',
                           '--label-ratio', '0.5', *common)
    assert labels_only.returncode == 0, labels_only.stderr[-3000:]
    label_results = json.loads((work / 'logs' / 'labels' / 'results.json').read_text())
    assert set(label_results['thresholds']) == set(CLASSES_IN_FOUND_ORDER)

    evaluation = run_main(work, '--state', '3', '--exp-name', 'eval', '--continue-from', 'dst.pt',
                          '--save-predictions', work / 'eval_pictures', *common)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    eval_results = json.loads((work / 'logs' / 'eval' / 'results.json').read_text())
    assert len(eval_results['confusion_matrix']) == 5
    assert sum(map(sum, eval_results['confusion_matrix'])) > 0

    status, out, err = call(visualize, 'panels', '--checkpoint', work / 'dst.pt', '--dataset', description,
                            '--list', 'val', '--count', '2', '--out', work / 'panels.png')
    assert status == 0, err
    assert (work / 'panels.png').stat().st_size > 0

    status, out, err = call(predict, '--dataset', description, '--checkpoint', work / 'dst.pt', '--out',
                            work / 'predicted', data / 'shapes' / 'images' / 'val', '--workers', '0', '--device',
                            'cpu', '--confidence', 'png16')
    assert status == 0, err
    predicted = work / 'predicted'
    for name in ids['val']:
        stem = name.split('/', 1)[1]   # relative to the folder given: val/
        with Image.open(predicted / 'index' / f'{stem}.png') as index, \
                Image.open(data / 'shapes' / 'images' / f'{name}.png') as image:
            assert index.mode == 'P' and index.size == image.size
            assert index.getpalette()[:15] == [part for color in OWN_COLORS_IN_FOUND_ORDER for part in color]
            assert set(np.unique(np.asarray(index)).tolist()) <= set(range(5))
        for folder, suffix in (('color', '.png'), ('overlay', '.jpg'), ('confidence', '.png')):
            assert (predicted / folder / f'{stem}{suffix}').is_file()
    status, out, err = call(paper_table, work)   # the tables of an own dataset, by its name
    assert status == 0, err
    assert 'shapes mIoU (%)' in out and 'DST-CBC' in out and 'supervised' in out
    rows = (predicted / 'summary.csv').read_text().splitlines()
    assert len(rows) == 1 + len(ids['val']) and 'share_ring' in rows[0]
    meta = json.loads((predicted / 'predictions.json').read_text())
    assert meta['classes'] == CLASSES_IN_FOUND_ORDER and meta['count'] == len(ids['val'])


OWN_COLORS_IN_FOUND_ORDER = [OWN_COLORS[name] for name in CLASSES_IN_FOUND_ORDER]


def test_the_colours_in_found_order_are_sorted():
    """describe_dataset.py lists colour classes sorted by colour: the order the tests name them in."""
    assert OWN_COLORS_IN_FOUND_ORDER == sorted(OWN_COLORS.values())


# --- every mistake is found before the first step ------------------------------------------------

def labeled_ids(root):
    return (root / 'lists' / '4_labeled_0.txt').read_text().split()


def state_2(work, root, *extra):
    work.mkdir(exist_ok=True)
    return run_main(work, '--state', '2', '--dataset', root / 'shapes.yaml', '--split', '4', '--exp-name', 'run',
                    '--init-epochs', '1', *OWN_FLAGS, *extra)


def nothing_trained(work):
    """Stopped before the first step: no checkpoint, no state, no results."""
    assert not (work / 'run.pt').exists() and not (work / 'logs' / 'run' / 'last.pt').exists()
    assert not (work / 'logs' / 'run' / 'results.json').exists()
    log = work / 'logs' / 'run' / 'run.log'
    assert not log.exists() or ' step ' not in log.read_text()


def write_mask(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, format='PNG')


def mask_path(root, name):
    return root / 'masks' / f'{name}_mask.png'


def test_a_colour_no_class_has_is_named_with_its_pixels_and_where(own, tmp_path):
    root = copy_of(own, tmp_path)
    name = labeled_ids(root)[2]
    with Image.open(mask_path(root, name)) as mask:
        pixels = np.array(mask.convert('RGB'))
    pixels[5, 7:11] = (3, 3, 3)          # four pixels of a colour no class has, first at row 5, column 7
    write_mask(mask_path(root, name), pixels)
    completed = state_2(tmp_path / 'work', root)
    one_line_exit_2(completed, mask_path(root, name), 'colour (3, 3, 3)', '4 pixels', 'row 5, column 7',
                    'ignore_colors')
    nothing_trained(tmp_path / 'work')


def test_a_lossy_label_file_is_refused_whatever_its_name(own, tmp_path):
    root = copy_of(own, tmp_path)
    name = labeled_ids(root)[0]
    with Image.open(mask_path(root, name)) as mask:
        mask.convert('RGB').save(mask_path(root, name), format='JPEG', quality=95)   # a JPEG named .png
    completed = state_2(tmp_path / 'work', root)
    one_line_exit_2(completed, mask_path(root, name), 'JPEG', 'lossy', 'save labels as PNG')
    nothing_trained(tmp_path / 'work')


def test_a_label_of_another_size_than_its_image_is_refused(own, tmp_path):
    root = copy_of(own, tmp_path)
    name = labeled_ids(root)[1]
    with Image.open(mask_path(root, name)) as mask:
        mask.resize((mask.width - 2, mask.height), Image.NEAREST).save(mask_path(root, name))
    completed = state_2(tmp_path / 'work', root)
    one_line_exit_2(completed, mask_path(root, name), 'label is', 'but its image')
    nothing_trained(tmp_path / 'work')


@pytest.mark.parametrize('missing', ['image', 'label'])
def test_a_missing_file_names_the_list_and_line(own, tmp_path, missing):
    root = copy_of(own, tmp_path)
    names = labeled_ids(root)
    path = root / 'images' / f'{names[3]}.png' if missing == 'image' else mask_path(root, names[3])
    path.unlink()
    completed = state_2(tmp_path / 'work', root)
    one_line_exit_2(completed, path, 'file not found', f'{root / "lists" / "4_labeled_0.txt"}, line 4')
    nothing_trained(tmp_path / 'work')


def test_a_label_value_no_class_has_names_the_values_range_and_setting(own, tmp_path):
    """Index labels: a value beyond the classes (the raw ids of another dataset, a 0/255 mask
    under an index encoding with 255 not ignored) names the values found, the classes' range and
    the setting that maps them."""
    root = copy_of(own, tmp_path)
    text = (root / 'shapes.yaml').read_text()
    index_colors = {color: position for position, color in enumerate(OWN_COLORS_IN_FOUND_ORDER)}
    for mask in sorted((root / 'masks').rglob('*_mask.png')):
        with Image.open(mask) as image:
            pixels = np.array(image.convert('RGB'))
        index = np.zeros(pixels.shape[:2], dtype=np.uint8)
        for color, position in index_colors.items():
            index[(pixels == color).all(axis=-1)] = position
        write_mask(mask, index)
    (root / 'shapes.yaml').write_text(text.replace('label_encoding: rgb', 'label_encoding: index'))
    name = labeled_ids(root)[0]
    with Image.open(mask_path(root, name)) as image:
        index = np.array(image)
    index[0, 0], index[0, 1] = 9, 7
    write_mask(mask_path(root, name), index)
    completed = state_2(tmp_path / 'work', root)
    line = one_line_exit_2(completed, mask_path(root, name), 'label values 7, 9', '(0..4)', 'label_values',
                           'ignore_values', root / 'shapes.yaml')
    assert 'found: 0' in line   # the values found are named, the good ones too
    nothing_trained(tmp_path / 'work')


def encoding_line(text, replacement):
    return '\n'.join(replacement if line.startswith('label_encoding:') else line for line in text.splitlines())


@pytest.mark.parametrize('edit, named', [
    (lambda text: text.replace('colors: [[0, 0, 0], ', 'colors: ['), 'colors: 4 colours for 5 classes'),
    (lambda text: text.replace('\ncolors:', '\ncolours: 0\ncolors:'), "unknown key 'colours' (did you mean colors?)"),
    (lambda text: encoding_line(text, 'label_encoding: values\nlabel_values: {0: 0, 1: hoop}'),
     "label_values: maps to 'hoop', which is no class"),
    (lambda text: encoding_line(text, 'label_encoding: index\nignore_index: 3'),
     'ignore_index: 3 lies inside the classes\' range 0..4'),
])
def test_a_description_that_contradicts_itself_is_one_line(own, tmp_path, edit, named):
    root = copy_of(own, tmp_path)
    (root / 'shapes.yaml').write_text(edit((root / 'shapes.yaml').read_text()))
    completed = state_2(tmp_path / 'work', root)
    one_line_exit_2(completed, root / 'shapes.yaml', named)
    assert not (tmp_path / 'work' / 'logs').exists()   # refused before the run began


def test_a_checkpoint_for_other_classes_is_refused_naming_both(own, own_checkpoint, tmp_path):
    root = copy_of(own, tmp_path)
    voc_model = tmp_path / 'voc.pt'
    confident_checkpoint(voc_model)   # 21 classes
    work = tmp_path / 'work'
    work.mkdir()
    completed = run_main(work, '--state', '3', '--dataset', root / 'shapes.yaml', '--continue-from', voc_model,
                         '--exp-name', 'eval', *OWN_FLAGS)
    one_line_exit_2(completed, voc_model, '21 classes', 'needs 5')
    # the same count, other names: both lists are named
    (root / 'shapes.yaml').write_text((root / 'shapes.yaml').read_text().replace('"ring"', '"hoop"'))
    completed = run_main(work, '--state', '3', '--dataset', root / 'shapes.yaml', '--continue-from',
                         own_checkpoint, '--exp-name', 'eval2', *OWN_FLAGS)
    one_line_exit_2(completed, own_checkpoint, 'background, triangle, square, disk, ring',
                    'background, triangle, square, disk, hoop', "'ring' there, 'hoop' here")


def test_a_checkpoint_under_a_description_that_means_otherwise_is_warned(own, own_checkpoint, tmp_path):
    """Two classes' colours swapped, or the normalisation changed, in the description a checkpoint
    is evaluated under: the names still match, and state 3 scored 25% instead of 38% in silence.
    Now a warning names what differs, in the log and results.json, and predict.py says it too."""
    root = copy_of(own, tmp_path)
    description = root / 'shapes.yaml'
    text = description.read_text()
    colours = [list(OWN_COLORS[name]) for name in CLASSES_IN_FOUND_ORDER]
    first, second = json.dumps(colours[1]), json.dumps(colours[2])
    assert text.count(first) == 1 and text.count(second) == 1
    work = tmp_path / 'work'
    work.mkdir()
    for name, edited, key in (
            ('same', text, None),
            ('colours', text.replace(first, 'FIRST').replace(second, first).replace('FIRST', second), 'label_encoding'),
            ('normalised', text.replace('normalization: imagenet', 'normalization: {mean: [0, 0, 0], std: [1, 1, 1]}'),
             'normalization')):
        description.write_text(edited)
        completed = run_main(work, '--state', '3', '--dataset', description, '--continue-from', own_checkpoint,
                             '--exp-name', name, *OWN_FLAGS)
        assert completed.returncode == 0, completed.stderr[-3000:]
        warnings = [warning for warning in json.loads((work / 'logs' / name / 'results.json').read_text())['warnings']
                    if 'was trained under a description' in warning]
        log = (work / 'logs' / name / 'run.log').read_text()
        if key is None:
            assert warnings == [] and 'was trained under a description' not in log
            continue
        assert len(warnings) == 1 and log.count(warnings[0]) == 1, warnings
        assert f'whose {key} differs from {description}' in warnings[0] and str(own / 'shapes.yaml') in warnings[0]
    photos = tmp_path / 'photos'
    photos.mkdir()
    shutil.copy(next((root / 'images').rglob('*.png')), photos / 'one.png')
    status, out, err = call(predict, '--dataset', description, '--checkpoint', own_checkpoint, '--out',
                            tmp_path / 'predicted', '--device', 'cpu', '--workers', '0', photos)
    assert status == 0, err
    assert 'warning: ' in out and 'whose normalization differs from' in out


def test_a_missing_list_is_said_by_the_flag_that_selects_it_and_what_makes_it(own, tmp_path):
    """'list 2_labeled_0.txt not found in ...' named neither --split nor generate_splits.py, nor
    the splits there are; a description moved away from its data said nothing of the root."""
    root = copy_of(own, tmp_path)
    work = tmp_path / 'work'
    work.mkdir()
    completed = run_main(work, '--state', '2', '--dataset', root / 'shapes.yaml', '--split', '2', '--exp-name', 'a',
                         *OWN_FLAGS)
    one_line_exit_2(completed, '--split 2 --sets-id 0: 2_labeled_0.txt is not in', 'the splits there: 4_labeled_0',
                    f'python generate_splits.py --dataset {root / "shapes.yaml"} --fractions 2 --sets 1')
    completed = run_main(work, '--state', '3', '--dataset', root / 'shapes.yaml', '--valtiny', '--exp-name', 'b',
                         '--continue-from', 'none.pt', *OWN_FLAGS)
    one_line_exit_2(completed, '--valtiny: valtiny.txt is not in', 'leave --valtiny out')
    moved = tmp_path / 'elsewhere'
    moved.mkdir()
    (moved / 'shapes.yaml').write_text((root / 'shapes.yaml').read_text())
    completed = run_main(work, '--state', '3', '--dataset', moved / 'shapes.yaml', '--exp-name', 'c',
                         '--continue-from', 'none.pt', *OWN_FLAGS)
    one_line_exit_2(completed, 'val.txt', f'under the data root {moved}', f'the folder of {moved / "shapes.yaml"}',
                    'set root: in the description or pass --data-root')


def test_warnings_are_said_once_in_the_log_and_in_results(own, tmp_path):
    """The ring class is absent from the labeled list, and a validation id added to it makes the
    two lists share an id: both are warned once, in run.log and results.json."""
    root = copy_of(own, tmp_path)
    val_id = (root / 'lists' / 'val.txt').read_text().split()[1]   # not the one with a ring
    with open(root / 'lists' / '4_labeled_0.txt', 'a') as file:
        file.write(f'{val_id}\n')
    completed = state_2(tmp_path / 'work', root)
    assert completed.returncode == 0, completed.stderr[-3000:]
    log = (tmp_path / 'work' / 'logs' / 'run' / 'run.log').read_text()
    results = json.loads((tmp_path / 'work' / 'logs' / 'run' / 'results.json').read_text())
    absent = "class 'ring' (4) appears in no image of the labeled list 4_labeled_0 (7 images)"
    shared = f"1 id of the validation list val is also in the labeled list 4_labeled_0 (first: '{val_id}')"
    for text in (absent, shared):
        assert log.count(text) == 1, text
        assert sum(text in warning for warning in results['warnings']) == 1, text


# --- predict.py ----------------------------------------------------------------------------------

def test_predict_gives_the_classes_state_3_writes_pixel_for_pixel(shared_dir, tmp_path):
    """On the real VOC photographs of val: state 3's --save-predictions and predict.py over the
    val list, with one checkpoint and the same options, give the same class of every pixel."""
    root = tmp_path / 'voc'
    _, val = build_voc14_tree(shared_dir, root)
    model = tmp_path / 'model.pt'
    confident_checkpoint(model, architecture={'backbone': 'resnet14', 'head_branches': 2})
    work = tmp_path / 'work'
    work.mkdir()
    options = ['--batch-size', '2', '--device', 'cpu', '--workers', '0']
    evaluated = run_main(work, '--state', '3', '--data-root', root, '--continue-from', model, '--exp-name', 'eval',
                         '--save-predictions', work / 'state3', *options)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    status, out, err = call(predict, '--dataset', 'voc', '--data-root', root, '--checkpoint', model, '--out',
                            work / 'predicted', root / 'ImageSets' / 'Segmentation' / 'val.txt', *options)
    assert status == 0, err
    differing = 0
    for name in val:
        with Image.open(work / 'state3' / 'color' / f'{name}.png') as state3, \
                Image.open(work / 'predicted' / 'index' / f'{name}.png') as predicted:
            first, second = np.asarray(state3), np.asarray(predicted)
            assert first.shape == second.shape
            differing += int((first != second).sum())
        assert len(np.unique(second)) > 1   # a real prediction, not one class everywhere
    assert differing == 0


def image_of_every_mode(folder):
    """Images as users have them: grey, grey with alpha, palette, RGBA, CMYK JPEG, 16-bit grey,
    one larger than the evaluation canvas (89x121), a text file and a broken JPEG."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    folder.mkdir(parents=True)
    Image.fromarray(rgb).convert('L').save(folder / 'grey.png')
    Image.fromarray(rgb).convert('LA').save(folder / 'grey_alpha.png')
    Image.fromarray(rgb).convert('P').save(folder / 'palette.png')
    Image.fromarray(np.dstack([rgb, np.full((70, 90), 128, np.uint8)])).save(folder / 'rgba.png')
    Image.fromarray(rgb).convert('CMYK').save(folder / 'cmyk.jpg')
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / 'grey16.png')
    Image.fromarray(rng.integers(0, 256, size=(150, 260, 3), dtype=np.uint8)).save(folder / 'large.png')
    (folder / 'notes.txt').write_text('not an image')
    (folder / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    return {'grey': (70, 90), 'grey_alpha': (70, 90), 'palette': (70, 90), 'rgba': (70, 90), 'cmyk': (70, 90),
            'grey16': (70, 90), 'large': (150, 260)}


def test_predict_reads_any_image_and_skips_what_is_none(own, own_checkpoint, tmp_path):
    sizes = image_of_every_mode(tmp_path / 'photos')
    # no --dataset: the checkpoint records the description its run read
    status, out, err = call(predict, '--checkpoint', own_checkpoint, '--out', tmp_path / 'out', tmp_path / 'photos',
                            '--workers', '0', '--device', 'cpu', '--confidence', 'npy', '--summary', 'json')
    assert status == 0, err
    assert json.loads((tmp_path / 'out' / 'predictions.json').read_text())['classes'] == CLASSES_IN_FOUND_ORDER
    skipped = [line for line in out.splitlines() if line.startswith('skipped ')]
    assert len(skipped) == 2 and any('notes.txt: not an image file' in line for line in skipped)
    assert any('broken.jpg' in line for line in skipped)
    for stem, (height, width) in sizes.items():
        with Image.open(tmp_path / 'out' / 'index' / f'{stem}.png') as index:
            assert index.size == (width, height), stem
        confidence = np.load(tmp_path / 'out' / 'confidence' / f'{stem}.npy')
        assert confidence.shape == (height, width) and (confidence > 0).all() and (confidence <= 1).all()
    rows = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert sorted(row['output'] for row in rows) == sorted(sizes)
    for row in rows:
        assert abs(sum(value for key, value in row.items() if key.startswith('share_')) - 1) < 1e-4


def test_predict_refuses_an_output_in_an_input_and_earlier_outputs(own, own_checkpoint, tmp_path):
    images = tmp_path / 'photos'
    image_of_every_mode(images)
    base = ['--dataset', own / 'shapes.yaml', '--checkpoint', own_checkpoint, '--workers', '0', '--device', 'cpu']
    status, _, err = call(predict, *base, '--out', images / 'predictions', images)
    assert status == 2 and 'is inside the input folder' in err and err.count('\n') == 1
    assert not (images / 'predictions').exists()
    status, _, err = call(predict, *base, '--out', tmp_path / 'out', images / 'grey.png')
    assert status == 0, err
    status, _, err = call(predict, *base, '--out', tmp_path / 'out', images / 'grey.png')
    assert status == 2 and 'holds the outputs of an earlier run' in err and '--overwrite' in err
    status, _, err = call(predict, *base, '--out', tmp_path / 'out', images / 'grey.png', '--overwrite')
    assert status == 0, err
    voc_model = tmp_path / 'voc.pt'
    confident_checkpoint(voc_model)
    status, _, err = call(predict, *base[:2], '--checkpoint', voc_model, '--out', tmp_path / 'voc_out', images)
    assert status == 2 and '21 classes' in err and '5 (background, triangle' in err
