"""The shell scripts: every command they would run is a valid main.py command line, rounds chain
checkpoint to checkpoint, valtiny selections are scored on val, finished runs are skipped and
killed ones resumed on a rerun, and a launcher prefix (LAUNCH, e.g. torchrun) comes first.

A stand-in for python (PYTHON=...) or for the launcher (LAUNCH=...) records its argv and writes
the outputs a finished run leaves (results.json, the checkpoint), so the scripts run in a second."""
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from main import parse_args

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN = str(REPO_ROOT / 'main.py')
EXTRA = ('--data-root', '/data/x', '--workers', '3')   # extra arguments: they reach every run
SCRIPTS = ('fs_voc_all.sh', 'fs_city_all.sh', 'ss_voc_example.sh', 'ss_voc_all.sh', 'ss_city_all.sh')
RUN_COUNTS = {'fs_voc_all.sh': 22, 'fs_city_all.sh': 16, 'ss_voc_example.sh': 33,
              'ss_voc_all.sh': 93, 'ss_city_all.sh': 63}

FAKE_PROGRAM = """#!/usr/bin/env bash
# Record the whole argv, one quoted word each, then leave what a finished run leaves.
printf '%q ' "$0" "$@" >> "$RECORD"
echo >> "$RECORD"
name=""
for arg in "$@"; do case "$arg" in --exp-name=*) name="${arg#--exp-name=}";; esac; done
mkdir -p "logs/$name"
echo '{}' > "logs/$name/results.json"
: > "$name.pt"
"""

# The published VOC 1/106 self-training settings (spec 8, 11), used for every fraction and dataset.
DST_CBC = dict(state=1, gamma=9.0, val_num_steps=1000, iters=5, init_epochs=0,
               st_epochs=[6, 6, 6, 6, 6], st_lr=0.002, coco=True, mixed_precision=True)


def fake_program(folder, name):
    path = folder / name
    path.write_text(FAKE_PROGRAM)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture(scope='session')
def fake_python(tmp_path_factory):
    return fake_program(tmp_path_factory.mktemp('bin'), 'fake_python')


@pytest.fixture(scope='session')
def finished(tmp_path_factory, fake_python):
    """finished(script) -> (runs, folder): the script run once, in a folder of its own, with
    EXTRA; the folder then holds the outputs of every finished run. Cached: each script runs once
    for the whole session (copy the folder before changing it)."""
    cache = {}

    def get(script):
        if script not in cache:
            folder = tmp_path_factory.mktemp(script.replace('.', '_'))
            cache[script] = (run_script(script, folder, fake_python, *EXTRA)[0], folder)
        return cache[script]
    return get


def run_script(script, cwd, fake_python, *extra, launch=None):
    """Run a script in `cwd`; returns the parsed main.py arguments of every recorded command, and
    stdout. With `launch` (the LAUNCH words), PYTHON points nowhere: the launcher must be used."""
    record = cwd / 'record.txt'
    record.unlink(missing_ok=True)
    env = dict(os.environ, PYTHON=str(fake_python), RECORD=str(record))
    env.pop('LAUNCH', None)
    prefix = [str(fake_python)]
    if launch is not None:
        env.update(LAUNCH=' '.join(launch), PYTHON=str(cwd / 'no_such_python'))
        prefix = list(launch)
    completed = subprocess.run(['bash', str(REPO_ROOT / script), *extra], cwd=cwd, env=env,
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    commands = record.read_text().splitlines() if record.exists() else []
    parsed = []
    for command in commands:
        words = shlex.split(command)
        assert words[:len(prefix) + 1] == prefix + [MAIN], command
        parsed.append(parse_args(words[len(prefix) + 1:]))   # a valid command line of main.py
    return parsed, completed.stdout


def settings(run, keys):
    return {key: getattr(run, key) for key in keys}


def check_chain(chain, prefix, start):
    """Five rounds named <prefix>_round<R>, round 1 from `start`, round R from round R-1's file."""
    assert [run.exp_name for run in chain] == [f'{prefix}_round{r}' for r in range(1, 6)]
    assert [run.round for run in chain] == [1, 2, 3, 4, 5]
    assert chain[0].continue_from == start
    for previous, run in zip(chain, chain[1:]):
        assert run.continue_from == f'{previous.exp_name}.pt'


def check_valtiny_evaluations(runs, dataset, stem):
    """After each valtiny chain's last round, its checkpoint is scored on val (state 3, no
    --valtiny), and the evaluation's name ends the chain."""
    for set_id in range(3):
        name = f'{stem}-{set_id}_valtiny'
        chain = [run for run in runs if run.exp_name.startswith(f'{name}_round')]
        check_chain(chain, name, f'fs_{stem.split("_", 1)[1]}-{set_id}_valtiny.pt')
        assert all(run.valtiny and run.sets_id == set_id for run in chain)
        evaluation = runs[runs.index(chain[-1]) + 1]
        assert evaluation.exp_name == f'{name}_eval'
        assert settings(evaluation, ['state', 'dataset', 'continue_from', 'valtiny', 'coco',
                                     'mixed_precision']) == \
            dict(state=3, dataset=dataset, continue_from=f'{name}_round5.pt', valtiny=False,
                 coco=True, mixed_precision=True)


def test_ss_voc_example_chains_rounds_and_scores_valtiny_selections_on_val(finished):
    runs, _ = finished('ss_voc_example.sh')
    assert len(runs) == RUN_COUNTS['ss_voc_example.sh']
    assert len({run.exp_name for run in runs}) == len(runs)
    assert all(run.data_root == '/data/x' and run.workers == 3 and not run.resume for run in runs)
    for set_id in range(3):
        chain = [run for run in runs if run.state == 1 and run.sets_id == set_id and not run.valtiny]
        check_chain(chain, f'ss_voc_106-{set_id}', f'fs_voc_106-{set_id}.pt')
    for run in runs:
        assert run.dataset == 'voc'
        if run.state == 1:
            assert settings(run, DST_CBC) == DST_CBC
            assert run.split == '106'
    check_valtiny_evaluations(runs, 'voc', 'ss_voc_106')


@pytest.mark.parametrize('script,dataset,splits,smallest', [
    ('ss_voc_all.sh', 'voc', ['106', '50', '20', '8', '4'], '106'),
    ('ss_city_all.sh', 'city', ['30', '8', '4'], '30'),
])
def test_self_training_of_every_fraction(finished, script, dataset, splits, smallest):
    runs, _ = finished(script)
    assert len(runs) == RUN_COUNTS[script] == len(splits) * 3 * 5 + 3 * 5 + 3
    assert len({run.exp_name for run in runs}) == len(runs)
    assert all(run.data_root == '/data/x' and run.workers == 3 and not run.resume for run in runs)
    for run in runs:
        assert run.dataset == dataset
        if run.state == 1:
            assert settings(run, DST_CBC) == DST_CBC
    for split in splits:
        for set_id in range(3):
            chain = [run for run in runs if run.state == 1 and not run.valtiny
                     and (run.split, run.sets_id) == (split, set_id)]
            check_chain(chain, f'ss_{dataset}_{split}-{set_id}', f'fs_{dataset}_{split}-{set_id}.pt')
    assert {run.split for run in runs if run.valtiny} == {smallest}
    check_valtiny_evaluations(runs, dataset, f'ss_{dataset}_{smallest}')
    assert sum(run.state == 3 for run in runs) == 3


def test_ss_voc_all_shares_ss_voc_example_s_runs_unchanged(finished):
    """The two scripts share the 1/106 names, so either skips the other's finished runs: the
    settings behind a shared name must be the same. No other name is shared between scripts."""
    everything = {run.exp_name: run for run in finished('ss_voc_all.sh')[0]}
    for run in finished('ss_voc_example.sh')[0]:
        assert vars(everything[run.exp_name]) == vars(run)
    names = [run.exp_name for script in SCRIPTS if script != 'ss_voc_example.sh'
             for run in finished(script)[0]]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize('script,dataset,table,lr,weights', [
    ('fs_voc_all.sh', 'voc', {'1': (30, 1000), '4': (60, 500), '8': (85, 350), '20': (134, 220),
                              '50': (212, 140), '106': (300, 100)}, 0.002, 'voc_coco_resnet101.pt'),
    ('fs_city_all.sh', 'city', {'1': (60, 1000), '4': (120, 500), '8': (170, 350), '30': (330, 100)},
     0.004, 'city_coco_resnet101.pt'),
])
def test_supervised_baselines_follow_the_paper(finished, script, dataset, table, lr, weights):
    runs, _ = finished(script)
    assert len(runs) == RUN_COUNTS[script]
    assert len({run.exp_name for run in runs}) == len(runs)
    assert all(run.data_root == '/data/x' and run.workers == 3 and not run.resume for run in runs)
    smallest = max(table, key=int)
    trained = [run for run in runs if run.state != 3]
    for run in trained:
        assert (run.state, run.dataset, run.lr, run.continue_from, run.coco, run.mixed_precision) == \
            (2, dataset, lr, weights, True, True)
        assert (run.init_epochs, run.val_num_steps) == table[run.split]
    plain = [(run.split, run.sets_id) for run in trained if not run.valtiny]
    expected = [('1', 0)] + [(split, s) for split in table if split != '1' for s in range(3)]
    assert sorted(plain) == sorted(expected)
    assert sorted((run.split, run.sets_id) for run in trained if run.valtiny) == [(smallest, s) for s in range(3)]
    # Each valtiny baseline is then scored on val.
    names = [run.exp_name for run in runs]
    for set_id in range(3):
        name = f'fs_{dataset}_{smallest}-{set_id}_valtiny'
        evaluation = runs[names.index(name) + 1]
        assert settings(evaluation, ['exp_name', 'state', 'dataset', 'continue_from', 'valtiny',
                                     'coco', 'mixed_precision']) == \
            dict(exp_name=f'{name}_eval', state=3, dataset=dataset, continue_from=f'{name}.pt',
                 valtiny=False, coco=True, mixed_precision=True)
    assert len(runs) - len(trained) == 3


@pytest.mark.parametrize('script,killed,previous', [
    ('ss_voc_example.sh', 'ss_voc_106-1_round3', 'ss_voc_106-1_round2.pt'),
    ('ss_voc_all.sh', 'ss_voc_20-2_round5', 'ss_voc_20-2_round4.pt'),
    ('ss_city_all.sh', 'ss_city_30-0_valtiny_round1', 'fs_city_30-0_valtiny.pt'),
    ('fs_voc_all.sh', 'fs_voc_8-1', 'voc_coco_resnet101.pt'),
    ('fs_city_all.sh', 'fs_city_30-2_valtiny_eval', 'fs_city_30-2_valtiny.pt'),
])
def test_rerun_skips_finished_runs_and_resumes_a_killed_one(tmp_path, finished, fake_python, script,
                                                            killed, previous):
    folder = tmp_path / 'work'
    shutil.copytree(finished(script)[1], folder)
    runs, stdout = run_script(script, folder, fake_python, *EXTRA)
    assert runs == [] and stdout.count('skip ') == RUN_COUNTS[script]

    # A killed run (no results, a last state) is resumed, and only it runs again.
    (folder / 'logs' / killed / 'results.json').unlink()
    (folder / 'logs' / killed / 'last.pt').touch()
    runs, _ = run_script(script, folder, fake_python, *EXTRA)
    assert [(run.exp_name, run.resume, run.continue_from) for run in runs] == [(killed, True, previous)]


@pytest.mark.parametrize('script', SCRIPTS)
def test_launch_prefix_comes_before_main_py(tmp_path, finished, fake_python, script):
    """LAUNCH="torchrun ..." runs `torchrun ... /abs/main.py <flags>` (run_script checks the words,
    and that PYTHON is not used), with the same runs and flags as without it."""
    torchrun = fake_program(tmp_path, 'fake_torchrun')
    launch = [str(torchrun), '--nnodes', '2', '--nproc_per_node', '2', '--rdzv-backend', 'c10d',
              '--rdzv-endpoint', 'host:29400']
    launched, _ = run_script(script, tmp_path, fake_python, *EXTRA, launch=launch)
    assert [vars(run) for run in launched] == [vars(run) for run in finished(script)[0]]
