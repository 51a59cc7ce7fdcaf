"""DST-CBC from the command line: --state 0 pseudo-label, 1 self-train, 2 supervised, 3 evaluate.

Flags keep the meaning they had in the original program (spec section 11); this file only reads
them and hands a RunContext to the state's function.
"""
import sys

if sys.version_info < (3, 10):
    sys.exit(f'error: Python {sys.version.split()[0]} is older than 3.10, the oldest this program runs on')

from utils.stopping import end_on_stop_signals  # noqa: E402  (first, before the heavy imports)

if __name__ == '__main__':   # not in a spawned loader worker, which imports this file as __mp_main__
    end_on_stop_signals(130, 'stopped: {signal} while the program started; nothing was saved\n')

import argparse
import json
import os
import shlex
import time
from pathlib import Path

import torch
import torchvision

import data_processing as dp
from models import BACKBONES
from utils import distributed
from utils.cbc import file_sha256
from utils.context import RunContext, list_digests, resolve_architecture, torch_versions
from utils.device import (SHARED_MEMORY_ADVICE, configure_backends, is_out_of_memory, is_shared_memory_exhausted,
                          use_channels_last)
from utils.errors import InputError, Interrupted, OutOfMemory, PeerFailure, RunError, StopRequested, one_line
from utils.flags import (HelpFormatter, OneLineParser, finite_number, non_negative_int, non_negative_number, positive_int,
                         positive_number)
from utils.evaluation import run_evaluation
from utils.experiment import AUTOCAST_DTYPES, Experiment, choose_device, describe_precision, resolve_precision
from utils.guards import (TRAINING_STATES, check_memory_fits, check_name_once, check_outputs, check_training_flags,
                          flags_the_state_ignores)
from utils.pseudo_labeling import run_pseudo_labeling
from utils.self_training import run_self_training
from utils.stopping import StopRequest, quiet_when_stopped
from utils.supervised import run_supervised
from utils.training import Runtime
from utils.versions import check_versions

STATES = {0: run_pseudo_labeling, 1: run_self_training, 2: run_supervised, 3: run_evaluation}
DEFAULT_ROUND_EPOCHS = 6          # the original's --st-epochs 6 6 6 6 6
EXIT_INPUT = InputError.exit_status


# context.seed(offset) is seed * 1000 + offset, and EpochBatchSampler seeds torch's generator with
# that times 1,000,003 plus the epoch, which must stay below 2**64 (a larger value was a traceback
# at the first batch). Below 2**31, the product stays below 2**62.
SEED_MAX = 2 ** 31 - 1


def seed_number(text):
    """--seed: an integer in 0..SEED_MAX, so that every seed derived from it fits torch's."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f'must be an integer in 0..{SEED_MAX}, got {text}')
    return value


def label_ratio(text):
    """A CBC ratio: the share of each class's most confident pixels kept. 1 keeps every pixel's
    prediction and so does anything above 1 (spec section 7), so values above 1 are refused
    rather than taken silently as 1."""
    value = finite_number(text, 0.0, False, 'in (0, 1]')
    if value > 1:
        raise argparse.ArgumentTypeError(f'must be a number in (0, 1], got {text} (1 already keeps every '
                                          f'pixel\'s predicted class)')
    return value


def build_parser():
    parser = OneLineParser(prog='main.py', description=__doc__.splitlines()[0],
                           formatter_class=HelpFormatter)
    what = parser.add_argument_group('what to run')
    what.add_argument('--state', type=int, choices=sorted(STATES), required=True,
                      help='0 pseudo-label, 1 self-training (DST-CBC), 2 supervised training, 3 evaluation')
    what.add_argument('--dataset', default='voc', metavar='{voc,city,FILE}',
                      help='voc: PASCAL VOC 2012 (21 classes); city: Cityscapes (19 classes); or the path of a '
                           'dataset description file of your own data (README: "Your own data")')
    what.add_argument('--data-root', default=None,
                      help='dataset folder; else $DSTCBC_VOC_ROOT / $DSTCBC_CITY_ROOT, else the root the '
                           'description names (./data/... for voc and city; a description\'s own folder)')
    what.add_argument('--exp-name', default=None,
                      help='names every output, and holds one run: a name whose files hold another run is '
                           'refused (see --resume, --overwrite); default: a timestamp and the process id')
    what.add_argument('--continue-from', default=None,
                      help='checkpoint to start from (state 2: e.g. voc_coco_resnet101.pt), to label '
                           'with (0), to self-train from (1) or to evaluate (3)')
    what.add_argument('--resume', action='store_true',
                      help='states 1 and 2: continue the killed run of --exp-name from logs/<exp-name>/last.pt '
                           '(states 0 and 3 keep no state: they run from the start)')
    what.add_argument('--overwrite', action='store_true',
                      help='let this run replace what an earlier run of --exp-name left: its best checkpoint '
                           '<exp-name>.pt, results.json and settings.json (or --results-file), and an '
                           'unfinished run\'s last.pt. They stay until this run\'s first write of a best checkpoint '
                           'or results (or of a last.pt replacing the earlier one): then the earlier results and '
                           'last.pt go and this run\'s settings are written; nothing is deleted up front')
    what.add_argument('--split', default='1', help='labeled fraction 1/S, e.g. 106 (1 = all)')
    what.add_argument('--sets-id', type=non_negative_int, default=0, help='which random split (0, 1, 2)')
    what.add_argument('--valtiny', action='store_true', help='validate on the small valtiny list')

    model = parser.add_argument_group('network and precision')
    model.add_argument('--backbone', choices=sorted(BACKBONES), default=None,
                       help='resnet101 (the paper\'s, the default) or resnet50; resnet14 (one block per '
                            'stage, no pretrained weights) is for CPU demos and tests. Default: what the '
                            'checkpoint to load records, else resnet101')
    model.add_argument('--head-branches', type=int, choices=(2, 4), default=None,
                       help='2 = the original\'s head (sums two of its four branches), 4 = all four. '
                            'Default: what the checkpoint records, else 2')
    model.add_argument('--coco', action='store_true',
                       help='COCO-pretrained Caffe weights: BGR 0..255 input normalisation')
    model.add_argument('--from-scratch', action='store_true',
                       help='no ImageNet weights for the backbone when no checkpoint is given')
    model.add_argument('--mixed-precision', action='store_true',
                       help='the original\'s flag: torch.autocast with float16 and loss scaling on CUDA; on a CPU '
                            'bfloat16 where native, else float32')
    model.add_argument('--precision', choices=sorted(AUTOCAST_DTYPES), default=None,
                       help='fp32, fp16 (autocast, loss scaling) or bf16 (autocast, no loss scaling: the '
                            'fast choice on A100/H100/H200). Default: what --mixed-precision says')
    model.add_argument('--channels-last', choices=('auto', 'yes', 'no'), default='auto',
                       help='channels-last memory layout for the network; auto: on CUDA under fp16/bf16')
    model.add_argument('--device', default=None, help='cpu, cuda, cuda:1 ...; default: cuda if present '
                       '(under torchrun: cuda:<local rank>)')
    model.add_argument('--sync-bn', action='store_true',
                       help='several processes: SyncBatchNorm over the global batch (default: the '
                            'original\'s plain BatchNorm, per process)')
    model.add_argument('--frozen-bn', action='store_true',
                       help='BatchNorm keeps its stored statistics while training (eval mode), for '
                            'small per-GPU batches; results then do not depend on the process count')
    model.add_argument('--dist-timeout', type=positive_int, default=1800,
                       help='several processes: seconds a collective may wait for a lost process')

    train = parser.add_argument_group('training')
    train.add_argument('--batch-size', type=positive_int, default=8)
    train.add_argument('--lr', type=positive_number, default=0.002, help='supervised learning rate')
    train.add_argument('--weight-decay', type=non_negative_number, default=5e-4)
    train.add_argument('--init-epochs', type=non_negative_int, default=30,
                       help='supervised epochs (the original\'s default in every state): state 2 trains for '
                            'them; state 1 first trains them as a warm-up before round 1, on batches of '
                            'half --batch-size, validating every 1000 steps, as the original did (pass 0 '
                            'to self-train from a trained baseline, as the scripts do)')
    train.add_argument('--st-epochs', type=non_negative_int, nargs='+', default=None,
                       help='epochs of each self-training round, one value per round of --iters (default '
                            '6 each: the original\'s 6 6 6 6 6)')
    train.add_argument('--st-lr', type=positive_number, default=0.002, help='self-training learning rate')
    train.add_argument('--iters', type=positive_int, default=5, help='self-training rounds')
    train.add_argument('--round', type=positive_int, default=None,
                       help='state 1: run only round R (1-based) of the --iters schedule, as its own '
                            'process; --continue-from is then the previous round\'s checkpoint')
    train.add_argument('--init-label-ratio', type=label_ratio, default=0.2,
                       help='CBC ratio of round one, in (0, 1]')
    train.add_argument('--det-label-ratio', type=non_negative_number, default=0.2,
                       help='CBC ratio added per round (a round\'s ratio above 1 keeps every pixel, as 1 does)')
    train.add_argument('--gamma', type=non_negative_number, default=2.0,
                       help='DST: pseudo-labeled pixels weigh p^gamma (the original\'s default; the paper '
                            'used 9 on VOC)')
    train.add_argument('--val-num-steps', type=positive_int, default=1000,
                       help='validate after step N, 2N, ... and after the last (state 2, and state 1\'s '
                            'rounds; its warm-up validates every 1000 steps, as the original)')
    train.add_argument('--no-aug', action='store_true',
                       help='pseudo-labeled images are only resized to the crop size')
    train.add_argument('--crop-size', type=positive_int, nargs=2, default=None, metavar=('H', 'W'),
                       help='training crop; default the description\'s crop_size (321 321 for VOC, 256 512 for '
                            'Cityscapes)')
    train.add_argument('--eval-size', type=positive_int, nargs=2, default=None, metavar=('H', 'W'),
                       help='the canvas evaluation pads to, for a dataset whose evaluation pads (VOC: 505 505); '
                            'default the description\'s eval size')
    train.add_argument('--seed', type=seed_number, default=0, help=f'0..{SEED_MAX}')
    train.add_argument('--save-every', type=non_negative_int, default=500,
                       help='save the last state for --resume every N steps (0: only on SIGINT/SIGTERM)')

    outputs = parser.add_argument_group('outputs and pseudo labels')
    outputs.add_argument('--do-not-save', action='store_true', help='keep no best checkpoint')
    outputs.add_argument('--label-ratio', type=label_ratio, default=None,
                         help='state 0: CBC ratio in (0, 1]; 1 keeps every pixel\'s predicted class '
                              '(default --init-label-ratio)')
    outputs.add_argument('--pseudo-dir', default=None,
                         help='pseudo-label folder; default logs/<exp-name>/pseudo_labels')
    outputs.add_argument('--label-memory-mb', type=positive_int, default=4096,
                         help='state 0/1: prediction maps kept in memory before spilling to disk')
    outputs.add_argument('--cache-dir', default=None,
                         help='state 0/1: where maps beyond --label-memory-mb are spilled (local disk; '
                              'VOC 1/106 spilled 5.2 GB at the default budget, 9.8 GB at most); a private folder is '
                              'made in it and removed afterwards. Default logs/<exp-name>')
    outputs.add_argument('--results-file', default=None,
                         help='JSON results (an existing file is replaced only with --overwrite); default '
                              'logs/<exp-name>/results.json')
    outputs.add_argument('--workers', type=non_negative_int, default=min(4, os.cpu_count() or 1),
                         help='data loading processes (per process under torchrun)')

    evaluation = parser.add_argument_group('evaluation (state 3)')
    evaluation.add_argument('--scales', type=positive_number, nargs='+', default=[1.0],
                            help='average softmax probabilities over these input scales, e.g. 0.5 0.75 '
                                 '1.0 1.25 1.5 (default: the paper\'s single scale)')
    evaluation.add_argument('--flip', action='store_true', help='also average over horizontal flips')
    evaluation.add_argument('--full-resolution', action='store_true',
                            help='Cityscapes: evaluate the 1024x2048 files without the 512x1024 base resize')
    evaluation.add_argument('--sliding-window', type=positive_int, nargs=2, default=None, metavar=('H', 'W'),
                            help='evaluate window by window (e.g. 512 1024 with --full-resolution)')
    evaluation.add_argument('--window-stride', type=positive_int, nargs=2, default=None, metavar=('H', 'W'),
                            help='sliding-window stride; default 2/3 of the window')
    evaluation.add_argument('--save-predictions', default=None, metavar='DIR',
                            help='write each prediction at its image\'s size: color/<name>.png (palette), '
                                 'and for Cityscapes label_ids/<name>.png for the benchmark server')
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.ignored_flags = flags_the_state_ignores(args, parser.get_default)
    args.save = not args.do_not_save
    if args.st_epochs is None:
        args.st_epochs = [DEFAULT_ROUND_EPOCHS] * args.iters
    check_training_flags(args)
    if args.resume and not args.exp_name:
        raise InputError('--resume needs the --exp-name of the run to continue')
    if args.exp_name is None:
        args.exp_name = default_experiment_name()
    name = args.exp_name
    if (not name or name.startswith('.') or Path(name).name != name
            or any(ch.isspace() or not ch.isprintable() for ch in name)):
        raise InputError(f'--exp-name {name!r} must be a plain, visible file name (not empty, no path, '
                         f'no leading dot, no spaces)')
    return args


def default_experiment_name(base_dir='.'):
    """A timestamp and the process id, so two runs started in the same second get two names, and
    a counter while the name is taken (another host's process of the same id, same second)."""
    stem = f'{time.strftime("%Y%m%d-%H%M%S")}-{os.getpid()}'
    name, number = stem, 1
    while (Path(base_dir) / 'logs' / name).exists() or (Path(base_dir) / f'{name}.pt').exists():
        number += 1
        name = f'{stem}-{number}'
    return name


def check_batch_split(args, world_size, device):
    """--batch-size is the global batch: it must divide over the processes."""
    if args.sync_bn and world_size > 1 and device.type != 'cuda':
        raise InputError('--sync-bn needs CUDA devices (torch\'s SyncBatchNorm runs on GPUs only); '
                         'on CPUs use plain BatchNorm or --frozen-bn')
    if args.batch_size % world_size:
        raise InputError(f'--batch-size {args.batch_size} is the global batch and does not divide over '
                         f'{world_size} processes')


def build_context(args, argv, runtime):
    info = dp.get_dataset_info(args.dataset)
    root = dp.resolve_root(info, args.data_root)
    check_batch_split(args, runtime.world_size, runtime.device)
    experiment = Experiment(args.exp_name, results_file=args.results_file,
                            pseudo_label_dir=args.pseudo_dir, save_best=args.save, is_main=runtime.is_main,
                            stop=runtime.stop)
    check_outputs(root, experiment, args)
    error = None
    try:
        experiment.start()
    except RunError as failure:
        error = failure
    try:
        distributed.agree_on_errors(error)
        return describe_run(args, argv, runtime, info, root, experiment)
    except BaseException as failure:
        experiment.end(failure)   # a run refused here leaves the name free (also to a caller in-process)
        raise


def describe_run(args, argv, runtime, info, root, experiment):
    """Check what the name holds, read the lists, resolve the network, save and log the settings:
    the RunContext of a run that may begin."""
    replaced = check_name_once(experiment, args)   # under the lock: no other live run of the name
    lists = list_digests(info, root, args)
    resuming = args.resume and args.state in TRAINING_STATES
    weights = experiment.resume_checkpoint if resuming else args.continue_from
    architecture, adopted = resolve_architecture(args, weights)
    settings = dict(vars(args), **architecture)
    settings.update(data_root_resolved=str(root), lists=lists, device=str(runtime.device),
                    dataset_name=info.name, dataset_digest=info.digest, dataset_described=json.loads(info.described),
                    dataset_description=str(info.description.resolve()) if info.description else None,
                    world_size=runtime.world_size, precision=runtime.precision, channels_last=runtime.channels_last,
                    precision_text=describe_precision(runtime.precision, args.mixed_precision, runtime.device),
                    versions=torch_versions(),
                    command=shlex.join([Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:])))
    if experiment.best_checkpoint in replaced:
        # The earlier run's best checkpoint stays until this run saves its own; until then it is
        # not this run's best, not even after a --resume (see RunContext.best_so_far).
        settings['replaced_best_sha256'] = file_sha256(experiment.best_checkpoint)
    experiment.save_settings(settings)
    experiment.begin(settings['command'])
    experiment.log(f'state {args.state} on {info.title} at {root}; {runtime.device} x {runtime.world_size} '
                   f'process(es), {settings["precision_text"]}; {architecture["backbone"]}, '
                   f'{architecture["head_branches"]}-branch head'
                   + (f' (from the checkpoint: {", ".join(adopted)})' if adopted else ''))
    if replaced:
        experiment.log(f'--overwrite: this run replaces {", ".join(map(str, replaced))} as it writes its own')
    for note in args.ignored_flags:
        experiment.log(f'warning: {note}')
    if args.resume and not resuming:
        experiment.log(f'--resume: a state {args.state} run keeps no state to resume from; it runs from the start')
    return RunContext(args=args, info=info, root=root, runtime=runtime, experiment=experiment,
                      settings=settings, architecture=architecture)


def build_runtime(args, device, stop=None):
    precision = resolve_precision(args.precision, args.mixed_precision, device)
    amp_dtype = AUTOCAST_DTYPES[precision]
    channels_last = {'yes': True, 'no': False}.get(args.channels_last, use_channels_last(device, amp_dtype))
    return Runtime(device=device, amp_dtype=amp_dtype, workers=args.workers, rank=distributed.rank(),
                   world_size=distributed.world_size(), channels_last=channels_last,
                   stop=StopRequest() if stop is None else stop)


def run(args, argv, stop):
    check_versions(torch.__version__, torchvision.__version__)
    device = distributed.init(choose_device(args.device), args.dist_timeout)
    configure_backends(device)
    runtime = build_runtime(args, device, stop)
    torch.manual_seed(args.seed)
    args.exp_name = distributed.broadcast_object(args.exp_name)   # a default name is rank 0's
    context = build_context(args, argv, runtime)
    try:
        runtime.stop_point()   # start-up is done
        check_memory_fits(args, context.info, device)
        STATES[args.state](context)
    except BaseException as error:
        ending = what_ended(context, error)
        context.experiment.close(ending)   # run.log's last line says how and why
        if ending is error:
            raise
        raise ending from None
    context.experiment.close()


def what_ended(context, error):
    """The error a run that failed ends with: a stop acted on outside the training loops (which
    word their own) says what was saved; running out of memory is OutOfMemory on every device."""
    if isinstance(error, StopRequested):
        return Interrupted(stop_message(context, error))
    if is_shared_memory_exhausted(error):
        return out_of_shared_memory()
    if is_out_of_memory(error):
        return out_of_memory(error)
    return error


def stop_message(context, stop):
    """What a stop outside the training loops (which say it themselves) leaves to the user."""
    name = stop.signal_name or 'a stop request'
    last = context.experiment.resume_checkpoint
    if context.args.state in TRAINING_STATES and last.exists():
        return f'{name}: the last saved state is {last}; continue with the same command and --resume'
    return f'{name} during state {context.args.state}: nothing was saved to resume from; run the same command again'


def out_of_shared_memory():
    return OutOfMemory(SHARED_MEMORY_ADVICE)


def out_of_memory(error):
    return OutOfMemory(f'out of memory: {one_line(error)[:300]} (lower --batch-size, --crop-size or --eval-size, '
                       f'use --precision bf16 or fp16, or fewer --workers for host memory)')


def main(argv=None):
    """Run; every expected failure is one line on stderr and its own exit status. SIGINT and
    SIGTERM ask the run to stop (utils/stopping.py); a run asked to stop never exits 0."""
    stop = StopRequest()
    with stop.on_signals():
        status = run_to_the_end(argv, stop)
        if status == 0 and stop:
            print(f'stopped: {stop.signal_name} came as the run ended; it had finished its work', file=sys.stderr)
            status = Interrupted.exit_status
    return status


def run_to_the_end(argv, stop):
    """The run's exit status, having printed the one line of an expected failure."""
    try:
        run(parse_args(argv), argv, stop)
    except RunError as error:
        return fail(error)
    except Exception as error:
        if is_shared_memory_exhausted(error):   # outside the run's experiment
            return fail(out_of_shared_memory())
        if is_out_of_memory(error):
            return fail(out_of_memory(error))
        if not distributed.is_distributed_error(error):
            distributed.report_failure(f'{type(error).__name__}: {one_line(error)[:200]}')
            raise
        print(f'error: lost contact with another process ({one_line(error)[:200]}); '
              f'see the other processes\' messages', file=sys.stderr)
        return PeerFailure.exit_status
    finally:
        distributed.shutdown()
    return 0


def fail(error):
    """Print the one line; in a run of several processes, tell the others."""
    print(f'{error.prefix}: {one_line(error)}', file=sys.stderr)
    distributed.report_failure(one_line(error))
    return error.exit_status


if __name__ == '__mp_main__':   # this file, imported by a loader worker that spawn or forkserver starts
    sys.excepthook = quiet_when_stopped

if __name__ == '__main__':
    exit_status = main()
    end_on_stop_signals(exit_status)   # the run has ended: a signal now only hastens the exit
    sys.exit(exit_status)
