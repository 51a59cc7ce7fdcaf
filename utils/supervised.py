"""Supervised training on the labeled share (state 2, spec section 6)."""
from utils.context import finish
from utils.experiment import stop_on_signals
from utils.losses import DynamicLoss
from utils.training import (EpochBatchSampler, TrainState, build_optimizer, build_scheduler,
                            restore_state, train_loop)


def train_supervised(context, model, epochs, resume=None, phase='supervised'):
    """Train on the labeled list for `epochs`; the best checkpoint goes to the experiment's path.

    Returns the final TrainState (best mIoU and the best validation's scores in state.extra).
    """
    args = context.args
    dataset = context.dataset(context.labeled_list, 'gt', 'train')
    batches_per_epoch = EpochBatchSampler(len(dataset), args.batch_size, 0).batches_per_epoch
    total_steps = epochs * batches_per_epoch
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    state = TrainState(model, optimizer, build_scheduler(optimizer, max(total_steps, 1)),
                       context.runtime.grad_scaler(), total_steps, extra={'phase': phase})
    if resume is not None:
        restore_state(state, resume)
    context.experiment.log(f'{phase}: {len(dataset)} labeled images ({context.labeled_list}), '
                           f'{epochs} epochs = {total_steps} steps of batch {args.batch_size}, '
                           f'lr {args.lr}, validation every {args.val_num_steps} steps on '
                           f'{context.val_list}' + (f'; resumed at step {state.step}' if resume else ''))
    if total_steps == 0:
        return state
    sampler = EpochBatchSampler(len(dataset), args.batch_size, context.seed(1), start_batch=state.step,
                                num_batches=total_steps)
    batches = ((images, labels, None) for images, labels in context.batch_loader(dataset, sampler))
    hooks = context.loop_hooks(model, best_extra=lambda s: {'phase': phase})
    with stop_on_signals() as stop:
        train_loop(state, batches, DynamicLoss(0.0), context.runtime, hooks,
                   val_every=args.val_num_steps, save_every=args.save_every, stop=stop,
                   num_classes=context.info.num_classes, tag=phase)
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
    state = train_supervised(context, model, args.init_epochs, resume=resume)
    best = state.best_miou if state.best_miou >= 0 else None
    if best is not None:
        context.experiment.log(f'best val mIoU {best * 100:.2f}'
                               + (f' -> {context.experiment.best_checkpoint}' if args.save else ''))
    finish(context, best, {'state': 2, 'experiment': context.experiment.name, 'best_miou': best,
                           'best_scores': state.extra.get('best_scores', {}),
                           'steps': state.total_steps,
                           'checkpoint': str(context.experiment.best_checkpoint) if args.save else None})
