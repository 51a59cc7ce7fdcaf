"""Supervised training on the labeled share (state 2, spec section 6)."""
from utils.context import finish
from utils.losses import DynamicLoss
from utils.training import (EpochBatchSampler, StepBatch, TrainState, build_optimizer, build_scheduler,
                            device_batch, restore_state, train_loop)


def labeled_batches(loader, runtime, crop_size):
    """Step batches on the device from a loader of dataset items (no pseudo-labeled part)."""
    for batch in loader:
        images, labels, count = device_batch(batch, runtime, crop_size)
        yield StepBatch(images, labels, None, count)


def train_supervised(context, model, epochs, resume=None, phase='supervised', bar=None, batch_size=None,
                     val_every=None):
    """Train on the labeled list for `epochs`; the best checkpoint goes to the experiment's path.

    `bar` is the (mIoU, scores) to beat from the start, e.g. the experiment's stored best when a
    run is resumed (the better of it and last.pt's counts). `batch_size` and `val_every` default
    to --batch-size and --val-num-steps (state 1's warm-up uses the original's own). Returns the
    final TrainState, with the best and last validations' scores in state.extra.
    """
    args = context.args
    batch_size = batch_size or args.batch_size
    val_every = val_every or args.val_num_steps
    dataset = context.dataset(context.labeled_list, 'gt', 'train')
    total_steps = epochs * EpochBatchSampler(len(dataset), batch_size, 0).batches_per_epoch
    network, step_model = context.for_training(model)
    optimizer = build_optimizer(network, args.lr, args.weight_decay, fused=context.runtime.fused_optimizer)
    state = TrainState(network, optimizer, build_scheduler(optimizer, max(total_steps, 1)),
                       context.runtime.grad_scaler(), total_steps, extra={'phase': phase})
    if resume is not None:
        restore_state(state, resume)
    if bar is not None and bar[0] is not None and bar[0] > state.best_miou:
        state.best_miou, state.extra['best_scores'] = bar[0], bar[1]
    hooks = context.loop_hooks(network, best_extra=lambda s: {'phase': phase})   # checks the val list
    context.experiment.log(f'{phase}: {len(dataset)} labeled images ({context.labeled_list}), '
                           f'{epochs} epochs = {total_steps} steps of batch {batch_size} over '
                           f'{context.runtime.world_size} process(es), lr {args.lr}, validation every '
                           f'{val_every} steps on {context.val_list}; {context.batch_norm_text()}'
                           + (f'; resumed at step {state.step}' if resume else ''))
    if total_steps == 0:
        return state
    sampler = EpochBatchSampler(len(dataset), batch_size, context.seed(1), start_batch=state.step,
                                num_batches=total_steps)
    train_loop(state, labeled_batches(context.batch_loader(dataset, sampler), context.runtime, context.crop_size),
               DynamicLoss(0.0), context.runtime, hooks, val_every=val_every, save_every=args.save_every,
               num_classes=context.info.num_classes, tag=phase, train_model=step_model, frozen_bn=args.frozen_bn)
    return state


def run_supervised(context):
    """State 2: from ImageNet (or --continue-from, e.g. the COCO weights) to the best checkpoint."""
    args = context.args
    resume = context.resume_checkpoint()
    model = context.build_model(initialise_backbone=not (args.continue_from or resume))
    if resume is not None:
        context.load_weights(model, context.experiment.resume_checkpoint, '--resume')
    elif args.continue_from:
        context.load_weights(model, args.continue_from)
    bar = context.best_so_far() if resume is not None else None
    state = train_supervised(context, model, args.init_epochs, resume=resume, bar=bar)
    best = state.best_miou if state.best_miou >= 0 else None
    if best is not None:
        context.experiment.log(f'best val mIoU {best * 100:.2f}'
                               + (f' -> {context.experiment.best_checkpoint}' if args.save else ''))
    last_scores = state.extra.get('last_scores', {})
    finish(context, best, {'state': 2, 'method': 'supervised', 'best_miou': best,
                           'best_scores': state.extra.get('best_scores', {}),
                           'last_miou': last_scores.get('miou'), 'last_scores': last_scores,
                           'steps': state.total_steps,
                           'checkpoint': str(context.experiment.best_checkpoint) if args.save else None})
