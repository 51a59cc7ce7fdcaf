"""The main job on the embedded default data, on a CPU in minutes (the README's first command).

Makes the synthetic VOC-layout set if absent, then runs the real command lines one after another:
supervised training on 1/8 of the labels (state 2), DST-CBC rounds each as its own process
(state 1 with --round), and evaluation of both checkpoints (state 3), and prints the two mIoUs
side by side. Every command is printed, so it can be rerun or adapted by hand.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent

# Settings chosen so that the whole demo fits in about five minutes on a 2-core CPU: the
# supervised run has converged by its 600 steps (150 epochs of 30 images), so the DST-CBC gain is
# not just more training.
DEMO = {
    'images': {'num_train': 240, 'num_val': 60, 'seed': 0},
    'common': ['--dataset', 'voc', '--backbone', 'resnet14', '--crop-size', '80', '80',
               '--eval-size', '96', '128', '--split', '8', '--sets-id', '0', '--batch-size', '8',
               '--device', 'cpu', '--save-every', '0'],
    'supervised': ['--init-epochs', '150', '--lr', '0.02', '--val-num-steps', '100'],
    'self_training': ['--gamma', '9', '--st-lr', '0.02', '--st-epochs', '4', '4', '--iters', '2',
                      '--val-num-steps', '53'],
}
QUICK = {  # for tests: the same chain in seconds (numbers are meaningless)
    'images': {'num_train': 24, 'num_val': 8, 'seed': 0},
    'common': DEMO['common'],
    'supervised': ['--init-epochs', '2', '--lr', '0.02', '--val-num-steps', '4'],
    'self_training': ['--gamma', '9', '--st-lr', '0.02', '--st-epochs', '1', '1', '--iters', '2',
                      '--val-num-steps', '10'],
}


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
    print(f'demo data: made {images["num_train"]} training and {images["num_val"]} validation images '
          f'in {data_dir} ({time.time() - started:.1f} s)')


def run(command, work_dir):
    print('\n$ python ' + ' '.join([Path(command[1]).name] + command[2:]), flush=True)
    completed = subprocess.run(command, cwd=work_dir)
    if completed.returncode != 0:
        sys.exit(f'demo: the command above failed with status {completed.returncode}')


def results(work_dir, name):
    return json.loads((work_dir / 'logs' / name / 'results.json').read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data-dir', type=Path, default=REPO_DIR / 'data' / 'demo_voc')
    parser.add_argument('--work-dir', type=Path, default=REPO_DIR / 'demo_output',
                        help='where checkpoints, logs and pseudo labels go')
    parser.add_argument('--workers', default='0', help='data loading processes per run (0: in the main process)')
    parser.add_argument('--quick', action='store_true', help='a seconds-long run, for tests')
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else DEMO
    started = time.time()
    data_dir = args.data_dir.resolve()
    if args.quick and args.data_dir == parser.get_default('data_dir'):
        data_dir = data_dir.with_name('demo_voc_quick')
    ensure_data(data_dir, settings['images'])
    work_dir = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, str(REPO_DIR / 'main.py'), '--data-root', str(data_dir),
            '--workers', args.workers] + settings['common']

    run(base + ['--state', '2', '--exp-name', 'demo_supervised'] + settings['supervised'], work_dir)
    rounds = int(settings['self_training'][settings['self_training'].index('--iters') + 1])
    previous = 'demo_supervised.pt'
    for round_number in range(1, rounds + 1):
        name = f'demo_dstcbc_round{round_number}'
        run(base + ['--state', '1', '--exp-name', name, '--continue-from', previous,
                    '--round', str(round_number)] + settings['self_training'], work_dir)
        previous = f'{name}.pt'
    for name, checkpoint in (('demo_eval_supervised', 'demo_supervised.pt'), ('demo_eval_dstcbc', previous)):
        run(base + ['--state', '3', '--exp-name', name, '--continue-from', checkpoint], work_dir)

    supervised, dstcbc = results(work_dir, 'demo_eval_supervised'), results(work_dir, 'demo_eval_dstcbc')
    rows = [('supervised, 1/8 of the labels', supervised), (f'DST-CBC, {rounds} rounds', dstcbc)]
    print(f'\n{"validation set (" + str(settings["images"]["num_val"]) + " images)":<34}{"mIoU":>8}{"pixel acc":>11}')
    for label, result in rows:
        print(f'{label:<34}{result["miou"] * 100:>7.2f}%{result["pixel_accuracy"] * 100:>10.2f}%')
    print(f'\ndemo finished in {(time.time() - started) / 60:.1f} minutes; outputs in {work_dir}')
    summary = {'supervised_miou': supervised['miou'], 'dstcbc_miou': dstcbc['miou'],
               'minutes': (time.time() - started) / 60}
    (work_dir / 'demo_summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    return summary


if __name__ == '__main__':
    main()
