"""A dataset of one's own against VOC: the up-front data check per file, and predict.py against
state 3 in images per second.

    python benchmarks/bench_own_data.py --check [--files 300] [--source synthetic|real]
    python benchmarks/bench_own_data.py --predict [--images 48] [--workers 2]

--check times `utils.data_check.check_dataset` (one thread, no cache) over files of VOC's size
(375x500) in three layouts: VOC's (JPEG image, index PNG label), a user's own (PNG image, RGB
colour mask mapped through the description's colours), and, as the reference, an emulation of
the check before descriptions existed (VOC's: JPEG at 1/8 scale, label decoded and its values
checked in one uint8 pass, sizes compared). Each layout runs in a fresh process. `--source real`
makes the files from the 14 real VOC photographs and their real ground truth in
../shared/realdata/voc14 (repeated, as copies, to --files), the own layout's masks drawn in VOC's
colours with its void border in VOC's void colour; `synthetic` (the default) from
utils/synthetic.py.

--predict runs `main.py --state 3` (without and with --save-predictions) and `predict.py` over the
same images with the same options (a resnet14 stand-in with random weights, the 505x505 canvas,
batch 8, float32), each command twice in a fresh process, the second timed, and reports images per
second of the whole command (start-up, model, data check and writing included).
"""
import argparse
import contextlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)

import numpy as np
from PIL import Image

LAYOUTS = ('voc', 'own', 'own_palette', 'before')
SIZE = (375, 500)


REAL_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'realdata' / 'voc14'


def synthetic_pairs(count, layout, seed=0):
    """`count` (image, class index label) pairs of 375x500 from utils/synthetic.py, their colours."""
    from utils.synthetic import OWN_COLORS, make_sample

    rng = np.random.default_rng(seed)
    pairs = [make_sample(rng, *SIZE, void_band=not layout.startswith('own')) for _ in range(count)]
    return pairs, list(OWN_COLORS), [list(color) for color in OWN_COLORS.values()], []


def real_pairs(count):
    """`count` pairs cycled from the real VOC photographs and ground truth; VOC's classes and
    colours, its void (255) drawn in VOC's colour 255."""
    from utils.dataset_description import get_dataset_info, voc_palette

    photos = sorted((REAL_DATA / 'images').glob('*.png'))
    if not photos:
        raise SystemExit(f'--source real: no images in {REAL_DATA / "images"} (../shared/realdata)')
    originals = []
    for photo in photos:
        with Image.open(photo) as image, Image.open(REAL_DATA / 'labels' / photo.name) as label:
            originals.append((np.asarray(image.convert('RGB')), np.asarray(label)))
    palette = voc_palette(256)
    info = get_dataset_info('voc')
    return ([originals[number % len(originals)] for number in range(count)], list(info.class_names),
            [list(color) for color in palette[:info.num_classes]], [list(palette[255])])


def make_files(root, layout, count, source='synthetic'):
    """`count` image/label pairs in the layout's form, and its description."""
    pairs, classes, colors, ignore_colors = real_pairs(count) if source == 'real' else synthetic_pairs(count, layout)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:len(colors)] = colors
    if ignore_colors:   # the real labels' void (255), drawn in VOC's colour 255
        palette[255] = ignore_colors[0]
    (root / 'images').mkdir(parents=True)
    (root / 'labels').mkdir()
    names = []
    for number, (image, label) in enumerate(pairs):
        name = f'img_{number:05d}'
        if layout == 'own':
            Image.fromarray(image).save(root / 'images' / f'{name}.png')
            Image.fromarray(palette[label]).save(root / 'labels' / f'{name}.png')
        elif layout == 'own_palette':   # the same colours, saved as a palette PNG (as many tools export)
            Image.fromarray(image).save(root / 'images' / f'{name}.png')
            mask = Image.fromarray(label, mode='P')
            mask.putpalette(palette.reshape(-1).tolist())
            mask.save(root / 'labels' / f'{name}.png')
        else:
            Image.fromarray(image).save(root / 'images' / f'{name}.jpg', quality=90)
            Image.fromarray(label).save(root / 'labels' / f'{name}.png')
        names.append(name)
    (root / 'lists').mkdir()
    (root / 'lists' / 'train.txt').write_text(''.join(f'{name}\n' for name in names))
    if layout.startswith('own'):
        encoding = (f'label_encoding: rgb\ncolors: {json.dumps(colors)}\n'
                    + (f'ignore_colors: {json.dumps(ignore_colors)}\n' if ignore_colors else ''))
        suffix = '.png'
    else:
        encoding, suffix = 'label_encoding: index\n', '.jpg'
    (root / 'd.yaml').write_text(f'name: bench\nclasses: {json.dumps(classes)}\nimages: images/{{id}}{suffix}\n'
                                 f'labels: labels/{{id}}.png\n{encoding}')
    return root / 'd.yaml'


def check_before(dataset):
    """The check of every entry as it was before descriptions: one thread, no cache."""
    from utils.errors import InputError
    from utils.images import image_size

    for index in range(len(dataset)):
        height, width = image_size(dataset.image_path(index))
        with Image.open(dataset.label_path(index)) as png:
            array = np.array(png)
        shifted = array - np.uint8(dataset.info.num_classes)
        if (shifted < 255 - dataset.info.num_classes).any():
            raise InputError('bad value')
        if array.shape != (height, width):
            raise InputError('size')


def measure_check(layout, count, source):
    import data_processing as dp
    from utils.data_check import check_dataset

    folder = Path(tempfile.mkdtemp())
    try:
        description = make_files(folder / 'data', 'voc' if layout == 'before' else layout, count, source)
        info = dp.get_dataset_info(str(description))
        dataset = dp.build_dataset(info, folder / 'data', 'train', 'gt', None)
        if layout.startswith('own'):   # the colour table is made once per process: not per file
            info.encoding.read(dataset.label_path(0))
        started = time.perf_counter()
        if layout == 'before':
            check_before(dataset)
        else:
            check_dataset(dataset, folder / 'cache', threads=1)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    common.print_result({'layout': layout, 'files': count, 'seconds': seconds, 'source': source,
                         'peak_rss_mb': common.max_rss_mb()})


def run_quiet(program, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = program.main(argv)
    if status:
        raise SystemExit(f'{program.__name__} {argv}: exit {status}\n{err.getvalue()[-2000:]}')


def measure_predict(command, folder, workers):
    """One command over the images in `folder` (made by --predict's parent), timed."""
    import torch

    import main
    import predict

    torch.set_num_threads(1)
    folder = Path(folder)
    common_flags = ['--batch-size', '8', '--workers', str(workers), '--device', 'cpu']
    os.chdir(folder)   # a fresh process of its own: the outputs land in the benchmark's folder
    started = time.perf_counter()
    if command == 'predict':
        run_quiet(predict, ['--dataset', 'voc', '--data-root', str(folder / 'voc'), '--checkpoint', 'model.pt',
                            '--out', f'out_{time.time_ns()}', str(folder / 'voc' / 'ImageSets' / 'Segmentation'
                                                                      / 'val.txt'), *common_flags])
    else:
        extra = ['--save-predictions', f'saved_{time.time_ns()}'] if command == 'state3_saving' else []
        run_quiet(main, ['--state', '3', '--data-root', str(folder / 'voc'), '--continue-from', 'model.pt',
                         '--exp-name', f'eval_{time.time_ns()}', *extra, *common_flags])
    seconds = time.perf_counter() - started
    common.print_result({'command': command, 'seconds': seconds, 'peak_rss_mb': common.max_rss_mb()})


def make_voc_val(folder, count):
    """A VOC-layout root whose val list holds `count` synthetic 375x500 images, and a resnet14
    checkpoint for 21 classes."""
    import torch

    from models import deeplab_v2
    from utils.checkpoints import save_checkpoint
    from utils.synthetic import make_sample

    root = folder / 'voc'
    rng = np.random.default_rng(1)
    for sub in ('JPEGImages', 'SegmentationClassAug', 'ImageSets/Segmentation'):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = []
    for number in range(count):
        image, label = make_sample(rng, *SIZE)
        name = f'bench_{number:05d}'
        Image.fromarray(image).save(root / 'JPEGImages' / f'{name}.jpg', quality=90)
        Image.fromarray(label).save(root / 'SegmentationClassAug' / f'{name}.png')
        names.append(name)
    (root / 'ImageSets' / 'Segmentation' / 'val.txt').write_text(''.join(f'{name}\n' for name in names))
    torch.manual_seed(0)
    save_checkpoint(folder / 'model.pt', deeplab_v2(21, backbone='resnet14'), num_classes=21,
                    extra={'architecture': {'backbone': 'resnet14', 'head_branches': 2}})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true')
    parser.add_argument('--predict', action='store_true')
    parser.add_argument('--files', type=int, default=300, help='--check: files per layout')
    parser.add_argument('--source', choices=('synthetic', 'real'), default='synthetic',
                        help='--check: files from utils/synthetic.py or from ../shared/realdata (VOC photographs)')
    parser.add_argument('--images', type=int, default=48, help='--predict: images')
    parser.add_argument('--workers', type=int, default=2, help='--predict: loader workers')
    parser.add_argument('--child', nargs='+', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child[0] == 'check':
            measure_check(args.child[1], int(args.child[2]), args.child[3])
        else:
            measure_predict(args.child[1], args.child[2], int(args.child[3]))
        return
    print(common.machine_text(1, 'cpu'))
    common.print_load_at_start(1, 'cpu')
    if args.check:
        rows = []
        for layout in LAYOUTS:
            arguments = ['--child', 'check', layout, str(args.files), args.source]
            result = common.run_in_child(__file__, f'check {layout}', arguments)
            rows.append([{'voc': 'VOC layout (JPEG + index PNG)', 'own': 'own data (PNG + RGB colour mask)',
                          'own_palette': 'own data (PNG + palette colour mask)',
                          'before': 'VOC, the check before descriptions'}[layout], result['files'],
                         f'{result["seconds"]:.2f}', f'{result["seconds"] / result["files"] * 1e3:.2f}',
                         f'{result["peak_rss_mb"]:.0f}'])
        print(common.format_table(rows, [f'data check, one thread, {args.source} files', 'files', 's', 'ms per file',
                                         'peak RSS MB']))
    if args.predict:
        folder = Path(tempfile.mkdtemp())
        try:
            make_voc_val(folder, args.images)
            rows = []
            for command in ('state3', 'state3_saving', 'predict'):
                arguments = ['--child', 'predict', command, str(folder), str(args.workers)]
                common.run_in_child(__file__, command, arguments)            # warm: data check cached
                result = common.run_in_child(__file__, command, arguments)
                rows.append([{'state3': 'main.py --state 3', 'state3_saving': 'main.py --state 3 --save-predictions',
                              'predict': 'predict.py (index, color, overlay)'}[command], args.images,
                             f'{result["seconds"]:.1f}', f'{args.images / result["seconds"]:.2f}',
                             f'{result["peak_rss_mb"]:.0f}'])
            print(common.format_table(rows, [f'{args.images} images of 375x500, resnet14, batch 8, '
                                             f'{args.workers} workers', 'images', 's', 'images/s', 'peak RSS MB']))
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == '__main__':
    main()
