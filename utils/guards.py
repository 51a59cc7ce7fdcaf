"""What is checked before any work starts, so that a mistake costs a message, not a run or its
results.

- Every output: where it comes from (the working folder, or the flag that names it), that it lies
  outside the dataset, is of the right kind (a file, a folder, under no file), sits in a folder
  that can be written, and has a name the file system accepts, temporary name included. Each was
  found only when the file was written, after the work, before.
- What the experiment name already holds: an experiment name holds one run. A run under a name
  whose files hold an unfinished run (`last.pt`) or a finished one (results, best checkpoint and
  the settings that describe them) would replace or remove them, so it is refused, naming the
  files, unless the user asks for it: `--resume` continues the same run, `--overwrite` lets the
  new run take the name over at its first replacing write (Experiment.take_over_name), never up
  front.
- Sizes that cannot fit in the device's memory (`check_memory_fits`): a CPU run of a crop size
  too large for the host spent its time up to the first step and then ended in a traceback.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

from utils import distributed
from utils.device import memory_available
from utils.errors import InputError, OutOfMemory, OutputError, RunError
from utils.files import existing_ancestor, longest_name_fits

TRAINING_STATES = (1, 2)        # they write the best checkpoint and last.pt
LABELING_STATES = (0, 1)        # they write pseudo labels and may spill maps to --cache-dir


@dataclass(frozen=True)
class Output:
    """One output path of a run and who chose it: `flag` None means the working folder and
    --exp-name (logs/<exp-name>/..., <exp-name>.pt)."""
    path: Path
    flag: str | None
    kind: str                   # 'file' or 'folder'

    @property
    def source(self):
        return self.flag or 'the working folder'


def run_outputs(experiment, args):
    """Every output this state writes, with the flag that named it."""
    outputs = [Output(experiment.log_dir, None, 'folder'),
               Output(experiment.results_file, '--results-file' if args.results_file else None, 'file')]
    if args.state in TRAINING_STATES and args.save:
        outputs.append(Output(experiment.best_checkpoint, None, 'file'))
    if args.state in LABELING_STATES:
        outputs.append(Output(experiment.pseudo_label_dir, '--pseudo-dir' if args.pseudo_dir else None, 'folder'))
        if args.cache_dir:
            outputs.append(Output(Path(args.cache_dir), '--cache-dir', 'folder'))
    if args.state == 3 and args.save_predictions:
        outputs.append(Output(Path(args.save_predictions), '--save-predictions', 'folder'))
    return outputs


def check_outputs(root, experiment, args):
    """Refuse, before anything is written, an output that would land in the dataset, a file
    named where a folder must be (or the reverse), and a name too long for the file system."""
    root = Path(root).resolve()
    for output in run_outputs(experiment, args):
        check_outside_dataset(output, root)
        check_kind(output)
        check_name_length(output)


def check_outside_dataset(output, root):
    """Running from the data root would put logs/ and pseudo labels there; a flag may too."""
    if not output.path.resolve().is_relative_to(root):
        return
    advice = f'choose another {output.flag}' if output.flag else 'run from another folder'
    raise InputError(f'{output.path} is inside the dataset root {root} (from {output.source}); keep '
                     f'outputs out of the dataset: {advice}')


def check_kind(output):
    """A flag's file must not be a folder, its folder not a file, and nothing above either may
    be a file (a NotADirectoryError after the work, before). The working folder's own outputs
    are left to the first write, which reports a failure as one line with exit status 4."""
    if output.flag is None:
        return
    path = output.path
    if path.exists():
        if output.kind == 'file' and path.is_dir():
            raise InputError(f'{output.flag} {path} is a folder; name a file')
        if output.kind == 'folder' and not path.is_dir():
            raise InputError(f'{output.flag} {path} is a file, not a folder; name a folder')
    above = existing_ancestor(path.parent if output.kind == 'file' else path)
    if not above.is_dir():
        raise InputError(f'{output.flag} {path}: {above} is a file, not a folder')
    if not os.access(above, os.W_OK | os.X_OK):
        raise OutputError(f'{output.flag} {path}: cannot write in {above} (permission denied)')


def check_name_length(output):
    """Each part of the path, and a file's temporary name `<name>.<pid>.tmp`, must fit the file
    system's limit (255 bytes): a long --exp-name failed at the first checkpoint save."""
    parts = [output.path] + [parent for parent in output.path.parents if parent.name]
    for part in parts:
        atomic = part == output.path and output.kind == 'file'
        fits, needed, limit = longest_name_fits(part, written_atomically=atomic)
        if fits:
            continue
        what = (f'the temporary name of {part.name} needs {needed} bytes' if atomic
                else f'{part.name[:40]}... is {needed} bytes')
        flag = output.flag or '--exp-name'
        raise InputError(f'{flag}: name too long for the file system: {what}, the limit is {limit}; '
                         f'choose a shorter {flag}')


# --- training flags that cannot make a run ------------------------------------------------------

# A crop side of 9 gives a 1/8 feature map of 2 cells: the smallest crop BatchNorm can train on
# one image of (see feature_map_size).
SMALLEST_TRAINING_SIDE = 9


def check_training_flags(args):
    """Refuse, before anything is read or written, training flags that cannot make a run: they
    ended in results naming a checkpoint never written, or in a traceback mid-epoch."""
    if args.state == 2 and args.init_epochs == 0:
        raise InputError('--init-epochs 0 with --state 2 trains nothing (no step, no checkpoint): give the '
                         'number of supervised epochs (the original\'s default is 30)')
    check_crop_for_batch_norm(args)


# Flags only some states read, and those states (spec: state 0 labels, 1 self-trains, 2 trains,
# 3 evaluates). Given to another state they were ignored in silence: state 1 with --label-ratio 0.3
# ran at 0.2, state 3 took --gamma 9, state 2 --scales 0.5 1.0.
STATES_READING = {
    'label_ratio': (0,), 'init_label_ratio': (0, 1), 'pseudo_dir': (0, 1),
    'det_label_ratio': (1,), 'gamma': (1,), 'st_epochs': (1,), 'st_lr': (1,), 'iters': (1,), 'round': (1,),
    'init_epochs': (1, 2),
    'scales': (3,), 'flip': (3,), 'sliding_window': (3,), 'window_stride': (3,), 'full_resolution': (3,),
    'save_predictions': (3,),
}
# Where a flag is mistaken for another that the state does read: refused, naming that one.
MISTAKEN_FLAGS = {
    ('label_ratio', 1): 'state 1\'s ratios are --init-label-ratio (round 1) and --det-label-ratio (added each round)',
}


def flags_the_state_ignores(args, default_of):
    """One line for each flag set away from its default (`default_of`: dest -> the parser's
    default) that this state does not read, naming the states that do. A script that runs every state
    with one set of flags gives them on purpose, so these are warned (main.py logs them); one
    taken for another flag of this state (MISTAKEN_FLAGS) is refused here, naming that one."""
    ignored = []
    for dest, states in STATES_READING.items():
        value = getattr(args, dest, None)
        if args.state in states or value is None or value is False or value == default_of(dest):
            continue
        flag, which = '--' + dest.replace('_', '-'), ' or '.join(str(state) for state in states)
        if (dest, args.state) in MISTAKEN_FLAGS:
            raise InputError(f'{flag} means nothing in state {args.state} (only state {which} reads it): '
                             f'{MISTAKEN_FLAGS[dest, args.state]}; leave it out')
        ignored.append(f'{flag} means nothing in state {args.state} (only state {which} reads it): ignored')
    return ignored


def feature_map_size(height, width):
    """The size of the network's 1/8 feature map for a height x width input. torchvision's ResNet
    stem (7x7 convolution, stride 2, padding 3; 3x3 max pool, stride 2, padding 1) and layer2's
    stride-2 convolutions (3x3 padding 1, and 1x1 in the shortcut) each map n to
    floor((n - 1) / 2) + 1; layer3 and layer4 are dilated and keep the size."""
    def halve(size):
        return (size - 1) // 2 + 1
    return halve(halve(halve(height))), halve(halve(halve(width)))


def check_crop_for_batch_norm(args):
    """BatchNorm in training mode needs more than one value per channel, and the last batch of an
    epoch, or a process's share of a batch, can be one image: a crop whose 1/8 feature map is a
    single cell then stopped the run mid-epoch with a traceback. --frozen-bn normalises with the
    stored statistics and needs none. The default crops (321, 256x512) are far larger."""
    if args.state not in TRAINING_STATES or args.frozen_bn or not args.crop_size:
        return
    height, width = args.crop_size
    if feature_map_size(height, width) != (1, 1):
        return
    raise InputError(f'--crop-size {height} {width}: the network\'s 1/8 feature map of this crop is a single '
                     f'cell, on which BatchNorm cannot train when a batch holds one image (the last batch of an '
                     f'epoch, or a process\'s share, can); the smallest crop that works has a side of '
                     f'{SMALLEST_TRAINING_SIDE} (e.g. --crop-size {SMALLEST_TRAINING_SIDE} {width}), or add '
                     f'--frozen-bn')


# --- what the experiment name already holds ---------------------------------------------------

def earlier_run_files(experiment, args):
    """[(file, the flag that names it)] of what earlier runs left that a run of these flags would
    replace or remove. Every state writes results and settings and, on finishing, removes
    last.pt; the training states also write the best checkpoint, and state 3 its predictions.
    settings.json counts when it describes a run that left something: that of a run that failed
    before any output describes nothing kept and may be rewritten (e.g. after fixing a bad list)."""
    last = experiment.resume_checkpoint
    named_checkpoint = experiment.base_dir / f'{experiment.name}.pt'
    settings = experiment.log_dir / 'settings.json'
    left_something = any(path.exists() for path in
                         (last, experiment.log_dir / 'results.json', experiment.results_file, named_checkpoint))
    files = []
    if experiment.results_file.exists():
        files.append((experiment.results_file, '--results-file' if args.results_file else '--exp-name'))
    default_results = experiment.log_dir / 'results.json'
    if default_results != experiment.results_file and default_results.exists():
        files.append((default_results, '--exp-name'))   # beside the settings.json this run rewrites
    if last.exists():
        files.append((last, '--exp-name'))
    if args.state in TRAINING_STATES and args.save and named_checkpoint.exists():
        files.append((named_checkpoint, '--exp-name'))
    if left_something and settings.exists():
        files.append((settings, '--exp-name'))
    if args.state == 3 and args.save_predictions and holds_files(Path(args.save_predictions)):
        files.append((Path(args.save_predictions), '--save-predictions'))
    return files


def holds_files(folder):
    return folder.is_dir() and any(path.is_file() for path in folder.rglob('*'))


def earlier_state(experiment):
    """The state the earlier run recorded in its settings, or None."""
    try:
        return json.loads((experiment.log_dir / 'settings.json').read_text()).get('state')
    except (OSError, ValueError, AttributeError):
        return None


def check_name_holds_no_other_run(experiment, args):
    """Refuse a run that would replace or remove what an earlier run under --exp-name (or at a
    path a flag names) left, unless --resume (the same run: its flags are compared with the saved
    ones) or --overwrite. Returns the files --overwrite lets this run replace, for the log. States
    0 and 3 keep no state, so for them --resume continues nothing and changes nothing here."""
    if args.resume and args.state in TRAINING_STATES:
        return []
    found = earlier_run_files(experiment, args)
    replaced = [path for path, _ in found]
    if not found or args.overwrite:
        return replaced
    name = experiment.name
    before = earlier_state(experiment)
    run = f'a state {before} run' if before is not None else 'a run'
    files = ', '.join(map(str, replaced))
    if experiment.resume_checkpoint.exists():
        if args.state in TRAINING_STATES:
            raise InputError(f'{experiment.resume_checkpoint} holds an unfinished run of {name!r}: add '
                             f'--resume to continue it, choose another --exp-name, or add --overwrite to '
                             f'start afresh (replacing {files})')
        raise InputError(f'{experiment.resume_checkpoint} holds an unfinished run of {name!r} ({run}); '
                         f'this state {args.state} run would replace or remove {files}: choose another '
                         f'--exp-name, finish that run with --resume, or add --overwrite to discard it')
    flags = list(dict.fromkeys(flag for _, flag in found))
    held = f'--exp-name {name!r} holds {run} that finished: ' if '--exp-name' in flags else ''
    raise InputError(f'{held}this run would replace {files}; choose another {" or ".join(flags)}, or add '
                     f'--overwrite to replace them')


def earlier_files_left_to_resume(experiment, args):
    """What is still the earlier run's when an --overwrite run is resumed. A run that is resumed
    has written no results, so results under its name are the earlier run's: it stopped before
    taking the name over (its first best checkpoint would have), and the settings.json and best
    checkpoint beside them are the earlier run's too. Its own last.pt is what it resumes from."""
    default_results = experiment.log_dir / 'results.json'
    if not (experiment.results_file.exists() or default_results.exists()):
        return []
    return [path for path, _ in earlier_run_files(experiment, args) if path != experiment.resume_checkpoint]


def check_name_once(experiment, args):
    """`check_name_holds_no_other_run` on the main process (the one that writes), agreed by all;
    the main process's experiment learns which files it will take over (Experiment.replaces)."""
    error, replaced = None, []
    if distributed.is_main():
        try:
            replaced = check_name_holds_no_other_run(experiment, args)
            resumed = args.resume and args.state in TRAINING_STATES
            experiment.replaces(earlier_files_left_to_resume(experiment, args) if resumed else replaced)
        except RunError as failure:
            error = failure
    distributed.agree_on_errors(error)
    return replaced


# --- sizes that cannot fit ------------------------------------------------------------------------

FLOAT32_BYTES = 4


def memory_needs(args, info):
    """[(flag and value, bytes, what)]: lower bounds of what one image of the run's work needs, for
    the work this run will certainly do. A training image: its input (3 channels) and its class
    scores at the crop size with their gradient; an evaluation or labeling image: its input padded
    to --eval-size and its class scores there (the scores are upsampled to the label size,
    float32, whatever the precision). The network's own activations come on top, uncounted."""
    classes = info.num_classes
    needs = []
    if trains(args):
        height, width = args.crop_size or info.crop_size
        needs.append((f'--crop-size {height} {width}', height * width * FLOAT32_BYTES * (3 + 2 * classes),
                      f'one training image (its input and the scores of {classes} classes with their '
                      f'gradients, float32)'))
    if info.base_size is None:
        height, width = args.eval_size or info.eval_size
        needs.append((f'--eval-size {height} {width}', height * width * FLOAT32_BYTES * (3 + classes),
                      f'one evaluation image (its padded input and the scores of {classes} classes, float32)'))
    return needs


def trains(args):
    """Will this run take a training step? State 2 for --init-epochs > 0; state 1 in its warm-up
    (round 1 only) or in a round of more than 0 epochs."""
    if args.state == 2:
        return args.init_epochs > 0
    if args.state != 1:
        return False
    rounds = [args.round - 1] if args.round else range(len(args.st_epochs))
    warm_up = args.init_epochs > 0 and (args.round or 1) == 1
    return warm_up or any(args.st_epochs[index] > 0 for index in rounds if index < len(args.st_epochs))


def check_memory_fits(args, info, device):
    """Refuse, before any work, a size that certainly cannot fit in the device's memory, naming
    the flag, what one image needs and what there is (OutOfMemory, exit 6). Only a lower bound
    is compared, so no run that could fit is refused; a run that passes may still run out, and
    that is one line too (main.py)."""
    available = memory_available(device)
    if available is None:
        return
    have, where = available
    for flag, need, what in memory_needs(args, info):
        if need > have:
            name = flag.split()[0]
            raise OutOfMemory(f'{flag}: {what} needs at least {size_text(need)}, more than the {size_text(have)} '
                              f'of {where} on {device}; lower {name}')


def size_text(count):
    """Bytes in GiB, or TiB when that is shorter."""
    if count >= 1 << 40:
        return f'{count / (1 << 40):.1f} TiB'
    return f'{count / (1 << 30):.1f} GiB'
