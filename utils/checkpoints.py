"""Saving and loading checkpoints so that a crash or a bad file costs a message, not a run.

Saves go to `<path>.<pid>.tmp` and are renamed over the target only once complete, so the best
checkpoint so far survives a crash, a full disk or a kill in the middle of writing. Loads use
`weights_only=True` (no code runs from a downloaded file) and turn each way a file can be wrong
into one `InputError` line naming the file, since `--continue-from` is user input.
"""
import argparse
import errno
import os
import resource
import shutil
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

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


def _one_line(error: BaseException, limit: int = 100) -> str:
    text = ' '.join(str(error).split())
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
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if 'weights only' in str(error).lower():
            raise InputError(f'{path}: holds Python objects other than tensors and plain values, '
                             f'refused by the safe loader (weights_only=True)') from error
        raise InputError(f'{path}: unreadable checkpoint, truncated or not a torch file '
                         f'({_one_line(error)})') from error
    except Exception as error:  # zip, pickle and OS errors all mean the same to the user
        raise InputError(f'{path}: unreadable checkpoint, truncated or not a torch file '
                         f'({_one_line(error)})') from error

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
