"""Dynamic self-training with the class-balanced curriculum (state 1, spec section 8).

Round i labels the unlabeled set at ratio init + i * delta with the best checkpoint so far, then
trains a fresh SGD on half pseudo-labeled, half labeled batches with the DST loss. The bar to beat
is the best validation mIoU so far; a round that does not beat it leaves the best checkpoint as
it was. One round can run as its own process (--iters 1 --init-label-ratio r), starting from the
previous round's checkpoint, whose stored mIoU is the bar (no re-evaluation needed).
"""
from pathlib import Path

import torch

from utils.cbc import check_pseudo_labels, file_sha256, generate_pseudo_labels
from utils.context import describe_checkpoint, finish, scores_summary
from utils.errors import InputError
from utils.experiment import stop_on_signals
from utils.losses import DynamicLoss
from utils.supervised import train_supervised
from utils.training import (EpochBatchSampler, TrainState, build_optimizer, build_scheduler,
                            restore_state, save_state, train_loop)


def round_ratios(init_ratio, delta, iters):
    """r_i = init + i * delta, computed exactly so (0.2 + 2 * 0.2 is 0.6000000000000001)."""
    return [init_ratio + i * delta for i in range(iters)]


def pseudo_and_labeled_batches(pseudo_loader, labeled_loader):
    """Pseudo-labeled samples first, then labeled: the loss weighs samples [0, split) by p^gamma."""
    labeled = iter(labeled_loader)
    for pseudo_images, pseudo_labels in pseudo_loader:
        images, labels = next(labeled)
        yield torch.cat([pseudo_images, images]), torch.cat([pseudo_labels, labels]), len(pseudo_images)


def starting_bar(context, checkpoint, validate):
    """The mIoU round one must beat: stored in the checkpoint when measured on our val set."""
    stored = context.stored_miou(checkpoint)
    if stored is not None:
        context.experiment.log(f'starting checkpoint: {describe_checkpoint(checkpoint)} on '
                               f'{context.val_list}, the bar to beat')
        return stored, checkpoint.get('best_scores') or {}
    context.experiment.log('starting checkpoint carries no mIoU for this validation set: evaluating it')
    scores = validate()
    context.experiment.log(f'starting checkpoint: val mIoU {scores.miou * 100:.2f}, the bar to beat')
    return scores.miou, scores_summary(scores, context.info)


def run_self_training(context):
    args = context.args
    experiment = context.experiment
    if len(args.st_epochs) < args.iters:
        raise InputError(f'--st-epochs gives {len(args.st_epochs)} values for --iters {args.iters}')
    if args.round is not None and args.round > args.iters:
        raise InputError(f'--round {args.round} is beyond --iters {args.iters}')
    first_round, end_round = (args.round - 1, args.round) if args.round else (0, args.iters)
    if args.batch_size < 2:
        raise InputError('--batch-size must be at least 2 (half pseudo-labeled, half labeled)')
    resume = context.resume_checkpoint()
    saved = resume.get('train_state', {}) if resume else {}

    labeled_set = context.dataset(context.labeled_list, 'gt', 'train')
    unlabeled_set = context.dataset(context.unlabeled_list, 'unlabeled', 'eval')
    model = context.build_model(initialise_backbone=False)

    if not args.continue_from:
        raise InputError('--continue-from is required for --state=1 (the supervised checkpoint)')
    start_path = Path(args.continue_from)
    start_checkpoint = context.load_weights(model, start_path)
    # Optional supervised warm-up (--init-epochs > 0), as the original's one-process form allows.
    if args.init_epochs > 0 and saved.get('phase', 'supervised') == 'supervised':
        if resume is not None:
            context.load_weights(model, experiment.resume_checkpoint, '--resume')
        warm = train_supervised(context, model, args.init_epochs, resume=resume, phase='supervised')
        resume, saved = None, {}
        if warm.best_miou >= 0:
            start_path = experiment.best_checkpoint
            start_checkpoint = context.load_weights(model, start_path)

    if saved:
        bar, best_scores = float(resume['best_miou']), saved.get('best_scores', {})
        source_path, improved = Path(saved['source_checkpoint']), saved['improved']
        start_path, first_round = Path(saved['start_checkpoint']), saved['round']
    else:
        bar, best_scores = starting_bar(context, start_checkpoint, context.validation(model))
        source_path, improved = start_path, False
    start_miou = saved.get('start_miou', bar)

    ratios = round_ratios(args.init_label_ratio, args.det_label_ratio, args.iters)
    batch_pseudo = args.batch_size // 2
    batch_labeled = args.batch_size - batch_pseudo
    pseudo_batches_per_epoch = EpochBatchSampler(len(unlabeled_set), batch_pseudo, 0).batches_per_epoch
    round_steps = [args.st_epochs[i] * pseudo_batches_per_epoch for i in range(args.iters)]
    rounds = saved.get('rounds', [])
    loss_fn = DynamicLoss(args.gamma)
    unlabeled_loader = context.eval_loader(unlabeled_set)
    experiment.log(f'self-training: rounds {first_round + 1}..{end_round} of {args.iters} at ratios '
                   f'{[round(r, 4) for r in ratios[first_round:end_round]]}, {len(unlabeled_set)} unlabeled '
                   f'+ {len(labeled_set)} labeled images, gamma {args.gamma}, '
                   f'steps {round_steps[first_round:end_round]}')

    for round_index in range(first_round, end_round):
        ratio = ratios[round_index]
        # A resume checkpoint at step 0 marks a round boundary: the round starts afresh.
        resuming_round = bool(saved) and round_index == first_round and resume['step'] > 0
        if resuming_round:
            # The labels of the interrupted round came from the checkpoint as it was then (the
            # file may since hold a better one): check them by the SHA-256 saved with the state.
            source_sha = saved['source_sha256']
            report = check_pseudo_labels(experiment.pseudo_label_dir, source_sha, ratio, unlabeled_set.names)
            experiment.log(f'round {round_index + 1}/{args.iters}: pseudo labels of the interrupted '
                           f'round checked and reused')
        else:
            source_sha = file_sha256(source_path)
            context.load_weights(model, source_path, 'best checkpoint so far')
            experiment.log(f'round {round_index + 1}/{args.iters}: ratio {ratio:.4g}, labeling with {source_path}')
            report = generate_pseudo_labels(
                model, unlabeled_set, unlabeled_loader, ratio=ratio,
                pseudo_label_dir=experiment.pseudo_label_dir, checkpoint_path=source_path,
                checkpoint_sha256=source_sha, experiment_name=experiment.name, runtime=context.runtime,
                memory_budget_mb=args.label_memory_mb, log=experiment.log)
            check_pseudo_labels(experiment.pseudo_label_dir, source_sha, ratio, unlabeled_set.names)
        global_step = sum(round_steps[:round_index])
        experiment.scalar('pseudo_labels/labeled_share', report['labeled_share'], global_step)
        if report.get('pseudo_label_miou') is not None:
            experiment.scalar('pseudo_labels/miou', report['pseudo_label_miou'], global_step)

        pseudo_set = context.dataset(context.unlabeled_list, 'pseudo', 'no_aug' if args.no_aug else 'train',
                                     pseudo_label_dir=experiment.pseudo_label_dir)
        optimizer = build_optimizer(model, args.st_lr, args.weight_decay)   # fresh momentum
        state = TrainState(model, optimizer, build_scheduler(optimizer, max(round_steps[round_index], 1)),
                           context.runtime.grad_scaler(), round_steps[round_index], best_miou=bar,
                           extra={'phase': 'self_training', 'round': round_index, 'start_miou': start_miou,
                                  'start_checkpoint': str(start_path), 'source_checkpoint': str(source_path),
                                  'source_sha256': source_sha, 'improved': improved,
                                  'best_scores': best_scores, 'rounds': rounds})
        if resuming_round:
            context.load_weights(model, experiment.resume_checkpoint, '--resume')
            restore_state(state, resume)
            experiment.log(f'round {round_index + 1}: resumed at step {state.step}')
        pseudo_sampler = EpochBatchSampler(len(pseudo_set), batch_pseudo, context.seed(10 + round_index),
                                           start_batch=state.step, num_batches=state.total_steps)
        labeled_sampler = EpochBatchSampler(len(labeled_set), batch_labeled, context.seed(100 + round_index),
                                            start_batch=state.step)
        batches = pseudo_and_labeled_batches(context.batch_loader(pseudo_set, pseudo_sampler),
                                             context.batch_loader(labeled_set, labeled_sampler))

        def best_extra(train_state, round_index=round_index, ratio=ratio):
            train_state.extra['improved'] = True
            return {'phase': 'self_training', 'round': round_index, 'ratio': ratio}

        hooks = context.loop_hooks(model, best_extra)
        with stop_on_signals() as stop:
            train_loop(state, batches, loss_fn, context.runtime, hooks, val_every=args.val_num_steps,
                       save_every=args.save_every, stop=stop, num_classes=context.info.num_classes,
                       tag=f'round{round_index + 1}', step_offset=global_step)
        bar, improved = state.best_miou, state.extra['improved']
        best_scores = state.extra['best_scores']
        if improved:
            source_path = experiment.best_checkpoint
        rounds = rounds + [{'round': round_index + 1, 'ratio': ratio, 'steps': state.total_steps,
                            'labeled_share': report['labeled_share'],
                            'pseudo_label_miou': report.get('pseudo_label_miou'),
                            'thresholds': report['thresholds'], 'best_miou_after': bar}]
        experiment.log(f'round {round_index + 1} done: best val mIoU so far {bar * 100:.2f}')
        if round_index + 1 < end_round:
            # Round boundary: a resume from here starts the next round from the best checkpoint.
            state.step = 0
            state.extra.update(round=round_index + 1, source_checkpoint=str(source_path), rounds=rounds,
                               best_scores=best_scores)
            save_state(experiment.resume_checkpoint, state, context.info.num_classes, context.settings)

    if not improved:
        # No round beat the start: the experiment's checkpoint is the start, so chains go on.
        experiment.log('no round beat the starting checkpoint; it is kept as the best')
        context.load_weights(model, start_path)
        context.save_best(model, 0, bar, extra={'phase': 'self_training', 'round': -1,
                                                'best_scores': best_scores})
    finish(context, bar, {'state': 1, 'experiment': experiment.name, 'best_miou': bar,
                          'start_miou': start_miou, 'best_scores': best_scores, 'rounds': rounds,
                          'checkpoint': str(experiment.best_checkpoint) if args.save else None,
                          'pseudo_label_dir': str(experiment.pseudo_label_dir)})
