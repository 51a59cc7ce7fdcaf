"""The loops: evaluation, the step-based training loop, and supervised training (state 2).

Training is counted in steps (poly lr is stepped every iteration, spec section 6) and batches come
from `EpochBatchSampler`, whose order is a function of (seed, epoch), so a run stopped at step s
continues at step s with the very batches it would have seen.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.checkpoints import save_checkpoint
from utils.errors import Interrupted, TrainingDiverged
from utils.metrics import ConfusionMatrix


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of a shuffled permutation, epoch after epoch, starting at any batch.

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
        return torch.randperm(self.size, generator=generator)

    def __iter__(self):
        batch = self.start_batch
        order, order_epoch = None, None
        while self.num_batches is None or batch < self.num_batches:
            epoch, position = divmod(batch, self.batches_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self.epoch_order(epoch), epoch
            yield order[position * self.batch_size:(position + 1) * self.batch_size].tolist()
            batch += 1

    def __len__(self):
        if self.num_batches is None:
            raise TypeError('an endless sampler has no length')
        return max(self.num_batches - self.start_batch, 0)


def make_loader(dataset, batch_sampler=None, batch_size=1, workers=0, device=None):
    """A DataLoader; with no batch sampler it goes through the dataset once, in order."""
    pin = device is not None and device.type == 'cuda'
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                                           pin_memory=pin, persistent_workers=False)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       num_workers=workers, pin_memory=pin)


def build_optimizer(model, lr, weight_decay):
    """SGD, momentum 0.9 (spec section 6); one learning rate for the whole network."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def build_scheduler(optimizer, total_steps):
    """Poly decay lr * (1 - step / total) ** 0.9, stepped after every iteration."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_steps, power=0.9)


def upsample(logits, size):
    """Logits at 1/8 to the label size: bilinear, align_corners=True (spec section 4)."""
    return F.interpolate(logits, size=tuple(size), mode='bilinear', align_corners=True)


@dataclass
class Runtime:
    """How tensors are computed: device, autocast dtype (None = off), loader workers."""
    device: torch.device
    amp_dtype: torch.dtype | None = None
    workers: int = 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def grad_scaler(self):
        """Loss scaling is needed for float16 only (bfloat16 has float32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)


@torch.no_grad()
def evaluate(model, loader, num_classes, runtime, desc='evaluate'):
    """Single scale, no flip: the confusion matrix over every pixel whose label is not 255."""
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(num_classes, device=runtime.device)
    for images, labels in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        images = images.to(runtime.device, non_blocking=True)
        labels = labels.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(images)['out']
        predictions = upsample(logits.float(), labels.shape[-2:]).argmax(1)
        confusion.update(labels, predictions)
    model.train(was_training)
    return confusion.compute()


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


def rng_state():
    state = {'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    if not state:
        return
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_state(path, state, num_classes, settings):
    """The last-state checkpoint that --resume continues from."""
    save_checkpoint(path, state.model, optimizer=state.optimizer, scheduler=state.scheduler,
                    scaler=state.scaler, step=state.step, best_miou=state.best_miou,
                    num_classes=num_classes, settings=settings,
                    extra={'train_state': dict(state.extra, total_steps=state.total_steps),
                           'rng': rng_state()})


def restore_state(state, checkpoint):
    """Load optimizer, scheduler, scaler, step, best mIoU and RNG from a last-state checkpoint."""
    state.optimizer.load_state_dict(checkpoint['optimizer'])
    state.scheduler.load_state_dict(checkpoint['lr_scheduler'])
    if checkpoint.get('scaler'):
        state.scaler.load_state_dict(checkpoint['scaler'])
    state.step = int(checkpoint['step'])
    state.best_miou = float(checkpoint['best_miou'])
    state.extra.update({key: value for key, value in checkpoint.get('train_state', {}).items()
                        if key != 'total_steps'})
    restore_rng_state(checkpoint.get('rng'))


@dataclass
class LoopHooks:
    """What the loop calls out to; keeps the loop free of experiment bookkeeping."""
    validate: object            # () -> SegmentationScores
    on_best: object             # (state, scores) -> None, called when val mIoU beats the best
    save_last: object           # (state) -> path of the last-state checkpoint
    log: object                 # (message) -> None
    scalar: object              # (tag, value, global step) -> None


def train_loop(state, batches, loss_fn, runtime, hooks, *, val_every, save_every, stop,
               num_classes, tag='train', step_offset=0):
    """Run steps state.step .. total_steps-1 of one phase.

    `batches` yields (images, labels, split_index); samples [0, split_index) are pseudo-labeled.
    Validates every `val_every` steps and at the last step; saves the last state every
    `save_every` steps and when a stop is requested (then raises Interrupted). A non-finite loss
    stops before the update, so no checkpoint ever holds a diverged network.
    """
    model = state.model
    model.train()
    train_confusion = ConfusionMatrix(num_classes, device=runtime.device)
    running_loss, running_count = 0.0, 0
    progress = tqdm(total=state.total_steps, initial=state.step, desc=tag, dynamic_ncols=True, disable=None)
    try:
        while state.step < state.total_steps:
            try:
                images, labels, split_index = next(batches)
            except Exception:
                # Ctrl-C reaches loader workers too, which then die mid-fetch; the step was not
                # taken, so the state is still whole: save it rather than lose the run.
                if stop:
                    stop_now(state, hooks, stop, tag)
                raise
            images = images.to(runtime.device, non_blocking=True)
            labels = labels.to(runtime.device, non_blocking=True)
            with runtime.autocast():
                logits = model(images)['out']
            logits = upsample(logits.float(), labels.shape[-2:])
            loss = loss_fn(logits, labels, split_index)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingDiverged(
                    f'{tag}: loss is {loss_value} at step {state.step + 1}; stopped before the '
                    f'update, the last good checkpoint is kept (lower --lr or drop --mixed-precision)')
            state.optimizer.zero_grad(set_to_none=True)
            state.scaler.scale(loss).backward()
            state.scaler.step(state.optimizer)
            state.scaler.update()
            lr = state.optimizer.param_groups[0]['lr']
            state.scheduler.step()
            state.step += 1
            progress.update(1)
            progress.set_postfix(loss=f'{loss_value:.4f}', lr=f'{lr:.2e}')
            # Train scores on the labeled part of the batch only (pseudo labels are not truth).
            labeled_from = split_index or 0
            train_confusion.update(labels[labeled_from:], logits[labeled_from:].detach().argmax(1))
            running_loss += loss_value
            running_count += 1
            global_step = step_offset + state.step
            if state.step % 10 == 0 or state.step == state.total_steps:
                hooks.scalar(f'{tag}/loss', running_loss / running_count, global_step)
                hooks.scalar(f'{tag}/lr', lr, global_step)
                running_loss, running_count = 0.0, 0

            if state.step % val_every == 0 or state.step == state.total_steps:
                train_scores = train_confusion.compute()
                train_confusion.reset()
                scores = hooks.validate()
                model.train()
                for name, value in (('pixel_accuracy', scores.pixel_accuracy), ('miou', scores.miou)):
                    hooks.scalar(f'val/{name}', value, global_step)
                if not math.isnan(train_scores.miou):
                    hooks.scalar('train/pixel_accuracy', train_scores.pixel_accuracy, global_step)
                    hooks.scalar('train/miou', train_scores.miou, global_step)
                improved = scores.miou > state.best_miou
                hooks.log(f'{tag} step {state.step}/{state.total_steps}: val mIoU {scores.miou * 100:.2f} '
                          f'pixel acc {scores.pixel_accuracy * 100:.2f}'
                          f'{" (best so far)" if improved else f" (best {state.best_miou * 100:.2f})"}')
                if improved:
                    state.best_miou = scores.miou
                    hooks.on_best(state, scores)

            if stop:
                stop_now(state, hooks, stop, tag)
            if save_every and state.step % save_every == 0:
                hooks.save_last(state)
    finally:
        progress.close()
    return state


def stop_now(state, hooks, stop, tag):
    path = hooks.save_last(state)
    raise Interrupted(f'{stop.signal_name} at step {state.step} of {tag}: state saved to {path}; '
                      f'continue with the same command and --resume')
