"""Evaluation (state 3) beyond the paper's protocol, and the paper table from real runs.

- --scales 1.0 without --flip is exactly the single-scale protocol;
- multi-scale with flip against an independent computation: plain loops over scales and flips,
  with the image read, padded and normalised here from literal constants;
- --save-predictions: PNGs equal to an independently computed argmax, with VOC's palette;
- sliding windows cover the image, and one window over the whole image is the whole-image result;
- paper_table.py over a folder of tiny finished runs of the real CLI (two fractions, two splits,
  both methods, one run missing), checked against numbers worked out from the runs' results.

The command lines run through main.main(argv) in this process (helpers.run_main).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import paper_table
from generate_splits import make_splits
from helpers import confident_checkpoint, run_main
from models import deeplab_v2
from utils.inference import Protocol, class_scores, window_starts
from utils.synthetic import make_synthetic_voc
from utils.training import Runtime

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL_SIZE = (96, 128)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TINY = ['--backbone', 'resnet14', '--eval-size', *map(str, EVAL_SIZE), '--device', 'cpu', '--workers', '0',
        '--batch-size', '2']


def cli(cwd, *args):
    """`python main.py ARGS` in `cwd`, run in this process; it must exit 0."""
    completed = run_main(cwd, *args)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp('evaluation')
    make_synthetic_voc(work / 'voc', num_train=16, num_val=3, seed=6)
    model = confident_checkpoint(work / 'model.pt', weight_scale=20.0, bias_scale=0,
                                 architecture={'backbone': 'resnet14', 'head_branches': 2})
    return work, model


def val_names(work):
    return (work / 'voc' / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()


def reference_input(work, name):
    """The image padded bottom/right with black to the canvas, then normalised, from literals."""
    with Image.open(work / 'voc' / 'JPEGImages' / f'{name}.jpg') as image:
        pixels = torch.from_numpy(np.array(image.convert('RGB'))).permute(2, 0, 1).float()
    canvas = torch.zeros(3, *EVAL_SIZE)
    canvas[:, :pixels.shape[1], :pixels.shape[2]] = pixels
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return ((canvas * (1.0 / 255.0) - mean) / std)[None], pixels.shape[1:]


@torch.no_grad()
def reference_prediction(model, image, scales, flip):
    height, width = image.shape[-2:]
    total = torch.zeros(1, 21, height, width)
    views = 0
    for scale in scales:
        size = (int(height * scale + 0.5), int(width * scale + 0.5))
        scaled = image if scale == 1.0 else F.interpolate(image, size=size, mode='bilinear', align_corners=False)
        for flipped in ([False, True] if flip else [False]):
            logits = model(scaled.flip(-1) if flipped else scaled)['out']
            logits = F.interpolate(logits, size=(height, width), mode='bilinear', align_corners=True)
            if flipped:
                logits = logits.flip(-1)
            total += torch.softmax(logits, dim=1)
            views += 1
    return (total / views).argmax(1)[0]


def reference_confusion(work, model, scales, flip):
    matrix = np.zeros((21, 21), dtype=np.int64)
    for name in val_names(work):
        image, _ = reference_input(work, name)
        prediction = reference_prediction(model, image, scales, flip).numpy()
        label = np.full(EVAL_SIZE, 255, dtype=np.int64)
        truth = np.array(Image.open(work / 'voc' / 'SegmentationClassAug' / f'{name}.png'))
        label[:truth.shape[0], :truth.shape[1]] = truth
        keep = label != 255
        np.add.at(matrix, (label[keep], prediction[keep]), 1)
    return matrix.tolist()


def evaluate(work, name, *flags):
    cli(work, '--state', 3, '--exp-name', name, '--continue-from', 'model.pt', '--data-root', 'voc', *TINY, *flags)
    return json.loads((work / 'logs' / name / 'results.json').read_text())


def test_scale_one_without_flip_is_the_single_scale_protocol(setup):
    work, model = setup
    default, explicit = evaluate(work, 'default'), evaluate(work, 'scale1', '--scales', '1.0')
    assert explicit['confusion_matrix'] == default['confusion_matrix'] and explicit['miou'] == default['miou']
    assert default['protocol'] == {'scales': [1.0], 'flip': False, 'sliding_window': None, 'window_stride': None}
    assert default['confusion_matrix'] == reference_confusion(work, model, [1.0], False)
    assert default['reported_on'] == 'val' and default['selected_on'] is None


def test_multi_scale_and_flip_against_plain_loops(setup):
    work, model = setup
    scales = [0.75, 1.0, 1.25]
    result = evaluate(work, 'multi', '--scales', *scales, '--flip')
    assert result['protocol']['scales'] == scales and result['protocol']['flip'] is True
    assert result['confusion_matrix'] == reference_confusion(work, model, scales, True)
    assert result['confusion_matrix'] != evaluate(work, 'single')['confusion_matrix'], 'the views matter'


def voc_palette_by_hand(count):
    """The VOC colour rule: bit k of the class index sets bit 7 - k//3 of R, G or B."""
    colors = []
    for index in range(count):
        rgb = [0, 0, 0]
        for bit in range(8):
            if index >> bit & 1:
                rgb[bit % 3] |= 1 << (7 - bit // 3)
        colors.append(tuple(rgb))
    return colors


def test_saved_predictions_are_the_argmax_with_the_palette(setup):
    work, model = setup
    evaluate(work, 'saved', '--save-predictions', 'predictions')
    assert voc_palette_by_hand(3) == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    for name in val_names(work):
        image, (height, width) = reference_input(work, name)
        expected = reference_prediction(model, image, [1.0], False)[:height, :width].numpy()
        with Image.open(work / 'predictions' / 'color' / f'{name}.png') as png:
            assert png.mode == 'P' and (png.height, png.width) == (height, width)
            assert np.array_equal(np.array(png), expected)
            palette = png.getpalette()[:3 * 21]
        assert [tuple(palette[i:i + 3]) for i in range(0, 63, 3)] == voc_palette_by_hand(21)
    assert not (work / 'predictions' / 'label_ids').exists(), 'label-id PNGs are for Cityscapes'


def test_sliding_windows_cover_the_image_and_one_window_is_the_whole():
    assert window_starts(10, 4, 3) == [0, 3, 6] and window_starts(10, 10, 3) == [0]
    assert window_starts(11, 4, 4) == [0, 4, 7]
    torch.manual_seed(0)
    model = deeplab_v2(5, backbone='resnet14').eval()
    images = torch.randn(1, 3, 48, 64)
    runtime = Runtime(torch.device('cpu'))
    whole = class_scores(model, images, (48, 64), runtime).argmax(1)
    one_window = class_scores(model, images, (48, 64), runtime, Protocol(window=(48, 64))).argmax(1)
    assert torch.equal(whole, one_window)
    windows = class_scores(model, images, (48, 64), runtime, Protocol(window=(32, 32), stride=(16, 16)))
    assert windows.shape == (1, 5, 48, 64)
    assert torch.allclose(windows.sum(1), torch.ones(1, 48, 64), atol=1e-5), 'averaged probabilities'


# --- paper_table.py over real runs -------------------------------------------------------------

def test_paper_table_from_real_runs(tmp_path):
    root = tmp_path / 'voc'
    train, _ = make_synthetic_voc(root, num_train=16, num_val=3, seed=7)
    for file_name, names in make_splits(sorted(train), [4]).items():   # 4_labeled_<i> besides 8_
        (root / 'ImageSets' / 'Segmentation' / file_name).write_text(''.join(f'{n}\n' for n in names))
    common = [*TINY, '--data-root', root, '--crop-size', 48, 48, '--val-num-steps', 100]
    runs = {}
    for split in ('8', '4'):
        for sets_id in (0, 1):
            name = f'fs_{split}-{sets_id}'
            cli(tmp_path, '--state', 2, '--exp-name', name, '--split', split, '--sets-id', sets_id,
                '--init-epochs', 1, '--lr', 0.01, *common)
            runs[('supervised', split, sets_id)] = name
            if (split, sets_id) == ('4', 1):
                continue   # this DST-CBC run is missing
            cli(tmp_path, '--state', 1, '--exp-name', f'ss_{split}-{sets_id}', '--split', split, '--sets-id', sets_id,
                '--continue-from', f'{name}.pt', '--iters', 1, '--st-epochs', 1, '--init-epochs', 0,
                '--st-lr', 0.01, *common)
            runs[('dst-cbc', split, sets_id)] = f'ss_{split}-{sets_id}'
    found = {key: json.loads((tmp_path / 'logs' / name / 'results.json').read_text()) for key, name in runs.items()}
    assert all(result['split'] in ('8', '4') and result['dataset'] == 'voc' for result in found.values())

    cells = {(cell.protocol, cell.method, cell.split): cell
             for cell in paper_table.summarise(paper_table.collect_runs([tmp_path]))}
    for method in ('supervised', 'dst-cbc'):
        for split in ('8', '4'):
            values = [found[(method, split, s)]['best_miou'] * 100 for s in (0, 1) if (method, split, s) in found]
            cell = cells[('best on val', method, split)]
            mean = sum(values) / len(values)
            assert cell.n == len(values) and cell.mean == pytest.approx(mean, abs=1e-9)
            if len(values) == 2:   # sample standard deviation of two: |a - b| / sqrt(2)
                assert cell.std == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), abs=1e-9)
    assert cells[('best on val', 'dst-cbc', '4')].n == 1
    completed = subprocess.run([sys.executable, str(REPO_ROOT / 'paper_table.py'), str(tmp_path)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert 'best on val' in completed.stdout and 'missing' in completed.stdout
    values = [found[('supervised', '8', s)]['best_miou'] * 100 for s in (0, 1)]
    assert f'{sum(values) / 2:.2f} ± {abs(values[0] - values[1]) / math.sqrt(2):.2f} (n=2)' in completed.stdout
