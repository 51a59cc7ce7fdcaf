"""The main job on the embedded default data, on a CPU in minutes (the README's first command).

Makes the synthetic VOC-layout set if absent, then runs the real command lines one after another:
supervised training on 1/8 of the labels (state 2), DST-CBC rounds each as its own process
(state 1 with --round), and evaluation of both checkpoints (state 3). Every command is printed,
so it can be rerun or adapted by hand. (`--quick`, the tests' form, runs the same command lines
with tiny settings through each program's main() in this process.)

Last, `predict.py` segments a few new images the network never saw (made with another seed) into
<work-dir>/predictions/, as a user segments their own photographs.

The protocol is the honest one the README recommends for real data: select on valtiny, report on
val. Training and self-training validate on valtiny (`--valtiny`), so every checkpoint choice
(the best step, whether a round is kept) is made there; val, a separate set of images, is scored
once at the end by state 3 and never chooses anything. Both figures are printed, each named.
Pictures of the result (label maps, rounds, per-class IoU, confusion matrix) go to
<work-dir>/pictures/.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent

# Settings: the supervised run converges (its best valtiny mIoU comes before its last step and
# the validations after it do not improve on it, so a DST-CBC gain is not just more training), and
# each round trains 3 epochs over the 240 images, long enough for the pseudo labels to matter (with
# 1 epoch per round the rounds changed little). The README gives the time and figures measured.
# The rounds start from the supervised checkpoint (--init-epochs 0: no warm-up of their own), and
# a rerun of the demo replaces its own earlier outputs (--overwrite).
DEMO = {
    'images': {'num_train': 240, 'num_val': 60, 'num_valtiny': 30},
    'common': ['--dataset', 'voc', '--backbone', 'resnet14', '--crop-size', '80', '80',
               '--eval-size', '96', '128', '--split', '8', '--sets-id', '0', '--batch-size', '8',
               '--device', 'cpu', '--save-every', '0', '--overwrite'],
    'supervised': ['--init-epochs', '60', '--lr', '0.02', '--val-num-steps', '20'],
    'self_training': ['--init-epochs', '0', '--gamma', '9', '--st-lr', '0.02', '--st-epochs', '3', '3',
                      '--iters', '2', '--val-num-steps', '53'],
    'pictures': {'val_images': 3, 'unlabeled_images': 3, 'new_images': 3},
}
QUICK = {  # for tests: the same chain in seconds (numbers are meaningless)
    'images': {'num_train': 24, 'num_val': 8, 'num_valtiny': 6},
    'common': DEMO['common'],
    'supervised': ['--init-epochs', '2', '--lr', '0.02', '--val-num-steps', '4'],
    'self_training': ['--init-epochs', '0', '--gamma', '9', '--st-lr', '0.02', '--st-epochs', '1', '1',
                      '--iters', '2', '--val-num-steps', '10'],
    'pictures': {'val_images': 2, 'unlabeled_images': 2, 'new_images': 2},
}

SUPERVISED, EVAL_SUPERVISED, EVAL_DSTCBC = 'demo_supervised', 'demo_eval_supervised', 'demo_eval_dstcbc'
PICTURES = {  # file names in <work-dir>/pictures/
    'val_panels': 'val_panels.png',
    'pseudo_label_panels': 'pseudo_label_panels.png',
    'rounds': 'rounds.png',
    'class_iou': 'class_iou.png',
    'confusion': 'confusion.png',
    'new_images': 'new_images.png',
}
NEW_IMAGE_SEED = 1_000_003   # the new images' generator: never one of the synthetic set's seeds
VALIDATION_LINE = re.compile(r' supervised step (\d+)/(\d+): val mIoU ([0-9.]+)')


def round_name(number):
    return f'demo_dstcbc_round{number}'


def flag_value(flags, name):
    return flags[flags.index(name) + 1]


def ensure_data(data_dir, images):
    """Make the synthetic set unless it is already there with the same settings."""
    from utils.synthetic import make_synthetic_voc

    marker = data_dir / 'synthetic.json'
    if marker.is_file():
        made = json.loads(marker.read_text())
        if all(made.get(key) == value for key, value in images.items()):
            print(f'demo data: {data_dir} (already made)')
            return
    started = time.time()
    make_synthetic_voc(data_dir, **images)
    print(f'demo data: made {images["num_train"]} training, {images["num_val"]} validation (val, '
          f'reported) and {images["num_valtiny"]} selection (valtiny) images with seed '
          f'{images["seed"]} in {data_dir} ({time.time() - started:.1f} s)')


def thread_environment(threads):
    """The environment of the runs: torch's thread count fixed to `threads` (0: torch's default,
    one per core)."""
    environment = dict(os.environ)
    if threads:
        for name in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
            environment[name] = str(threads)
    return environment


def run(command, work_dir, environment=None, in_process=False):
    """Print a command line and run it, as a process of its own, or with `in_process` (--quick,
    for tests) through its program's main() in this process: the same command line without an
    interpreter start (seconds each) per command."""
    print('\n$ python ' + ' '.join([Path(command[1]).name] + command[2:]), flush=True)
    if in_process:
        status = run_in_this_process(command, work_dir, environment)
    else:
        status = subprocess.run(command, cwd=work_dir, env=environment).returncode
    if status != 0:
        sys.exit(f'demo: the command above failed with status {status}')


def run_in_this_process(command, work_dir, environment):
    import importlib

    import torch

    program = importlib.import_module(Path(command[1]).stem)
    threads = (environment or {}).get('OMP_NUM_THREADS')
    if threads:   # what thread_environment sets for a process of its own
        torch.set_num_threads(int(threads))
    here = os.getcwd()
    os.chdir(work_dir)
    try:
        return program.main([str(arg) for arg in command[2:]]) or 0
    finally:
        os.chdir(here)


def results(work_dir, name):
    return json.loads((work_dir / 'logs' / name / 'results.json').read_text())


def validation_curve(work_dir, name):
    """[(step, mIoU fraction)] of a training run's validations, read from its run.log."""
    log = work_dir / 'logs' / name / 'run.log'
    if not log.is_file():
        return []
    return [(int(match.group(1)), float(match.group(3)) / 100)
            for match in map(VALIDATION_LINE.search, log.read_text().splitlines()) if match]


def display_class_names(class_names):
    """The dataset's class names with the synthetic classes named by what they are."""
    from utils.synthetic import SHAPES, TEXTURES

    names = list(class_names)
    for index, shape in SHAPES.items():
        names[index] = f'{TEXTURES[index]} {shape}'
    return names


def make_new_images(folder, count, seed):
    """`count` images the network never saw (another seed than the set's), as JPEG files a user
    would have, and their hidden ground truth beside (for the picture only; predict.py never
    reads it). Returns the names."""
    import numpy as np
    from PIL import Image

    from utils.synthetic import make_sample

    rng = np.random.default_rng([NEW_IMAGE_SEED, seed])
    (folder / 'images').mkdir(parents=True, exist_ok=True)
    (folder / 'truth').mkdir(exist_ok=True)
    names = []
    for number in range(count):
        image, label = make_sample(rng, int(rng.integers(88, 97)), int(rng.integers(112, 129)))
        name = f'new_{number:02d}'
        Image.fromarray(image).save(folder / 'images' / f'{name}.jpg', quality=95)
        Image.fromarray(label).save(folder / 'truth' / f'{name}.png')
        names.append(name)
    return names


def new_image_rows(new_dir, predictions_dir, names):
    """Panel rows of the new images: the image, its hidden truth, predict.py's prediction and
    confidence, read from the files predict.py wrote."""
    import numpy as np
    from PIL import Image

    rows = []
    for name in names:
        with Image.open(new_dir / 'images' / f'{name}.jpg') as image, \
                Image.open(new_dir / 'truth' / f'{name}.png') as truth, \
                Image.open(predictions_dir / 'index' / f'{name}.png') as prediction:
            rows.append({'name': name, 'image': np.asarray(image.convert('RGB')), 'ground_truth': np.asarray(truth),
                         'prediction': np.asarray(prediction), 'pseudo_label': None,
                         'confidence': np.load(predictions_dir / 'confidence' / f'{name}.npy')})
    return rows


def make_pictures(work_dir, data_dir, settings, last_checkpoint, rounds, threads=0, new_images=None):
    """The figures of the run, in <work-dir>/pictures/; returns {key: path} and the image ids."""
    import torch

    import visualize

    if threads:
        torch.set_num_threads(threads)

    folder = work_dir / 'pictures'
    paths = {key: folder / name for key, name in PICTURES.items()}
    common = settings['common']
    eval_size = [int(size) for size in common[common.index('--eval-size') + 1:][:2]]

    def panels(checkpoint, list_name, count=visualize.PANELS_DEFAULT_COUNT, image_ids=None,
               pseudo_dir=None):
        return visualize.compute_panels(work_dir / checkpoint, data_root=data_dir, dataset='voc',
                                        list_name=list_name, image_ids=image_ids, count=count,
                                        pseudo_dir=pseudo_dir, eval_size=eval_size)

    # Held-out val images: the supervised checkpoint's view above DST-CBC's, image by image.
    supervised_rows, info = panels(f'{SUPERVISED}.pt', 'val', count=settings['pictures']['val_images'])
    val_ids = [row['name'] for row in supervised_rows]
    dstcbc_rows, _ = panels(last_checkpoint, 'val', image_ids=val_ids)
    names = display_class_names(info.class_names)
    rows = []
    for supervised_row, dstcbc_row in zip(supervised_rows, dstcbc_rows):
        rows.append(dict(supervised_row, name=f'supervised  {supervised_row["name"]}'))
        rows.append(dict(dstcbc_row, name=f'DST-CBC  {dstcbc_row["name"]}'))
    visualize.save_panels(rows, paths['val_panels'], info.colors, names,
                          title=f'held-out val images: supervised ({SUPERVISED}.pt) and DST-CBC '
                                f'({last_checkpoint})')

    # Unlabeled training images with the last round's pseudo labels, beside the prediction and
    # confidence of the checkpoint that made them (the round's starting checkpoint): a pseudo
    # label is that prediction where the confidence passes its class's threshold.
    last_round = results(work_dir, round_name(rounds))
    labeler = f'{round_name(rounds - 1)}.pt' if rounds > 1 else f'{SUPERVISED}.pt'
    unlabeled_list = f'{flag_value(common, "--split")}_unlabeled_{flag_value(common, "--sets-id")}'
    pseudo_dir = work_dir / last_round['pseudo_label_dir']
    pseudo_rows, _ = panels(labeler, unlabeled_list, count=settings['pictures']['unlabeled_images'],
                            pseudo_dir=pseudo_dir)
    ratio = last_round['rounds'][-1]['ratio']
    visualize.save_panels(pseudo_rows, paths['pseudo_label_panels'], info.colors, names,
                          title=f'unlabeled training images: round {rounds} pseudo labels (CBC ratio '
                                f'{ratio:g}), made by {labeler}')

    round_results = [results(work_dir, round_name(number)) for number in range(1, rounds + 1)]
    entries, start_miou = visualize.rounds_from_results(round_results)
    visualize.plot_rounds(entries, paths['rounds'], start_miou=start_miou,
                          val_label=visualize.validation_label(round_results),
                          title='DST-CBC rounds (checkpoints selected on valtiny)')

    class_names, supervised_iou = visualize.class_iou_from_results(results(work_dir, EVAL_SUPERVISED))
    _, dstcbc_iou = visualize.class_iou_from_results(results(work_dir, EVAL_DSTCBC))
    shown = [index for index, name in enumerate(class_names)
             if supervised_iou.get(name) is not None or dstcbc_iou.get(name) is not None]
    visualize.plot_class_iou([names[index] for index in shown],
                             [supervised_iou.get(class_names[index]) for index in shown],
                             [dstcbc_iou.get(class_names[index]) for index in shown],
                             paths['class_iou'], labels=('supervised (val)', 'DST-CBC (val)'))

    if new_images is not None:
        new_dir, predictions_dir, names_new = new_images
        visualize.save_panels(new_image_rows(new_dir, predictions_dir, names_new), paths['new_images'], info.colors,
                              names, title=f'new images the network never saw: predict.py with {last_checkpoint}')

    matrix, _ = visualize.confusion_from_results(results(work_dir, EVAL_DSTCBC))
    present = [index for index in range(len(matrix))
               if sum(matrix[index]) > 0 or sum(row[index] for row in matrix) > 0]
    visualize.plot_confusion([[matrix[row][column] for column in present] for row in present],
                             [names[index] for index in present], paths['confusion'])
    return paths, {'val': val_ids, 'unlabeled': [row['name'] for row in pseudo_rows],
                   'unlabeled_list': unlabeled_list, 'labeler': labeler,
                   'new': list(new_images[2]) if new_images is not None else []}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data-dir', type=Path, default=None,
                        help='where the synthetic set is made (default data/demo_voc, '
                             'data/demo_voc_seed<N> for other seeds, _quick for --quick)')
    parser.add_argument('--work-dir', type=Path, default=None,
                        help='where checkpoints, logs, pseudo labels and pictures go (default '
                             'demo_output, demo_output_seed<N> for other seeds)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the synthetic images (default 0)')
    parser.add_argument('--workers', default='0', help='data loading processes per run (0: in the main process)')
    parser.add_argument('--threads', type=int, default=1,
                        help='CPU threads per run (default 1: the figures then do not depend on the '
                             'core count, and a shared machine does not stall every parallel region; '
                             '0: torch\'s default, one per core, faster on an idle machine)')
    parser.add_argument('--quick', action='store_true',
                        help='a seconds-long run, for tests: tiny settings, and the command lines run in this process')
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error('--threads must be 0 (one per core) or more')
    settings = QUICK if args.quick else DEMO
    images = dict(settings['images'], seed=args.seed)
    started = time.time()
    suffix = f'_seed{args.seed}' if args.seed else ''
    data_dir = (args.data_dir or REPO_DIR / 'data' / (f'demo_voc{suffix}' + ('_quick' if args.quick else ''))).resolve()
    work_dir = (args.work_dir or REPO_DIR / f'demo_output{suffix}').resolve()
    ensure_data(data_dir, images)
    work_dir.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, str(REPO_DIR / 'main.py'), '--data-root', str(data_dir),
            '--workers', args.workers] + settings['common']

    # Selection on valtiny: the best supervised step and every round's keep-or-not.
    environment = thread_environment(args.threads)
    print(f'each run below uses {args.threads} CPU thread(s): OMP_NUM_THREADS={args.threads} (--threads)'
          if args.threads else 'each run below uses torch\'s default CPU threads (one per core)')
    run(base + ['--state', '2', '--exp-name', SUPERVISED, '--valtiny'] + settings['supervised'], work_dir,
        environment, args.quick)
    rounds = int(flag_value(settings['self_training'], '--iters'))
    previous = f'{SUPERVISED}.pt'
    for round_number in range(1, rounds + 1):
        name = round_name(round_number)
        run(base + ['--state', '1', '--exp-name', name, '--continue-from', previous, '--valtiny',
                    '--round', str(round_number)] + settings['self_training'], work_dir, environment, args.quick)
        previous = f'{name}.pt'
    # Report on val, which chose nothing.
    for name, checkpoint in ((EVAL_SUPERVISED, f'{SUPERVISED}.pt'), (EVAL_DSTCBC, previous)):
        run(base + ['--state', '3', '--exp-name', name, '--continue-from', checkpoint], work_dir,
            environment, args.quick)

    supervised, dstcbc = results(work_dir, EVAL_SUPERVISED), results(work_dir, EVAL_DSTCBC)
    for result in (supervised, dstcbc):
        if result.get('reported_on') != 'val' or result.get('selected_on') not in (None, 'valtiny'):
            sys.exit(f'demo: {result["checkpoint"]} was selected on {result.get("selected_on")} '
                     f'and reported on {result.get("reported_on")}; expected valtiny and val')
    selection = {'supervised': results(work_dir, SUPERVISED), 'dstcbc': results(work_dir, round_name(rounds))}
    curve = validation_curve(work_dir, SUPERVISED)
    training_minutes = (time.time() - started) / 60

    # New images, never seen: predict.py, as a user segments their own photographs.
    new_dir, predictions_dir = work_dir / 'new_images', work_dir / 'predictions'
    new_names = make_new_images(new_dir, settings['pictures']['new_images'], args.seed)
    run([sys.executable, str(REPO_DIR / 'predict.py'), '--dataset', 'voc', '--checkpoint', previous,
         '--out', str(predictions_dir), str(new_dir / 'images'), '--confidence', 'npy', '--overwrite',
         '--eval-size', *settings['common'][settings['common'].index('--eval-size') + 1:][:2],
         '--device', 'cpu', '--workers', args.workers], work_dir, environment, args.quick)

    paths, shown = make_pictures(work_dir, data_dir, settings, previous, rounds, args.threads,
                                 new_images=(new_dir, predictions_dir, new_names))

    num_val, num_valtiny = images['num_val'], images['num_valtiny']
    rows = [('supervised, 1/8 of the labels', supervised, selection['supervised']),
            (f'DST-CBC, {rounds} rounds', dstcbc, selection['dstcbc'])]
    print(f'\nseed {args.seed}: checkpoints selected on valtiny ({num_valtiny} images), '
          f'reported on val ({num_val} other images, never used to select)')
    print(f'{"":<32}{"val mIoU":>10}{"val pixel acc":>15}{"valtiny mIoU":>15}')
    print(f'{"":<32}{"(held-out)":>10}{"(held-out)":>15}{"(selection)":>15}')
    for label, reported, selected in rows:
        print(f'{label:<32}{reported["miou"] * 100:>9.2f}%{reported["pixel_accuracy"] * 100:>14.2f}%'
              f'{selected["best_miou"] * 100:>14.2f}%')
    if curve:
        best_step, best_miou = max(curve, key=lambda point: (point[1], -point[0]))
        print('supervised validation on valtiny (step: mIoU): '
              + ', '.join(f'{step}: {miou * 100:.2f}' for step, miou in curve)
              + f'; best at step {best_step} of {curve[-1][0]}')
    print('\npictures:')
    for path in paths.values():
        print(f'  {path}')
    minutes = (time.time() - started) / 60
    print(f'\ndemo finished in {minutes:.1f} minutes; outputs in {work_dir}')
    summary = {
        'seed': args.seed, 'quick': args.quick,
        'num_val': num_val, 'num_valtiny': num_valtiny,
        'supervised_miou': supervised['miou'], 'dstcbc_miou': dstcbc['miou'],   # val, held-out
        'supervised_pixel_accuracy': supervised['pixel_accuracy'],
        'dstcbc_pixel_accuracy': dstcbc['pixel_accuracy'],
        'supervised_valtiny_miou': selection['supervised']['best_miou'],      # selection
        'dstcbc_valtiny_miou': selection['dstcbc']['best_miou'],
        'dstcbc_checkpoint': previous,
        'supervised_curve': [[step, miou] for step, miou in curve],
        'pictures': {key: str(path) for key, path in paths.items()},
        'picture_images': shown,
        'training_minutes': training_minutes, 'minutes': minutes,
    }
    (work_dir / 'demo_summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    return summary


if __name__ == '__main__':
    main()
