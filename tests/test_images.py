"""Images read as a viewer shows them, whatever the file's mode (utils/images.py): one test per
Pillow mode with values worked out by hand, transparency over white, EXIF orientation ignored, and
one-line refusals naming the file, from `read_image` and from the up-front check `image_size`."""
import numpy as np
import pytest
import torch
from PIL import Image

import data_processing as dp
from helpers import write_list
from utils import data_check
from utils.errors import InputError, one_line
from utils.images import image_size, read_image


# Pillow's own IM format is the one file that keeps 'I;16L' and 'PA'; it is deprecated (to go in
# Pillow 15), hence the warning filter, and the skip once it is gone.
Image.init()
IM_FORMAT = [pytest.mark.filterwarnings('ignore:IM image format is deprecated:DeprecationWarning'),
             pytest.mark.skipif('IM' not in Image.SAVE, reason="this Pillow cannot write its IM format")]


def needs_im_format(test):
    for mark in IM_FORMAT:
        test = mark(test)
    return test


def saved(image, path, expected_mode, **options):
    """Save `image` to `path` and check the file reopens in `expected_mode`, the mode under test."""
    image.save(path, **options)
    with Image.open(path) as reopened:
        assert reopened.mode == expected_mode
    return path


def rgb(path):
    """read_image as a [H, W, 3] list of lists, for comparing with hand-written values."""
    tensor = read_image(path)
    assert tensor.dtype == torch.uint8 and tensor.shape[0] == 3
    return tensor.permute(1, 2, 0).tolist()


def grey(values):
    return [[[value] * 3 for value in row] for row in values]


def refused(function, path):
    """The one-line InputError of `function(path)`; it must name the file."""
    with pytest.raises(InputError) as error:
        function(path)
    message = str(error.value)
    assert '\n' not in message and one_line(error.value) == message
    assert str(path) in message
    return message


# 16-bit grey, v -> round(v * 255 / 65535) = round(v / 257):
# 257 -> 1, 32896 = 128 * 257 -> 128, 1000 / 257 = 3.89 -> 4, 128 / 257 = 0.498 -> 0,
# 129 / 257 = 0.502 -> 1, 65534 / 257 = 254.996 -> 255.
SIXTEEN_BIT = [[0, 257, 32896, 65535], [1000, 128, 129, 65534]]
SIXTEEN_BIT_AS_EIGHT = [[0, 1, 128, 255], [4, 0, 1, 255]]


def test_a_16_bit_png_under_a_jpg_name_is_scaled_not_clipped(tmp_path):
    path = saved(Image.fromarray(np.array(SIXTEEN_BIT, np.uint16)), tmp_path / 'deep.jpg', 'I;16',
                 format='PNG')
    assert rgb(path) == grey(SIXTEEN_BIT_AS_EIGHT)
    assert image_size(path) == (2, 4)


@pytest.mark.parametrize('mode,name,dtype', [('I;16B', 'big.tif', '>u2'),
                                             pytest.param('I;16L', 'little.im', '<u2', marks=IM_FORMAT)])
def test_16_bit_grey_of_either_byte_order(tmp_path, mode, name, dtype):
    image = Image.frombytes(mode, (4, 2), np.array(SIXTEEN_BIT, dtype).tobytes())
    path = saved(image, tmp_path / name, mode)
    assert rgb(path) == grey(SIXTEEN_BIT_AS_EIGHT)
    assert image_size(path) == (2, 4)


def test_32_bit_integers_within_16_bits_are_read_as_16_bit(tmp_path):
    path = saved(Image.fromarray(np.array(SIXTEEN_BIT, np.int32)), tmp_path / 'wide.tif', 'I')
    assert rgb(path) == grey(SIXTEEN_BIT_AS_EIGHT)
    assert image_size(path) == (2, 4)


@pytest.mark.parametrize('bad', [70000, -1])
def test_32_bit_integers_beyond_16_bits_are_refused(tmp_path, bad):
    path = saved(Image.fromarray(np.array([[0, bad]], np.int32)), tmp_path / 'wide.tif', 'I')
    for function in (read_image, image_size):
        message = refused(function, path)
        assert str(bad) in message and '8- or 16-bit' in message


def test_floats_within_0_and_1_are_scaled_by_255(tmp_path):
    # 0.5 * 255 = 127.5 -> 128 (halves up), 0.25 * 255 = 63.75 -> 64, float32 0.2 * 255 = 51.0000008
    values = np.array([[0.0, 0.5, 1.0], [0.25, 0.2, 0.1]], np.float32)
    path = saved(Image.fromarray(values), tmp_path / 'float.tif', 'F')
    assert rgb(path) == grey([[0, 128, 255], [64, 51, 26]])   # 0.1 * 255 = 25.5000004 -> 26
    assert image_size(path) == (2, 3)


@pytest.mark.parametrize('bad', [1.5, -0.25, float('nan')])
def test_floats_outside_0_and_1_are_refused(tmp_path, bad):
    path = saved(Image.fromarray(np.array([[0.5, bad]], np.float32)), tmp_path / 'float.tif', 'F')
    for function in (read_image, image_size):
        message = refused(function, path)
        assert 'outside 0..1' in message and '8- or 16-bit' in message


def test_one_bit(tmp_path):
    path = saved(Image.fromarray(np.array([[True, False, True]])), tmp_path / 'bits.png', '1')
    assert rgb(path) == grey([[255, 0, 255]])
    assert image_size(path) == (1, 3)


def test_eight_bit_grey(tmp_path):
    path = saved(Image.fromarray(np.array([[0, 17, 200]], np.uint8)), tmp_path / 'grey.jpg', 'L',
                 format='PNG')
    assert rgb(path) == grey([[0, 17, 200]])
    assert image_size(path) == (1, 3)


def palette_image(indices, mode='P'):
    image = Image.new(mode, (len(indices), 1))
    image.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    image.putdata(indices)
    return image


def test_palette_without_transparency(tmp_path):
    path = saved(palette_image([2, 0, 1]), tmp_path / 'palette.png', 'P')
    assert rgb(path) == [[[70, 80, 90], [10, 20, 30], [40, 50, 60]]]
    assert image_size(path) == (1, 3)


# Over white: c -> round((c * a + 255 * (255 - a)) / 255). With a = 128, 255 * 127 = 32385:
# 40 -> 37505 / 255 = 147.08 -> 147, 50 -> 38785 / 255 = 152.10 -> 152, 60 -> 40065 / 255 = 157.12 -> 157.
HALF_TRANSPARENT_40_50_60 = [147, 152, 157]


def test_palette_with_alpha_per_entry_is_over_white(tmp_path):
    path = saved(palette_image([0, 1, 2]), tmp_path / 'palette.png', 'P', transparency=bytes([255, 128, 0]))
    assert rgb(path) == [[[10, 20, 30], HALF_TRANSPARENT_40_50_60, [255, 255, 255]]]


def test_palette_with_a_transparent_index_is_over_white(tmp_path):
    path = saved(palette_image([0, 1, 2]), tmp_path / 'palette.gif', 'P', transparency=1)
    assert rgb(path) == [[[10, 20, 30], [255, 255, 255], [70, 80, 90]]]
    assert image_size(path) == (1, 3)


@needs_im_format
def test_palette_with_an_alpha_channel(tmp_path):
    image = Image.new('PA', (2, 1))
    image.putpalette([10, 20, 30, 40, 50, 60])
    image.putpixel((0, 0), (1, 128))
    image.putpixel((1, 0), (0, 0))
    path = saved(image, tmp_path / 'palette.im', 'PA')
    assert rgb(path) == [[HALF_TRANSPARENT_40_50_60, [255, 255, 255]]]
    assert image_size(path) == (1, 2)


def test_grey_with_alpha_is_over_white(tmp_path):
    # (10, a=128): (1280 + 32385) / 255 = 132.02 -> 132
    pixels = np.array([[[10, 0], [10, 128], [200, 255]]], np.uint8)
    path = saved(Image.fromarray(pixels, 'LA'), tmp_path / 'grey.png', 'LA')
    assert rgb(path) == grey([[255, 132, 200]])
    assert image_size(path) == (1, 3)


def test_rgba_is_over_white(tmp_path):
    # a = 51: 255 * 204 = 52020; 0 -> 204, 100 -> 57120 / 255 = 224, 200 -> 62220 / 255 = 244.
    # a = 100: 255 * 155 = 39525; 100 -> 49525 / 255 = 194.22 -> 194; 0 -> 155; 255 -> 255.
    pixels = np.array([[[255, 0, 0, 255], [0, 0, 0, 0], [0, 100, 200, 51], [100, 0, 255, 100]]],
                      np.uint8)
    path = saved(Image.fromarray(pixels, 'RGBA'), tmp_path / 'alpha.png', 'RGBA')
    assert rgb(path) == [[[255, 0, 0], [255, 255, 255], [204, 224, 244], [194, 155, 255]]]
    assert image_size(path) == (1, 4)


def test_a_transparent_colour_or_grey_value_is_over_white(tmp_path):
    colour = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8))
    path = saved(colour, tmp_path / 'colour.png', 'RGB', transparency=(4, 5, 6))
    assert rgb(path) == [[[1, 2, 3], [255, 255, 255]]]
    path = saved(Image.fromarray(np.array([[0, 100, 50]], np.uint8)), tmp_path / 'grey.png', 'L',
                 transparency=0)
    assert rgb(path) == grey([[255, 100, 50]])
    deep = Image.fromarray(np.array(SIXTEEN_BIT, np.uint16))
    path = saved(deep, tmp_path / 'deep.png', 'I;16', transparency=1000)
    assert rgb(path) == grey([[0, 1, 128, 255], [255, 0, 1, 255]])


# CMYK -> RGB: R = round((255 - C) * (255 - K) / 255), G with M, B with Y.
# (0, 255, 102, 51): 255 * 204 / 255 = 204, 0, 153 * 204 / 255 = 122.4 -> 122
# (10, 20, 30, 0): 245, 235, 225
# (128, 0, 0, 128): 127 * 127 / 255 = 63.25 -> 63, 127, 127
CMYK_COLOURS = [(0, 255, 102, 51), (10, 20, 30, 0), (128, 0, 0, 128)]
CMYK_AS_RGB = [(204, 0, 122), (245, 235, 225), (63, 127, 127)]


def cmyk_blocks():
    """Three flat 16x16 blocks, so that a JPEG at quality 100 keeps each colour exactly."""
    image = Image.new('CMYK', (48, 16))
    for position, colour in enumerate(CMYK_COLOURS):
        image.paste(colour, (16 * position, 0, 16 * position + 16, 16))
    return image


@pytest.mark.parametrize('name,options', [('cmyk.jpg', {'quality': 100}), ('cmyk.tif', {})])
def test_cmyk(tmp_path, name, options):
    path = saved(cmyk_blocks(), tmp_path / name, 'CMYK', **options)
    pixels = read_image(path)
    assert tuple(pixels.shape) == (3, 16, 48)
    for position, expected in enumerate(CMYK_AS_RGB):
        block = pixels[:, :, 16 * position:16 * position + 16].reshape(3, -1)
        assert (block == torch.tensor(expected, dtype=torch.uint8)[:, None]).all(), (name, expected)
    assert image_size(path) == (16, 48)


def test_ycbcr(tmp_path):
    # (100, 90, 200): R = 100 + 1.402 * 72 = 200.94 -> 201,
    #   G = 100 - 0.344136 * (-38) - 0.714136 * 72 = 61.66 -> 62, B = 100 + 1.772 * (-38) = 32.66 -> 33
    # (250, 128, 255): R = 250 + 1.402 * 127 = 428 -> 255 (clipped),
    #   G = 250 - 0.714136 * 127 = 159.31 -> 159, B = 250
    # (50, 128, 128): grey 50
    pixels = np.array([[[100, 90, 200], [250, 128, 255], [50, 128, 128]]], np.uint8)
    path = saved(Image.fromarray(pixels, 'YCbCr'), tmp_path / 'ycc.tif', 'YCbCr')
    assert rgb(path) == [[[201, 62, 33], [255, 159, 250], [50, 50, 50]]]
    assert image_size(path) == (1, 3)


def test_plain_rgb_is_returned_as_decoded_without_a_copy(tmp_path):
    pixels = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3) * 8
    path = saved(Image.fromarray(pixels), tmp_path / 'plain.png', 'RGB')
    image = read_image(path)
    assert image.permute(1, 2, 0).tolist() == pixels.tolist()
    # A channel-first view of the decoded [H, W, 3] array: its strides are those of HWC.
    assert image.stride() == (1, 5 * 3, 3) and image.permute(1, 2, 0).is_contiguous()


def test_an_unknown_mode_is_refused_in_one_line(tmp_path):
    path = saved(Image.new('LAB', (3, 2), (50, 10, 20)), tmp_path / 'lab.tif', 'LAB')
    for function in (read_image, image_size):
        message = refused(function, path)
        assert 'mode LAB' in message


def test_a_file_that_is_no_image_is_refused_in_one_line(tmp_path):
    path = tmp_path / 'notes.jpg'
    path.write_text('not an image\nsecond line\n')
    for function in (read_image, image_size):
        assert 'cannot read image' in refused(function, path)


def test_a_cut_off_16_bit_png_is_refused(tmp_path):
    noise = np.random.default_rng(0).integers(0, 65536, (64, 64), dtype=np.uint16)   # no compression
    path = saved(Image.fromarray(noise), tmp_path / 'cut.png', 'I;16')
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    for function in (read_image, image_size):
        assert 'cannot read image' in refused(function, path)


def exif_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def test_exif_orientation_is_ignored(tmp_path):
    """Orientation 6 (turn 90 degrees clockwise to view) is ignored: the stored pixels, stored size."""
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = (255, 0, 0)
    pixels[1, 2] = (0, 0, 255)
    path = saved(Image.fromarray(pixels), tmp_path / 'turned.png', 'RGB', exif=exif_orientation(6))
    with Image.open(path) as image:
        assert image.getexif()[0x0112] == 6
    assert rgb(path) == pixels.tolist()
    assert image_size(path) == (2, 3)

    # A JPEG photograph, the usual carrier of the tag: 16 high, 32 wide as stored, left half
    # red-ish, right half green-ish; turned it would be 32 high and 16 wide.
    photo = np.zeros((16, 32, 3), np.uint8)
    photo[:, :16] = (200, 30, 40)
    photo[:, 16:] = (20, 220, 60)
    path = saved(Image.fromarray(photo), tmp_path / 'turned.jpg', 'RGB', exif=exif_orientation(6),
                 quality=100, subsampling=0)
    with Image.open(path) as image:
        assert image.getexif()[0x0112] == 6
    image = read_image(path)
    assert tuple(image.shape) == (3, 16, 32)
    assert (image.int() - torch.from_numpy(photo).permute(2, 0, 1).int()).abs().max() <= 2
    assert image_size(path) == (16, 32)


def test_a_16_bit_training_image_is_trained_on_with_its_pixels(tmp_path):
    """The reported bug: a 16-bit grey PNG under a training image's .jpg name was read as all 255."""
    root = tmp_path / 'voc'
    (root / 'JPEGImages').mkdir(parents=True)
    (root / 'SegmentationClassAug').mkdir()
    values = np.array(SIXTEEN_BIT, np.uint16)
    Image.fromarray(values).save(root / 'JPEGImages' / 'deep.jpg', format='PNG')
    Image.fromarray(np.zeros((2, 4), np.uint8)).save(root / 'SegmentationClassAug' / 'deep.png')
    write_list(root / 'ImageSets' / 'Segmentation' / 'train.txt', ['deep'])
    dataset = dp.build_dataset(dp.VOC, root, 'train', 'gt', dp.build_transforms(dp.VOC, 'eval'))

    assert data_check.check_dataset(dataset, tmp_path / 'cache', threads=1).sizes == [(2, 4)]
    expected = torch.tensor(SIXTEEN_BIT_AS_EIGHT, dtype=torch.uint8).expand(3, 2, 4)
    assert torch.equal(dp.load_image(dataset.image_path(0)), expected)
    image, label = dataset.load_pair(0)
    assert torch.equal(image, expected) and tuple(label.shape) == (2, 4)
    # What the network sees: the normalised pixels, 128 -> (128 / 255 - mean) / std per channel.
    item = dataset[0]
    mean, std = torch.tensor(dp.IMAGENET_MEAN)[:, None], torch.tensor(dp.IMAGENET_STD)[:, None]
    seen = item['image'][:, 0, 2]
    assert torch.allclose(seen, ((128 / 255 - mean) / std)[:, 0], atol=1e-5)


def test_the_data_check_uses_this_image_size():
    assert data_check.image_size is image_size


def test_a_training_image_that_cannot_be_shown_is_refused_before_the_first_step(tmp_path):
    root = tmp_path / 'voc'
    (root / 'JPEGImages').mkdir(parents=True)
    (root / 'SegmentationClassAug').mkdir()
    image_path = root / 'JPEGImages' / 'bright.jpg'
    saved(Image.fromarray(np.full((2, 4), 3.0, np.float32)), image_path, 'F', format='TIFF')
    Image.fromarray(np.zeros((2, 4), np.uint8)).save(root / 'SegmentationClassAug' / 'bright.png')
    write_list(root / 'ImageSets' / 'Segmentation' / 'train.txt', ['bright'])
    dataset = dp.build_dataset(dp.VOC, root, 'train', 'gt', dp.build_transforms(dp.VOC, 'eval'))
    with pytest.raises(InputError) as error:
        data_check.check_dataset(dataset, tmp_path / 'cache', threads=1)
    message = one_line(error.value)
    assert str(image_path) in message and 'outside 0..1' in message
