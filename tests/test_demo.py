"""The README's first command, in its quick form: the same chain of real command lines."""
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_quick_demo_runs_the_whole_chain(tmp_path):
    completed = subprocess.run([sys.executable, str(REPO_ROOT / 'demo.py'), '--quick', '--data-dir',
                                str(tmp_path / 'data'), '--work-dir', str(tmp_path / 'work')],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    for state in ('--state 2', '--state 1', '--state 3'):
        assert state in completed.stdout
    assert 'supervised, 1/8 of the labels' in completed.stdout and 'DST-CBC, 2 rounds' in completed.stdout
    summary = json.loads((tmp_path / 'work' / 'demo_summary.json').read_text())
    assert 0 <= summary['supervised_miou'] <= 1 and 0 <= summary['dstcbc_miou'] <= 1
    # Rounds only replace the best checkpoint when validation improves.
    assert summary['dstcbc_miou'] >= summary['supervised_miou']
    assert (tmp_path / 'work' / 'demo_dstcbc_round2.pt').is_file()
    assert (tmp_path / 'data' / 'synthetic.json').is_file()
