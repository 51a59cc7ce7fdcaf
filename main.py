"""DST-CBC from the command line: --state 0 pseudo-label, 1 self-train, 2 supervised, 3 evaluate.

Flags keep the meaning they had in the original program (spec section 11); this file only reads
them and hands a RunContext to the state's function.
"""
import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

import data_processing as dp
from models import BACKBONES
from utils.cbc import run_pseudo_labeling
from utils.context import RunContext, torch_versions
from utils.errors import InputError, Interrupted, TrainingDiverged
from utils.evaluation import run_evaluation
from utils.experiment import Experiment, autocast_dtype, choose_device, describe_precision
from utils.self_training import run_self_training
from utils.supervised import run_supervised
from utils.training import Runtime

STATES = {0: run_pseudo_labeling, 1: run_self_training, 2: run_supervised, 3: run_evaluation}
EXIT_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where there is one worth showing."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage block), like every other input error."""

    def error(self, message):
        self.exit(EXIT_INPUT, f'error: {message} (see python main.py --help)\n')


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def ratio(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f'must be a number > 0, got {text}')
    return value


def build_parser():
    parser = OneLineParser(description=__doc__.splitlines()[0],
                           formatter_class=HelpFormatter)
    what = parser.add_argument_group('what to run')
    what.add_argument('--state', type=int, choices=sorted(STATES), required=True,
                      help='0 pseudo-label, 1 self-training (DST-CBC), 2 supervised training, 3 evaluation')
    what.add_argument('--dataset', choices=sorted(dp.DATASETS), default='voc',
                      help='voc: PASCAL VOC 2012 (21 classes); city: Cityscapes (19 classes)')
    what.add_argument('--data-root', default=None,
                      help='dataset folder; else $DSTCBC_VOC_ROOT / $DSTCBC_CITY_ROOT, else ./data/...')
    what.add_argument('--exp-name', default=None, help='names every output; default: a timestamp')
    what.add_argument('--continue-from', default=None,
                      help='checkpoint to start from (state 2: e.g. voc_coco_resnet101.pt), to label '
                           'with (0), to self-train from (1) or to evaluate (3)')
    what.add_argument('--resume', action='store_true',
                      help='continue the killed run of --exp-name from logs/<exp-name>/last.pt')
    what.add_argument('--split', default='1', help='labeled fraction 1/S, e.g. 106 (1 = all)')
    what.add_argument('--sets-id', type=non_negative_int, default=0, help='which random split (0, 1, 2)')
    what.add_argument('--valtiny', action='store_true', help='validate on the small valtiny list')

    model = parser.add_argument_group('network and precision')
    model.add_argument('--backbone', choices=sorted(BACKBONES), default='resnet101',
                       help='resnet101 is the paper\'s; resnet14 (one block per stage, no pretrained '
                            'weights) is for CPU demos and tests')
    model.add_argument('--head-branches', type=int, choices=(2, 4), default=2,
                       help='2 = the original\'s head (sums two of its four branches), 4 = all four')
    model.add_argument('--coco', action='store_true',
                       help='COCO-pretrained Caffe weights: BGR 0..255 input normalisation')
    model.add_argument('--from-scratch', action='store_true',
                       help='no ImageNet weights for the backbone when no checkpoint is given')
    model.add_argument('--mixed-precision', action='store_true',
                       help='torch.autocast: float16 on CUDA, bfloat16 on CPU')
    model.add_argument('--device', default=None, help='cpu, cuda, cuda:1 ...; default: cuda if present')

    train = parser.add_argument_group('training')
    train.add_argument('--batch-size', type=positive_int, default=8)
    train.add_argument('--lr', type=float, default=0.002, help='supervised learning rate')
    train.add_argument('--weight-decay', type=float, default=5e-4)
    train.add_argument('--init-epochs', type=non_negative_int, default=None,
                       help='supervised epochs: state 2 (default 30, VOC full); in state 1 a supervised '
                            'warm-up before the rounds (default 0)')
    train.add_argument('--st-epochs', type=non_negative_int, nargs='+', default=[6, 6, 6, 6, 6],
                       help='epochs of each self-training round')
    train.add_argument('--st-lr', type=float, default=0.002, help='self-training learning rate')
    train.add_argument('--iters', type=positive_int, default=5, help='self-training rounds')
    train.add_argument('--round', type=positive_int, default=None,
                       help='state 1: run only round R (1-based) of the --iters schedule, as its own '
                            'process; --continue-from is then the previous round\'s checkpoint')
    train.add_argument('--init-label-ratio', type=ratio, default=0.2, help='CBC ratio of round one')
    train.add_argument('--det-label-ratio', type=float, default=0.2, help='CBC ratio added per round')
    train.add_argument('--gamma', type=float, default=0.0,
                       help='DST: pseudo-labeled pixels weigh p^gamma (the paper used 9 on VOC)')
    train.add_argument('--val-num-steps', type=positive_int, default=1000, help='validate every N steps')
    train.add_argument('--no-aug', action='store_true',
                       help='pseudo-labeled images are only resized to the crop size')
    train.add_argument('--crop-size', type=positive_int, nargs=2, default=None, metavar=('H', 'W'),
                       help='training crop; default 321 321 (VOC), 256 512 (Cityscapes)')
    train.add_argument('--eval-size', type=positive_int, nargs=2, default=None, metavar=('H', 'W'),
                       help='VOC evaluation padding; default 505 505')
    train.add_argument('--seed', type=int, default=0)
    train.add_argument('--save-every', type=non_negative_int, default=500,
                       help='save the last state for --resume every N steps (0: only on SIGINT/SIGTERM)')

    outputs = parser.add_argument_group('outputs and pseudo labels')
    outputs.add_argument('--do-not-save', action='store_true', help='keep no best checkpoint')
    outputs.add_argument('--label-ratio', type=ratio, default=None,
                         help='state 0: CBC ratio (default --init-label-ratio)')
    outputs.add_argument('--pseudo-dir', default=None,
                         help='pseudo-label folder; default logs/<exp-name>/pseudo_labels')
    outputs.add_argument('--label-memory-mb', type=positive_int, default=4096,
                         help='state 0/1: prediction maps kept in memory before spilling to disk')
    outputs.add_argument('--results-file', default=None, help='JSON results; default logs/<exp-name>/results.json')
    outputs.add_argument('--workers', type=non_negative_int, default=min(4, os.cpu_count() or 1),
                         help='data loading processes')
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.save = not args.do_not_save
    if args.init_epochs is None:
        args.init_epochs = 30 if args.state == 2 else 0
    if args.resume and not args.exp_name:
        raise InputError('--resume needs the --exp-name of the run to continue')
    if args.exp_name is None:
        args.exp_name = time.strftime('%Y%m%d-%H%M%S')
    if Path(args.exp_name).name != args.exp_name or args.exp_name in ('.', '..'):
        raise InputError(f'--exp-name {args.exp_name!r} must be a plain name, not a path')
    return args


def build_context(args, argv):
    info = dp.get_dataset_info(args.dataset)
    root = dp.resolve_root(info, args.data_root)
    device = choose_device(args.device)
    runtime = Runtime(device=device, amp_dtype=autocast_dtype(args.mixed_precision, device),
                      workers=args.workers)
    experiment = Experiment(args.exp_name, results_file=args.results_file,
                            pseudo_label_dir=args.pseudo_dir, save_best=args.save)
    if args.pseudo_dir and Path(args.pseudo_dir).resolve().is_relative_to(root.resolve()):
        raise InputError(f'--pseudo-dir {args.pseudo_dir} is inside the dataset root {root}; '
                         'keep pseudo labels out of the dataset')
    if not args.resume and args.state in (1, 2) and experiment.resume_checkpoint.exists():
        raise InputError(f'{experiment.resume_checkpoint} holds an unfinished run of {args.exp_name!r}: '
                         'add --resume to continue it, or choose another --exp-name')
    settings = {key: value for key, value in vars(args).items()}
    settings.update(data_root_resolved=str(root), device=str(device),
                    precision=describe_precision(runtime.amp_dtype), versions=torch_versions(),
                    command=shlex.join([Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:])))
    experiment.save_settings(settings)
    experiment.log(f'{settings["command"]}')
    experiment.log(f'state {args.state} on {info.title} at {root}; {device}, {settings["precision"]}')
    return RunContext(args=args, info=info, root=root, runtime=runtime, experiment=experiment,
                      settings=settings)


def main(argv=None):
    try:
        args = parse_args(argv)
        torch.manual_seed(args.seed)
        context = build_context(args, argv)
        try:
            STATES[args.state](context)
        finally:
            context.experiment.close()
    except TrainingDiverged as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as error:
        print(f'stopped: {error}', file=sys.stderr)
        return EXIT_INTERRUPTED
    except InputError as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_INPUT
    return 0


if __name__ == '__main__':
    sys.exit(main())
