"""predict.py as users run it: odd flags, patterns and lists, folders with links and earlier
outputs in them, files that fail to decode, writes that fail, --overwrite, and full shared memory.

One tiny checkpoint (resnet14, VOC's 21 classes) is made once for the module; images are 24x32
and the evaluation canvas 32x32, so a prediction takes a fraction of a second, in this process.
"""
import io
import json
import os
import resource
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import predict
from helpers import call, confident_checkpoint
from utils.device import is_shared_memory_exhausted
from utils.images import image_size

FAST = ['--device', 'cpu', '--eval-size', '32', '32']


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('model') / 'tiny.pt'
    confident_checkpoint(path, architecture={'backbone': 'resnet14', 'head_branches': 2})
    return path


def run(checkpoint, out, *inputs, workers=0):
    return call(predict, '--checkpoint', checkpoint, '--out', out, *inputs, '--workers', workers, *FAST)


def photo(path, seed=0, size=(24, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def one_line(stderr, status, expected, *fragments):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == expected and len(lines) == 1 and lines[0].startswith('error: '), (status, stderr[-2000:])
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def files_under(folder):
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob('*') if path.is_file())


@pytest.mark.parametrize('flag', [['--scales', 'nan'], ['--scales', 'inf'], ['--scales', '0'], ['--scales', '-1'],
                                  ['--sliding-window', '0', '0'], ['--eval-size', '0', '0'],
                                  ['--eval-size', '-5', '100'], ['--window-stride', '0', '0']])
def test_odd_inference_flags_are_one_line_naming_the_flag(checkpoint, tmp_path, flag):
    photo(tmp_path / 'a.png')
    status, _, err = call(predict, '--checkpoint', checkpoint, '--out', tmp_path / 'out', tmp_path / 'a.png',
                          '--workers', '0', '--device', 'cpu', *flag)
    one_line(err, status, 2, f'argument {flag[0]}')
    assert not (tmp_path / 'out').exists()


def test_a_glob_with_dotdot_after_a_wildcard_writes_inside_out_each_file_once(checkpoint, tmp_path):
    photos = tmp_path / 'x'
    for folder in ('f1', 'f2'):
        (photos / folder).mkdir(parents=True)
    photo(photos / 'f3' / 'a.png', 1)
    photo(photos / 'f3' / 'b.png', 2)
    before = files_under(tmp_path)
    escaping = f'{photos}/f[1]/../../../{tmp_path.name}/x/f3/*.png'
    status, _, err = run(checkpoint, tmp_path / 'out', escaping)
    assert status == 0, err
    assert files_under(tmp_path / 'out') == ['color/a.png', 'color/b.png', 'index/a.png', 'index/b.png',
                                             'overlay/a.jpg', 'overlay/b.jpg', 'predictions.json', 'summary.csv']
    assert [path for path in files_under(tmp_path) if not path.startswith('out/')] == before
    status, _, err = run(checkpoint, tmp_path / 'twice', f'{photos}/f*/../f3/*.png')
    assert status == 0, err
    rows = (tmp_path / 'twice' / 'summary.csv').read_text().splitlines()[1:]
    assert [row.split(',')[1] for row in rows] == ['a', 'b']


def test_a_failed_write_is_one_line_exit_4_and_leaves_no_cut_off_file(checkpoint, tmp_path):
    """Under a file size limit the JPEG overlay (noise: about 18 kB) cannot be written whole, the
    PNGs (a few kB) can; Pillow's JPEG encoder ignored the short write."""
    photo(tmp_path / 'noise.png', size=(160, 160))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, hard))
    try:
        status, _, err = call(predict, '--checkpoint', checkpoint, '--out', tmp_path / 'out', tmp_path / 'noise.png',
                              '--workers', '0', '--device', 'cpu', '--eval-size', '160', '160', '--opacity', '0')
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    one_line(err, status, 4, tmp_path / 'out' / 'overlay' / 'noise.jpg', 'file size limit')
    written = files_under(tmp_path / 'out')
    assert 'overlay/noise.jpg' not in written and not any(name.endswith('.tmp') for name in written)
    for name in written:
        with Image.open(tmp_path / 'out' / name) as image:
            image.load()   # whole


def test_overwrite_replaces_the_earlier_outputs_rather_than_adding_to_them(checkpoint, tmp_path):
    photo(tmp_path / 'photos' / 'a.png', 1)
    photo(tmp_path / 'photos' / 'b.png', 2)
    status, _, err = run(checkpoint, tmp_path / 'out', tmp_path / 'photos', '--confidence', 'png16')
    assert status == 0, err
    (tmp_path / 'out' / 'mine.txt').write_text('not written by predict.py')
    status, out, err = run(checkpoint, tmp_path / 'out', tmp_path / 'photos' / 'a.png', '--overwrite')
    assert status == 0, err
    assert '--overwrite: removed the earlier outputs' in out
    assert files_under(tmp_path / 'out') == ['color/a.png', 'index/a.png', 'mine.txt', 'overlay/a.jpg',
                                             'predictions.json', 'summary.csv']


def broken_images(folder):
    """Files whose headers and checksums are whole but whose pixels cannot be decoded."""
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / 'cut.bmp')
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / 'cut16.tif')
    for name in ('cut.bmp', 'cut16.tif'):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:len(data) // 2])
    encoded = io.BytesIO()
    Image.fromarray(rgb).save(encoded, format='PNG')
    png = bytearray(encoded.getvalue())
    at = png.index(b'IDAT')
    length = struct.unpack('>I', png[at - 4:at])[0]
    payload = bytes(value ^ 0x5A if 10 <= i < length - 10 and i % 7 == 3 else value
                    for i, value in enumerate(png[at + 4:at + 4 + length]))
    png[at + 4:at + 4 + length] = payload
    png[at + 4 + length:at + 8 + length] = struct.pack('>I', zlib.crc32(b'IDAT' + payload))
    (folder / 'corrupt.png').write_bytes(bytes(png))
    return ['corrupt.png', 'cut.bmp', 'cut16.tif']


@pytest.mark.parametrize('workers', [0, 2])
def test_images_that_fail_to_decode_are_skipped_and_the_run_goes_on(checkpoint, tmp_path, workers):
    photos = tmp_path / 'photos'
    for number in range(3):
        photo(photos / f'good{number}.png', number)
    broken = broken_images(photos)
    for name in broken:
        image_size(photos / name)   # they pass the check before the run
    status, out, err = run(checkpoint, tmp_path / 'out', photos, '--batch-size', '3', workers=workers)
    assert status == 0, err
    for name in broken:
        assert f'skipped {photos / name}: cannot read image' in out
    assert files_under(tmp_path / 'out' / 'index') == ['good0.png', 'good1.png', 'good2.png']
    assert len((tmp_path / 'out' / 'summary.csv').read_text().splitlines()) == 4
    assert '3 images predicted' in out and '3 skipped' in out.splitlines()[-1]
    meta = json.loads((tmp_path / 'out' / 'predictions.json').read_text())
    assert sorted(os.path.basename(item['path']) for item in meta['skipped']) == broken


def test_list_lines_name_files_absolute_or_relative_with_dotdot(checkpoint, tmp_path):
    photo(tmp_path / 'photos' / 'a.png', 1)
    photo(tmp_path / 'photos' / 'b.png', 2)
    photo(tmp_path / 'lists' / 'sub' / 'c.png', 3)
    listing = tmp_path / 'lists' / 'mine.txt'
    listing.write_text(f'{tmp_path / "photos" / "a.png"}\n../photos/b.png\nsub/../sub/c.png\n')
    status, _, err = run(checkpoint, tmp_path / 'out', listing)
    assert status == 0, err
    assert files_under(tmp_path / 'out' / 'index') == ['a.png', 'b.png', 'sub/c.png']
    listing.write_text('../photos/a.png\n../photos/missing.png\n')
    status, _, err = run(checkpoint, tmp_path / 'out2', listing)
    one_line(err, status, 2, f'{listing} line 2', 'neither an existing file', 'nor an id of')


def test_a_folder_of_predict_outputs_is_not_read_as_photos(checkpoint, tmp_path):
    photos = tmp_path / 'photos'
    photo(photos / 'x.png', 1)
    photo(photos / 'y.png', 2)
    status, _, err = run(checkpoint, photos / 'inside', photos / 'x.png')
    assert status == 0, err
    for given in (photos, f'{photos}/**/*.png'):
        out = tmp_path / f'out{len(str(given))}'
        status, printed, err = run(checkpoint, out, given)
        assert status == 0, err
        assert f'skipped {photos / "inside"}/: outputs of predict.py' in printed
        assert files_under(out / 'index') == ['x.png', 'y.png']


def test_linked_folders_are_followed_once_and_dangling_links_reported(checkpoint, tmp_path):
    photos = tmp_path / 'photos'
    photo(photos / 'real' / 'a.png', 1)
    photo(tmp_path / 'elsewhere' / 'e.png', 2)
    (photos / 'linked').symlink_to(tmp_path / 'elsewhere')
    (photos / 'again').symlink_to(photos / 'real')
    (photos / 'loop').symlink_to(photos)
    (photos / 'gone.png').symlink_to(tmp_path / 'nothing.png')
    status, out, err = run(checkpoint, tmp_path / 'out', photos)
    assert status == 0, err
    assert files_under(tmp_path / 'out' / 'index') == ['linked/e.png', 'real/a.png']
    assert f'skipped {photos / "gone.png"}: a link to {tmp_path / "nothing.png"}, which does not exist' in out


def test_a_name_clash_says_what_fits_the_case(checkpoint, tmp_path):
    photo(tmp_path / 'one' / 'x.png', 1)
    photo(tmp_path / 'two' / 'x.png', 2)
    status, _, err = run(checkpoint, tmp_path / 'out', tmp_path / 'one', tmp_path / 'two')
    line = one_line(err, status, 2, 'x.png', 'its own --out folder')
    assert 'give their folders' not in line
    photo(tmp_path / 'three' / 'a.png', 3)
    Image.open(tmp_path / 'three' / 'a.png').convert('RGB').save(tmp_path / 'three' / 'a.jpg')
    status, _, err = run(checkpoint, tmp_path / 'out', tmp_path / 'three')
    line = one_line(err, status, 2, 'a.jpg', 'a.png', 'rename one')
    assert 'give their folders' not in line


def test_fp16_on_a_cpu_is_warned_as_main_py_logs_it(checkpoint, tmp_path):
    photo(tmp_path / 'a.png')
    status, _, err = run(checkpoint, tmp_path / 'out', tmp_path / 'a.png', '--precision', 'fp16')
    assert status == 0, err
    assert 'a CPU has no fast float16 kernels' in err


def test_a_checkpoint_recording_no_architecture_takes_backbone_flags(tmp_path):
    bare = tmp_path / 'bare.pt'
    confident_checkpoint(bare)   # resnet14, but the file does not say so
    photo(tmp_path / 'a.png')
    status, _, err = run(bare, tmp_path / 'out', tmp_path / 'a.png')
    one_line(err, status, 2, 'records no backbone', '--backbone')
    status, _, err = run(bare, tmp_path / 'out', tmp_path / 'a.png', '--backbone', 'resnet14')
    assert status == 0, err


def test_full_shared_memory_is_one_line_exit_6(checkpoint, tmp_path):
    """A file size limit makes the loader workers' shared memory segments fail to grow, as a
    full /dev/shm does (EFBIG instead of ENOSPC)."""
    for number in range(2):
        photo(tmp_path / 'photos' / f'{number}.png', number)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, hard))
    try:
        status, _, err = run(checkpoint, tmp_path / 'out', tmp_path / 'photos', workers=2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    one_line(err, status, 6, 'out of shared memory', '--workers 0', '--shm-size')


def test_shared_memory_errors_are_recognised_and_nothing_else():
    worker = RuntimeError('Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent '
                          'call last):\n  ...\nRuntimeError: unable to write to file </torch_1_2_3>: No space left '
                          'on device (28)\n')
    assert is_shared_memory_exhausted(worker)
    assert is_shared_memory_exhausted(RuntimeError('unable to resize file <filename not specified> to the right '
                                                   'size: File too large (27)'))
    assert is_shared_memory_exhausted(RuntimeError("DataLoader worker (pid 7) is killed by signal: Bus error. It is "
                                                   "possible that dataloader's workers are out of shared memory."))
    try:
        try:
            raise worker
        except RuntimeError as error:
            raise ValueError('wrapped') from error
    except ValueError as error:
        assert is_shared_memory_exhausted(error)
    assert not is_shared_memory_exhausted(OSError(28, 'No space left on device'))
    assert not is_shared_memory_exhausted(RuntimeError('CUDA out of memory'))
