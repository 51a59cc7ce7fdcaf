"""Saving and loading checkpoints so that a crash or a bad file costs a message, not a run.

Saves go to `<path>.<pid>.tmp` and are renamed over the target only once complete, so the best
checkpoint so far survives a crash, a full disk or a kill in the middle of writing. Loads use
`weights_only=True` (no code runs from a downloaded file) and turn each way a file can be wrong
into one `InputError` line naming the file and saying what it is (text, empty, a whole pickled
network, ...), since `--continue-from` is user input and torch's own message rarely says.
"""
import argparse
import codecs
import errno
import os
import pickle
import re
import resource
import shutil
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.dataset_description import SHIPPED, get_dataset_info, meaning_differences, meaning_warning
from utils.device import all_finite
from utils.errors import InputError, TrainingDiverged
from utils.files import atomic_path, guarded_write

FORMAT = 'dstcbc-v1'
CLASSIFIER_KEY = 'classifier.0.convs.0.weight'
_OUR_PREFIXES = ('backbone.', 'classifier.')
_OPTIONAL_KEYS = ('optimizer', 'lr_scheduler', 'scaler', 'step', 'best_miou', 'num_classes',
                  'settings')
_RESERVED_KEYS = frozenset({'model', 'format', *_OPTIONAL_KEYS})
_SHOWN_NAMES = 3
# The first bytes of what torch.save writes: a zip archive (torch >= 1.6), or a pickle (the
# legacy format, protocol byte 0x80) as any Python pickle also starts.
_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_MAGIC = b'\x80'
_HEAD_BYTES = 512
# Terminal colour and cursor codes (ESC [ ... letter) that torch puts into some of its messages.
_ANSI_ESCAPE = re.compile(r'\x1b\[[0-?]*[ -/]*[@-~]')
# What the safe unpickler names when it refuses a class or function the file would call.
_REFUSED_GLOBAL = re.compile(r'GLOBAL ([\w.]+)')


def _plain(value, where: str, json_like: bool = False):
    """Reduce to what `torch.load(weights_only=True)` accepts, failing at save time, not at load.

    A value that only pickle understands (a Namespace, a numpy array) would make the checkpoint
    unloadable after hours of training; better to refuse it while the caller can still fix it.
    `json_like` (for the run's settings, which get printed and compared) turns tuples into lists
    and refuses tensors; elsewhere tuples stay, since e.g. `random.setstate` insists on them.
    """
    if value is None:
        return value
    if isinstance(value, np.generic):
        value = value.item()
    for plain_type in (bool, int, float, str):
        # Subclasses (numpy.float64, torch's TorchVersion) pickle as their own class: refused.
        if isinstance(value, plain_type):
            return plain_type(value)
    if isinstance(value, (bytes, torch.Tensor)) and not json_like:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f'{where}: key {key!r} is neither str nor int')
            out[key] = _plain(item, f'{where}[{key!r}]', json_like)
        return out
    if isinstance(value, tuple) and not json_like:
        return tuple(_plain(item, f'{where}[{i}]') for i, item in enumerate(value))
    if isinstance(value, (list, tuple)):
        return [_plain(item, f'{where}[{i}]', json_like) for i, item in enumerate(value)]
    raise TypeError(f'{where}: a {type(value).__name__} cannot be loaded back with '
                    f'weights_only=True; store it as tensors or plain values')


def save_checkpoint(path, model: nn.Module, *, optimizer=None, scheduler=None, scaler=None,
                    step: int = 0, best_miou: float | None = None, num_classes: int,
                    settings=None, extra: Mapping | None = None) -> None:
    """Write the checkpoint atomically; `extra` adds top-level items such as RNG states."""
    payload = {
        'model': model.state_dict(),
        'optimizer': None if optimizer is None else optimizer.state_dict(),
        'lr_scheduler': None if scheduler is None else _plain(scheduler.state_dict(),
                                                              'lr_scheduler'),
        'scaler': None if scaler is None else scaler.state_dict(),
        'step': int(step),
        'best_miou': None if best_miou is None else float(best_miou),
        'num_classes': int(num_classes),
        'settings': None if settings is None else _plain(settings, 'settings', json_like=True),
        'format': FORMAT,
    }
    for key, value in (extra or {}).items():
        if key in _RESERVED_KEYS:
            raise ValueError(f'extra item {key!r} would overwrite a checkpoint field')
        payload[key] = _plain(value, f'extra[{key!r}]')

    if not state_dict_finite(payload['model']):
        raise TrainingDiverged(f'{path}: the network holds NaN or infinite values; not saved '
                               f'(a checkpoint never holds a diverged network)')
    # fsync before the rename and of the folder after it: after a power cut the name holds
    # either the previous checkpoint or this one, never an empty file.
    with guarded_write(path, 'checkpoint'), atomic_path(path, durable=True) as temporary:
        with open(temporary, 'wb') as file:
            try:
                torch.save(payload, file)
            except RuntimeError as error:
                # torch's zip writer reports a failed write (full disk, file size limit) as a
                # RuntimeError about the file position; it is still a failed write.
                raise OSError(write_problem(path), str(error)) from None


def write_problem(path):
    """errno for a write that failed without one: disk full, or the file size limit."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return errno.EFBIG
    if shutil.disk_usage(Path(path).parent).free < 64 * 2 ** 20:
        return errno.ENOSPC
    return errno.EIO


def state_dict_finite(state):
    return all_finite(state.values())


def _plain_text(text: str) -> str:
    """`text` on one line without terminal escape codes: torch's messages carry some (bold
    advice), which a terminal would interpret and a log file would show as garbage."""
    return ' '.join(_ANSI_ESCAPE.sub('', text).split())


def _one_line(error: BaseException, limit: int = 100) -> str:
    text = _plain_text(str(error))
    if len(text) > limit:
        text = text[:limit - 3] + '...'
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _names(keys, limit: int = _SHOWN_NAMES) -> str:
    keys = list(keys)
    shown = ', '.join(keys[:limit])
    return shown + (', ...' if len(keys) > limit else '')


def _is_state_dict(value) -> bool:
    return (isinstance(value, Mapping) and len(value) > 0
            and all(isinstance(k, str) for k in value)
            and all(isinstance(v, torch.Tensor) for v in value.values()))


def _head(path) -> bytes | None:
    """The first bytes of the file; None when it cannot be read."""
    try:
        with open(path, 'rb') as file:
            return file.read(_HEAD_BYTES)
    except OSError:
        return None


def _looks_like_text(head: bytes) -> bool:
    """UTF-8 without control characters other than whitespace: a note, a JSON file, an HTML
    error page or a git-lfs pointer saved under the checkpoint's name."""
    try:
        text = codecs.getincrementaldecoder('utf-8')().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in '\t\n\r\f' for char in text)


def _first_line(head: bytes, limit: int = 50) -> str:
    """The start of a text file, to recognise it by (an LFS pointer, a 404 page)."""
    line = head.decode('utf-8', errors='replace').strip().split('\n', 1)[0].strip()
    return line if len(line) <= limit else line[:limit - 3] + '...'


def _refused_global(error: BaseException) -> str | None:
    """The class or function the safe loader (weights_only=True) refused to call, if that is
    why the load failed: the file is readable but holds pickled Python objects."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    found = _REFUSED_GLOBAL.search(str(error))
    return found.group(1) if found else None


def _is_loaded_module_class(name: str) -> bool:
    """Whether `name` (module.Class) is an nn.Module class of a module already imported.

    Only modules already in sys.modules are looked at, so nothing named by the file is imported
    or run; a network class of another program is simply not recognised as one.
    """
    parts = name.split('.')
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get('.'.join(parts[:cut]))
        if module is None:
            continue
        value = module
        for attribute in parts[cut:]:
            value = getattr(value, attribute, None)
        return isinstance(value, type) and issubclass(value, nn.Module)
    return False


def _torch_reason(error: BaseException) -> str:
    """The part of torch's message that says what is wrong, without its advice on loading
    untrusted files (which does not apply) and without escape codes."""
    text = _ANSI_ESCAPE.sub('', str(error))
    marker = 'WeightsUnpickler error:'
    if marker in text:
        text = text.split(marker, 1)[1].split('Check the documentation', 1)[0]
    text = ' '.join(text.split()).split('. ', 1)[0]   # the rest is advice to torch's developers
    return f'{type(error).__name__}: {text[:97] + "..." if len(text) > 100 else text}'


def unreadable_torch_file(path, error: BaseException, expected: str = 'PyTorch file') -> str:
    """Why torch.load raised `error` on `path`, as the rest of a line `<path>: <reason>`.

    torch's own message answers another question (how to load a file one trusts) or none at all
    (a text file gives a KeyError), so the file is classified by its first bytes: torch writes
    a zip archive (or, formerly, a pickle); anything else is not a PyTorch file at all, whatever
    torch said. A readable file the safe loader refused holds pickled Python objects: a whole
    network saved with torch.save(model) is named as such, with what to save instead.
    """
    head = _head(path)
    if isinstance(error, OSError) or head is None:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        return f'cannot read ({reason})'
    refused = _refused_global(error)
    if refused is not None and head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        if _is_loaded_module_class(refused):
            return (f'holds a whole pickled network ({refused}) rather than a state dict: load '
                    f'it with the code that saved it and save model.state_dict() instead')
        return (f'holds pickled Python objects ({refused}) that the safe loader '
                f'(weights_only=True) refuses: save only tensors and plain values '
                f'(for a network, model.state_dict())')
    if head.startswith(_ZIP_MAGIC):
        return f'a truncated or damaged PyTorch file ({_torch_reason(error)})'
    if head.startswith(_PICKLE_MAGIC):
        return (f'a truncated or damaged PyTorch file, or a pickle not written by torch.save '
                f'({_torch_reason(error)})')
    if not head:
        return f'not a {expected} (it is empty)'
    if _looks_like_text(head):
        start = _first_line(head)
        return f"not a {expected} (it looks like text" + (f": '{start}')" if start else ')')
    return f'not a {expected} (binary data of another format)'


def load_torch_file(path, map_location='cpu', expected: str = 'PyTorch file'):
    """torch.load(path, weights_only=True), every failure an InputError naming the file and
    what it is (see `unreadable_torch_file`).

    A pickle of another protocol than torch's makes torch warn before it fails; the warning
    would be a second line on stderr about a file that is refused anyway, so it is silenced.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='Detected pickle protocol')
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # zip, pickle and OS errors: classified from the file itself
        raise InputError(f'{path}: {unreadable_torch_file(path, error, expected)}') from error


def load_checkpoint(path, num_classes: int | None = None, map_location='cpu') -> dict:
    """Read a checkpoint of ours, of the original program, or a bare state dict of our layout.

    The result always has 'model'; optional fields it lacks come back as None. With
    `num_classes`, a classifier trained for another class count is refused here, before any
    work, rather than as a shape error deep inside `load_state_dict`.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f'{path}: no such checkpoint file')
    if not path.is_file():
        raise InputError(f'{path}: not a file, expected a checkpoint')
    loaded = load_torch_file(path, map_location, expected='PyTorch checkpoint file')

    if not isinstance(loaded, Mapping):
        raise InputError(f'{path}: not a checkpoint: holds a {type(loaded).__name__}, '
                         f"expected a dict with a 'model' state dict")
    if 'model' not in loaded:
        if _is_state_dict(loaded) and all(k.startswith(_OUR_PREFIXES) for k in loaded):
            loaded = {'model': loaded}
        elif _is_state_dict(loaded) and any(k.startswith('layer5.') for k in loaded):
            raise InputError(f'{path}: an AdvSemiSeg DeepLabV2 file, not converted: '
                             f'run prepare_coco.sh {path} first')
        else:
            raise InputError(f"{path}: no 'model' entry (has {_names(map(str, loaded))}): "
                             f'not a DeepLabV2 checkpoint')
    checkpoint = dict(loaded)
    if not _is_state_dict(checkpoint['model']):
        raise InputError(f"{path}: its 'model' entry is not a state dict of tensors")
    file_format = checkpoint.get('format')
    if file_format is not None and file_format != FORMAT:
        raise InputError(f'{path}: checkpoint format {file_format!r} is not {FORMAT!r}: '
                         f'written by another version of this program?')
    for key in _OPTIONAL_KEYS:
        checkpoint.setdefault(key, None)

    classifier = checkpoint['model'].get(CLASSIFIER_KEY)
    if num_classes is not None and classifier is not None and classifier.ndim > 0 \
            and classifier.shape[0] != num_classes:
        raise InputError(f'{path}: checkpoint has {classifier.shape[0]} classes '
                         f'but the dataset needs {num_classes}')
    return checkpoint


def load_model_state(model: nn.Module, checkpoint: Mapping, path) -> None:
    """Strict load, explained: which keys or shapes disagree, in one line naming the file.

    `checkpoint` is what `load_checkpoint` returned (or a bare state dict).
    """
    state = checkpoint['model'] if 'model' in checkpoint else checkpoint
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f'{len(missing)} keys missing' + (f' ({_names(missing)})' if missing else ''),
                 f'{len(unexpected)} unexpected'
                 + (f' ({_names(unexpected)})' if unexpected else '')]
        raise InputError(f'{path}: {" and ".join(parts)}: '
                         f'not a DeepLabV2 checkpoint for this backbone?')
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        shown = '; '.join(f'{k} is {list(have)} in the file, {list(want)} in the model'
                          for k, have, want in wrong[:_SHOWN_NAMES])
        more = '; ...' if len(wrong) > _SHOWN_NAMES else ''
        raise InputError(f'{path}: {len(wrong)} tensors have the wrong shape ({shown}{more}): '
                         f'another class count or backbone?')
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InputError(f'{path}: cannot load into the model ({_one_line(error)})') from error


def check_classes(checkpoint, info, path):
    """A checkpoint that records its class names must have this dataset's (the count alone is
    checked by load_checkpoint): a network for other classes would load and score nonsense."""
    recorded = checkpoint.get('classes')
    if not recorded or list(recorded) == list(info.class_names):
        return
    differ = next(index for index, (have, want) in enumerate(zip(recorded, info.class_names)) if have != want)
    raise InputError(f'{path}: checkpoint was trained for the classes {", ".join(recorded)}, but '
                     f'{info.description or info.name} names {", ".join(info.class_names)} (class {differ}: '
                     f'{recorded[differ]!r} there, {info.class_names[differ]!r} here)')


def description_warning(checkpoint, info, path):
    """The warning for a checkpoint used under a description whose label encoding or input
    normalisation differs from the one it was trained under (utils/dataset_description.py,
    `dataset_meaning`), or None."""
    differences = meaning_differences(checkpoint.get('dataset_meaning'), info)
    if not differences:
        return None
    settings = checkpoint.get('settings') if isinstance(checkpoint.get('settings'), dict) else {}
    return meaning_warning(path, settings.get('dataset_description'), differences, info)


def recorded_setting(checkpoint, key):
    """What the run that wrote `checkpoint` used for `key`: its validation first (how its scores
    were measured), then its settings; None when neither records it."""
    for section in ('validation', 'settings'):
        values = checkpoint.get(section)
        if isinstance(values, dict) and values.get(key) is not None:
            return values[key]
    return None


def dataset_for_checkpoint(checkpoint, dataset=None):
    """(DatasetInfo, why it was chosen) for a program that is given a checkpoint: --dataset,
    else the description the checkpoint's run read (while that file is there), else the shipped
    dataset it records, else VOC."""
    if dataset:
        return get_dataset_info(dataset), f'--dataset {dataset}'
    settings = checkpoint.get('settings') if isinstance(checkpoint.get('settings'), dict) else {}
    description = settings.get('dataset_description')
    if description and Path(description).is_file():
        return get_dataset_info(description), 'the dataset the checkpoint was trained on'
    if recorded_setting(checkpoint, 'dataset') in SHIPPED:
        return get_dataset_info(recorded_setting(checkpoint, 'dataset')), 'the dataset the checkpoint was trained on'
    if description:
        return get_dataset_info('voc'), f'the default, voc: {description}, which it was trained on, is not there'
    return get_dataset_info('voc'), 'the default, voc'
