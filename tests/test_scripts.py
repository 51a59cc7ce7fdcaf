"""The shell scripts: every command they would run is a valid main.py command line, rounds chain
checkpoint to checkpoint, finished runs are skipped and killed ones resumed on a rerun.

A stand-in for python (PYTHON=...) records each command and writes the outputs a finished run
leaves (results.json, the checkpoint), so the scripts run in a second."""
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from main import parse_args

REPO_ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
# Record the command, then leave what a finished run leaves.
printf '%s\\n' "$*" >> "$RECORD"
name=""
for arg in "$@"; do case "$arg" in --exp-name=*) name="${arg#--exp-name=}";; esac; done
mkdir -p "logs/$name"
echo '{}' > "logs/$name/results.json"
touch "$name.pt"
"""


@pytest.fixture
def fake_python(tmp_path):
    path = tmp_path / 'fake_python'
    path.write_text(FAKE_PYTHON)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def run_script(script, cwd, fake_python, *extra):
    record = cwd / 'record.txt'
    record.unlink(missing_ok=True)
    env = dict(os.environ, PYTHON=str(fake_python), RECORD=str(record))
    completed = subprocess.run(['bash', str(REPO_ROOT / script), *extra], cwd=cwd, env=env,
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    commands = record.read_text().splitlines() if record.exists() else []
    parsed = []
    for command in commands:
        words = shlex.split(command)
        assert words[0] == str(REPO_ROOT / 'main.py')
        parsed.append(parse_args(words[1:]))   # a valid command line of main.py
    return parsed, completed.stdout


def test_ss_voc_example_chains_rounds_and_skips_finished_ones(tmp_path, fake_python):
    runs, _ = run_script('ss_voc_example.sh', tmp_path, fake_python, '--data-root', '/data/voc')
    assert len(runs) == 15
    for set_id in range(3):
        chain = [run for run in runs if run.sets_id == set_id]
        assert [run.round for run in chain] == [1, 2, 3, 4, 5]
        assert chain[0].continue_from == f'fs_voc_106-{set_id}.pt'
        for previous, run in zip(chain, chain[1:]):
            assert run.continue_from == f'{previous.exp_name}.pt'
        for run in chain:
            assert (run.state, run.gamma, run.iters, run.split, run.st_epochs, run.coco) == \
                (1, 9.0, 5, '106', [6, 6, 6, 6, 6], True)
            assert run.data_root == '/data/voc' and not run.resume

    runs, stdout = run_script('ss_voc_example.sh', tmp_path, fake_python)
    assert runs == [] and stdout.count('skip ') == 15

    # A killed round (no results, a last state) is resumed, and only it runs again.
    (tmp_path / 'logs' / 'ss_voc_106-1_round3' / 'results.json').unlink()
    (tmp_path / 'logs' / 'ss_voc_106-1_round3' / 'last.pt').touch()
    runs, _ = run_script('ss_voc_example.sh', tmp_path, fake_python)
    assert [(run.exp_name, run.resume, run.continue_from) for run in runs] == \
        [('ss_voc_106-1_round3', True, 'ss_voc_106-1_round2.pt')]


@pytest.mark.parametrize('script,dataset,table,lr,weights', [
    ('fs_voc_all.sh', 'voc', {'1': (30, 1000), '4': (60, 500), '8': (85, 350), '20': (134, 220),
                              '50': (212, 140), '106': (300, 100)}, 0.002, 'voc_coco_resnet101.pt'),
    ('fs_city_all.sh', 'city', {'1': (60, 1000), '4': (120, 500), '8': (170, 350), '30': (330, 100)},
     0.004, 'city_coco_resnet101.pt'),
])
def test_supervised_baselines_follow_the_paper(tmp_path, fake_python, script, dataset, table, lr, weights):
    runs, _ = run_script(script, tmp_path, fake_python)
    smallest = max(table, key=int)
    for run in runs:
        assert (run.state, run.dataset, run.lr, run.continue_from, run.coco, run.mixed_precision) == \
            (2, dataset, lr, weights, True, True)
        assert (run.init_epochs, run.val_num_steps) == table[run.split]
    plain = [(run.split, run.sets_id) for run in runs if not run.valtiny]
    expected = [('1', 0)] + [(split, s) for split in table if split != '1' for s in range(3)]
    assert sorted(plain) == sorted(expected)
    assert sorted((run.split, run.sets_id) for run in runs if run.valtiny) == [(smallest, s) for s in range(3)]
    assert len({run.exp_name for run in runs}) == len(runs)
    runs, _ = run_script(script, tmp_path, fake_python)
    assert runs == []
