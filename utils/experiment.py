"""Where a run writes, how it logs, and which device and precision it runs at.

One `Experiment` per run names every output, so two experiments never write into each other's
files (the original shared `temp.pt` and one pseudo-label folder between runs).
"""
import json
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from utils.errors import InputError
from utils.files import atomic_path, write_failure


def write_json(path, data):
    """Write JSON atomically: a reader never sees half a file."""
    try:
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + '\n')
    except OSError as error:
        raise InputError(f'{path}: cannot write ({write_failure(error)})') from None


def choose_device(name=None):
    """--device, else CUDA when present, else CPU."""
    if name is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f'--device: {name!r} is not a device (try cpu or cuda)') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise InputError(f'--device: {name} asked for but CUDA is not available here')
    return device


def autocast_dtype(mixed_precision, device):
    """float16 on CUDA (with a GradScaler), bfloat16 on CPU (no scaler needed), or None (off)."""
    if not mixed_precision:
        return None
    return torch.float16 if device.type == 'cuda' else torch.bfloat16


def describe_precision(dtype):
    if dtype is None:
        return 'full precision (float32)'
    return f'mixed precision: torch.autocast with {str(dtype).replace("torch.", "")}'


class Experiment:
    """The outputs of one run, named after --exp-name (spec section 10):

    <exp-name>.pt (best checkpoint, in the working folder as in the original), log.txt (one line
    per finished run), and logs/<exp-name>/ holding tensorboard events, settings.json, the run's
    log, results.json, the last-state checkpoint for --resume and, by default, pseudo labels.
    """

    def __init__(self, name, base_dir='.', results_file=None, pseudo_label_dir=None, save_best=True):
        self.name = name
        self.base_dir = Path(base_dir)
        self.log_dir = self.base_dir / 'logs' / name
        self.best_checkpoint = (self.base_dir / f'{name}.pt') if save_best else (self.log_dir / 'best-unsaved.pt')
        self.keep_best = save_best
        self.resume_checkpoint = self.log_dir / 'last.pt'
        self.results_file = Path(results_file) if results_file else self.log_dir / 'results.json'
        self.pseudo_label_dir = Path(pseudo_label_dir) if pseudo_label_dir else self.log_dir / 'pseudo_labels'
        self.summary_log = self.base_dir / 'log.txt'
        self._writer = None
        self.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def writer(self):
        """Tensorboard writer, made on first use so evaluation-only runs stay light."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.log_dir))
        return self._writer

    def log(self, message):
        """Print and keep in logs/<exp-name>/run.log."""
        tqdm.write(message)
        with open(self.log_dir / 'run.log', 'a') as file:
            file.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")} {message}\n')

    def scalar(self, tag, value, step):
        self.writer.add_scalar(tag, value, step)

    def save_settings(self, settings):
        write_json(self.log_dir / 'settings.json', settings)

    def save_results(self, results):
        write_json(self.results_file, results)

    def append_summary(self, best_miou):
        """The original's log.txt line: `<exp-name>: <best mIoU in percent>`."""
        with open(self.summary_log, 'a') as file:
            file.write(f'{self.name}: {best_miou * 100:.2f}\n')

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self.keep_best and self.best_checkpoint.exists():
            self.best_checkpoint.unlink()


class StopRequest:
    """Set by SIGINT/SIGTERM; the training loop saves its last state and stops at the step's end."""

    def __init__(self):
        self.signal_name = None

    def __bool__(self):
        return self.signal_name is not None


@contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into a StopRequest for the duration of training (main thread only)."""
    request = StopRequest()
    if sys.platform == 'win32' or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request:  # a second signal means: stop now
            raise KeyboardInterrupt
        request.signal_name = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
