"""What every state needs, built once from the flags: dataset, data root, device, experiment.

The states (supervised.py, self_training.py, cbc.py, training.py) receive a `RunContext` and ask
it for datasets, loaders, the model and checkpoints, so the flags are read in one place.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

import data_processing as dp
from models import deeplab_v2
from utils.checkpoints import load_checkpoint, load_model_state, save_checkpoint
from utils.errors import InputError
from utils.experiment import Experiment
from utils.training import LoopHooks, Runtime, evaluate, make_loader, save_state

BACKBONES_WITHOUT_WEIGHTS = ('resnet14',)


@dataclass
class RunContext:
    args: object                 # the parsed flags
    info: dp.DatasetInfo
    root: Path
    runtime: Runtime
    experiment: Experiment
    settings: dict               # JSON-ready flags and resolved values, saved with every checkpoint

    # --- lists and datasets ------------------------------------------------------------------
    @property
    def labeled_list(self):
        return f'{self.args.split}_labeled_{self.args.sets_id}'

    @property
    def unlabeled_list(self):
        return f'{self.args.split}_unlabeled_{self.args.sets_id}'

    @property
    def val_list(self):
        return 'valtiny' if self.args.valtiny else 'val'

    def transforms(self, kind):
        return dp.build_transforms(self.info, kind, coco=self.args.coco, crop_size=self.args.crop_size,
                                   eval_size=self.args.eval_size)

    def dataset(self, list_name, mode, kind, pseudo_label_dir=None):
        return dp.build_dataset(self.info, self.root, list_name, mode, self.transforms(kind),
                                pseudo_label_dir=pseudo_label_dir)

    def eval_loader(self, dataset):
        return make_loader(dataset, batch_size=self.args.batch_size, workers=self.runtime.workers,
                           device=self.runtime.device)

    def batch_loader(self, dataset, sampler):
        return make_loader(dataset, batch_sampler=sampler, workers=self.runtime.workers,
                           device=self.runtime.device)

    def validation(self, model):
        """A function that scores `model` on val (or valtiny); the dataset is checked once, now."""
        loader = self.eval_loader(self.dataset(self.val_list, 'gt', 'eval'))
        return lambda: evaluate(model, loader, self.info.num_classes, self.runtime, desc=self.val_list)

    @property
    def validation_key(self):
        """What a stored best mIoU was measured on; it is reused only when this matches."""
        return {'dataset': self.info.key, 'list': self.val_list, 'root': str(self.root.resolve()),
                'eval_size': list(self.args.eval_size or self.info.eval_size), 'coco': bool(self.args.coco)}

    # --- model and checkpoints ---------------------------------------------------------------
    def build_model(self, initialise_backbone=True):
        """DeepLabV2; ImageNet backbone weights unless weights come from a checkpoint or the flags
        say otherwise (--from-scratch, or a backbone that has no published weights)."""
        args = self.args
        pretrained = (initialise_backbone and not args.from_scratch
                      and args.backbone not in BACKBONES_WITHOUT_WEIGHTS)
        model = deeplab_v2(self.info.num_classes, backbone=args.backbone,
                           head_branches=args.head_branches, pretrained_backbone=pretrained)
        return model.to(self.runtime.device)

    def load_weights(self, model, path, flag='--continue-from'):
        """Load a checkpoint's network into `model`; return the checkpoint (metadata and all)."""
        if not path:
            raise InputError(f'{flag} is required for --state={self.args.state}')
        checkpoint = load_checkpoint(path, num_classes=self.info.num_classes)
        load_model_state(model, checkpoint, path)
        return checkpoint

    def save_best(self, model, step, best_miou, extra=None):
        save_checkpoint(self.experiment.best_checkpoint, model, step=step, best_miou=best_miou,
                        num_classes=self.info.num_classes, settings=self.settings,
                        extra=dict(extra or {}, validation=self.validation_key))

    def loop_hooks(self, model, best_extra):
        """What the training loop calls: validate, save the best (with `best_extra(state)`),
        save the last state, log. The best validation's scores go into state.extra."""
        experiment = self.experiment

        def on_best(state, scores):
            state.extra['best_scores'] = scores_summary(scores, self.info)
            self.save_best(state.model, state.step, state.best_miou,
                           extra=dict(best_extra(state), best_scores=state.extra['best_scores']))

        def save_last(state):
            save_state(experiment.resume_checkpoint, state, self.info.num_classes, self.settings)
            return experiment.resume_checkpoint

        return LoopHooks(validate=self.validation(model), on_best=on_best, save_last=save_last,
                         log=experiment.log, scalar=experiment.scalar)

    def stored_miou(self, checkpoint):
        """The validation mIoU a checkpoint carries, if it was measured on this validation set."""
        if checkpoint.get('best_miou') is None or checkpoint.get('validation') != self.validation_key:
            return None
        value = float(checkpoint['best_miou'])
        return None if math.isnan(value) else value

    def resume_checkpoint(self):
        """The last-state checkpoint for --resume (None when not resuming)."""
        if not self.args.resume:
            return None
        path = self.experiment.resume_checkpoint
        if not path.is_file():
            raise InputError(f'--resume: {path} not found (no unfinished run named {self.experiment.name!r})')
        checkpoint = load_checkpoint(path, num_classes=self.info.num_classes)
        if (checkpoint.get('settings') or {}).get('state') != self.args.state:
            raise InputError(f'--resume: {path} was saved by --state={(checkpoint.get("settings") or {}).get("state")}, '
                             f'not --state={self.args.state}')
        return checkpoint

    def seed(self, offset=0):
        return self.args.seed * 1000 + offset


def finish(context, best_miou, results):
    """Results JSON, the log.txt line, and the last-state checkpoint removed (the run is done)."""
    experiment = context.experiment
    experiment.save_results(results)
    if best_miou is not None:
        experiment.append_summary(best_miou)
    experiment.resume_checkpoint.unlink(missing_ok=True)
    experiment.log(f'results written to {experiment.results_file}')


def scores_summary(scores, info):
    """Pixel accuracy, mIoU and per-class IoU, JSON-ready."""
    return scores.to_dict(list(info.class_names))


def describe_checkpoint(checkpoint):
    value = checkpoint.get('best_miou')
    return 'no stored mIoU' if value is None else f'stored mIoU {value * 100:.2f}'


def torch_versions():
    return {'torch': torch.__version__, 'torchvision': torchvision.__version__}
