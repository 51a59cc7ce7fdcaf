"""Builders of small on-disk datasets for tests (VOC layout from the real photographs, Cityscapes
layout from synthetic raw-id labels), and `run_main`: main.py's command line run in this process."""
import contextlib
import io
import os
import random
import sys
import traceback
from collections import namedtuple
from pathlib import Path

import numpy as np
from PIL import Image

REALDATA_SUBDIR = Path('realdata') / 'voc14'


def build_voc14_tree(shared_dir, root, val_count=4):
    """The 14 real VOC photographs in the VOC layout under `root`.

    The first 14 - val_count (sorted) go to train.txt, the rest to val.txt; returns (train, val).
    """
    source = Path(shared_dir) / REALDATA_SUBDIR
    root = Path(root)
    (root / 'JPEGImages').mkdir(parents=True, exist_ok=True)
    (root / 'SegmentationClassAug').mkdir(parents=True, exist_ok=True)
    (root / 'ImageSets' / 'Segmentation').mkdir(parents=True, exist_ok=True)
    names = sorted(path.stem for path in (source / 'images').glob('*.png'))
    for name in names:
        with Image.open(source / 'images' / f'{name}.png') as image:
            image.convert('RGB').save(root / 'JPEGImages' / f'{name}.jpg', quality=95)
        with Image.open(source / 'labels' / f'{name}.png') as label:
            label.save(root / 'SegmentationClassAug' / f'{name}.png')
    train, val = names[:len(names) - val_count], names[len(names) - val_count:]
    write_list(root / 'ImageSets' / 'Segmentation' / 'train.txt', train)
    write_list(root / 'ImageSets' / 'Segmentation' / 'val.txt', val)
    return train, val


def write_list(path, names):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(''.join(f'{name}\n' for name in names))


def build_city_tree(root, entries, raw_labels, image_size=(512, 1024), seed=0):
    """A Cityscapes-layout tree: entries like ('train', 'aachen', 'aachen_000000_000019') with a
    raw-id label array each (same order)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for (split, city, name), raw in zip(entries, raw_labels):
        image_dir = root / 'leftImg8bit' / split / city
        label_dir = root / 'gtFine' / split / city
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(*image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / f'{name}_leftImg8bit.png')
        Image.fromarray(np.asarray(raw, dtype=np.uint8)).save(label_dir / f'{name}_gtFine_labelIds.png')
    return root


def confident_checkpoint(path, num_classes=21, weight_scale=30.0, bias_scale=2.0, architecture=None):
    """Save a random resnet14 DeepLabV2 whose head is sharpened (weights scaled up, random biases),
    so that its predictions spread over many classes with spread-out confidences, as a trained
    network's do; returns the model in eval mode."""
    import torch

    from models import deeplab_v2
    from utils.checkpoints import save_checkpoint

    torch.manual_seed(0)
    model = deeplab_v2(num_classes, backbone='resnet14')
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for conv in model.classifier[0].convs:
            conv.weight.mul_(weight_scale)
            if bias_scale:
                conv.bias.copy_(torch.randn(num_classes, generator=generator) * bias_scale)
    extra = {'architecture': architecture} if architecture else None
    save_checkpoint(path, model, num_classes=num_classes, extra=extra)
    return model.eval()


def call(program, *args):
    """`python program.py ARGS` of a program other than main.py (describe_dataset, generate_splits,
    predict, visualize, paper_table) in this process, through its main(argv): (status, stdout,
    stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = program.main([str(arg) for arg in args])
        except SystemExit as stop:
            status = stop.code
    return status or 0, out.getvalue(), err.getvalue()


# --- main.py in this process -----------------------------------------------------------------------

MAIN = Path(__file__).resolve().parents[1] / 'main.py'
# The tiny network and sizes of the CLI tests: a state 2 run of these takes seconds on a CPU.
TINY_FLAGS = ['--backbone', 'resnet14', '--crop-size', '48', '48', '--workers', '0', '--batch-size', '4',
              '--device', 'cpu', '--eval-size', '96', '128']
Completed = namedtuple('Completed', 'returncode stdout stderr')


def run_main(workdir, *args, env=None):
    """`python main.py ARGS` run from `workdir`, but in this process: main.main(argv) with the
    working folder, sys.argv and stdout/stderr of a process of its own; returns
    Completed(returncode, stdout, stderr), unpackable as (status, stdout, stderr).

    It saves a process start (4 to 7 s of imports). What a process gives for free is redone here:
    an uncaught exception becomes its traceback on stderr and status 1, as the interpreter would
    print it; a SystemExit (argparse) its status; experiment locks still held when main returns
    are released (the kernel drops them when a process ends); and the working folder, sys.argv,
    the environment, torch's thread count (one, as in the suite's processes, see conftest.py) and
    the CPU random generators (torch, numpy, random) are put back afterwards. Use a process for what needs one: signals,
    kills, resource limits, several ranks, the README's command lines.
    """
    import torch

    import main
    from utils import files

    argv = [str(arg) for arg in args]
    out, err = io.StringIO(), io.StringIO()
    saved = dict(cwd=os.getcwd(), argv=sys.argv, environ=dict(os.environ), threads=torch.get_num_threads(),
                 torch_rng=torch.get_rng_state(), numpy_rng=np.random.get_state(), python_rng=random.getstate())
    locks = []
    real_acquire = files.FolderLock.acquire

    def recorded_acquire(lock, *args, **kwargs):
        result = real_acquire(lock, *args, **kwargs)
        locks.append(lock)
        return result

    status = 0
    try:
        os.chdir(workdir)
        sys.argv = [str(MAIN), *argv]
        os.environ.update({key: str(value) for key, value in (env or {}).items()})
        torch.set_num_threads(1)
        files.FolderLock.acquire = recorded_acquire
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main.main(argv)
            except SystemExit as stop:
                status = stop.code
                if status is None:
                    status = 0
                elif not isinstance(status, int):
                    print(status, file=sys.stderr)
                    status = 1
            except Exception:   # noqa: BLE001 - what the interpreter does with it in a process
                traceback.print_exc()
                status = 1
    finally:
        files.FolderLock.acquire = real_acquire
        for lock in locks:
            lock.release()
        os.chdir(saved['cwd'])
        sys.argv = saved['argv']
        if dict(os.environ) != saved['environ']:
            os.environ.clear()
            os.environ.update(saved['environ'])
        torch.set_num_threads(saved['threads'])
        torch.set_rng_state(saved['torch_rng'])
        np.random.set_state(saved['numpy_rng'])
        random.setstate(saved['python_rng'])
    return Completed(status, out.getvalue(), err.getvalue())
