"""Evaluation of a checkpoint (state 3, spec section 9), and its prediction pictures.

The default is the paper's protocol: single scale, no flip, on val (or valtiny). --scales and
--flip average softmax probabilities over views; --sliding-window evaluates Cityscapes at full
resolution (--full-resolution) window by window. results.json records the protocol, and which
list the checkpoint was selected on, so a number reported on val can be told apart from one
selected on val.
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils import distributed
from utils.context import describe_checkpoint, finish, scores_summary
from utils.dataset_description import file_name
from utils.device import host_values, to_host
from utils.inference import Protocol
from utils.metrics import format_table
from utils.predictions import class_maximum, palette_image, save_image, scores_at_file_size
from utils.training import evaluate

def protocol_from_flags(args, info):
    """The evaluation protocol of the flags; the sliding window defaults to the description's."""
    window = tuple(args.sliding_window) if args.sliding_window else info.eval_window
    return Protocol(scales=tuple(args.scales), flip=args.flip, window=window,
                    stride=tuple(args.window_stride) if args.window_stride else None)


class PredictionWriter:
    """Writes each image's prediction at the image file's own size: a palette PNG of class
    indices in the dataset's colours and, for a dataset whose labels map raw values to classes
    (Cityscapes' label ids), a PNG of those raw values (what Cityscapes' benchmark server reads)."""

    def __init__(self, folder, dataset):
        self.folder = Path(folder)
        self.dataset = dataset
        self.written = 0
        raw = dataset.info.encoding.raw_value_of_class()
        self.raw_values = None if raw is None else np.asarray(raw, dtype=np.uint8)

    def __call__(self, batch, scores):
        for scores_one, index, own, file_size in zip(scores, batch['index'].tolist(),
                                                     batch['own_size'].tolist(), batch['file_size'].tolist()):
            scores_one = scores_at_file_size(scores_one, own, file_size)
            prediction = to_host(class_maximum(scores_one)[1].to(torch.uint8)).numpy()
            name = file_name(self.dataset.names[index])
            save_image(palette_image(prediction, self.dataset.info.colors), self.folder / 'color' / f'{name}.png')
            if self.raw_values is not None:
                save_image(Image.fromarray(self.raw_values[prediction], mode='L'),
                         self.folder / 'label_ids' / f'{name}.png')
            self.written += 1


def run_evaluation(context):
    """Scores on val (or valtiny), the per-class table, and optionally the predictions as PNGs."""
    args = context.args
    model = context.build_model(initialise_backbone=False)
    checkpoint = context.load_weights(model, args.continue_from)
    protocol = protocol_from_flags(args, context.info)
    dataset = context.dataset(context.val_list, 'gt', 'eval', full_resolution=args.full_resolution)
    context.experiment.log(f'evaluating {args.continue_from} ({describe_checkpoint(checkpoint)}) on '
                           f'{context.info.title} {context.val_list}, {len(dataset)} images; protocol '
                           f'{protocol.to_dict()}')
    writer = PredictionWriter(args.save_predictions, dataset) if args.save_predictions else None
    confusion = evaluate(model, context.eval_loader(dataset), context.info.num_classes, context.runtime,
                         desc=context.val_list, protocol=protocol, on_prediction=writer)
    scores = confusion.compute()
    context.experiment.log(format_table(scores, list(context.info.class_names)))
    if writer is not None:
        count = distributed.sum_numbers([writer.written], dtype=torch.int64)[0]
        context.experiment.log(f'{count} predictions written to {args.save_predictions}')
    trained = checkpoint.get('settings') or {}
    validation = checkpoint.get('validation') or {}
    methods = {1: 'dst-cbc', 2: 'supervised'}
    finish(context, None, {
        'state': 3, 'checkpoint': str(args.continue_from), 'reported_on': context.val_list,
        'selected_on': validation.get('list'), 'method': methods.get(trained.get('state'), 'unknown'),
        'source_experiment': trained.get('exp_name'),
        'split': str(trained.get('split', args.split)), 'sets_id': trained.get('sets_id', args.sets_id),
        'protocol': protocol.to_dict(), 'miou': scores.miou, 'pixel_accuracy': scores.pixel_accuracy,
        'scores': scores_summary(scores, context.info),
        'confusion_matrix': host_values(confusion.matrix),
        'predictions': str(args.save_predictions) if args.save_predictions else None})
    return scores

