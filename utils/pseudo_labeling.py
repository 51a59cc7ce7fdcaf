"""Pseudo labels alone, at one CBC ratio (state 0, spec section 7)."""
from utils.cbc import claim_folder_once, file_sha256, generate_pseudo_labels
from utils.context import finish
from utils.errors import InputError


def run_pseudo_labeling(context):
    """State 0: label the unlabeled list of --split/--sets-id with --continue-from at --label-ratio."""
    args = context.args
    ratio = args.label_ratio if args.label_ratio is not None else args.init_label_ratio
    if not args.continue_from:
        raise InputError('--continue-from is required for --state=0 (the checkpoint that labels)')
    claim_folder_once(context.experiment.pseudo_label_dir, context.experiment.name)
    model = context.build_model(initialise_backbone=False)
    context.load_weights(model, args.continue_from)
    dataset = context.dataset(context.unlabeled_list, 'unlabeled', 'eval')
    report = generate_pseudo_labels(
        model, dataset, context.eval_loader(dataset), ratio=ratio,
        pseudo_label_dir=context.experiment.pseudo_label_dir, checkpoint_path=args.continue_from,
        checkpoint_sha256=file_sha256(args.continue_from), experiment_name=context.experiment.name,
        runtime=context.runtime, memory_budget_mb=args.label_memory_mb, log=context.experiment.log,
        cache_root=args.cache_dir or context.experiment.log_dir, threads=context.label_writers,
        protocol=context.default_protocol)
    names = context.info.class_names
    for note in report.get('notes', []):
        context.warn(note, logged=True)
    finish(context, None, {
        'state': 0, 'method': 'cbc-labels', 'ratio': ratio,
        'pseudo_label_dir': str(context.experiment.pseudo_label_dir),
        'count': report['count'], 'labeled_share': report['labeled_share'],
        'thresholds': dict(zip(names, report['thresholds'])),
        'pseudo_label_miou': report.get('pseudo_label_miou'),
        'pseudo_label_scores': report.get('pseudo_label_scores'), 'seconds': report.get('seconds')})
    return report
