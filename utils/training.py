"""The loops: evaluation and the step-based training loop, for one process or several.

Training is counted in steps (poly lr is stepped every iteration, spec section 6). Batches come
from `EpochBatchSampler`, whose batches are a function of (seed, epoch) and whose samples carry
a seed of their own, a function of (seed, epoch, position): a run stopped at step s continues at
step s with the very batches and augmentations it would have seen, with any number of loader
workers and any number of processes.

Several processes split every global batch; the loss is normalised by the number of valid pixels
of the whole global batch, so the gradient is the one a single process computes on the same
batch. Once per step the ranks agree on whether to stop (a signal, a data error on any rank) and
on the loss, so a failure on one rank stops all of them with the same message instead of leaving
the others waiting in a collective.
"""
import contextlib
import math
import multiprocessing
import re
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from tqdm import tqdm

from utils import distributed
from utils.device import all_finite, batch_to_device, host_values, nonfinite_flag, to_host, valid_pixels
from utils.errors import InputError, Interrupted, RunError, TrainingDiverged
from utils.experiment import AUTOCAST_DTYPES
from utils.inference import Protocol, class_scores, upsample
from utils.metrics import ConfusionMatrix
from utils.stopping import StopRequest, stop_signals_blocked, worker_ignores_stops

MASK64 = (1 << 64) - 1


def sample_seed(seed, epoch, position):
    """A well-mixed 63-bit seed for one sample's augmentation (splitmix64 of the three numbers):
    torch seeds its generator from the low 32 bits, so nearby inputs must differ there too."""
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + position) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return (value ^ (value >> 31)) >> 1


class EpochBatchSampler(torch.utils.data.Sampler):
    """Global batches of a shuffled permutation, epoch after epoch, starting at any batch; each
    rank receives its contiguous part of every global batch, as (index, sample seed) pairs.

    Epoch e uses the permutation drawn from seed (seed, e); the last batch of an epoch may be
    short (the original kept it; the paper's split sizes avoid a batch of one). `num_batches`
    None means endless (the labeled stream that self-training cycles through).
    """

    def __init__(self, size, batch_size, seed, start_batch=0, num_batches=None):
        if size <= 0:
            raise ValueError('cannot sample batches from an empty dataset')
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.start_batch = start_batch
        self.num_batches = num_batches

    @property
    def batches_per_epoch(self):
        return math.ceil(self.size / self.batch_size)

    def epoch_order(self, epoch):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def global_batches(self):
        """(index, seed) lists of the whole batch, as every rank sees them."""
        batch = self.start_batch
        order, order_epoch = None, None
        while self.num_batches is None or batch < self.num_batches:
            epoch, position = divmod(batch, self.batches_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self.epoch_order(epoch), epoch
            start = position * self.batch_size
            yield [(index, sample_seed(self.seed, epoch, start + offset))
                   for offset, index in enumerate(order[start:start + self.batch_size])]
            batch += 1

    def __iter__(self):
        for batch in self.global_batches():
            yield distributed.split_batch(batch)

    def __len__(self):
        if self.num_batches is None:
            raise TypeError('an endless sampler has no length')
        return max(self.num_batches - self.start_batch, 0)


def make_loader(dataset, batch_sampler=None, batch_size=1, workers=0, device=None, persistent=False):
    """A DataLoader; with no batch sampler it goes once, in order, through this rank's share of
    the dataset (every world_size-th sample; no sample repeated, so sums count each once).

    Batches are pinned when the device is CUDA, so that their copy to the GPU is asynchronous.
    `persistent` keeps the worker processes between passes (validation goes through the same
    loader every few hundred steps; starting workers each time costs seconds).
    """
    options = dict(num_workers=workers, pin_memory=device is not None and device.type == 'cuda',
                   collate_fn=collate, persistent_workers=persistent and workers > 0,
                   worker_init_fn=worker_ignores_stops if workers > 0 else None)
    if batch_sampler is not None:
        return Loader(dataset, batch_sampler=batch_sampler, **options)
    return Loader(dataset, batch_size=batch_size, shuffle=False,
                  sampler=distributed.shard(range(len(dataset))), **options)


class Loader(torch.utils.data.DataLoader):
    """A DataLoader whose workers never act on a stop signal (utils/stopping.py): they start with
    SIGINT and SIGTERM blocked and set themselves up to ignore them, so Ctrl-C, which reaches the
    whole process group, neither prints their tracebacks nor makes the loader fail."""

    def __iter__(self):
        context = self.multiprocessing_context or multiprocessing
        with stop_signals_blocked(context.get_start_method() if self.num_workers else 'fork'):
            return super().__iter__()


def collate(items):
    """Stack a list of dataset items (dicts); an empty list (a rank's share of a short last
    batch) gives None. A labeled batch also carries its count of pixels that take part in the
    loss, counted here in the loader worker rather than by the training step."""
    if not items:
        return None
    batch = torch.utils.data.default_collate(items)
    if 'label' in batch:
        batch['valid_pixels'] = valid_pixels(batch['label'])
    return batch


def build_optimizer(model, lr, weight_decay, fused=False):
    """SGD, momentum 0.9 (spec section 6); one learning rate for the whole network.

    `fused` (on CUDA): one kernel updates every parameter, and with float16 loss scaling the
    GradScaler hands it the overflow flag on the device instead of reading it on the host.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, fused=fused or None)


def build_scheduler(optimizer, total_steps):
    """Poly decay lr * (1 - step / total) ** 0.9, stepped after every iteration."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_steps, power=0.9)


@dataclass
class Runtime:
    """How tensors are computed: device, autocast dtype (None = off), memory layout, loader
    workers, and this process's place among several (rank 0 of 1 in a plain run); and the stop
    request that every loop asks at its safe points (utils/stopping.py)."""
    device: torch.device
    amp_dtype: torch.dtype | None = None
    workers: int = 0
    rank: int = 0
    world_size: int = 1
    channels_last: bool = False
    stop: StopRequest = field(default_factory=StopRequest)

    @property
    def is_main(self):
        return self.rank == 0

    def stop_point(self):
        """A safe point between pieces of work that every rank reaches (start-up's boundaries): a
        stop requested on any rank ends the run here on all of them."""
        distributed.agree_on_errors(self.stop.error() if self.stop else None)

    @property
    def precision(self):
        return next(name for name, dtype in AUTOCAST_DTYPES.items() if dtype == self.amp_dtype)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self):
        """Loss scaling is needed for float16 only (bfloat16 has float32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    @property
    def fused_optimizer(self):
        return self.device.type == 'cuda'

    def forward(self, model, images):
        """The network's logits (at 1/8 of the input) under this run's autocast and layout."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return model(images)['out']

    def to_device(self, batch):
        return batch_to_device(batch, self.device)

    def parallel(self, model):
        """The model as the training step calls it: DDP across processes, else itself."""
        if self.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == 'cuda' else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


class StepBatch(NamedTuple):
    """What one training step consumes: images and labels on the device, samples
    [0, split_index) pseudo-labeled, and the host's count of labels != 255 (this rank's share of
    the loss denominator, known without reading anything back from the device)."""
    images: torch.Tensor
    labels: torch.Tensor
    split_index: int | None
    valid_pixels: int


def device_batch(batch, runtime, crop_size):
    """(images, labels, valid pixels) of a loader batch on the device; an empty share of a short
    last batch (None) becomes empty tensors, so that this rank still takes part in the step's
    gradient reduction."""
    if batch is None:
        height, width = crop_size
        return (torch.zeros(0, 3, height, width, device=runtime.device),
                torch.zeros(0, height, width, dtype=torch.uint8, device=runtime.device), 0)
    images, labels = runtime.to_device(batch)
    count = batch['valid_pixels'] if 'valid_pixels' in batch else valid_pixels(batch['label'])
    return images, labels, int(count)


def step_batch(images, labels, split_index=None):
    """A StepBatch from tensors already where they belong (tests, benchmarks)."""
    return StepBatch(images, labels, split_index, valid_pixels(to_host(labels)))


@torch.no_grad()
def evaluate(model, loader, num_classes, runtime, desc='evaluate', protocol=Protocol(),
             on_prediction=None):
    """The confusion matrix over every pixel whose label is not 255, summed over this rank's share
    and then over all ranks. Everything stays on the device: no per-image host sync.

    Every rank first takes rank 0's BatchNorm statistics, so that all ranks score the model rank
    0 saves (with per-process BatchNorm each rank's running statistics include its own batches).
    `on_prediction(batch, scores)` (optional, e.g. to save pictures) sees every batch's scores.
    """
    was_training = model.training
    model.eval()
    distributed.broadcast_buffers(model)
    confusion = ConfusionMatrix(num_classes, device=runtime.device)
    error = None
    try:
        for batch in runtime.stop.until_stopped(tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                                                     disable=None)):
            images, labels = runtime.to_device(batch)
            scores = class_scores(model, images, labels.shape[-2:], runtime, protocol)
            confusion.update(labels, scores.argmax(1), check=False)
            if on_prediction is not None:
                on_prediction(batch, scores)
    except RunError as failure:
        error = failure
    distributed.agree_on_errors(error)
    confusion.all_reduce()
    model.train(was_training)
    return confusion


@dataclass
class TrainState:
    """What a training phase carries from step to step, and what --resume restores."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    total_steps: int
    step: int = 0
    best_miou: float = -1.0
    extra: dict = field(default_factory=dict)   # phase, round, ... (saved with the state)

    def optimizer_parameters(self):
        return [p for group in self.optimizer.param_groups for p in group['params']]


def restore_state(state, checkpoint):
    """Load optimizer, scheduler, scaler, step and best mIoU from a last-state checkpoint."""
    state.optimizer.load_state_dict(checkpoint['optimizer'])
    state.scheduler.load_state_dict(checkpoint['lr_scheduler'])
    if checkpoint.get('scaler'):
        state.scaler.load_state_dict(checkpoint['scaler'])
    state.step = int(checkpoint['step'])
    state.best_miou = float(checkpoint['best_miou'])
    state.extra.update({key: value for key, value in checkpoint.get('train_state', {}).items()
                        if key != 'total_steps'})


@dataclass
class LoopHooks:
    """What the loop calls out to; keeps the loop free of experiment bookkeeping. Every hook is
    called on every rank (validation is collective; saving is the main rank's business)."""
    validate: object            # () -> ConfusionMatrix (reduced over ranks)
    on_best: object             # (state, scores) -> None, called when val mIoU beats the best
    on_validated: object        # (state, scores) -> None, after every validation
    save_last: object           # (state) -> path of the last-state checkpoint
    log: object                 # (message) -> None
    scalar: object              # (tag, value, global step) -> None


def model_tensors(model):
    return list(model.parameters()) + list(model.buffers())


def weights_finite(model):
    """False if any parameter or buffer holds a NaN or an infinity (one host sync)."""
    return all_finite(model_tensors(model))


def set_train_mode(model, frozen_bn=False):
    """Training mode; with `frozen_bn` the BatchNorm layers keep eval mode: they normalise with
    their stored statistics and do not update them (their scale and shift still train)."""
    model.train()
    if frozen_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


# float16 loss scaling skips a step whose gradients overflow and halves its scale; from 2^16, 30
# halvings leave a scale below 1e-4, so gradients that still overflow do not come from scaling.
SKIPPED_STEPS_LIMIT = 30

STATUS_OK, STATUS_STOP, STATUS_ERROR = 0, 1, 2


@dataclass
class Fetched:
    """The next step's batch as this rank fetched it, or why there is none."""
    batch: StepBatch | None = None
    status: int = STATUS_OK
    error: RunError | None = None

    @property
    def valid_pixels(self):
        return self.batch.valid_pixels if self.batch is not None else 0


def fetch(batches, stop):
    """The next batch (already on its way to the device), a stop request, or the data error that
    fetching raised (a broken file): all ranks learn of it at the step's one reduction before
    anything depends on it. A stop that comes while the batch is fetched (waiting for loader
    workers that are still starting) drops the batch: the step is not taken, and a resumed run
    fetches the same batch again; a loader error once a stop is requested is the stop."""
    if stop:
        return Fetched(status=STATUS_STOP)
    try:
        batch = next(batches)
    except InputError as error:
        return Fetched(status=STATUS_ERROR, error=error)
    except Exception:
        if stop:
            return Fetched(status=STATUS_STOP)
        raise
    return Fetched(status=STATUS_STOP) if stop else Fetched(batch=batch)


@dataclass
class StepReport:
    """The step's numbers summed over all ranks, read by the host at once."""
    loss_sum: float = 0.0
    gradients_nonfinite: bool = False
    weights_nonfinite: bool = False
    next_valid_pixels: int = 0
    stops: int = 0
    errors: int = 0


def agree_on_step(runtime, fetched, loss_sum=None, gradients_flag=None, weights_flag=None):
    """The one host sync of a training step.

    Everything the host must know about the step goes into one small vector on the device: this
    rank's loss sum, whether the gradients or the previous update's weights hold a NaN or an
    infinity, and what fetching the next batch gave (its valid-pixel count, a stop, an error).
    One sum over the ranks, one read. The values of the host (counts, statuses) enter through
    `torch.full`, a fill kernel, not a copy that would wait for the GPU.
    """
    def entry(value):
        if isinstance(value, torch.Tensor):
            return value.detach().to(torch.float64).reshape(())
        return torch.full((), float(value or 0), dtype=torch.float64, device=runtime.device)

    vector = torch.stack([entry(loss_sum), entry(gradients_flag), entry(weights_flag),
                          entry(fetched.valid_pixels), entry(fetched.status == STATUS_STOP),
                          entry(fetched.status == STATUS_ERROR)])
    loss, gradients, weights, count, stops, errors = host_values(distributed.sum_tensor(vector))
    return StepReport(loss, gradients > 0, weights > 0, int(count), int(stops), int(errors))


def train_loop(state, batches, loss_fn, runtime, hooks, *, val_every, save_every,
               num_classes, tag='train', step_offset=0, train_model=None, frozen_bn=False):
    """Run steps state.step .. total_steps-1 of one phase.

    `batches` yields StepBatch (device tensors; an empty one for an empty share). Validates every
    `val_every` steps and at the last step; saves the last state every `save_every` steps, on a
    stop request (runtime.stop, asked before each batch is fetched and between validation
    batches; then raises Interrupted) and before a data error ends the run.

    One host sync per step (`agree_on_step`), after the backward pass and before the update: the
    next batch is fetched and its copy started before it, so the GPU has work queued while the
    host waits. A non-finite loss, or non-finite gradients without float16 loss scaling, stop the
    run before the update; weights that an update made non-finite are found at the next step's
    sync (or before any validation or save), and no checkpoint is written from then on, so none
    ever holds a diverged network. Under float16 a step whose gradients overflow is skipped by
    the GradScaler, logged, and SKIPPED_STEPS_LIMIT skips in a row stop the run.
    `train_model` is what computes the loss (DDP-wrapped when several processes train);
    state.model is the plain network.
    """
    model = state.model
    train_model = train_model or model
    stop = runtime.stop
    set_train_mode(train_model, frozen_bn)
    train_confusion = ConfusionMatrix(num_classes, device=runtime.device)
    train_confusion.matrix += torch.as_tensor(state.extra.pop('train_confusion', 0)).to(runtime.device)
    running = state.extra.pop('running_loss', [0.0, 0])
    skipped = Skips(state.extra.pop('skipped_steps', 0))
    progress = tqdm(total=state.total_steps, initial=state.step, desc=tag, dynamic_ncols=True,
                    disable=None if runtime.is_main else True)
    weights_flag = None   # set by each update, read at the next sync

    def check_weights():
        """Before a validation or a save: every rank learns whether any rank's weights (its own
        BatchNorm statistics included) broke at the last update."""
        nonlocal weights_flag
        if weights_flag is not None and host_values(distributed.sum_tensor(weights_flag)):
            raise weights_diverged(tag, state)
        weights_flag = None

    def save_last():
        check_weights()
        state.extra.update(train_confusion=to_host(train_confusion.matrix), running_loss=list(running),
                           skipped_steps=skipped.total)
        path = hooks.save_last(state)
        for key in ('train_confusion', 'running_loss', 'skipped_steps'):
            state.extra.pop(key)
        return path

    try:
        if state.extra.pop('validation_pending', False):
            check_weights()
            validate_now(state, hooks, train_confusion, tag, step_offset + state.step, save_last)
            set_train_mode(train_model, frozen_bn)
        fetched = fetch(batches, stop) if state.step < state.total_steps else Fetched()
        report = agree_on_step(runtime, fetched)
        while state.step < state.total_steps:
            if report.errors:
                save_last()   # the state after the last completed step is whole
                distributed.agree_on_errors(fetched.error)
            if report.stops:
                raise stopped(stop.signal_name, tag, state.step, save_last())
            batch, total_pixels = fetched.batch, report.next_valid_pixels
            loss_sum, logits = local_loss(train_model, batch, loss_fn, runtime)
            # DDP averages gradients over ranks, hence the factor: the sum over ranks of
            # d(loss_sum) / total_pixels, the single-process gradient of the global batch.
            loss = loss_sum * (runtime.world_size / max(total_pixels, 1))
            state.optimizer.zero_grad(set_to_none=True)
            state.scaler.scale(loss).backward()
            gradients_flag = nonfinite_flag([p.grad for p in state.optimizer_parameters()])
            last_step = state.step + 1 == state.total_steps
            fetched = Fetched() if last_step else fetch(batches, stop)
            report = agree_on_step(runtime, fetched, loss_sum, gradients_flag, weights_flag)
            if report.weights_nonfinite:
                raise weights_diverged(tag, state)
            loss_value = report.loss_sum / max(total_pixels, 1)
            if not math.isfinite(loss_value):
                raise TrainingDiverged(
                    f'{tag}: loss is {loss_value} at step {state.step + 1}; stopped before the '
                    f'update, the last good checkpoint is kept (lower --lr, or use --precision bf16 or fp32)')
            if report.gradients_nonfinite:
                if not state.scaler.is_enabled():
                    raise TrainingDiverged(
                        f'{tag}: the gradients are NaN or infinite at step {state.step + 1}; stopped '
                        f'before the update, the last good checkpoint is kept (lower --lr)')
                skipped.add(tag, state.step + 1, hooks.log)
            else:
                skipped.reset()
            state.scaler.step(state.optimizer)
            state.scaler.update()
            weights_flag = nonfinite_flag(model_tensors(model))
            lr = state.optimizer.param_groups[0]['lr']
            with warnings.catch_warnings():
                # A step the GradScaler skipped still advances the schedule (as the original's
                # did); torch warns about that when it happens before the first update.
                warnings.filterwarnings('ignore', message=re.escape('Detected call of `lr_scheduler.step()` before'))
                state.scheduler.step()
            state.step += 1
            progress.update(1)
            progress.set_postfix(loss=f'{loss_value:.4f}', lr=f'{lr:.2e}')
            # Train scores on the labeled part of the batch only (pseudo labels are not truth).
            labeled_from = batch.split_index or 0
            train_confusion.update(batch.labels[labeled_from:], logits[labeled_from:].detach().argmax(1),
                                   check=False)
            running[0] += loss_value
            running[1] += 1
            global_step = step_offset + state.step
            if state.step % 10 == 0 or state.step == state.total_steps:
                hooks.scalar(f'{tag}/loss', running[0] / running[1], global_step)
                hooks.scalar(f'{tag}/lr', lr, global_step)
                if skipped.total:
                    hooks.scalar(f'{tag}/skipped_steps', skipped.total, global_step)
                running[0], running[1] = 0.0, 0

            if state.step % val_every == 0 or state.step == state.total_steps:
                check_weights()
                validate_now(state, hooks, train_confusion, tag, global_step, save_last)
                set_train_mode(train_model, frozen_bn)
            if save_every and state.step % save_every == 0:
                save_last()
        check_weights()
    finally:
        progress.close()
    return state


class Skips:
    """Steps the float16 GradScaler skipped: each is logged; too many in a row end the run."""

    def __init__(self, total=0):
        self.total = int(total)
        self.in_a_row = 0

    def add(self, tag, step, log):
        self.total += 1
        self.in_a_row += 1
        log(f'{tag} step {step}: float16 gradients overflowed; the GradScaler skipped the update and '
            f'lowered its loss scale ({self.in_a_row} in a row, {self.total} in all)')
        if self.in_a_row >= SKIPPED_STEPS_LIMIT:
            raise TrainingDiverged(
                f'{tag}: float16 gradients overflowed at {self.in_a_row} steps in a row (to step {step}), '
                f'so the network no longer trains in float16; the last good checkpoint is kept '
                f'(use --precision bf16 or fp32, or lower --lr)')

    def reset(self):
        self.in_a_row = 0


def stopped(signal_name, tag, step, path, during=''):
    """The one line of a training phase that stopped after saving its state."""
    return Interrupted(f'{signal_name or "a stop request"} at step {step} of {tag}{during}: state saved to {path}; '
                       f'continue with the same command and --resume')


def weights_diverged(tag, state):
    return TrainingDiverged(
        f'{tag}: the weights became NaN or infinite at step {state.step} (learning rate '
        f'{state.optimizer.param_groups[0]["lr"]}); no checkpoint holds them, the last good one is kept')


def local_loss(train_model, batch, loss_fn, runtime):
    """This rank's loss sum and the logits at the label size (an empty share gives a zero sum
    that still takes part in the gradient reduction)."""
    logits = upsample(runtime.forward(train_model, batch.images).float(), batch.labels.shape[-2:])
    loss_sum, _ = loss_fn.sum_and_count(logits, batch.labels, batch.split_index)
    return loss_sum, logits


def validate_now(state, hooks, train_confusion, tag, global_step, save_last):
    train_confusion.all_reduce()
    train_scores = train_confusion.compute()
    train_confusion.reset()
    try:
        scores = hooks.validate().compute()
    except InputError:
        # A file broken mid-run; the step was completed: the state is whole. The resumed run
        # validates this step first, so that its model still competes for the best checkpoint.
        state.extra['validation_pending'] = True
        save_last()
        raise
    except Interrupted as stop:
        # A stop between validation batches: the same, the run ends after the save.
        state.extra['validation_pending'] = True
        raise stopped(getattr(stop, 'signal_name', None), tag, state.step, save_last(),
                      ' (during its validation, done first when resumed)') from None
    for name, value in (('pixel_accuracy', scores.pixel_accuracy), ('miou', scores.miou)):
        hooks.scalar(f'val/{name}', value, global_step)
    if not math.isnan(train_scores.miou):
        hooks.scalar('train/pixel_accuracy', train_scores.pixel_accuracy, global_step)
        hooks.scalar('train/miou', train_scores.miou, global_step)
    improved = scores.miou > state.best_miou
    hooks.log(f'{tag} step {state.step}/{state.total_steps}: val mIoU {scores.miou * 100:.2f} '
              f'pixel acc {scores.pixel_accuracy * 100:.2f}'
              f'{" (best so far)" if improved else f" (best {state.best_miou * 100:.2f})"}')
    hooks.on_validated(state, scores)
    if improved:
        state.best_miou = scores.miou
        hooks.on_best(state, scores)
