"""The figures of visualize.py: colours worked out by hand, panels that land where the layout says
with something drawn in each, None values left out rather than drawn as 0, confusion rows that
sum to one, and the command line's figures and one-line errors.

Synthetic inputs only (a 60x80 gradient image, three classes with an ignored border, a confidence
ramp); every figure is read back from the written PNG."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visualize
from data_processing import CITY_COLORS, IGNORE_INDEX, VOC_CLASSES, VOC_COLORS
from visualize import (DPI, IGNORED_COLOR, MARGIN, PANEL_GAP, PANEL_TITLE_SPACE, PANEL_WIDTH,
                       colorize, draw_panel, main, normalize_rows, plot_class_iou, plot_confusion,
                       plot_rounds, rounds_from_results, save_figure, save_panels)

REPO_ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 60, 80


@pytest.fixture
def sample():
    """An image, its ground truth (classes 0-2, ignored left border), a shifted prediction, a
    confidence ramp 0..1 along x, and the prediction kept where confidence >= 0.4."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([x * 255 // (WIDTH - 1), y * 255 // (HEIGHT - 1),
                      np.full_like(x, 128)], axis=-1).astype(np.uint8)
    truth = np.zeros((HEIGHT, WIDTH), np.uint8)
    truth[10:40, 10:40] = 1
    truth[(y - 35) ** 2 + (x - 60) ** 2 < 150] = 2
    truth[:, :3] = IGNORE_INDEX
    prediction = np.roll(truth, 4, axis=1)
    prediction[prediction == IGNORE_INDEX] = 0
    confidence = np.tile(np.linspace(0.0, 1.0, WIDTH), (HEIGHT, 1))
    pseudo = prediction.copy()
    pseudo[confidence < 0.4] = IGNORE_INDEX
    return dict(image=image, ground_truth=truth, prediction=prediction, pseudo_label=pseudo,
                confidence=confidence)


def read_png(path):
    return np.asarray(Image.open(path).convert('RGB')).astype(np.int64)


def panel_axes(fig):
    """The panel axes (those with a title; the colorbar has none), left to right, top to bottom."""
    axes = [ax for ax in fig.axes if ax.get_title()]
    return sorted(axes, key=lambda ax: (-ax.get_position().y1, ax.get_position().x0))


def region(pixels, ax, inset=3):
    """The pixels under an axes, from its position in figure fractions (origin bottom left)."""
    height, width = pixels.shape[:2]
    box = ax.get_position()
    top, bottom = round((1 - box.y1) * height) + inset, round((1 - box.y0) * height) - inset
    left, right = round(box.x0 * width) + inset, round(box.x1 * width) - inset
    return pixels[top:bottom, left:right]


def legend_labels(fig):
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def test_colorize_by_hand():
    label = np.array([[0, 1], [IGNORE_INDEX, 2]], dtype=np.uint8)
    assert colorize(label, VOC_COLORS).tolist() == [[[0, 0, 0], [128, 0, 0]],
                                                    [list(IGNORED_COLOR), [0, 128, 0]]]
    assert colorize(np.array([[0, 18]], dtype=np.int64), CITY_COLORS).tolist() == \
        [[[128, 64, 128], [119, 11, 32]]]
    assert colorize(label, VOC_COLORS).dtype == np.uint8
    # The ignored colour is one no class of either dataset uses, and 255 is the project's ignore.
    assert IGNORED_COLOR not in VOC_COLORS and IGNORED_COLOR not in CITY_COLORS
    assert visualize.IGNORE_INDEX == IGNORE_INDEX


@pytest.mark.parametrize('label', [np.array([[0, 21]], np.uint8), np.array([[-1, 0]], np.int64),
                                   np.zeros((2, 2, 1), np.uint8), np.zeros((2, 2), np.float32)])
def test_colorize_refuses_what_is_not_a_label_map(label):
    with pytest.raises(ValueError):
        colorize(label, VOC_COLORS)


def test_draw_panel_size_regions_titles_and_legend(tmp_path, sample):
    fig = draw_panel(**sample, colors=VOC_COLORS, class_names=VOC_CLASSES, title='sample 1')
    path = save_figure(fig, tmp_path / 'panel.png')
    pixels = read_png(path)
    # Five 2.4-inch panels (the image is 60x80, so 1.8 inches tall) with gaps, the colorbar's
    # 0.6 inch, one legend column of 1.5 inches after a gap, margins, and a title line.
    width = MARGIN + 5 * PANEL_WIDTH + 4 * PANEL_GAP + 0.6 + PANEL_GAP + 1.5 + MARGIN
    height = MARGIN + 0.4 + PANEL_TITLE_SPACE + PANEL_WIDTH * HEIGHT / WIDTH + MARGIN
    assert (width, height) == pytest.approx((15.4, 2.8))
    assert pixels.shape == (280, 1540, 3)
    assert pixels.shape[:2] == (round(height * DPI), round(width * DPI))

    axes = panel_axes(fig)
    assert [ax.get_title() for ax in axes] == ['image', 'ground truth', 'prediction',
                                               'pseudo label (white = ignored)', 'confidence']
    assert all(not ax.axison for ax in axes)
    regions = [region(pixels, ax) for ax in axes]
    for ax, part in zip(axes, regions):
        assert part.size and part.std() > 0, ax.get_title()
    # The panels show different things: the image is not the confidence map, the ground truth
    # not the prediction (shifted by 4 pixels).
    for first, second in ((0, 4), (1, 2)):
        a, b = regions[first], regions[second]
        rows, columns = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
        assert np.abs(a[:rows, :columns] - b[:rows, :columns]).mean() > 5
    # The ground-truth panel holds the classes' colours: its top-left interior is background
    # (black) and its left border is ignored (white).
    truth = regions[1]
    assert (truth == VOC_COLORS[1]).all(axis=-1).any() and (truth == VOC_COLORS[2]).all(axis=-1).any()
    assert (truth == IGNORED_COLOR).all(axis=-1).any()
    assert legend_labels(fig) == ['background', 'aeroplane', 'bicycle', 'ignored']


def test_draw_panel_leaves_out_missing_maps(sample):
    sample['prediction'][:5, :5] = 7     # a class only the prediction has
    fig = draw_panel(sample['image'], None, sample['prediction'], None, sample['confidence'],
                     VOC_COLORS, VOC_CLASSES)
    assert [ax.get_title() for ax in panel_axes(fig)] == ['image', 'prediction', 'confidence']
    # Only classes in the maps shown; no pixel of the prediction is ignored.
    assert legend_labels(fig) == ['background', 'aeroplane', 'bicycle', 'car']
    assert fig.get_size_inches()[0] == pytest.approx(
        MARGIN + 3 * PANEL_WIDTH + 2 * PANEL_GAP + 0.6 + PANEL_GAP + 1.5 + MARGIN)


def test_draw_panel_refuses_mismatched_maps(sample):
    with pytest.raises(ValueError, match='prediction'):
        draw_panel(sample['image'], None, sample['prediction'][:, :70], None,
                   sample['confidence'], VOC_COLORS, VOC_CLASSES)


def test_save_panels_one_row_per_image_written_atomically(tmp_path, sample):
    square = {key: value[:, :HEIGHT] for key, value in sample.items()}
    rows = [dict(sample, name='first'),
            dict(image=square['image'], prediction=square['prediction'],
                 confidence=square['confidence'], name='second')]
    path = tmp_path / 'new' / 'folder' / 'panels.png'
    fig = save_panels(rows, path, VOC_COLORS, VOC_CLASSES)
    assert sorted(os.listdir(path.parent)) == ['panels.png']    # no temporary file left
    pixels = read_png(path)
    # Two rows, 1.8 and 2.4 inches tall (60x80 and 60x60 images), names in a 0.3-inch strip.
    height = MARGIN + 2 * PANEL_TITLE_SPACE + 1.8 + 2.4 + 0.15 + MARGIN
    width = MARGIN + 0.3 + 5 * PANEL_WIDTH + 4 * PANEL_GAP + 0.6 + PANEL_GAP + 1.5 + MARGIN
    assert pixels.shape == (round(height * DPI), round(width * DPI), 3) == (525, 1570, 3)
    axes = panel_axes(fig)
    assert len(axes) == 10
    second_row = axes[5:]
    assert [ax.get_title() for ax in second_row] == [ax.get_title() for ax in axes[:5]]
    # The second row has no ground truth or pseudo label: those cells are marked, the rest drawn.
    for ax in second_row:
        drawn = bool(ax.images)
        assert drawn == (ax.get_title() in ('image', 'prediction', 'confidence'))
        if drawn:
            assert region(pixels, ax).std() > 0
    names = [text.get_text() for text in fig.texts]
    assert 'first' in names and 'second' in names


def test_plot_rounds_skips_none_values(tmp_path):
    rounds = [{'round': 1, 'labeled_share': 0.2, 'pseudo_label_miou': 0.5, 'val_miou': 0.3},
              {'round': 2, 'labeled_share': 0.4, 'pseudo_label_miou': None, 'val_miou': 0.35},
              {'round': 3, 'labeled_share': 0.6, 'pseudo_label_miou': 0.45, 'val_miou': None}]
    fig = plot_rounds(rounds, tmp_path / 'rounds.png', start_miou=0.25)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {'pseudo-label share', 'pseudo-label mIoU', 'val mIoU'}

    def data(name):
        xs, ys = lines[name].get_data()
        return list(xs), [round(y, 6) for y in ys]
    assert data('pseudo-label share') == ([1, 2, 3], [20.0, 40.0, 60.0])
    assert data('pseudo-label mIoU') == ([1, 3], [50.0, 45.0])
    assert data('val mIoU') == ([0, 1, 2], [25.0, 30.0, 35.0])    # round 0 = the start
    assert read_png(tmp_path / 'rounds.png').shape == (450, 700, 3)

    # No ground truth for the pseudo labels at all: that line is not drawn.
    fig = plot_rounds([dict(entry, pseudo_label_miou=None) for entry in rounds])
    assert 'pseudo-label mIoU' not in [line.get_label() for line in fig.axes[0].get_lines()]


def state1(rounds, start_miou):
    return {'state': 1, 'start_miou': start_miou, 'rounds': [
        {'round': number, 'ratio': 0.2 * number, 'labeled_share': share,
         'pseudo_label_miou': quality, 'best_miou_after': best, 'thresholds': []}
        for number, share, quality, best in rounds]}


def test_rounds_from_results_one_run_or_a_chain():
    one_run = state1([(1, 0.2, 0.5, 0.3), (2, 0.4, None, 0.35)], start_miou=0.25)
    rounds, start = rounds_from_results([one_run])
    assert start == 0.25
    assert rounds == [
        {'round': 1, 'labeled_share': 0.2, 'pseudo_label_miou': 0.5, 'val_miou': 0.3},
        {'round': 2, 'labeled_share': 0.4, 'pseudo_label_miou': None, 'val_miou': 0.35}]
    # A chain, one file per round, given out of order (round10 sorts before round2 in a shell):
    # sorted by round, and the start is that of the first round's file.
    chain = [state1([(number, 0.1 * number, None, 0.3 + 0.01 * number)], start_miou=0.2 + 0.01 * number)
             for number in (10, 2, 1)]
    rounds, start = rounds_from_results(chain)
    assert [entry['round'] for entry in rounds] == [1, 2, 10] and start == pytest.approx(0.21)
    with pytest.raises(ValueError, match='round 1'):
        rounds_from_results([one_run, chain[2]])
    with pytest.raises(ValueError, match='state'):
        rounds_from_results([{'state': 2, 'best_scores': {}}])


def test_plot_class_iou_draws_no_bar_for_an_absent_class(tmp_path):
    names = ['road', 'car', 'train']
    fig = plot_class_iou(names, {'road': 0.9, 'car': 0.5, 'train': None},
                         [0.95, 0.6, 0.1], tmp_path / 'classes.png', labels=('fs', 'dst'))
    ax = fig.axes[0]
    bars = {container.get_label(): len(container.patches) for container in ax.containers}
    assert bars == {'fs': 2, 'dst': 3}
    assert [text.get_text() for text in ax.texts].count('n/a') == 1
    assert ax.get_title() == 'per-class IoU: fs mIoU 70.00%, dst mIoU 55.00%'
    assert [label.get_text() for label in ax.get_yticklabels()] == names
    pixels = read_png(tmp_path / 'classes.png')
    assert pixels.shape == (round((1.4 + 0.35 * 3) * DPI), 800, 3)


def test_plot_confusion_rows_sum_to_one_or_zero(tmp_path):
    matrix = [[8, 2, 0], [0, 0, 0], [1, 1, 2]]
    shares = normalize_rows(matrix)
    assert shares.sum(axis=1).tolist() == [1.0, 0.0, 1.0] and not np.isnan(shares).any()
    assert shares[0].tolist() == [0.8, 0.2, 0.0]

    fig = plot_confusion(matrix, ['a', 'b', 'c'], tmp_path / 'confusion.png')
    ax = fig.axes[0]
    shown = np.asarray(ax.images[0].get_array())
    assert np.allclose(shown.sum(axis=1), [1, 0, 1])
    assert [label.get_text() for label in ax.get_xticklabels()] == ['a', 'b', 'c']
    assert [label.get_text() for label in ax.get_yticklabels()] == ['a', 'b', 'c']
    assert '0.80' in [text.get_text() for text in ax.texts]
    assert 'pixel accuracy 71.43%' in ax.get_title()     # (8 + 0 + 2) / 14
    assert len(fig.axes) == 2                             # and its colorbar
    pixels = read_png(tmp_path / 'confusion.png')
    assert pixels.shape == (500, 600, 3) and pixels.std() > 0

    counts = plot_confusion(matrix, ['a', 'b', 'c'], normalize=False)
    assert np.asarray(counts.axes[0].images[0].get_array()).tolist() == matrix
    many = plot_confusion(np.eye(30), None)
    assert not many.axes[0].texts                         # more than 25 classes: no cell values


def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def test_cli_draws_each_figure(tmp_path, capsys):
    round1 = write_json(tmp_path / 'r1.json', state1([(1, 0.2, 0.5, 0.3)], 0.25))
    round2 = write_json(tmp_path / 'r2.json', state1([(2, 0.4, None, 0.35)], 0.3))
    iou = {'background': 0.9, 'aeroplane': 0.4, 'bicycle': None}
    supervised = write_json(tmp_path / 'fs.json', {'state': 2, 'best_scores': {'miou': 0.65, 'iou': iou},
                                                    'class_names': list(iou)})
    evaluation = write_json(tmp_path / 'eval.json', {
        'state': 3, 'scores': {'miou': 0.7, 'iou': dict(iou, bicycle=0.2)},
        'confusion_matrix': [[9, 1, 0], [2, 8, 0], [0, 3, 1]], 'class_names': list(iou)})
    out = tmp_path / 'figures'
    assert main(['rounds', round2, round1, '--out', str(out / 'rounds.png')]) == 0
    assert main(['classes', supervised, evaluation, '--out', str(out / 'classes.png')]) == 0
    assert main(['confusion', evaluation, '--out', str(out / 'confusion.png'), '--no-normalize']) == 0
    assert sorted(os.listdir(out)) == ['classes.png', 'confusion.png', 'rounds.png']
    for name in os.listdir(out):
        assert read_png(out / name).std() > 0
    assert capsys.readouterr().err == ''


@pytest.mark.parametrize('command,content,message', [
    ('confusion', None, 'no such file'),
    ('confusion', '{"state": 3,', 'not valid JSON'),
    ('confusion', '[1, 2]', 'not a results file'),
    ('confusion', {'state': 2, 'best_scores': {'iou': {'a': 0.5}}}, 'state 3'),
    ('confusion', {'state': 3, 'scores': {'iou': {'a': 0.5}}}, 'confusion_matrix'),
    ('confusion', {'state': 3, 'confusion_matrix': [[1, 2], [3]]}, 'square'),
    ('confusion', {'state': [3]}, 'state'),
    ('rounds', {'state': 3, 'scores': {}}, 'state 1'),
    ('rounds', {'state': 1, 'rounds': [{'ratio': 0.2}]}, 'round number'),
    ('rounds', {'state': 1, 'rounds': [{'round': 1, 'labeled_share': '20%'}]}, 'labeled_share'),
    ('rounds', {'state': 1, 'rounds': []}, 'nothing to plot'),
    ('confusion', {'state': 3, 'confusion_matrix': [[1, -2], [3, 4]]}, 'counts >= 0'),
    ('classes', {'state': 0, 'ratio': 0.2}, 'state 0'),
    ('classes', {'state': 2, 'best_scores': {}}, 'per-class IoU'),
])
def test_cli_errors_name_the_file_on_one_line(tmp_path, capsys, command, content, message):
    path = tmp_path / 'results.json'
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        write_json(path, content)
    argv = [command, str(path)] + ([str(path)] if command == 'classes' else [])
    assert main(argv + ['--out', str(tmp_path / 'out.png')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'error: {path}: ') and message in err
    assert not (tmp_path / 'out.png').exists()


def test_cli_refuses_a_round_given_twice(tmp_path, capsys):
    first = write_json(tmp_path / 'a.json', state1([(1, 0.2, 0.5, 0.3)], 0.25))
    second = write_json(tmp_path / 'b.json', state1([(1, 0.2, 0.5, 0.3), (2, 0.4, 0.5, 0.35)], 0.25))
    assert main(['rounds', first, second, '--out', str(tmp_path / 'out.png')]) == 2
    assert capsys.readouterr().err == f'error: {second}: round 1 is also in {first}\n'


def test_cli_as_a_script_exits_2_on_a_missing_file(tmp_path):
    missing = tmp_path / 'missing.json'
    completed = subprocess.run([sys.executable, str(REPO_ROOT / 'visualize.py'), 'rounds', str(missing),
                                '--out', str(tmp_path / 'rounds.png')],
                               capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stderr == f'error: {missing}: no such file\n'
    assert completed.stdout == '' and not (tmp_path / 'rounds.png').exists()


def test_module_uses_the_agg_backend():
    import matplotlib
    assert matplotlib.get_backend().lower() == 'agg'
    assert visualize.build_parser().parse_args(['confusion', 'x.json']).normalize is True


def test_cli_blames_an_output_that_cannot_be_written(tmp_path, capsys):
    results = write_json(tmp_path / 'eval.json', {'state': 3, 'confusion_matrix': [[1, 0], [0, 1]]})
    (tmp_path / 'a_file').write_text('')
    out = tmp_path / 'a_file' / 'confusion.png'
    assert main(['confusion', results, '--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {out}: cannot be written') and err.count('\n') == 1


# ------------------------------------------------------------------ panels: a checkpoint's view

EVAL_SIZE = (96, 128)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """A tiny synthetic set and a tiny resnet14 checkpoint whose BatchNorm statistics come from a
    few images (so its scores and confidences vary over an image), saved as main.py does."""
    import torch

    from models import deeplab_v2
    from utils.checkpoints import save_checkpoint
    from utils.synthetic import make_synthetic_voc

    folder = tmp_path_factory.mktemp('panels')
    root = folder / 'voc'
    make_synthetic_voc(root, num_train=8, num_val=3, seed=4)
    torch.manual_seed(0)
    model = deeplab_v2(21, backbone='resnet14')
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, *EVAL_SIZE))
        for parameter in model.classifier.parameters():   # confident enough to vary
            parameter.mul_(30.0)
    model.eval()
    checkpoint = folder / 'tiny.pt'
    save_checkpoint(checkpoint, model, num_classes=21,
                    extra={'architecture': {'backbone': 'resnet14', 'head_branches': 2}})
    return {'root': root, 'checkpoint': checkpoint, 'model': model, 'folder': folder}


def independent_scores(model, image):
    """The checkpoint's view of one uint8 HxWx3 image, computed here from first principles: the
    image on a black canvas of EVAL_SIZE, ImageNet normalisation, logits upsampled bilinearly
    (align_corners) to the canvas, cut back to the image, softmax."""
    import torch
    import torch.nn.functional as F

    height, width = image.shape[:2]
    canvas = np.zeros(EVAL_SIZE + (3,), np.float32)
    canvas[:height, :width] = image / 255.0
    canvas = (canvas - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(canvas).permute(2, 0, 1)[None])['out']
        logits = F.interpolate(logits, size=EVAL_SIZE, mode='bilinear', align_corners=True)
        probabilities = torch.softmax(logits[0, :, :height, :width], dim=0)
    return probabilities.argmax(0).numpy(), probabilities.max(0).values.numpy()


ROW_NAME_SPACE = visualize.ROW_NAME_SPACE     # rows drawn by `panels` are named by image id


def panel_rows_height(images):
    """Rows of image panels of these images' sizes, as the layout constants make them (inches)."""
    heights = [PANEL_WIDTH * min(max(h / w, 0.25), 2.0) for h, w in images]
    return PANEL_TITLE_SPACE * len(images) + sum(heights) + visualize.ROW_GAP * (len(images) - 1)


def test_compute_panels_matches_an_independent_forward_pass(tiny_run):
    root = tiny_run['root']
    names = (root / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()
    rows, info = visualize.compute_panels(tiny_run['checkpoint'], data_root=root, list_name='val',
                                          count=2, eval_size=EVAL_SIZE)
    assert info.class_names == VOC_CLASSES and [row['name'] for row in rows] == names[:2]
    for row in rows:
        image = np.asarray(Image.open(root / 'JPEGImages' / f'{row["name"]}.jpg').convert('RGB'))
        truth = np.asarray(Image.open(root / 'SegmentationClassAug' / f'{row["name"]}.png'))
        prediction, confidence = independent_scores(tiny_run['model'], image)
        assert np.array_equal(row['image'], image) and np.array_equal(row['ground_truth'], truth)
        assert row['prediction'].dtype == np.uint8 and row['prediction'].shape == image.shape[:2]
        assert np.array_equal(row['prediction'], prediction)
        assert np.allclose(row['confidence'], confidence, atol=1e-5)
        assert row['pseudo_label'] is None
        # Not a degenerate network: more than one class, and confidences that vary.
        assert len(np.unique(prediction)) > 1 and confidence.std() > 0.05
        assert (confidence >= 1 / 21 - 1e-6).all() and (confidence <= 1 + 1e-6).all()
    # Images picked by id, in the order given.
    picked, _ = visualize.compute_panels(tiny_run['checkpoint'], data_root=root, list_name='val',
                                         image_ids=[names[2], names[0]], eval_size=EVAL_SIZE)
    assert [row['name'] for row in picked] == [names[2], names[0]]
    assert np.array_equal(picked[1]['prediction'], rows[0]['prediction'])


def test_panels_command_draws_what_the_network_predicts(tiny_run, tmp_path, capsys):
    root = tiny_run['root']
    unlabeled = (root / 'ImageSets' / 'Segmentation' / '8_unlabeled_0.txt').read_text().split()
    image_id = unlabeled[0]
    image = np.asarray(Image.open(root / 'JPEGImages' / f'{image_id}.jpg').convert('RGB'))
    prediction, confidence = independent_scores(tiny_run['model'], image)
    # A pseudo label as state 0 writes one: the prediction where confidence passes a threshold.
    pseudo = np.where(confidence >= np.median(confidence), prediction, IGNORE_INDEX).astype(np.uint8)
    pseudo_dir = tmp_path / 'pseudo'
    pseudo_dir.mkdir()
    Image.fromarray(pseudo).save(pseudo_dir / f'{image_id}.png')

    out = tmp_path / 'figures' / 'panels.png'
    argv = ['panels', '--checkpoint', str(tiny_run['checkpoint']), '--data-root', str(root),
            '--list', '8_unlabeled_0', '--images', image_id, unlabeled[1], '--pseudo-dir', str(pseudo_dir),
            '--eval-size', *map(str, EVAL_SIZE), '--out', str(out)]
    assert main(argv) == 0
    assert capsys.readouterr() == (f'wrote {out}\n', '')
    pixels = read_png(out)
    # Two rows of five columns (the second image has no pseudo label: its cell says 'none'),
    # a colorbar, one legend column and the title.
    sizes = [np.asarray(Image.open(root / 'JPEGImages' / f'{name}.jpg')).shape[:2]
             for name in (image_id, unlabeled[1])]
    width = MARGIN + ROW_NAME_SPACE + 5 * PANEL_WIDTH + 4 * PANEL_GAP + 0.6 + PANEL_GAP + 1.5 + MARGIN
    height = MARGIN + 0.4 + panel_rows_height(sizes) + MARGIN
    assert pixels.shape == (round(height * DPI), round(width * DPI), 3)

    # The same rows drawn here give the axes positions; the CLI's picture is that figure.
    rows, info = visualize.compute_panels(tiny_run['checkpoint'], data_root=root,
                                          list_name='8_unlabeled_0', image_ids=[image_id, unlabeled[1]],
                                          pseudo_dir=pseudo_dir, eval_size=EVAL_SIZE)
    assert np.array_equal(rows[0]['pseudo_label'], pseudo) and rows[1]['pseudo_label'] is None
    fig = save_panels(rows, tmp_path / 'again.png', info.colors, info.class_names,
                      title=f'{tiny_run["checkpoint"].name} on 8_unlabeled_0')
    assert np.array_equal(read_png(tmp_path / 'again.png'), pixels)
    axes = panel_axes(fig)
    assert [ax.get_title() for ax in axes[:5]] == ['image', 'ground truth', 'prediction',
                                                   'pseudo label (white = ignored)', 'confidence']
    cells = [region(pixels, ax, inset=0) for ax in axes[:5]]
    for cell in cells:
        assert cell.std() > 0
    # The prediction cell is the independently computed argmax in the palette, stretched to the
    # cell (nearest neighbour); the pseudo-label cell is white wherever it is ignored.
    for cell, label in ((cells[2], prediction), (cells[3], pseudo)):
        rows_at = (np.arange(cell.shape[0]) + 0.5) * label.shape[0] / cell.shape[0]
        columns_at = (np.arange(cell.shape[1]) + 0.5) * label.shape[1] / cell.shape[1]
        expected = colorize(label, VOC_COLORS)[rows_at.astype(int)][:, columns_at.astype(int)]
        assert (cell == expected).all(axis=-1).mean() > 0.95
    assert np.abs(cells[0] - cells[2]).mean() > 5 and np.abs(cells[2] - cells[4]).mean() > 5


def test_panels_without_labels_or_a_pseudo_folder_leave_those_columns_out(tiny_run, tmp_path):
    root = tiny_run['root']
    # A list of images whose label files do not exist (e.g. a test split).
    (root / 'JPEGImages' / 'unlabeled_copy.jpg').write_bytes(
        (root / 'JPEGImages' / 'synth_val_0000.jpg').read_bytes())
    (root / 'ImageSets' / 'Segmentation' / 'nolabels.txt').write_text('unlabeled_copy\n')
    out = tmp_path / 'panels.png'
    assert main(['panels', '--checkpoint', str(tiny_run['checkpoint']), '--data-root', str(root),
                 '--list', 'nolabels', '--eval-size', *map(str, EVAL_SIZE), '--title', '',
                 '--out', str(out)]) == 0
    rows, _ = visualize.compute_panels(tiny_run['checkpoint'], data_root=root, list_name='nolabels',
                                       eval_size=EVAL_SIZE)
    assert rows[0]['ground_truth'] is None and rows[0]['pseudo_label'] is None
    size = np.asarray(Image.open(root / 'JPEGImages' / 'unlabeled_copy.jpg')).shape[:2]
    width = MARGIN + ROW_NAME_SPACE + 3 * PANEL_WIDTH + 2 * PANEL_GAP + 0.6 + PANEL_GAP + 1.5 + MARGIN
    height = MARGIN + panel_rows_height([size]) + MARGIN
    assert read_png(out).shape == (round(height * DPI), round(width * DPI), 3)


@pytest.mark.parametrize('change,message', [
    (lambda argv, run: argv.__setitem__(argv.index('--checkpoint') + 1, str(run['folder'] / 'none.pt')),
     'no such checkpoint file'),
    (lambda argv, run: argv.extend(['--images', 'synth_val_0099']), "no image 'synth_val_0099'"),
    (lambda argv, run: argv.extend(['--list', 'missing']), 'list missing.txt not found'),
    (lambda argv, run: argv.extend(['--count', '0']), '--count must be at least 1'),
    (lambda argv, run: argv.extend(['--pseudo-dir', str(run['folder'] / 'none')]), 'no such pseudo-label folder'),
    (lambda argv, run: argv.extend(['--dataset', 'city']), '19'),
    (lambda argv, run: argv.__setitem__(argv.index('--eval-size') + 1, '64'), 'larger than the evaluation canvas'),
    (lambda argv, run: argv.__setitem__(argv.index('--data-root') + 1, str(run['folder'] / 'nowhere')),
     'does not exist'),
])
def test_panels_errors_are_one_line(tiny_run, tmp_path, capsys, change, message):
    argv = ['panels', '--checkpoint', str(tiny_run['checkpoint']), '--data-root', str(tiny_run['root']),
            '--eval-size', *map(str, EVAL_SIZE), '--out', str(tmp_path / 'out.png')]
    change(argv, tiny_run)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and message in err, err
    assert not (tmp_path / 'out.png').exists()


def test_panels_refuses_a_pseudo_label_of_another_size(tiny_run, tmp_path, capsys):
    pseudo_dir = tmp_path / 'pseudo'
    pseudo_dir.mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(pseudo_dir / 'synth_val_0000.png')
    assert main(['panels', '--checkpoint', str(tiny_run['checkpoint']), '--data-root', str(tiny_run['root']),
                 '--count', '1', '--pseudo-dir', str(pseudo_dir), '--eval-size', *map(str, EVAL_SIZE),
                 '--out', str(tmp_path / 'out.png')]) == 2
    err = capsys.readouterr().err
    assert err == (f'error: {pseudo_dir / "synth_val_0000.png"}: pseudo label is 10x10 but its image is '
                   f'{np.asarray(Image.open(tiny_run["root"] / "JPEGImages" / "synth_val_0000.jpg")).shape[0]}x'
                   f'{np.asarray(Image.open(tiny_run["root"] / "JPEGImages" / "synth_val_0000.jpg")).shape[1]}\n')


def test_the_figures_from_results_files_do_not_load_torch():
    completed = subprocess.run([sys.executable, '-c', 'import sys, visualize; '
                                'visualize.build_parser().parse_args(["panels", "--checkpoint", "x.pt"]); '
                                'print("torch" in sys.modules)'],
                               capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == 'False\n'


def test_panels_name_a_dataset_mismatch_rather_than_a_missing_list(tiny_run, tmp_path, capsys):
    """Issue 20: a Cityscapes checkpoint shown on a VOC root said "list val.txt not found"."""
    import torch

    from models import deeplab_v2
    from utils.checkpoints import save_checkpoint

    torch.manual_seed(0)
    city = tmp_path / 'city.pt'
    save_checkpoint(city, deeplab_v2(19, backbone='resnet14'), num_classes=19,
                    settings={'dataset': 'city'}, extra={'architecture': {'backbone': 'resnet14', 'head_branches': 2}})
    assert main(['panels', '--checkpoint', str(city), '--data-root', str(tiny_run['root']), '--eval-size',
                 *map(str, EVAL_SIZE), '--out', str(tmp_path / 'out.png')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'error: {tiny_run["root"]} holds no Cityscapes dataset '
                                                   f'(no data_lists/ folder), but Cityscapes is the dataset the '
                                                   f'checkpoint was trained on'), err
    assert 'pass --dataset' in err and not (tmp_path / 'out.png').exists()


def test_panels_find_a_non_ascii_id_under_the_c_locale(tiny_run, tmp_path):
    """Issue 20: under LC_ALL=C PYTHONUTF8=0 a non-ASCII --images id was "not found": the command
    line came in as ASCII with escapes while lists are read as UTF-8."""
    import os
    import shutil
    import subprocess
    import sys

    root = tmp_path / 'voc'
    shutil.copytree(tiny_run['root'], root)
    name = 'café_0'
    for folder, suffix in (('JPEGImages', '.jpg'), ('SegmentationClassAug', '.png')):
        shutil.copy(root / folder / f'synth_val_0000{suffix}', root / folder / f'{name}{suffix}')
    with open(root / 'ImageSets' / 'Segmentation' / 'val.txt', 'a', encoding='utf-8') as file:
        file.write(f'{name}\n')
    environment = dict(os.environ, LC_ALL='C', PYTHONUTF8='0', PYTHONCOERCECLOCALE='0')
    completed = subprocess.run([sys.executable, str(REPO_ROOT / 'visualize.py'), 'panels', '--checkpoint',
                                str(tiny_run['checkpoint']), '--data-root', str(root), '--images', name,
                                '--eval-size', *map(str, EVAL_SIZE), '--out', str(tmp_path / 'out.png')],
                               capture_output=True, env=environment, timeout=300)
    assert completed.returncode == 0, completed.stderr.decode(errors='replace')
    assert (tmp_path / 'out.png').stat().st_size > 0
