"""Evaluation of a checkpoint (state 3, spec section 9)."""
from utils.context import describe_checkpoint, finish, scores_summary
from utils.metrics import format_table


def run_evaluation(context):
    """Single scale, no flip, on val (or valtiny); prints the per-class table."""
    args = context.args
    model = context.build_model(initialise_backbone=False)
    checkpoint = context.load_weights(model, args.continue_from)
    context.experiment.log(f'evaluating {args.continue_from} ({describe_checkpoint(checkpoint)}) '
                           f'on {context.info.title} {context.val_list}')
    scores = context.validation(model)()
    context.experiment.log(format_table(scores, list(context.info.class_names)))
    finish(context, None, {'state': 3, 'checkpoint': str(args.continue_from), 'val_list': context.val_list,
                           'miou': scores.miou, 'pixel_accuracy': scores.pixel_accuracy,
                           'scores': scores_summary(scores, context.info)})
    return scores
