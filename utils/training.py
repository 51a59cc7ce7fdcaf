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
import math
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from utils import distributed
from utils.errors import InputError, Interrupted, RunError, TrainingDiverged
from utils.inference import Protocol, class_scores, upsample
from utils.metrics import ConfusionMatrix

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


def make_loader(dataset, batch_sampler=None, batch_size=1, workers=0, device=None):
    """A DataLoader; with no batch sampler it goes once, in order, through this rank's share of
    the dataset (every world_size-th sample; no sample repeated, so sums count each once)."""
    pin = device is not None and device.type == 'cuda'
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                                           pin_memory=pin, collate_fn=collate)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       sampler=distributed.shard(range(len(dataset))),
                                       num_workers=workers, pin_memory=pin, collate_fn=collate)


def collate(items):
    """Stack a list of dataset items (dicts); an empty list (a rank's share of a short last
    batch) gives None."""
    if not items:
        return None
    return torch.utils.data.default_collate(items)


def build_optimizer(model, lr, weight_decay):
    """SGD, momentum 0.9 (spec section 6); one learning rate for the whole network."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def build_scheduler(optimizer, total_steps):
    """Poly decay lr * (1 - step / total) ** 0.9, stepped after every iteration."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_steps, power=0.9)


@dataclass
class Runtime:
    """How tensors are computed: device, autocast dtype (None = off), loader workers, and this
    process's place among several (rank 0 of 1 in a plain run)."""
    device: torch.device
    amp_dtype: torch.dtype | None = None
    workers: int = 0
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self):
        return self.rank == 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def grad_scaler(self):
        """Loss scaling is needed for float16 only (bfloat16 has float32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def parallel(self, model):
        """The model as the training step calls it: DDP across processes, else itself."""
        if self.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == 'cuda' else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def batch_tensors(batch, crop_size):
    """(images, labels) of a training batch; an empty share of a short last batch (None) becomes
    empty tensors, so that this rank still takes part in the step's gradient reduction."""
    if batch is None:
        height, width = crop_size
        return torch.zeros(0, 3, height, width), torch.zeros(0, height, width, dtype=torch.uint8)
    return batch['image'], batch['label']


def batch_to(batch, runtime):
    return (batch['image'].to(runtime.device, non_blocking=True),
            batch['label'].to(runtime.device, non_blocking=True))


@torch.no_grad()
def evaluate(model, loader, num_classes, runtime, desc='evaluate', protocol=Protocol(),
             on_prediction=None):
    """The confusion matrix over every pixel whose label is not 255, summed over this rank's share
    and then over all ranks. Everything stays on the device: no per-image host sync.

    `on_prediction(batch, scores)` (optional, e.g. to save pictures) sees every batch's scores.
    """
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(num_classes, device=runtime.device)
    error = None
    try:
        for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
            images, labels = batch_to(batch, runtime)
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


def weights_finite(model):
    """False if any parameter or buffer holds a NaN or an infinity: the largest absolute value
    over all of them (one fused reduction, one host sync) is then not finite."""
    tensors = [t.detach() for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    largest = torch.nn.utils.get_total_norm(tensors, norm_type=math.inf, foreach=True)
    return bool(torch.isfinite(largest))


def next_batch(batches, stop):
    """The next batch, or the error that fetching it raised (a data error, or a loader worker
    killed by Ctrl-C), to be agreed on by all ranks before anything else happens."""
    try:
        return next(batches), None
    except InputError as error:
        return None, error
    except Exception:
        if stop:   # Ctrl-C reached the loader workers too; the step was not taken
            return None, None
        raise


def set_train_mode(model, frozen_bn=False):
    """Training mode; with `frozen_bn` the BatchNorm layers keep eval mode: they normalise with
    their stored statistics and do not update them (their scale and shift still train)."""
    model.train()
    if frozen_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


def train_loop(state, batches, loss_fn, runtime, hooks, *, val_every, save_every, stop,
               num_classes, tag='train', step_offset=0, train_model=None, frozen_bn=False):
    """Run steps state.step .. total_steps-1 of one phase.

    `batches` yields (images, labels, split_index) for this rank (None for an empty share);
    samples [0, split_index) are pseudo-labeled. Validates every `val_every` steps and at the
    last step; saves the last state every `save_every` steps, on a stop request (then raises
    Interrupted) and before a data error ends the run. A non-finite loss stops before the
    update, non-finite weights right after it; no checkpoint is written from then on, so none
    ever holds a diverged network. `train_model` is what computes the loss (DDP-wrapped when
    several processes train); state.model is the plain network.
    """
    model = state.model
    train_model = train_model or model
    set_train_mode(train_model, frozen_bn)
    train_confusion = ConfusionMatrix(num_classes, device=runtime.device)
    train_confusion.matrix += torch.as_tensor(state.extra.pop('train_confusion', 0)).to(runtime.device)
    running = state.extra.pop('running_loss', [0.0, 0])
    progress = tqdm(total=state.total_steps, initial=state.step, desc=tag, dynamic_ncols=True,
                    disable=None if runtime.is_main else True)

    def save_last():
        state.extra.update(train_confusion=train_confusion.matrix.cpu(), running_loss=list(running))
        path = hooks.save_last(state)
        state.extra.pop('train_confusion'), state.extra.pop('running_loss')
        return path

    try:
        while state.step < state.total_steps:
            batch, error = next_batch(batches, stop)
            status = distributed.step_status(
                distributed.STATUS_ERROR if error is not None else
                distributed.STATUS_STOP if (stop or batch is None) else distributed.STATUS_OK)
            if status == distributed.STATUS_ERROR:
                save_last()   # the step was not taken: the state is whole
                distributed.agree_on_errors(error)
            if status == distributed.STATUS_STOP:
                path = save_last()
                raise Interrupted(f'{stop.signal_name or "a stop request"} at step {state.step} of {tag}: '
                                  f'state saved to {path}; continue with the same command and --resume')
            images, labels, split_index = batch
            loss_sum, pixel_count, logits = local_loss(train_model, images, labels, split_index,
                                                       loss_fn, runtime)
            total_loss, total_count = distributed.sum_numbers([float(loss_sum.detach()), float(pixel_count)])
            loss_value = total_loss / max(total_count, 1.0)
            if not math.isfinite(loss_value):
                raise TrainingDiverged(
                    f'{tag}: loss is {loss_value} at step {state.step + 1}; stopped before the '
                    f'update, the last good checkpoint is kept (lower --lr or drop --mixed-precision)')
            # DDP averages gradients over ranks, hence the factor: the sum over ranks of
            # d(loss_sum) / total_count, the single-process gradient of the global batch.
            loss = loss_sum * (runtime.world_size / max(total_count, 1.0))
            state.optimizer.zero_grad(set_to_none=True)
            state.scaler.scale(loss).backward()
            state.scaler.step(state.optimizer)
            state.scaler.update()
            if not weights_finite(model):
                raise TrainingDiverged(
                    f'{tag}: the weights became NaN or infinite at step {state.step + 1} (learning '
                    f'rate {state.optimizer.param_groups[0]["lr"]}); no checkpoint holds them, the '
                    f'last good one is kept')
            lr = state.optimizer.param_groups[0]['lr']
            state.scheduler.step()
            state.step += 1
            progress.update(1)
            progress.set_postfix(loss=f'{loss_value:.4f}', lr=f'{lr:.2e}')
            # Train scores on the labeled part of the batch only (pseudo labels are not truth).
            labeled_from = split_index or 0
            train_confusion.update(labels[labeled_from:], logits[labeled_from:].detach().argmax(1), check=False)
            running[0] += loss_value
            running[1] += 1
            global_step = step_offset + state.step
            if state.step % 10 == 0 or state.step == state.total_steps:
                hooks.scalar(f'{tag}/loss', running[0] / running[1], global_step)
                hooks.scalar(f'{tag}/lr', lr, global_step)
                running[0], running[1] = 0.0, 0

            if state.step % val_every == 0 or state.step == state.total_steps:
                validate_now(state, hooks, train_confusion, tag, global_step)
                set_train_mode(train_model, frozen_bn)
            if save_every and state.step % save_every == 0:
                save_last()
    finally:
        progress.close()
    return state


def local_loss(train_model, images, labels, split_index, loss_fn, runtime):
    """This rank's loss sum and valid-pixel count (an empty share gives zeros that still take
    part in the gradient reduction)."""
    with runtime.autocast():
        logits = train_model(images)['out']
    logits = upsample(logits.float(), labels.shape[-2:])
    loss_sum, pixel_count = loss_fn.sum_and_count(logits, labels, split_index)
    return loss_sum, pixel_count, logits


def validate_now(state, hooks, train_confusion, tag, global_step):
    train_confusion.all_reduce()
    train_scores = train_confusion.compute()
    train_confusion.reset()
    try:
        scores = hooks.validate().compute()
    except InputError:
        hooks.save_last(state)   # a file broken mid-run; the step was completed: the state is whole
        raise
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
