"""A network's predictions as files: class scores brought to each image's file size, and the
pictures made of them. State 3's `--save-predictions` and predict.py both go through here, so
that the same checkpoint and options give the same classes, pixel for pixel.
"""
import io

import numpy as np
import torch
from PIL import Image

from utils.device import to_host
from utils.files import atomic_path, guarded_write
from utils.inference import upsample


def scores_at_file_size(scores, own_size, file_size):
    """One image's class scores [C, h, w] (of a padded canvas, a resized image, or the image
    itself) cut to the image's own size (padding is bottom/right) and brought to the size of its
    file, bilinearly as the logits are."""
    own_height, own_width = (int(side) for side in own_size)
    scores = scores[:, :own_height, :own_width]
    if tuple(scores.shape[-2:]) != tuple(int(side) for side in file_size):
        scores = upsample(scores[None], file_size)[0]
    return scores


def prediction_and_confidence(scores, probabilities):
    """(class indices uint8 [h, w], confidence float32 [h, w]) on the host: the argmax, and the
    probability of the chosen class. `probabilities` says whether the scores already are
    probabilities (several views averaged) or logits (one view)."""
    best, prediction = class_maximum(scores)
    # The chosen class's softmax probability, exp(l_c) / sum_j exp(l_j) = 1 / sum_j exp(l_j - l_c):
    # one pass over the classes instead of a whole softmax.
    confidence = best if probabilities else 1.0 / torch.exp(scores.float() - best).sum(dim=0)
    return to_host(prediction.to(torch.uint8)).numpy(), to_host(confidence.float()).numpy()


def class_maximum(scores, dim=0):
    """(largest score, its class) over the class dimension: argmax's indices (the first of equal
    maxima, as argmax), a few times faster than argmax over a strided class dimension."""
    return scores.max(dim=dim)


def palette_image(prediction, colors):
    """A palette ('P' mode) PNG image of class indices with the dataset's colours: any viewer
    shows the colours, and every program reads the indices."""
    image = Image.fromarray(prediction.astype(np.uint8), mode='P')
    flat = [value for color in colors for value in color]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def color_array(prediction, colors):
    """RGB uint8 [h, w, 3] of class indices in the dataset's colours."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:len(colors)] = np.asarray(colors, dtype=np.uint8)
    return palette[prediction]


def overlay_array(image, colors_rgb, opacity):
    """The colours laid over the image at `opacity` (0: the image, 1: the colours)."""
    blended = image.astype(np.float32) * (1.0 - opacity) + colors_rgb.astype(np.float32) * opacity
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def confidence_png(confidence):
    """A 16-bit grey PNG of a confidence map: value round(p * 65535)."""
    return Image.fromarray(np.rint(np.clip(confidence, 0.0, 1.0) * 65535).astype(np.uint16))


def save_image(image, path, what='prediction', **options):
    """Write a Pillow image atomically (its format from the name), one line naming it on failure."""
    encoded = io.BytesIO()
    image.save(encoded, format=Image.registered_extensions()[path.suffix.lower()], **options)
    write_encoded(encoded, path, what)


def save_npy(array, path):
    encoded = io.BytesIO()
    np.save(encoded, array)
    write_encoded(encoded, path, 'confidence map')


def write_encoded(encoded, path, what):
    """The bytes of a file encoded in memory, written atomically by Python's own file object.

    Encoders given a real file write to it themselves: Pillow's JPEG encoder ignores a short
    write, so an overlay cut off by a full disk or a file size limit (where Python ignores
    SIGXFSZ and the write fails with EFBIG) was renamed into place as if whole, and numpy's
    tofile reports one without its errno. Python's buffered writer retries a short write, and
    the retry raises the error that names the cause.
    """
    with guarded_write(path, what), atomic_path(path) as temporary:
        temporary.write_bytes(encoded.getbuffer())
