"""benchmarks/bench_gpu.py, the GPU check, kept from rotting: CI runs it with --device cpu --small
and reads its report; on a machine with CUDA the same small run goes through the GPU as well.
Its failure handling (a failed run is recorded, the rest goes on, the exit status says so) is
checked on its own functions."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / 'benchmarks'
SCRIPT = BENCHMARKS / 'bench_gpu.py'
PRECISIONS = ('fp32', 'fp16', 'bf16')
CHAIN_RUNS = {'sup_fp16': 2, 'labels_fp16': 0, 'dst_fp16': 1, 'eval_fp16': 3, 'eval_fp16_on_cpu': 3,
              'sup_bf16': 2, 'labels_bf16': 0, 'dst_bf16': 1, 'eval_bf16': 3, 'eval_bf16_on_cpu': 3,
              'labels_fp32': 0}

if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))


def run_bench(tmp_path, *args):
    out = tmp_path / 'report.json'
    completed = subprocess.run([sys.executable, str(SCRIPT), '--small', '--out', str(out),
                                '--work-dir', str(tmp_path / 'work'), *args],
                               cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.is_file(), completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed, json.loads(out.read_text())


def is_probability(value):
    return isinstance(value, float) and 0.0 <= value <= 1.0


def check_chain(chain, device):
    runs = {run['name']: run for run in chain['runs']}
    assert {name: run['state'] for name, run in runs.items()} == CHAIN_RUNS
    for name, run in runs.items():
        assert run['exit_status'] == 0, (name, run.get('output_tail'))
        assert run['wall_s'] > 0
        assert run['device'] == ('cpu' if name.endswith('_on_cpu') else device)
        results = run['results']
        if run['state'] in (1, 2):
            assert is_probability(results['best_miou'])
        if run['state'] == 0:
            assert is_probability(results['labeled_share']) and results['labeled_share'] > 0
            assert len(results['thresholds']) == 21 and all(0 < t <= 1 for t in results['thresholds'])
        if run['state'] == 1:
            assert len(results['rounds']) == 1 and len(results['rounds'][0]['thresholds']) == 21
        if run['state'] == 3:
            assert is_probability(results['miou'])
            assert results['protocol']['flip'] and results['protocol']['scales'] == [1.0, 0.75]
    for precision in ('fp16', 'bf16'):
        compared = chain['cpu_vs_device'][precision]
        assert compared['agree'] is True
        assert compared['device_miou'] == runs[f'eval_{precision}']['results']['miou']
        assert compared['cpu_miou'] == runs[f'eval_{precision}_on_cpu']['results']['miou']
    labels = chain['fp16_vs_fp32_labels']
    assert labels['agree'] is True and labels['images'] > 0 and labels['pixels'] > 0
    assert len(labels['threshold_differences']) == 21
    assert labels['thresholds_fp16'] == runs['labels_fp16']['results']['thresholds']
    assert labels['thresholds_fp32'] == runs['labels_fp32']['results']['thresholds']
    assert 0 <= labels['differing_pixel_share'] <= labels['tolerance']


def check_speed(row, device):
    assert row['images_per_s'] > 0 and row['images'] > 0 and row['seconds'] > 0, row
    if device == 'cpu':
        assert row['peak_memory_mb'] is None
    else:
        assert row['peak_memory_mb'] > 0


def check_network(network, device):
    for phase in ('training', 'evaluation', 'labeling'):
        assert set(network[phase]) == set(PRECISIONS)
        for precision, row in network[phase].items():
            kinds = ('ours', 'bare') + (('ours_device_batches',) if phase != 'training' else ())
            for kind in kinds:
                check_speed(row[kind], device)
            assert row['ours_over_bare'] > 0
            if phase != 'training':
                assert row['device_batches_over_bare'] > 0
                assert row['ours']['fed_by'] == 'loader' and row['ours_device_batches']['fed_by'] == 'device batches'
    for precision in ('bf16', 'fp16'):
        layouts = network['layouts'][precision]
        assert layouts['channels_last']['channels_last'] is True
        assert layouts['contiguous']['channels_last'] is False
        check_speed(layouts['channels_last'], device)
        check_speed(layouts['contiguous'], device)
        assert layouts['channels_last_over_contiguous'] > 0
    assert network['training']['fp16']['ours']['loss_scale'][0] > 0
    assert network['training']['bf16']['ours']['loss_scale'] == [None, None]
    for precision in PRECISIONS:
        syncs = network['host_syncs'][precision]
        if device == 'cpu':
            assert syncs['per_step'] is None and 'CUDA' in syncs['reason']
        else:
            # One read per step (the loss and the step's flags): 0 would mean nothing was counted.
            assert syncs['per_step'] and set(syncs['per_step']) == {1}, syncs


def check_report(completed, report, device):
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert report['ok'] is True and report['failures'] == []
    env = report['environment']
    for key in ('date', 'python', 'torch', 'torchvision', 'cuda', 'cudnn', 'cpu', 'device', 'gpu'):
        assert key in env
    assert env['device'] == device and (env['gpu'] is None) == (device == 'cpu')
    assert report['settings']['plan'] == 'small' and report['wall_s'] > 0
    check_chain(report['chain'], device)
    check_network(report['network'], device)
    assert 'failures: 0' in completed.stdout and 'ours/bare' in completed.stdout


def test_the_gpu_check_runs_on_a_cpu(tmp_path):
    """The whole script at --small on the CPU: every section, every run exits 0, sane values."""
    completed, report = run_bench(tmp_path, '--device', 'cpu')
    check_report(completed, report, 'cpu')
    assert report['chain']['mode'] == 'main.main() in this process'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_the_gpu_check_runs_on_cuda(tmp_path):
    """The same small run through the GPU (chain runs in subprocesses): peak memory measured and
    at most one host sync per training step."""
    completed, report = run_bench(tmp_path, '--device', 'cuda')
    check_report(completed, report, 'cuda')
    assert report['chain']['mode'] == 'subprocess per run'


def test_a_failure_is_recorded_and_the_rest_goes_on(tmp_path):
    """A failing main.py run gives its exit status and last line; a failing measurement becomes
    an error entry and a failure in the report, which is still written, marked not ok."""
    import bench_gpu

    run = bench_gpu.run_cli(['--state', '3', '--data-root', str(tmp_path / 'absent'), '--device', 'cpu'],
                            tmp_path, isolate=True)
    assert run['exit_status'] == 2 and 'does not exist' in run['output_tail']
    report = bench_gpu.Report(tmp_path / 'report.json', started=0.0)
    report.data['settings'] = {'time_limit_s': math.inf}

    def broken():
        raise RuntimeError('out of memory, say')

    assert bench_gpu.recorded(report, 'training fp16 ours', broken)['error'] == 'RuntimeError: out of memory, say'
    assert bench_gpu.recorded(report, 'training fp16 bare', lambda: {'images_per_s': 1.0}) == {'images_per_s': 1.0}
    saved = json.loads((tmp_path / 'report.json').read_text())
    assert saved['ok'] is False
    assert saved['failures'] == ['training fp16 ours: RuntimeError: out of memory, say']
