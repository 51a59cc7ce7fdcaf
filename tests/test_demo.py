"""The README's first command, in its quick form: the same chain of real command lines (run in the
demo's process, without an interpreter start each), selecting on valtiny and reporting on val,
and the pictures it leaves in <work-dir>/pictures/."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_processing import VOC_COLORS

import visualize
from visualize import (DPI, FIGURE_TITLE_SPACE, IGNORED_COLOR, MARGIN, PANEL_GAP, PANEL_TITLE_SPACE,
                       PANEL_WIDTH, ROW_GAP, ROW_NAME_SPACE)

REPO_ROOT = Path(__file__).resolve().parents[1]
VOC_PALETTE = {tuple(int(value) for value in color) for color in VOC_COLORS}
LEGEND_WIDTH = PANEL_GAP + visualize.LEGEND_COLUMN_WIDTH     # one legend column after a gap


@pytest.fixture(scope='module')
def quick_demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp('demo')
    completed = subprocess.run([sys.executable, str(REPO_ROOT / 'demo.py'), '--quick', '--seed', '3',
                                '--data-dir', str(folder / 'data'), '--work-dir', str(folder / 'work')],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = json.loads((folder / 'work' / 'demo_summary.json').read_text())
    return {'stdout': completed.stdout, 'data': folder / 'data', 'work': folder / 'work', 'summary': summary}


def read_png(path):
    return np.asarray(Image.open(path).convert('RGB')).astype(np.int64)


def results(work, name):
    return json.loads((work / 'logs' / name / 'results.json').read_text())


def check_selects_on_valtiny_and_reports_on_val(quick_demo):
    stdout, work, data = quick_demo['stdout'], quick_demo['work'], quick_demo['data']
    commands = [line for line in stdout.splitlines() if line.startswith('$ python main.py')]
    assert [line.split('--state ')[1][0] for line in commands] == ['2', '1', '1', '3', '3']
    # Training and self-training validate (and so choose checkpoints) on valtiny; evaluation
    # scores on val.
    assert all('--valtiny' in line for line in commands[:3])
    assert not any('--valtiny' in line for line in commands[3:])
    assert 'supervised, 1/8 of the labels' in stdout and 'DST-CBC, 2 rounds' in stdout
    assert 'val mIoU' in stdout and '(held-out)' in stdout and 'valtiny mIoU' in stdout and '(selection)' in stdout
    for name in ('demo_eval_supervised', 'demo_eval_dstcbc'):
        evaluation = results(work, name)
        assert (evaluation['selected_on'], evaluation['reported_on']) == ('valtiny', 'val')
    for name in ('demo_supervised', 'demo_dstcbc_round1', 'demo_dstcbc_round2'):
        assert results(work, name)['val_list'] == 'valtiny'

    # The two lists are different images, made with the seed asked for.
    lists = data / 'ImageSets' / 'Segmentation'
    val, valtiny = (lists / 'val.txt').read_text().split(), (lists / 'valtiny.txt').read_text().split()
    assert len(val) == 8 and len(valtiny) == 6 and not set(val) & set(valtiny)
    made = json.loads((data / 'synthetic.json').read_text())
    assert (made['seed'], made['num_val'], made['num_valtiny']) == (3, 8, 6)

    summary = quick_demo['summary']
    assert summary['seed'] == 3 and (summary['num_val'], summary['num_valtiny']) == (8, 6)
    for key in ('supervised_miou', 'dstcbc_miou', 'supervised_valtiny_miou', 'dstcbc_valtiny_miou'):
        assert 0 <= summary[key] <= 1
    assert summary['supervised_miou'] == results(work, 'demo_eval_supervised')['miou']
    assert summary['dstcbc_miou'] == results(work, 'demo_eval_dstcbc')['miou']
    # Rounds only replace the best checkpoint when valtiny improves; on val they may lose.
    assert summary['dstcbc_valtiny_miou'] >= summary['supervised_valtiny_miou']
    assert summary['supervised_curve'] and summary['supervised_curve'][-1][0] == 2
    assert (work / 'demo_dstcbc_round2.pt').is_file()


def image_size(data, name):
    with Image.open(data / 'JPEGImages' / f'{name}.jpg') as image:
        return image.height, image.width


def panel_layout(sizes, columns, with_colorbar=True):
    """(figure height, width, cells) in pixels of save_panels' figure with a title, named rows of
    images of these sizes and `columns` panels each, and one legend column; cells[row][column]
    is (top, bottom, left, right)."""
    heights = [PANEL_WIDTH * min(max(h / w, 0.25), 2.0) for h, w in sizes]
    width = (MARGIN + ROW_NAME_SPACE + columns * PANEL_WIDTH + (columns - 1) * PANEL_GAP
             + (visualize.COLORBAR_SPACE if with_colorbar else 0) + LEGEND_WIDTH + MARGIN)
    top, cells = MARGIN + FIGURE_TITLE_SPACE, []
    for height in heights:
        top += PANEL_TITLE_SPACE
        row = []
        for column in range(columns):
            left = MARGIN + ROW_NAME_SPACE + column * (PANEL_WIDTH + PANEL_GAP)
            row.append((round(top * DPI), round((top + height) * DPI), round(left * DPI),
                        round((left + PANEL_WIDTH) * DPI)))
        cells.append(row)
        top += height + ROW_GAP
    return round((top - ROW_GAP + MARGIN) * DPI), round(width * DPI), cells


def cell(pixels, box, inset=4):
    top, bottom, left, right = box
    return pixels[top + inset:bottom - inset, left + inset:right - inset]


def differ(first, second):
    rows, columns = min(first.shape[0], second.shape[0]), min(first.shape[1], second.shape[1])
    return np.abs(first[:rows, :columns] - second[:rows, :columns]).mean()


def check_draws_its_pictures(quick_demo):
    work, data, summary = quick_demo['work'], quick_demo['data'], quick_demo['summary']
    pictures = {key: Path(path) for key, path in summary['pictures'].items()}
    assert set(pictures) == {'val_panels', 'pseudo_label_panels', 'rounds', 'class_iou', 'confusion', 'new_images'}
    assert all(path.parent == work / 'pictures' and path.is_file() for path in pictures.values())
    assert sorted(p.name for p in (work / 'pictures').iterdir()) == sorted(p.name for p in pictures.values())
    for path in pictures.values():
        assert str(path) in quick_demo['stdout']

    # Held-out val images: a supervised and a DST-CBC row per image, four columns (image, ground
    # truth, prediction, confidence).
    shown = summary['picture_images']
    val_ids = shown['val']
    assert len(val_ids) == 2 and set(val_ids) <= set((data / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split())
    sizes = [image_size(data, name) for name in val_ids for _ in ('supervised', 'DST-CBC')]
    height, width, cells = panel_layout(sizes, columns=4)
    pixels = read_png(pictures['val_panels'])
    assert pixels.shape == (height, width, 3)
    for row in cells:
        image, truth, prediction, confidence = (cell(pixels, box) for box in row)
        for part in (image, truth, confidence):
            assert part.size and part.std() > 0
        # Two epochs may teach the quick run nothing but background: the prediction may be one
        # colour, but every pixel of it is a class colour.
        assert prediction.size and set(map(tuple, prediction.reshape(-1, 3))) <= VOC_PALETTE
        assert differ(image, truth) > 5 and differ(image, confidence) > 5 and differ(truth, confidence) > 5
    # Both rows of an image show the same image and ground truth (drawn a pixel apart, so
    # resampled a little differently), and the two images differ.
    def mean_color(row, column):
        return cell(pixels, cells[row][column]).reshape(-1, 3).mean(axis=0)

    for column in (0, 1):
        assert np.abs(mean_color(0, column) - mean_color(1, column)).max() < 1
        assert np.abs(mean_color(2, column) - mean_color(3, column)).max() < 1
    assert differ(cell(pixels, cells[0][0]), cell(pixels, cells[2][0])) > 5

    # Unlabeled training images with the last round's pseudo labels (five columns); the pseudo
    # label is the prediction with most pixels ignored (white) at the quick run's CBC ratio 0.4.
    unlabeled = (data / 'ImageSets' / 'Segmentation' / '8_unlabeled_0.txt').read_text().split()
    assert shown['unlabeled'] == unlabeled[:2] and shown['labeler'] == 'demo_dstcbc_round1.pt'
    height, width, cells = panel_layout([image_size(data, name) for name in shown['unlabeled']], columns=5)
    pixels = read_png(pictures['pseudo_label_panels'])
    assert pixels.shape == (height, width, 3)
    for row in cells:
        parts = [cell(pixels, box) for box in row]
        assert all(parts[column].std() > 0 for column in (0, 1, 3, 4))
        assert set(map(tuple, parts[2].reshape(-1, 3))) <= VOC_PALETTE
        pseudo = parts[3]
        white = (pseudo == IGNORED_COLOR).all(axis=-1).mean()
        assert 0.3 < white < 0.95, white
        assert differ(parts[2], pseudo) > 5 and differ(parts[0], parts[4]) > 5

    # New images the network never saw, segmented by predict.py: its files for each, and a row
    # per image of image, hidden truth, prediction and confidence.
    assert '$ python predict.py --dataset voc --checkpoint demo_dstcbc_round2.pt' in quick_demo['stdout']
    new = shown['new']
    assert len(new) == 2
    for name in new:
        for folder, suffix in (('index', '.png'), ('color', '.png'), ('overlay', '.jpg'), ('confidence', '.npy')):
            assert (work / 'predictions' / folder / f'{name}{suffix}').is_file()
        assert not (data / 'JPEGImages' / f'{name}.jpg').exists()   # never part of the set
    sizes = []
    for name in new:
        with Image.open(work / 'new_images' / 'images' / f'{name}.jpg') as image:
            sizes.append((image.height, image.width))
    height, width, cells = panel_layout(sizes, columns=4)
    pixels = read_png(pictures['new_images'])
    assert pixels.shape == (height, width, 3)
    for row in cells:
        image, truth, prediction, confidence = (cell(pixels, box) for box in row)
        assert image.std() > 0 and truth.std() > 0 and confidence.std() > 0
        assert set(map(tuple, prediction.reshape(-1, 3))) <= VOC_PALETTE

    # Rounds, per-class IoU of the classes in the evaluations, and the DST-CBC confusion matrix
    # over the classes present: sizes from visualize's constants.
    assert read_png(pictures['rounds']).shape == (round(visualize.ROUNDS_FIGSIZE[1] * DPI),
                                                   round(visualize.ROUNDS_FIGSIZE[0] * DPI), 3)
    supervised_iou = results(work, 'demo_eval_supervised')['scores']['iou']
    dstcbc_iou = results(work, 'demo_eval_dstcbc')['scores']['iou']
    classes = [name for name in supervised_iou
               if supervised_iou[name] is not None or dstcbc_iou[name] is not None]
    assert 2 <= len(classes) <= 5
    assert read_png(pictures['class_iou']).shape == (
        round((visualize.CLASS_IOU_BASE_HEIGHT + visualize.CLASS_IOU_ROW_HEIGHT * len(classes)) * DPI),
        round(visualize.CLASS_IOU_WIDTH * DPI), 3)
    matrix = np.asarray(results(work, 'demo_eval_dstcbc')['confusion_matrix'])
    present = int(((matrix.sum(axis=0) + matrix.sum(axis=1)) > 0).sum())
    side = max(visualize.CONFUSION_MIN_SIDE, visualize.CONFUSION_CELL * present + visualize.CONFUSION_EXTRA)
    assert read_png(pictures['confusion']).shape == (round(side * DPI), round((side + 1) * DPI), 3)
    for key in ('rounds', 'class_iou', 'confusion'):
        pixels = read_png(pictures[key])
        assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20


def test_quick_demo(quick_demo):
    """One test for the one quick run, so that parallel test workers never run the demo twice."""
    check_selects_on_valtiny_and_reports_on_val(quick_demo)
    check_draws_its_pictures(quick_demo)


def test_the_readme_describes_the_demo_settings():
    """The README's demo figures were measured with these settings: changing one means measuring again."""
    import demo

    readme = ' '.join((REPO_ROOT / 'README.md').read_text().split('## Data')[0].split())
    images, settings = demo.DEMO['images'], demo.DEMO
    labeled = images['num_train'] // int(demo.flag_value(settings['common'], '--split'))
    epochs = int(demo.flag_value(settings['supervised'], '--init-epochs'))
    steps = epochs * -(-labeled // int(demo.flag_value(settings['common'], '--batch-size')))
    st_epochs = settings['self_training'][settings['self_training'].index('--st-epochs') + 1:][:2]
    assert f'{images["num_train"]} training images' in readme
    assert f'{images["num_valtiny"]} valtiny images' in readme and f'{images["num_val"]} other val images' in readme
    assert f'supervised training on the {labeled} labeled images (state 2, {steps} steps)' in readme
    assert len(set(st_epochs)) == 1 and f'two DST-CBC rounds of {st_epochs[0]} epochs' in readme
    assert f'of {steps} |' in readme
