"""Where a run writes, how it logs, and which device and precision it runs at.

One `Experiment` per run names every output, so two experiments never write into each other's
files (the original shared `temp.pt` and one pseudo-label folder between runs).
"""
import json
from pathlib import Path

import torch
from tqdm import tqdm

from utils.errors import InputError, OutputError, RunError, one_line
from utils.files import FolderLock, atomic_path, guarded_write, remove_stale_temporaries
from utils.stopping import log_line


def write_json(path, data):
    """Write JSON atomically and durably: a reader never sees half a file, and after a power cut
    the name holds the old or the new content."""
    with guarded_write(path, 'JSON'), atomic_path(path, durable=True) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + '\n')


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


AUTOCAST_DTYPES = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def resolve_precision(precision, mixed_precision, device):
    """The precision a run computes in: 'fp32', 'fp16' or 'bf16'.

    --precision names it. --mixed-precision keeps the original's meaning: float16 autocast with
    loss scaling on CUDA; on a CPU, bfloat16 where the CPU computes it natively, else float32
    (emulated bfloat16 runs ten to a hundred times slower than float32; the log says so).
    bfloat16 has float32's range, so it needs no loss scaling (A100, H100 and H200 run it at
    float16's speed).
    """
    if precision is None:
        if not mixed_precision:
            return 'fp32'
        if device.type == 'cuda':
            return 'fp16'
        return 'bf16' if cpu_has_fast_bfloat16() else 'fp32'
    if mixed_precision and precision == 'fp32':
        raise InputError('--mixed-precision asks for float16/bfloat16 but --precision fp32 for float32: '
                         'give one of them')
    if precision == 'bf16' and device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        raise InputError(f'--precision bf16: {torch.cuda.get_device_name(device)} does not compute '
                         f'bfloat16; use --precision fp16')
    return precision


def cpu_has_fast_bfloat16():
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        try:
            flags = Path('/proc/cpuinfo').read_text()
        except OSError:
            return False
        return 'avx512_bf16' in flags or 'amx_bf16' in flags


def describe_precision(precision, mixed_precision=False, device=None):
    if precision == 'fp32':
        if mixed_precision:
            return 'full precision (float32): --mixed-precision asked, but this CPU has no native bfloat16'
        return 'full precision (float32)'
    name = str(AUTOCAST_DTYPES[precision]).replace('torch.', '')
    scaling = ', with loss scaling (GradScaler)' if precision == 'fp16' else ''
    return f'mixed precision: torch.autocast with {name}{scaling}{slow_on_this_device(precision, device)}'


def slow_on_this_device(precision, device):
    """What the log must say when the precision asked for is slower here than float32: a CPU
    has no fast float16 kernels (a training step took 6 to 26 times as long as in float32 where
    measured), nor bfloat16 ones unless it supports them natively; a run chosen for speed was
    slow in silence."""
    if device is None or device.type != 'cpu':
        return ''
    if precision == 'fp16':
        return (' (a CPU has no fast float16 kernels: 6 to 26 times slower than float32 where measured; '
                'use --precision fp32 on a CPU, fp16 on a GPU)')
    if precision == 'bf16' and not cpu_has_fast_bfloat16():
        return ' (this CPU emulates bfloat16: slow)'
    return ''


class Experiment:
    """The outputs of one run, named after --exp-name (spec section 10):

    <exp-name>.pt (best checkpoint, in the working folder as in the original), log.txt (one line
    per finished run), and logs/<exp-name>/ holding tensorboard events, settings.json, the run's
    log, results.json, the last-state checkpoint for --resume, the lock and, by default, pseudo
    labels. In a run of several processes only the main one (rank 0) writes any of these; the
    others print nothing either.
    """

    def __init__(self, name, base_dir='.', results_file=None, pseudo_label_dir=None, save_best=True,
                 is_main=True, stop=None):
        self.name = name
        self.stop = stop    # the run's StopRequest: told where run.log is once the run began, for an exit it forces
        self.base_dir = Path(base_dir)
        self.is_main = is_main
        self.log_dir = self.base_dir / 'logs' / name
        self.best_checkpoint = (self.base_dir / f'{name}.pt') if save_best else (self.log_dir / 'best-unsaved.pt')
        self.keep_best = save_best
        self.resume_checkpoint = self.log_dir / 'last.pt'
        self.results_file = Path(results_file) if results_file else self.log_dir / 'results.json'
        self.pseudo_label_dir = Path(pseudo_label_dir) if pseudo_label_dir else self.log_dir / 'pseudo_labels'
        self.summary_log = self.base_dir / 'log.txt'
        self.lock = FolderLock(self.log_dir / 'lock')
        self._writer = None
        self._pending_settings = None
        self._earlier_files = ()    # an earlier run's files this run replaces, until it takes the name over
        self.began = False          # its command line is in run.log: from then on, its ending is too

    def start(self):
        """Create the folder, take the experiment's lock (a second live run of the same name is
        refused), and remove what killed runs of it left half-written."""
        if not self.is_main:
            return
        with guarded_write(self.log_dir, 'folder'):
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire(f'experiment {self.name!r}')
        for folder, prefix in ((self.base_dir, f'{self.name}.pt.'), (self.log_dir, ''),
                               (self.pseudo_label_dir, '')):
            for path in remove_stale_temporaries(folder, prefix):
                self.log(f'removed {path}, left half-written by a killed run')

    @property
    def writer(self):
        """Tensorboard writer, made on first use so evaluation-only runs stay light."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.log_dir))
        return self._writer

    def log(self, message, echo=True):
        """Print (unless not `echo`) and keep in logs/<exp-name>/run.log (main process only)."""
        if not self.is_main:
            return
        if echo:
            tqdm.write(message)
        with guarded_write(self.log_dir / 'run.log', 'log'), open(self.log_dir / 'run.log', 'a') as file:
            file.write(log_line(message))

    def begin(self, command):
        """The run begins: its command line goes into run.log, and from now on its `ended:` line
        will too. A run refused before this (the name holds another run, a list is missing) was
        never this folder's run and leaves the log of the run there as it was."""
        self.log(command)
        self.began = True
        if self.stop is not None and self.is_main:
            self.stop.run_log = self.log_dir / 'run.log'

    def scalar(self, tag, value, step):
        if self.is_main:
            self.writer.add_scalar(tag, value, step)

    def replaces(self, paths):
        """Record the files an earlier run of this name left that this run replaces (--overwrite,
        or what is still the earlier run's when an --overwrite run is resumed): they stay as they
        are until this run takes the name over (`take_over_name`)."""
        self._earlier_files = tuple(Path(path) for path in paths)

    def save_settings(self, settings):
        """settings.json, now; but while an earlier run's files are in place (--overwrite), when
        this run takes the name over, so that settings.json never describes another run than the
        results, checkpoints and last.pt beside it, even when this one stops early. The dict is
        written as it is then (later additions, e.g. by --resume, included)."""
        if not self.is_main:
            return
        if self._earlier_files:
            self._pending_settings = settings
            return
        write_json(self.log_dir / 'settings.json', settings)

    def before_writing(self, path):
        """Called before this run writes its best checkpoint or last.pt. The best checkpoint is
        what results and settings describe, so its first write takes the name over; a last.pt
        only serves --resume and takes it over only when it replaces the earlier run's (so a run
        stopped before its first validation leaves the earlier run whole)."""
        path = Path(path)
        if path == self.resume_checkpoint and path not in self._earlier_files:
            return
        self.take_over_name(writing=path)

    def take_over_name(self, writing=None):
        """The one moment an --overwrite run's outputs replace the earlier run's: before its first
        write that replaces one of them, the earlier run's results and unfinished last.pt are
        removed (results first: a crash in between leaves no results, never two runs' files),
        then this run's settings.json is written. The earlier best checkpoint stays until this
        run saves its own (settings.json records its SHA-256: never taken for this run's best).
        `writing` (about to be replaced atomically) is left to its write. Once only."""
        if not self.is_main or not self._earlier_files:
            return
        removable = {self.results_file, self.log_dir / 'results.json', self.resume_checkpoint}
        for path in self._earlier_files:
            if path in removable and path != writing:
                with guarded_write(path, 'over the earlier run\'s file'):
                    path.unlink(missing_ok=True)
        self._earlier_files = ()
        if self._pending_settings is not None:
            write_json(self.log_dir / 'settings.json', self._pending_settings)
            self._pending_settings = None

    def save_results(self, results):
        if not self.is_main:
            return
        self.take_over_name(writing=self.results_file)
        write_json(self.results_file, results)

    def append_summary(self, best_miou):
        """The original's log.txt line: `<exp-name>: <best mIoU in percent>`."""
        if not self.is_main:
            return
        with guarded_write(self.summary_log, 'log'), open(self.summary_log, 'a') as file:
            file.write(f'{self.name}: {best_miou * 100:.2f}\n')

    def close(self, ending=None):
        """The run is over; `ending` is what ended it (None: it finished), see `end`."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.is_main and not self.keep_best and self.best_checkpoint.exists():
            self.best_checkpoint.unlink()
        self.end(ending)

    def end(self, ending=None):
        """Record how the run ended as the last line of run.log, then free the name.

        Only for a run that began (`begin`) and while this process holds the experiment's lock: a
        run refused because a live run holds the name, or because the name holds a finished one,
        never writes into that run's log. A log that cannot be written (a full disk) must not hide
        what ended the run, so that failure is left out.
        """
        if self.stop is not None:
            self.stop.run_log = None
        if self.lock.held and self.began:
            try:
                self.log(ending_line(ending), echo=False)
            except OutputError:
                pass
        self.lock.release()


def ending_line(ending):
    """run.log's last line: `ended: finished`, or how and why the run ended otherwise."""
    if ending is None:
        return 'ended: finished'
    if isinstance(ending, RunError):
        kind = {130: 'stopped', 2: 'refused'}.get(ending.exit_status, 'failed')
        return f'ended: {kind} (exit {ending.exit_status}): {one_line(ending)}'
    return f'ended: failed: {type(ending).__name__}: {one_line(ending)}'
