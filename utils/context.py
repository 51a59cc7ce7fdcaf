"""What every state needs, built once from the flags: dataset, data root, device, experiment.

The states (supervised.py, self_training.py, pseudo_labeling.py, evaluation.py) receive a
`RunContext` and ask it for datasets, loaders, the model and checkpoints, so the flags are read
in one place.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

import data_processing as dp
from models import deeplab_v2
from utils import distributed
from utils.cbc import class_list, file_sha256, names_digest
from utils.checkpoints import check_classes, description_warning, load_checkpoint, load_model_state, save_checkpoint
from utils.data_check import check_dataset
from utils.dataset_description import dataset_meaning
from utils.errors import InputError, RunError
from utils.experiment import Experiment
from utils.inference import Protocol
from utils.training import LoopHooks, Runtime, evaluate, make_loader

BACKBONES_WITHOUT_WEIGHTS = ('resnet14',)
# The lists each state reads (spec sections 6 to 9).
STATE_LISTS = {0: ('unlabeled',), 1: ('labeled', 'unlabeled', 'val'), 2: ('labeled', 'val'), 3: ('val',)}
DEFAULT_ARCHITECTURE = {'backbone': 'resnet101', 'head_branches': 2}

# Flags that change what a run computes: --resume refuses a change to any of them. Flags not
# listed (workers, device, save-every, label-memory-mb, cache-dir, dist-timeout, results-file)
# change how it runs, not what it gives; the number of processes may change too.
RUN_DEFINING_FLAGS = (
    'state', 'dataset_digest', 'data_root_resolved', 'split', 'sets_id', 'valtiny', 'backbone',
    'head_branches', 'coco', 'from_scratch', 'mixed_precision', 'precision', 'continue_from', 'batch_size', 'lr',
    'weight_decay', 'init_epochs', 'st_epochs', 'st_lr', 'iters', 'round', 'init_label_ratio',
    'det_label_ratio', 'label_ratio', 'gamma', 'val_num_steps', 'no_aug', 'crop_size', 'eval_size',
    'seed', 'sync_bn', 'frozen_bn', 'pseudo_dir')


# Settings that are not flags themselves: the flag a user changes to change them.
FLAG_OF_SETTING = {'data_root_resolved': '--data-root', 'dataset_digest': '--dataset (its description)'}


@dataclass
class RunContext:
    args: object                 # the parsed flags
    info: dp.DatasetInfo
    root: Path
    runtime: Runtime
    experiment: Experiment
    settings: dict               # JSON-ready flags and resolved values, saved with every checkpoint
    architecture: dict           # backbone and head layout of the network this run uses
    # id(network) -> (network, its SyncBatchNorm form, its DDP wrapper); see for_training
    training_wrappers: dict = field(default_factory=dict, repr=False)
    warnings: list = field(default_factory=list)        # said once in the log, kept in results.json
    checked_lists: dict = field(default_factory=dict)   # list name -> its ids, once checked

    # --- lists and datasets ------------------------------------------------------------------
    @property
    def labeled_list(self):
        return list_names(self.args, self.info)['labeled']

    @property
    def unlabeled_list(self):
        return list_names(self.args, self.info)['unlabeled']

    @property
    def val_list(self):
        return list_names(self.args, self.info)['val']

    @property
    def crop_size(self):
        return tuple(self.args.crop_size or self.info.crop_size)

    def transforms(self, kind, info=None):
        return dp.build_transforms(info or self.info, kind, coco=self.args.coco,
                                   crop_size=self.args.crop_size, eval_size=self.args.eval_size)

    def dataset(self, list_name, mode, kind, pseudo_label_dir=None, full_resolution=False):
        """Build a dataset and check every file of its list before any work starts (cached per
        list: a second run only looks at file sizes and times). `full_resolution` (Cityscapes
        evaluation) skips the 512x1024 base resize: images and labels at their file size."""
        info = dp.full_resolution(self.info) if full_resolution else self.info
        dataset = dp.build_dataset(info, self.root, list_name, mode, self.transforms(kind, info),
                                   pseudo_label_dir=pseudo_label_dir, check=mode != 'pseudo')
        check_list_unchanged(dataset, (self.settings.get('lists') or {}).get(list_name))
        if mode != 'pseudo':
            report = check_dataset(dataset, self.experiment.base_dir / 'logs' / '.data-check',
                                   threads=max(self.runtime.workers, 2), log=self.experiment.log,
                                   stop=self.runtime.stop)
            if kind == 'eval' and info.base_size is None:
                source = '--eval-size' if self.args.eval_size else f'eval size of {info.description or info.name}'
                check_fits_canvas(dataset, report.sizes, tuple(self.args.eval_size or info.eval_size), source)
            self.note_checked(list_name, dataset, report)
        return dataset

    def warn(self, message, logged=False):
        """A warning said once, in the log (unless `logged` already) and in results.json."""
        if message not in self.warnings:
            self.warnings.append(message)
            if not logged:
                self.experiment.log(f'warning: {message}')

    def note_checked(self, list_name, dataset, report):
        """What a checked list tells about the data: classes the labeled images lack or barely
        show, and validation ids that are also labeled."""
        self.checked_lists[list_name] = dataset.names
        if list_name == self.labeled_list and report.class_pixels is not None:
            for message in class_warnings(self.info, list_name, len(dataset), report.class_pixels):
                self.warn(message)
        labeled, val = self.checked_lists.get(self.labeled_list), self.checked_lists.get(self.val_list)
        if labeled is not None and val is not None and self.labeled_list != self.val_list:
            shared = sorted(set(labeled) & set(val))
            if shared:
                self.warn(f'{len(shared)} id{"s" if len(shared) > 1 else ""} of the validation list '
                          f'{self.val_list} {"are" if len(shared) > 1 else "is"} also in the labeled list '
                          f'{self.labeled_list} (first: {shared[0]!r}): validation scores on them say how well '
                          f'the network remembers its training images, and choose checkpoints by that')

    @property
    def label_writers(self):
        """Threads that write pseudo labels (PNG encoding runs outside the GIL)."""
        return max(self.runtime.workers, 1)

    def eval_loader(self, dataset, persistent=False):
        """This rank's share, in batches of --batch-size / processes (the global batch);
        `persistent` keeps its workers between passes (validation)."""
        per_rank = max(self.args.batch_size // self.runtime.world_size, 1)
        return make_loader(dataset, batch_size=per_rank, workers=self.runtime.workers,
                           device=self.runtime.device, persistent=persistent)

    def batch_loader(self, dataset, sampler):
        return make_loader(dataset, batch_sampler=sampler, workers=self.runtime.workers,
                           device=self.runtime.device)

    @property
    def default_protocol(self):
        """How validation and labeling look at an image: the paper's single view, or the sliding
        window the dataset's description asks for."""
        return Protocol(window=self.info.eval_window)

    def validation(self, model, protocol=None):
        """A function that scores `model` on val (or valtiny), returning the confusion matrix summed
        over all processes; the dataset is checked once, now."""
        protocol = protocol or self.default_protocol
        loader = self.eval_loader(self.dataset(self.val_list, 'gt', 'eval'), persistent=True)
        return lambda: evaluate(model, loader, self.info.num_classes, self.runtime, desc=self.val_list,
                                protocol=protocol)

    @property
    def validation_key(self):
        """What a stored best mIoU was measured on; it is reused only when this matches."""
        return {'dataset': self.info.name, 'list': self.val_list, 'root': str(self.root.resolve()),
                'eval_size': list(self.args.eval_size or self.info.eval_size), 'coco': bool(self.args.coco)}

    # --- model and checkpoints ---------------------------------------------------------------
    def build_model(self, initialise_backbone=True):
        """DeepLabV2; ImageNet backbone weights unless weights come from a checkpoint or the flags
        say otherwise (--from-scratch, or a backbone that has no published weights)."""
        args = self.args
        backbone = self.architecture['backbone']
        pretrained = (initialise_backbone and not args.from_scratch
                      and backbone not in BACKBONES_WITHOUT_WEIGHTS)
        model = deeplab_v2(self.info.num_classes, backbone=backbone,
                           head_branches=self.architecture['head_branches'], pretrained_backbone=pretrained)
        model = model.to(self.runtime.device)
        self.runtime.stop_point()   # building (and downloading weights) takes seconds
        return model.to(memory_format=torch.channels_last) if self.runtime.channels_last else model

    def for_training(self, model):
        """(network, what the step calls): with several processes, BatchNorm becomes
        SyncBatchNorm under --sync-bn, and the step goes through DistributedDataParallel. Made
        once per network and reused (a warm-up and every round train the same one), since DDP
        hooks itself into the parameters it wraps."""
        cache = self.training_wrappers
        if id(model) not in cache:
            network = model
            if self.runtime.world_size > 1 and self.args.sync_bn:
                network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            cache[id(model)] = (model, network, self.runtime.parallel(network))
        _, network, step_model = cache[id(model)]
        return network, step_model

    def batch_norm_text(self):
        if self.args.frozen_bn:
            return 'BatchNorm frozen (stored statistics, --frozen-bn)'
        if self.runtime.world_size == 1:
            return 'BatchNorm (one process)'
        if self.args.sync_bn:
            return f'SyncBatchNorm: statistics over the global batch of {self.args.batch_size}'
        per_process = self.args.batch_size // self.runtime.world_size
        return (f'BatchNorm per process: statistics over {per_process} image{"s" if per_process != 1 else ""} '
                f'(the original\'s plain BatchNorm; --sync-bn for the global batch on GPUs)')

    def load_weights(self, model, path, flag='--continue-from'):
        """Load a checkpoint's network into `model`; return the checkpoint (metadata and all)."""
        if not path:
            raise InputError(f'{flag} is required for --state={self.args.state}')
        checkpoint = load_checkpoint(path, num_classes=self.info.num_classes)
        check_classes(checkpoint, self.info, path)
        check_architecture(checkpoint, self.architecture, path)
        load_model_state(model, checkpoint, path)
        warning = description_warning(checkpoint, self.info, path)
        if warning and flag == '--continue-from':
            self.warn(warning)
        self.runtime.stop_point()   # a large checkpoint takes seconds to load
        return checkpoint

    def checkpoint_extra(self, extra=None):
        return dict(extra or {}, validation=self.validation_key, architecture=dict(self.architecture),
                    classes=list(self.info.class_names), dataset_meaning=dataset_meaning(self.info))

    def save_best(self, model, step, best_miou, extra=None):
        """Rank 0 writes; every rank learns whether the write failed. A stop signal meanwhile waits
        for the write (as in `save_last`)."""
        error = None
        if self.runtime.is_main:
            try:
                with self.runtime.stop.saving():
                    self.experiment.before_writing(self.experiment.best_checkpoint)   # takes the name over
                    save_checkpoint(self.experiment.best_checkpoint, model, step=step, best_miou=best_miou,
                                    num_classes=self.info.num_classes, settings=self.settings,
                                    extra=self.checkpoint_extra(extra))
            except RunError as failure:
                error = failure
        distributed.agree_on_errors(error)

    def save_last(self, state):
        """The last-state checkpoint that --resume continues from (rank 0 writes). No signal
        interrupts it: a second Ctrl-C while it is written is only acknowledged."""
        error = None
        if self.runtime.is_main:
            try:
                with self.runtime.stop.saving():
                    self.experiment.before_writing(self.experiment.resume_checkpoint)
                    train_state = dict(state.extra, total_steps=state.total_steps)
                    save_checkpoint(self.experiment.resume_checkpoint, state.model, optimizer=state.optimizer,
                                    scheduler=state.scheduler, scaler=state.scaler, step=state.step,
                                    best_miou=state.best_miou, num_classes=self.info.num_classes,
                                    settings=self.settings, extra=self.checkpoint_extra({'train_state': train_state}))
            except RunError as failure:
                error = failure
        distributed.agree_on_errors(error)
        return self.experiment.resume_checkpoint

    def loop_hooks(self, model, best_extra):
        """What the training loop calls: validate, save the best (with `best_extra(state)`),
        save the last state, log. The best and the last validation's scores go into state.extra."""

        def on_best(state, scores):
            state.extra['best_scores'] = scores_summary(scores, self.info)
            self.save_best(state.model, state.step, state.best_miou,
                           extra=dict(best_extra(state), best_scores=state.extra['best_scores']))

        def on_validated(state, scores):
            state.extra['last_scores'] = scores_summary(scores, self.info)

        return LoopHooks(validate=self.validation(model), on_best=on_best, on_validated=on_validated,
                         save_last=self.save_last, log=self.experiment.log, scalar=self.experiment.scalar)

    def stored_miou(self, checkpoint):
        """The validation mIoU a checkpoint carries, if it was measured on this validation set."""
        if checkpoint.get('best_miou') is None or checkpoint.get('validation') != self.validation_key:
            return None
        value = float(checkpoint['best_miou'])
        return None if math.isnan(value) else value

    def best_so_far(self):
        """The experiment's best checkpoint file: (its mIoU on this validation set, its scores),
        or (None, {}) when there is none. A resumed run never lets its bar fall below it."""
        path = self.experiment.best_checkpoint
        if not self.args.save or not path.is_file():
            return None, {}
        earlier = self.settings.get('replaced_best_sha256')
        if earlier and file_sha256(path) == earlier:
            return None, {}   # still the file of the run --overwrite replaces: not this run's best
        checkpoint = load_checkpoint(path, num_classes=self.info.num_classes)
        return self.stored_miou(checkpoint), checkpoint.get('best_scores') or {}

    def resume_checkpoint(self):
        """The last-state checkpoint for --resume (None when not resuming), refused if it was saved
        by a run with other flags."""
        if not self.args.resume:
            return None
        path = self.experiment.resume_checkpoint
        if not path.is_file():
            raise InputError(f'--resume: {path} not found (no unfinished run named {self.experiment.name!r})')
        checkpoint = load_checkpoint(path, num_classes=self.info.num_classes)
        saved = checkpoint.get('settings') or {}
        check_same_run(saved, self.settings, path)
        if saved.get('replaced_best_sha256'):   # kept through every later save of the run
            self.settings['replaced_best_sha256'] = saved['replaced_best_sha256']
        return checkpoint

    def seed(self, offset=0):
        return self.args.seed * 1000 + offset


def changed_keys(saved, current):
    """' (in: crop_size, normalization)': the description's keys whose values differ between two
    runs' settings, or '' where the earlier one did not record them."""
    before, now = saved.get('dataset_described'), current.get('dataset_described')
    if not isinstance(before, dict) or not isinstance(now, dict):
        return ''
    keys = sorted(key for key in set(before) | set(now) if before.get(key) != now.get(key))
    return f' (in: {", ".join(keys)})' if keys else ''


def check_same_run(saved, current, path):
    """--resume continues the same run: a flag that changes the result must not change, nor may
    the content of a list it reads (an id added changes the schedule and the data)."""
    for key in RUN_DEFINING_FLAGS:
        if key not in saved and key not in current:
            continue
        before, now = normalise(saved.get(key)), normalise(current.get(key))
        if before != now:
            flag = FLAG_OF_SETTING.get(key, '--' + key.replace('_', '-'))
            if key == 'dataset_digest':
                raise InputError(f'--resume: the dataset description {current.get("dataset_description")} changed '
                                 f'since the interrupted run ({path}) began{changed_keys(saved, current)}; restore it, '
                                 f'or start a new --exp-name')
            raise InputError(f'--resume: {flag} was {before} in the interrupted run ({path}), now {now}; '
                             f'resume with the same flags, or start a new --exp-name')
    changed = changed_list(saved, current)
    if changed:
        before, now = changed
        moved = f' (it was read from {before["file"]})' if now['file'] != before['file'] else ''
        raise InputError(f'--resume: {now["file"]} changed since the interrupted run ({path}){moved}: its ids '
                         f'are not the same; restore the list, or start a new --exp-name')


def changed_list(saved, current):
    """(recorded, current) {file, ids_sha256} of the first list both settings record whose ids
    differ, or None: --resume and a round's chain (utils/self_training.py) refuse it."""
    saved_lists = saved.get('lists') if isinstance(saved.get('lists'), dict) else {}
    current_lists = current.get('lists') or {}
    for list_name, before in saved_lists.items():
        now = current_lists.get(list_name)
        if now is not None and isinstance(before, dict) and before.get('ids_sha256') not in (None, now['ids_sha256']):
            return before, now
    return None


def list_names(args, info):
    """The names of the labeled, unlabeled and validation lists the flags select."""
    return {'labeled': f'{args.split}_labeled_{args.sets_id}',
            'unlabeled': f'{args.split}_unlabeled_{args.sets_id}',
            'val': 'valtiny' if args.valtiny else info.val_list}


def list_digests(info, root, args):
    """{list name: {file, ids_sha256}} of every list this state reads, read now (so a missing
    list stops the run at once) and kept in the settings: --resume refuses a list whose ids
    changed since the run began (SHA-256 of the ids in order, as the batches depend on it)."""
    names = list_names(args, info)
    digests = {}
    for role in STATE_LISTS[args.state]:
        try:
            path = dp.find_list(info, root, names[role])
        except InputError as error:
            raise missing_list(info, root, args, role, names[role], error) from None
        digests[names[role]] = {'file': str(path), 'ids_sha256': names_digest(dp.read_list(path))}
    return digests


def missing_list(info, root, args, role, name, error):
    """A list the flags select that is not there, said by the flag that selects it and what makes
    it: 'list 2_labeled_0.txt not found' named neither --split nor generate_splits.py, nor the
    splits there are, nor the data root (a description moved away from its data)."""
    folders = dp.list_folders(info, root)
    where = ' or '.join(str(folder) for folder in folders)
    found = sorted({path.stem for folder in folders if folder.is_dir() for path in folder.glob('*_labeled_*.txt')
                    if not path.name.startswith('1_')})   # 1_labeled_K: the whole list, shuffled
    if role in ('labeled', 'unlabeled'):
        shown = (f'the splits there: {", ".join(found[:8])}{", ..." if len(found) > 8 else ""}' if found
                 else 'no splits are there')
        return InputError(f'--split {args.split} --sets-id {args.sets_id}: {name}.txt is not in {where} ({shown}); '
                          f'make it with python generate_splits.py --dataset {args.dataset} --fractions {args.split} '
                          f'--sets {args.sets_id + 1}, or choose a split that is there')
    if args.valtiny:
        return InputError(f'--valtiny: {name}.txt is not in {where}; write a small validation list of your own there '
                          f'(the paper\'s VOC and Cityscapes ones are shipped), or leave --valtiny out')
    origin = ('--data-root' if args.data_root else
              f'the folder of {info.description}' if info.description and info.default_root ==
              Path(info.description).resolve().parent else f'the root of {info.description or info.name}')
    return InputError(f'{error}: the validation list (val_list of {info.description or info.name}) under the data '
                      f'root {root} ({origin}); if the data lie elsewhere, set root: in the description or pass '
                      f'--data-root')


def check_list_unchanged(dataset, recorded):
    """The list read for work (a round reads the unlabeled list again) is the one recorded in the
    settings when the run began."""
    if recorded and names_digest(dataset.names) != recorded['ids_sha256']:
        raise InputError(f'{dataset.list_path} changed since the run began (its ids differ from those read '
                         f'at the start); restore it, or start the run again')


def check_fits_canvas(dataset, sizes, canvas, source='--eval-size'):
    """VOC evaluation and labeling pad every image to --eval-size and refuse a larger one
    (cropping would drop pixels from the scores): found here, before the first training step,
    not at the first validation."""
    too_large = [index for index, (height, width) in enumerate(sizes)
                 if height > canvas[0] or width > canvas[1]]
    if not too_large:
        return
    height, width = sizes[too_large[0]]
    need = (max([canvas[0]] + [size[0] for size in sizes]), max([canvas[1]] + [size[1] for size in sizes]))
    others = f', and so are {len(too_large) - 1} more of {dataset.list_path}' if len(too_large) > 1 else ''
    raise InputError(f'{dataset.image_path(too_large[0])}: image is {height}x{width}, larger than the '
                     f'evaluation canvas {canvas[0]}x{canvas[1]} ({source}){others}; use --eval-size '
                     f'{need[0]} {need[1]} or more' + ('' if source == '--eval-size' else
                                                       ' (or that eval size in the description)'))


def normalise(value):
    return list(value) if isinstance(value, tuple) else value


def check_architecture(checkpoint, architecture, path):
    """A checkpoint that records its network must match the one built for it."""
    recorded = checkpoint.get('architecture')
    if not recorded:
        return
    for key in ('backbone', 'head_branches'):
        if key in recorded and recorded[key] != architecture[key]:
            flag = '--' + key.replace('_', '-')
            raise InputError(f'{path}: checkpoint was trained with {flag} {recorded[key]}, but this run '
                             f'uses {architecture[key]}; pass {flag} {recorded[key]} (or leave the flag out)')


def resolve_architecture(args, checkpoint_path):
    """The network to build: the flags where given, else what the checkpoint to load records
    (so evaluating a --head-branches 4 or resnet14 checkpoint needs no extra flags), else the
    paper's ResNet-101 with the original two-branch head."""
    recorded = {}
    if checkpoint_path and Path(checkpoint_path).is_file():
        try:
            recorded = load_checkpoint(checkpoint_path).get('architecture') or {}
        except InputError:
            recorded = {}   # the real load reports what is wrong with the file
    resolved, adopted = {}, []
    for key in ('backbone', 'head_branches'):
        given = getattr(args, key)
        if given is not None:
            resolved[key] = given
        elif key in recorded:
            resolved[key] = recorded[key]
            adopted.append(key)
        else:
            resolved[key] = DEFAULT_ARCHITECTURE[key]
    return resolved, adopted


def finish(context, best_miou, results):
    """Results JSON, the log.txt line, and the last-state checkpoint removed (the run is done)."""
    experiment = context.experiment
    results = dict(common_results(context), **results)
    experiment.save_results(results)
    if best_miou is not None:
        experiment.append_summary(best_miou)
    if context.runtime.is_main:
        experiment.resume_checkpoint.unlink(missing_ok=True)
    experiment.log(f'results written to {experiment.results_file}')


def common_results(context):
    args = context.args
    return {'experiment': context.experiment.name, 'dataset': context.info.name, 'split': str(args.split),
            'sets_id': args.sets_id, 'class_names': list(context.info.class_names),
            'world_size': context.runtime.world_size, 'val_list': context.val_list,
            'architecture': dict(context.architecture), 'warnings': list(context.warnings)}


# A class with less than this share of the labeled pixels (ignored ones aside) is named in a
# warning: the network sees too few of its pixels to learn it well.
TINY_CLASS_SHARE = 0.001


def class_warnings(info, list_name, count, class_pixels):
    """Warnings about the classes of a labeled list: absent ones (their IoU cannot be learned
    from it and their CBC threshold is undefined), and those with a tiny share of its pixels;
    one warning for each kind."""
    total = int(class_pixels.sum())
    absent = [index for index in range(info.num_classes) if class_pixels[index] == 0]
    tiny = [index for index in range(info.num_classes)
            if index not in absent and class_pixels[index] / max(total, 1) < TINY_CLASS_SHARE]
    messages = []
    if absent:
        it, its, them = ('it', 'its', 'it') if len(absent) == 1 else ('one', "that class's", 'them')
        verb = 'appears' if len(absent) == 1 else 'appear'
        messages.append(
            f'{class_list(info.class_names, absent)} {verb} in no image of the labeled list {list_name} ({count} images): the '
            f'network cannot learn {them} from these images, so {"its" if len(absent) == 1 else "their"} IoU stays near 0 '
            f'unless self-training finds {them}; and where the network predicts {it} on no sampled unlabeled pixel, '
            f'{its} CBC threshold is undefined: the labeler then gives it 1e-5 (the original\'s rule), which keeps '
            f'every pixel predicted as it')
    if tiny:
        shares = ', '.join(f'{info.class_names[index]!r} ({index}) {class_pixels[index] / total * 100:.3f}% '
                           f'({int(class_pixels[index])} of {total})' for index in tiny)
        messages.append(f'{"class" if len(tiny) == 1 else "classes"} with a tiny share of the labeled pixels of '
                        f'{list_name}: {shares}: too few to learn {"it" if len(tiny) == 1 else "them"} well')
    return messages




def scores_summary(scores, info):
    """Pixel accuracy, mIoU and per-class IoU, JSON-ready."""
    return scores.to_dict(list(info.class_names))


def describe_checkpoint(checkpoint):
    value = checkpoint.get('best_miou')
    return 'no stored mIoU' if value is None else f'stored mIoU {value * 100:.2f}'


def torch_versions():
    return {'torch': torch.__version__, 'torchvision': torchvision.__version__}
