"""Dynamic self-training with the class-balanced curriculum (state 1, spec section 8).

Round i labels the unlabeled set at ratio init + i * delta with the best checkpoint so far, then
trains a fresh SGD on half pseudo-labeled, half labeled batches with the DST loss. The bar to beat
is the best validation mIoU so far; a round that does not beat it leaves the best checkpoint as
it was. One round can run as its own process (--round R), starting from the previous round's
checkpoint, whose stored mIoU is the bar (no re-evaluation needed).

What carries from round to round (and into last.pt for --resume) is one `Progress` record.
"""
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from utils.cbc import (check_pseudo_labels, claim_folder_once, file_sha256, generate_pseudo_labels,
                       missing_pseudo_labels, reusable_pseudo_labels)
from utils.context import changed_list, describe_checkpoint, finish, scores_summary
from utils.errors import InputError, Interrupted, StopRequested
from utils.losses import DynamicLoss
from utils.supervised import train_supervised
from utils.training import (EpochBatchSampler, StepBatch, TrainState, build_optimizer, build_scheduler,
                            device_batch, restore_state, train_loop)

# The original's supervised warm-up in state 1 validates every 1000 steps, whatever
# --val-num-steps says (that flag sets the rounds' interval), on batches of int(batch / 2).
WARM_UP_VALIDATION_STEPS = 1000


@dataclass
class Progress:
    """The self-training state between steps of the schedule."""
    round: int                   # 0-based round to run next, or running
    bar: float                   # best validation mIoU so far
    best_scores: dict
    start_miou: float            # of the starting checkpoint
    start_checkpoint: str
    source_checkpoint: str       # the best checkpoint so far: it labels the next round
    source_sha256: str = ''      # the labels of the running round came from this file content
    improved: bool = False       # has any round beaten the start?
    rounds: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, data):
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def round_ratios(init_ratio, delta, iters):
    """r_i = init + i * delta, computed exactly so (0.2 + 2 * 0.2 is 0.6000000000000001)."""
    return [init_ratio + i * delta for i in range(iters)]


def mixed_batches(pseudo_loader, labeled_loader, runtime, crop_size):
    """This rank's pseudo-labeled samples first, then its labeled ones: the loss weighs samples
    [0, split) by p^gamma. Every global batch is half pseudo-labeled, half labeled. Each half is
    copied to the device from its loader's pinned batch and the two are joined there."""
    labeled = iter(labeled_loader)
    for pseudo in pseudo_loader:
        pseudo_images, pseudo_labels, pseudo_count = device_batch(pseudo, runtime, crop_size)
        images, labels, count = device_batch(next(labeled), runtime, crop_size)
        yield StepBatch(torch.cat([pseudo_images, images]), torch.cat([pseudo_labels, labels]),
                        len(pseudo_images), pseudo_count + count)


def check_flags(args, world_size):
    if len(args.st_epochs) != args.iters:
        raise InputError(f'--st-epochs gives {len(args.st_epochs)} values for --iters {args.iters}: give one '
                         f'value per round')
    if args.round is not None and args.round > args.iters:
        raise InputError(f'--round {args.round} is beyond --iters {args.iters}')
    if args.batch_size < 2:
        raise InputError('--batch-size must be at least 2 (half pseudo-labeled, half labeled)')
    half = args.batch_size // 2
    if half % world_size or (args.batch_size - half) % world_size:
        raise InputError(f'--batch-size {args.batch_size}: its pseudo-labeled and labeled halves '
                         f'({half} and {args.batch_size - half}) must each divide over {world_size} processes')
    ratios = round_ratios(args.init_label_ratio, args.det_label_ratio, args.iters)
    if min(ratios) <= 0:
        raise InputError(f'--init-label-ratio {args.init_label_ratio} with --det-label-ratio '
                         f'{args.det_label_ratio} gives ratio {min(ratios):.4g}; every round needs a ratio > 0')
    return ratios


def check_starting_checkpoint(context, checkpoint, path, first_round, warm_up):
    """What --continue-from records of the run that wrote it (its settings' state) must fit the
    schedule: round R > 1 continues from round R-1's checkpoint, which a state 1 run of round R-1
    writes (a supervised checkpoint, or another round's, there skipped or repeated rounds in
    silence); a checkpoint that records nothing (converted weights, the original's) is taken as
    before. A trained checkpoint under the supervised warm-up (`warm_up`: --init-epochs > 0 before
    round 1) is taken too, with a warning in the log: round 1's bar becomes the warm-up's best, so
    the run can end below the score it started from."""
    args = context.args
    settings = checkpoint.get('settings') if isinstance(checkpoint.get('settings'), dict) else {}
    written_by = settings.get('state')
    if first_round > 0 and written_by is not None and written_by != 1:
        raise InputError(f'--round {args.round} continues from round {args.round - 1}\'s checkpoint (written by '
                         f'a state 1 run), but --continue-from {path} was written by a state {written_by} run; '
                         f'run round 1 first (--round 1 from it) and continue from its checkpoint')
    rounds_done = settings.get('round') or settings.get('iters')   # a run without --round ran them all
    if first_round > 0 and written_by == 1 and isinstance(rounds_done, int) and rounds_done != first_round:
        writer = (f'a --round {rounds_done} run' if settings.get('round')
                  else f'a run of all {rounds_done} rounds (no --round)')
        raise InputError(f'--round {args.round} continues from round {first_round}\'s checkpoint, but '
                         f'--continue-from {path} was written by {writer}; continue from the checkpoint of '
                         f'round {first_round}' + (f' (run --round {rounds_done + 1} next)'
                                                   if rounds_done < first_round else ''))
    if first_round > 0 and written_by == 1:
        check_same_chain(context, settings, path)
    trained = written_by in (1, 2) or checkpoint.get('best_miou') is not None
    if warm_up and trained:
        what = f'written by a state {written_by} run' if written_by in (1, 2) else 'it carries a validation mIoU'
        context.experiment.log(f'warning: --continue-from {path} is already trained ({what}), yet --init-epochs '
                               f'{args.init_epochs} first trains a supervised warm-up from it, whose best becomes '
                               f'the bar to beat: the run can end below the score it starts from; to self-train '
                               f'from a trained baseline pass --init-epochs 0, as the scripts do')


# What a chain of --round runs shares from round to round, and the flag that sets it.
CHAIN_SETTINGS = (('dataset_digest', '--dataset'), ('split', '--split'), ('sets_id', '--sets-id'))


def check_same_chain(context, recorded, path):
    """Round R continues the chain round R-1 ran: the same dataset description, split and set,
    and the same ids in the lists both read. Another one was accepted in silence, and its
    results.json counted (paper_table.py) as a chain that never ran; --resume refuses the same
    changes within one run."""
    args, now = context.args, context.settings
    previous = f'--round {args.round} continues the chain of --continue-from {path} (round {args.round - 1})'
    for key, flag in CHAIN_SETTINGS:
        if key not in recorded or recorded[key] == now.get(key):
            continue
        if key == 'dataset_digest':
            was = recorded.get('dataset_description') or recorded.get('dataset_name') or 'another description'
            raise InputError(f'{previous}, which ran on the dataset described by {was} as it was then; this run\'s '
                             f'{context.info.description or context.info.name} says otherwise; continue with the '
                             f'same description, or start a new chain at --round 1')
        raise InputError(f'{previous}, which ran with {flag} {recorded[key]}; this run has {flag} {now.get(key)}: '
                         f'continue with {flag} {recorded[key]}, or start a new chain at --round 1')
    changed = changed_list(recorded, now)
    if changed:
        raise InputError(f'{previous}, but the ids of {changed[1]["file"]} changed since that round read it; '
                         f'restore the list, or start a new chain at --round 1')


def starting_bar(context, checkpoint, validate):
    """The mIoU round one must beat: stored in the checkpoint when measured on our val set."""
    stored = context.stored_miou(checkpoint)
    if stored is not None:
        context.experiment.log(f'starting checkpoint: {describe_checkpoint(checkpoint)} on '
                               f'{context.val_list}, the bar to beat')
        return stored, checkpoint.get('best_scores') or {}
    context.experiment.log('starting checkpoint carries no mIoU for this validation set: evaluating it')
    scores = validate().compute()
    context.experiment.log(f'starting checkpoint: val mIoU {scores.miou * 100:.2f}, the bar to beat')
    return scores.miou, scores_summary(scores, context.info)


def label_round(context, model, unlabeled_set, progress, ratio, resuming):
    """The round's pseudo labels: made from the best checkpoint so far, or, when resuming inside
    the round, the labels it already made (checked by the SHA-256 saved with the state, since the
    best checkpoint file may have been overwritten since, and file by file). Labels deleted since
    are made again by the same checkpoint (see `labels_recoverable`)."""
    experiment = context.experiment
    if resuming:
        folder, names = experiment.pseudo_label_dir, unlabeled_set.names
        if reusable_pseudo_labels(folder, progress.source_sha256, ratio, names):
            report = check_pseudo_labels(folder, progress.source_sha256, ratio, names)
            experiment.log(f'round {progress.round + 1}: pseudo labels of the interrupted round checked and reused')
            return report
        experiment.log(f'round {progress.round + 1}: the pseudo labels of the interrupted round are not all '
                       f'there ({describe_missing(folder, names)}); labeling again with '
                       f'{progress.source_checkpoint}, which made them')
    source = Path(progress.source_checkpoint)
    progress.source_sha256 = file_sha256(source)
    context.load_weights(model, source, 'best checkpoint so far')
    experiment.log(f'round {progress.round + 1}/{context.args.iters}: ratio {ratio:.4g}, labeling with {source}')
    report = generate_pseudo_labels(
        model, unlabeled_set, context.eval_loader(unlabeled_set), ratio=ratio,
        pseudo_label_dir=experiment.pseudo_label_dir, checkpoint_path=source,
        checkpoint_sha256=progress.source_sha256, experiment_name=experiment.name, runtime=context.runtime,
        memory_budget_mb=context.args.label_memory_mb, log=experiment.log,
        cache_root=context.args.cache_dir or experiment.log_dir, threads=context.label_writers,
        protocol=context.default_protocol)
    check_pseudo_labels(experiment.pseudo_label_dir, progress.source_sha256, ratio, unlabeled_set.names)
    return report


def labels_recoverable(context, unlabeled_set, progress, ratio):
    """Can an interrupted round continue with its own labels? Yes if they are all there, or if
    the checkpoint that made them is unchanged (then they are made again, the same). Otherwise
    the round starts again from the best checkpoint so far (logged)."""
    experiment = context.experiment
    folder, names = experiment.pseudo_label_dir, unlabeled_set.names
    source = Path(progress.source_checkpoint)
    if (reusable_pseudo_labels(folder, progress.source_sha256, ratio, names)
            or (source.is_file() and file_sha256(source) == progress.source_sha256)):
        return True
    experiment.log(f'round {progress.round + 1}: the pseudo labels of the interrupted round are not all there '
                   f'({describe_missing(folder, names)}) and {source} has changed since it made them: the '
                   f'round starts again from the best checkpoint so far')
    return False


def describe_missing(folder, names):
    missing = missing_pseudo_labels(folder, names)
    if missing:
        return f'{len(missing)} missing, first {missing[0]}'
    return 'the folder is incomplete or was relabeled since'


def save_round_start(context, model, progress):
    """last.pt at the start of round `progress.round` (at a round boundary, or when a stop comes
    while the round labels): step 0, so --resume labels the round first; the optimizer is fresh,
    as every round's is. Returns its path."""
    args = context.args
    optimizer = build_optimizer(model, args.st_lr, args.weight_decay)
    state = TrainState(model, optimizer, build_scheduler(optimizer, 1), context.runtime.grad_scaler(), 0,
                       best_miou=progress.bar, extra={'phase': 'self_training', 'progress': asdict(progress)})
    return context.save_last(state)


def stopped_while_labeling(context, model, progress, resuming, stop):
    """A stop (SIGINT/SIGTERM) while a round labels: the round's start is saved, unless last.pt
    already holds a later point of this round, and the Interrupted to raise says how to go on."""
    path = context.experiment.resume_checkpoint if resuming else save_round_start(context, model, progress)
    name = stop.signal_name or 'a stop request'
    return Interrupted(f'{name} while labeling round {progress.round + 1}: state saved to {path}; continue '
                       f'with the same command and --resume (the labeling is done again)')


def train_round(context, model, labeled_set, progress, steps, global_step, resume):
    """One round's training: fresh SGD at --st-lr, poly decay over the round, half pseudo-labeled
    and half labeled batches, the DST loss. Returns the TrainState."""
    args = context.args
    round_index = progress.round
    pseudo_set = context.dataset(context.unlabeled_list, 'pseudo', 'no_aug' if args.no_aug else 'train',
                                 pseudo_label_dir=context.experiment.pseudo_label_dir)
    network, step_model = context.for_training(model)
    optimizer = build_optimizer(network, args.st_lr, args.weight_decay,   # fresh momentum
                                fused=context.runtime.fused_optimizer)
    state = TrainState(network, optimizer, build_scheduler(optimizer, max(steps, 1)),
                       context.runtime.grad_scaler(), steps, best_miou=progress.bar,
                       extra={'phase': 'self_training', 'progress': asdict(progress)})
    if resume is not None:
        context.load_weights(network, context.experiment.resume_checkpoint, '--resume')
        restore_state(state, resume)
        state.best_miou = max(state.best_miou, progress.bar)
        context.experiment.log(f'round {round_index + 1}: resumed at step {state.step}')
    batch_pseudo = args.batch_size // 2
    pseudo_sampler = EpochBatchSampler(len(pseudo_set), batch_pseudo, context.seed(10 + round_index),
                                       start_batch=state.step, num_batches=state.total_steps)
    labeled_sampler = EpochBatchSampler(len(labeled_set), args.batch_size - batch_pseudo,
                                        context.seed(100 + round_index), start_batch=state.step)
    batches = mixed_batches(context.batch_loader(pseudo_set, pseudo_sampler),
                            context.batch_loader(labeled_set, labeled_sampler), context.runtime, context.crop_size)

    def best_extra(train_state):
        train_state.extra['improved'] = True
        return {'phase': 'self_training', 'round': round_index, 'ratio': progress_ratio(context, round_index)}

    hooks = context.loop_hooks(network, best_extra)
    train_loop(state, batches, DynamicLoss(args.gamma), context.runtime, hooks,
               val_every=args.val_num_steps, save_every=args.save_every,
               num_classes=context.info.num_classes, tag=f'round{round_index + 1}',
               step_offset=global_step, train_model=step_model, frozen_bn=args.frozen_bn)
    return state


def progress_ratio(context, round_index):
    args = context.args
    return round_ratios(args.init_label_ratio, args.det_label_ratio, args.iters)[round_index]


def run_self_training(context):
    args = context.args
    experiment = context.experiment
    ratios = check_flags(args, context.runtime.world_size)
    first_round, end_round = (args.round - 1, args.round) if args.round else (0, args.iters)
    if not args.continue_from:
        raise InputError('--continue-from is required for --state=1 (the supervised checkpoint)')
    resume = context.resume_checkpoint()
    saved = (resume.get('train_state') or {}) if resume else {}
    if not saved.get('progress'):
        claim_folder_once(experiment.pseudo_label_dir, experiment.name)   # refused now, not after a round

    # Every list is checked before any work (a bad val label would otherwise surface after a round).
    labeled_set = context.dataset(context.labeled_list, 'gt', 'train')
    unlabeled_set = context.dataset(context.unlabeled_list, 'unlabeled', 'eval')
    context.dataset(context.val_list, 'gt', 'eval')
    model = context.build_model(initialise_backbone=False)
    start_path = Path(args.continue_from)
    start_checkpoint = context.load_weights(model, start_path)
    warm_up = args.init_epochs > 0 and first_round == 0 and saved.get('phase', 'supervised') == 'supervised'
    check_starting_checkpoint(context, start_checkpoint, start_path, first_round, warm_up)

    # The original's supervised warm-up (--init-epochs, 30 by default; the scripts pass 0 to start
    # from a trained baseline). It precedes round 1, so a --round R > 1 process has none.
    if args.init_epochs > 0 and first_round > 0:
        experiment.log(f'--round {args.round}: no supervised warm-up (--init-epochs {args.init_epochs} '
                       f'precedes round 1 only)')
    if warm_up:
        if resume is not None:
            context.load_weights(model, experiment.resume_checkpoint, '--resume')
        experiment.log(f'supervised warm-up of {args.init_epochs} epochs (--init-epochs), as the original: '
                       f'batches of {args.batch_size // 2} labeled images (half of --batch-size), validation '
                       f'every {WARM_UP_VALIDATION_STEPS} steps and at the last (not --val-num-steps, which '
                       f'is the rounds\'); its best checkpoint labels round 1')
        warm = train_supervised(context, model, args.init_epochs, resume=resume, phase='supervised',
                                bar=context.best_so_far() if resume is not None else None,
                                batch_size=args.batch_size // 2, val_every=WARM_UP_VALIDATION_STEPS)
        resume, saved = None, {}
        if warm.best_miou >= 0:
            start_path = experiment.best_checkpoint
            start_checkpoint = context.load_weights(model, start_path)

    if saved.get('progress'):
        progress = Progress.from_dict(saved['progress'])
        stored, stored_scores = context.best_so_far()
        if stored is not None and stored > progress.bar:
            # A round beat the bar after last.pt was saved: the best file holds it, and it
            # stays the best (a resume never lets the best checkpoint regress).
            progress.bar, progress.best_scores = stored, stored_scores
            progress.improved, progress.source_checkpoint = True, str(experiment.best_checkpoint)
    else:
        bar, scores = starting_bar(context, start_checkpoint, context.validation(model))
        progress = Progress(round=first_round, bar=bar, best_scores=scores, start_miou=bar,
                            start_checkpoint=str(start_path), source_checkpoint=str(start_path))

    pseudo_batches_per_epoch = EpochBatchSampler(len(unlabeled_set), args.batch_size // 2, 0).batches_per_epoch
    round_steps = [args.st_epochs[i] * pseudo_batches_per_epoch for i in range(args.iters)]
    experiment.log(f'self-training: rounds {progress.round + 1}..{end_round} of {args.iters} at ratios '
                   f'{[round(r, 4) for r in ratios[progress.round:end_round]]}, {len(unlabeled_set)} unlabeled '
                   f'+ {len(labeled_set)} labeled images, gamma {args.gamma}, '
                   f'steps {round_steps[progress.round:end_round]}; {context.batch_norm_text()}')
    above_one = [index + 1 for index, ratio in enumerate(ratios) if ratio > 1]
    if above_one:
        experiment.log(f'rounds {above_one} have ratios above 1: like ratio 1, they keep every pixel\'s '
                       f'predicted class (spec section 7)')

    state = None
    while progress.round < end_round:
        round_index, ratio = progress.round, ratios[progress.round]
        # A resume checkpoint at step 0 marks a round boundary: the round starts afresh.
        resuming = resume is not None and bool(saved.get('progress')) and int(resume['step']) > 0
        if resuming and not labels_recoverable(context, unlabeled_set, progress, ratio):
            resuming = False
            save_round_start(context, model, progress)   # a later --resume starts the round afresh too
        try:
            report = label_round(context, model, unlabeled_set, progress, ratio, resuming)
        except StopRequested as stop:
            raise stopped_while_labeling(context, model, progress, resuming, stop) from None
        for note in report.get('notes', []):
            context.warn(f'round {round_index + 1}: {note}', logged=True)
        global_step = sum(round_steps[:round_index])
        experiment.scalar('pseudo_labels/labeled_share', report['labeled_share'], global_step)
        if report.get('pseudo_label_miou') is not None:
            experiment.scalar('pseudo_labels/miou', report['pseudo_label_miou'], global_step)
        state = train_round(context, model, labeled_set, progress, round_steps[round_index], global_step,
                            resume if resuming else None)
        resume = None
        if state.extra.get('improved', False) and state.best_miou > progress.bar:
            progress.source_checkpoint = str(experiment.best_checkpoint)
            progress.improved = True
            progress.bar, progress.best_scores = state.best_miou, state.extra['best_scores']
        last_scores = state.extra.get('last_scores', {})
        progress.rounds = progress.rounds + [{
            'round': round_index + 1, 'ratio': ratio, 'steps': state.total_steps,
            'labeled_share': report['labeled_share'], 'pseudo_label_miou': report.get('pseudo_label_miou'),
            'thresholds': report['thresholds'], 'best_miou_after': progress.bar,
            'last_miou': last_scores.get('miou')}]
        progress.round += 1
        experiment.log(f'round {round_index + 1} done: best val mIoU so far {progress.bar * 100:.2f}')
        if progress.round < end_round:
            # Round boundary: a resume from here starts the next round from the best checkpoint.
            save_round_start(context, state.model, progress)

    if not progress.improved:
        # No round beat the start: the experiment's checkpoint is the start, so chains go on.
        experiment.log('no round beat the starting checkpoint; it is kept as the best')
        context.load_weights(model, progress.start_checkpoint)
        context.save_best(model, 0, progress.bar, extra={'phase': 'self_training', 'round': -1,
                                                         'best_scores': progress.best_scores})
    last_scores = state.extra.get('last_scores', {}) if state is not None else {}
    finish(context, progress.bar, {
        'state': 1, 'method': 'dst-cbc', 'best_miou': progress.bar, 'best_scores': progress.best_scores,
        'last_miou': last_scores.get('miou'), 'last_scores': last_scores,
        'start_miou': progress.start_miou, 'rounds': progress.rounds, 'round': args.round,
        'iters': args.iters, 'final': end_round == args.iters, 'gamma': args.gamma,
        'checkpoint': str(experiment.best_checkpoint) if args.save else None,
        'pseudo_label_dir': str(experiment.pseudo_label_dir)})
