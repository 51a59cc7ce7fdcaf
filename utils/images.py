"""Reading an image file as the pixels an image viewer shows for it, whatever the file's mode.

Every image the program reads (training, validation, labeling, prediction, pictures) comes through
`read_image`, and the check before the first step through `image_size`, which refuses what
`read_image` would refuse. Pillow's own `convert('RGB')` is not enough: it clips 16-bit grey to
0..255 instead of scaling it (a 16-bit PNG came out all white), and drops transparency.

How each Pillow mode becomes 8-bit RGB:
- 'RGB': as decoded (the fast path: one array, no conversion). 'L', '1' (0 or 255), 'P' (the
  palette's colours) and 'CMYK' through Pillow's conversion; CMYK, JPEG's included, by the plain
  formula R = (255 - C) * (255 - K) / 255 (likewise G with M, B with Y), rounded.
- 'YCbCr': the JPEG (JFIF) formula, rounded to the nearest as libjpeg does, clipped to 0..255:
  R = Y + 1.402 (Cr - 128), G = Y - 0.344136 (Cb - 128) - 0.714136 (Cr - 128),
  B = Y + 1.772 (Cb - 128).
- 'I;16', 'I;16B', 'I;16L' (16-bit grey): v -> round(v * 255 / 65535), on all three channels.
  'I' (32-bit integer; Pillow reads some 16-bit files so) likewise when every value lies in
  0..65535, otherwise refused. 'F' (floating point): v -> v * 255 rounded (halves up) when every
  value lies in [0, 1], otherwise refused. Either refusal says to save the image as 8- or 16-bit.
- Any other mode (LAB, premultiplied alpha, ...) is refused in one line naming the file.

Alpha: transparent pixels are composited over white, what a browser shows on a white page:
c -> round((c * a + 255 * (255 - a)) / 255), in the stored (sRGB) values. The same for every
kind of transparency: an alpha channel ('LA', 'PA', 'RGBA'), a palette's transparent entries and
a single transparent colour or grey ('transparency' of PNG and GIF), 16-bit grey's included.

EXIF orientation is ignored everywhere: the pixels are used as stored, for training, evaluation,
labeling and prediction alike. Labels are drawn on the stored pixels (a PNG label carries no
orientation of its own), so turning the image by its tag would turn it away from its label.
ICC colour profiles are not applied either: the stored values are used as they are.
"""
import numpy as np
import torch
from PIL import Image

from utils.errors import InputError

# The file names a folder of images is searched for (describe_dataset.py, predict.py).
IMAGE_EXTENSIONS = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.gif'})
SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L')
ALPHA_MODES = ('LA', 'PA', 'RGBA')
CONVERTED_MODES = ('1', 'L', 'P', 'CMYK')
SUPPORTED_MODES = ('RGB', 'YCbCr', 'I', 'F') + CONVERTED_MODES + ALPHA_MODES + SIXTEEN_BIT_MODES

# What Pillow raises for a file it cannot read: missing, not an image, cut off, corrupt, or too
# large to decode safely.
READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def read_image(path):
    """The pixels of an image file as an image viewer shows them (see the module docstring):
    uint8 tensor [3, H, W], RGB; or InputError naming the file.

    A plain RGB file returns a view of its decoded [H, W, 3] array (no further copy).
    """
    try:
        with Image.open(path) as image:
            if image.mode == 'RGB' and 'transparency' not in image.info:
                array = np.array(image)
            else:
                array = rgb_array(image, path)
    except READ_ERRORS as error:
        raise cannot_read(path, error) from None
    return torch.from_numpy(array).permute(2, 0, 1)


def image_size(path):
    """(height, width) of an image file, checked to be whole and of a mode `read_image` reads,
    without a full decode where it can: JPEGs decode at 1/8 scale (libjpeg's DCT scaling still
    reads every coded block, so a cut-off file fails), PNGs are verified chunk by chunk (CRCs).
    Modes 'I' and 'F' are decoded in full, since only their values tell whether they are read.
    The size is the stored one (EXIF orientation ignored, as `read_image` does).
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            check_mode(image, path)
            if image.mode in ('I', 'F'):
                rgb_array(image, path)
            elif image.format == 'JPEG':
                image.draft('RGB', (max(width // 8, 1), max(height // 8, 1)))
                image.load()
            else:
                image.verify()
    except READ_ERRORS as error:
        raise cannot_read(path, error) from None
    return height, width


def cannot_read(path, error):
    return InputError(f'{path}: cannot read image ({" ".join(str(error).split())})')


def check_mode(image, path):
    if image.mode not in SUPPORTED_MODES:
        raise InputError(f'{path}: image mode {image.mode} is not supported; save it as an 8- or '
                         f'16-bit RGB, grey or palette image')


def rgb_array(image, path):
    """uint8 [H, W, 3] of an open image of any supported mode (module docstring)."""
    check_mode(image, path)
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode == 'I':
        values = np.array(image)
        if mode == 'I':
            low, high = int(values.min()), int(values.max())
            if low < 0 or high > 65535:
                raise InputError(f'{path}: 32-bit integer image with values {low}..{high}, outside '
                                 f'0..65535; save it as an 8- or 16-bit image')
        grey = grey_to_rgb(sixteen_to_eight(values))
        transparent = image.info.get('transparency')
        if isinstance(transparent, int):
            grey[values == transparent] = 255   # fully transparent over white
        return grey
    if mode == 'F':
        values = np.array(image).astype(np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            finite = values[np.isfinite(values)]
            found = f'{finite.min():g}..{finite.max():g}' if finite.size else 'none finite'
            if finite.size < values.size:
                found += ', and non-finite values'
            raise InputError(f'{path}: floating-point image with values outside 0..1 ({found}); '
                             f'save it as an 8- or 16-bit image')
        return grey_to_rgb(np.floor(values * 255 + 0.5).astype(np.uint8))
    if mode == 'YCbCr':
        return ycbcr_to_rgb(np.array(image))
    if mode in ALPHA_MODES or 'transparency' in image.info or mode == 'P':
        # 'P' always: its palette may hold alpha without a 'transparency' entry.
        return over_white(np.array(image.convert('RGBA')))
    return np.array(image.convert('RGB'))


def sixteen_to_eight(values):
    """0..65535 -> round(v * 255 / 65535) as uint8. v * 255 / 65535 = v / 257 is never a half
    (257 is odd), so adding 32767 and flooring rounds it."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def grey_to_rgb(grey):
    return np.repeat(grey[..., None], 3, axis=2)


def ycbcr_to_rgb(ycbcr):
    y, cb, cr = (ycbcr[..., channel].astype(np.float64) for channel in range(3))
    cb, cr = cb - 128, cr - 128
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8)


def over_white(rgba):
    """uint8 [H, W, 4] -> [H, W, 3]: each colour c with alpha a over white,
    round((c * a + 255 * (255 - a)) / 255). The quotient is never a half (255 is odd), so adding
    127 and flooring rounds it; the largest sum, 65025 + 127, fits in uint16."""
    colour = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:].astype(np.uint16)
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
