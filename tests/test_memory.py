"""Out of memory is one line, exit 6, on every device (a CPU allocation that fails is a plain
RuntimeError, which went out as a 60-line traceback with exit 1), and a size that cannot fit is
refused before any work, naming the flag, what it needs and what there is."""
import errno
import os
import re
import resource
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import main
from helpers import MAIN, TINY_FLAGS, run_main
from utils.device import cgroup_memory_limit, is_out_of_memory, memory_available
from utils.errors import OutOfMemory
from utils.guards import check_memory_fits, memory_needs

# What the check reads of a dataset's description: VOC's sizes and class count.
VOC = SimpleNamespace(num_classes=21, crop_size=(321, 321), eval_size=(505, 505), base_size=None)

# main.main after the imports, its address space then limited (as `ulimit -v` does) to what it
# uses plus `headroom` MiB: enough for the network and an input batch (about 400 MB at 2000x2000),
# not for the output of its first convolution (1 GB).
LIMITED_RUN = '''import resource, sys
sys.path.insert(0, {repo!r})
import main
in_use = int(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmSize:'))) * 1024
limit = in_use + {headroom} * 2 ** 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main.main(sys.argv[1:]))
'''


@pytest.mark.parametrize('flag,state', [('--crop-size', 2), ('--eval-size', 3)])
def test_sizes_that_cannot_fit_are_refused_before_any_work(synthetic_voc, supervised_checkpoint, tmp_path, flag,
                                                           state):
    """--crop-size 100000 100000 and --eval-size 100000 100000 ran until the first batch and
    ended in the CPU allocator's traceback, exit 1."""
    (tmp_path / 'sup.pt').write_bytes(supervised_checkpoint.read_bytes())
    completed = run_main(tmp_path, '--state', state, '--exp-name', 'big', '--continue-from', 'sup.pt', *TINY_FLAGS,
                         '--split', 8, '--init-epochs', 1, '--data-root', synthetic_voc, flag, 100000, 100000)
    errors = [line for line in completed.stderr.splitlines() if line.strip()]
    assert completed.returncode == 6 and len(errors) == 1, completed.stderr[-3000:]
    assert errors[0].startswith(f'error: {flag} 100000 100000: one ') and 'needs at least' in errors[0]
    assert re.search(r'needs at least [\d.]+ [GT]iB, more than the [\d.]+ [GT]iB of ', errors[0])
    assert f'lower {flag}' in errors[0]
    assert 'checked' not in completed.stdout, 'refused before the data check'
    assert not (tmp_path / 'logs' / 'big' / 'results.json').exists()


def test_the_memory_check_refuses_only_what_certainly_cannot_fit(monkeypatch):
    """A lower bound of one image's input and class scores, for the work the run will do: the
    defaults pass with room to spare, a run that does no training step is not held to its crop."""
    voc = VOC
    needs = dict((flag, need) for flag, need, _ in memory_needs(main.parse_args(['--state', '2']), voc))
    assert needs == {'--crop-size 321 321': 321 * 321 * 4 * (3 + 2 * 21), '--eval-size 505 505': 505 * 505 * 4 * 24}
    no_steps = main.parse_args(['--state', '3', '--crop-size', '100000', '100000'])
    assert [flag for flag, _, _ in memory_needs(no_steps, voc)] == ['--eval-size 505 505']
    rounds = ['--state', '1', '--iters', '2', '--init-epochs', '0', '--crop-size', '100000', '100000']
    assert [flag for flag, _, _ in memory_needs(main.parse_args([*rounds, '--st-epochs', '0', '0']), voc)] == \
        ['--eval-size 505 505']
    monkeypatch.setattr('utils.guards.memory_available', lambda device: (needs['--crop-size 321 321'], 'a test'))
    check_memory_fits(main.parse_args(['--state', '2', '--eval-size', '321', '321']), voc, torch.device('cpu'))
    with pytest.raises(OutOfMemory, match=r'--crop-size 322 321: one training image .* needs at least'):
        check_memory_fits(main.parse_args(['--state', '2', '--crop-size', '322', '321']), voc, torch.device('cpu'))
    monkeypatch.setattr('utils.guards.memory_available', lambda device: None)   # meta: unknown, nothing refused
    check_memory_fits(main.parse_args(['--state', '2', '--crop-size', '100000', '100000']), voc,
                      torch.device('meta'))


def write_file(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_container_s_or_job_s_memory_cap_is_what_the_check_compares_against(tmp_path, monkeypatch):
    """Under Slurm or in a container the cgroup's cap, not the machine's memory, is what a run
    can use: a run over it is killed by the kernel (no line, no save). The lowest cap over the
    process's cgroup and its ancestors counts, in cgroup v2 (`memory.max`) and v1
    (`memory.limit_in_bytes`, whose "no limit" is the largest page-aligned int64)."""
    mount = tmp_path / 'cgroup'
    v2 = tmp_path / 'v2'
    write_file(v2, '0::/slurm/job_7/step_0\n')
    write_file(mount / 'memory.max', 'max\n')
    write_file(mount / 'slurm' / 'memory.max', 'max\n')
    write_file(mount / 'slurm' / 'job_7' / 'memory.max', f'{8 << 30}\n')        # the job's cap
    write_file(mount / 'slurm' / 'job_7' / 'step_0' / 'memory.max', 'max\n')
    assert cgroup_memory_limit(v2, mount) == 8 << 30
    write_file(mount / 'slurm' / 'job_7' / 'step_0' / 'memory.max', f'{6 << 30}\n')
    assert cgroup_memory_limit(v2, mount) == 6 << 30
    write_file(mount / 'slurm' / 'job_7' / 'memory.max', f'{4 << 30}\n')        # a parent's lower cap holds
    assert cgroup_memory_limit(v2, mount) == 4 << 30

    v1 = tmp_path / 'v1'
    write_file(v1, '5:cpu,cpuacct:/a\n4:memory:/docker/abc\n0::/\n')
    write_file(mount / 'memory' / 'memory.limit_in_bytes', '9223372036854771712\n')   # v1's "no limit"
    write_file(mount / 'memory' / 'docker' / 'abc' / 'memory.limit_in_bytes', '9223372036854771712\n')
    write_file(mount / 'memory.max', 'max\n')
    assert cgroup_memory_limit(v1, mount) is None
    write_file(mount / 'memory' / 'docker' / 'memory.limit_in_bytes', f'{3 << 30}\n')
    assert cgroup_memory_limit(v1, mount) == 3 << 30

    inside = tmp_path / 'inside'   # a container names a folder its mount does not show: the mount's root
    write_file(inside, '0::/kubepods/pod1/c2\n')
    write_file(mount / 'memory.max', f'{2 << 30}\n')
    assert cgroup_memory_limit(inside, mount) == 2 << 30
    assert cgroup_memory_limit(tmp_path / 'no such file', mount) is None

    monkeypatch.setattr('utils.device.cgroup_memory_limit', lambda: 1 << 30)
    have, where = memory_available(torch.device('cpu'))
    assert have == 1 << 30 and 'cgroup' in where
    with pytest.raises(OutOfMemory, match=r"--crop-size 4000 4000: .* more than the 1.0 GiB of memory limit of this "
                                          r"process's cgroup"):
        check_memory_fits(main.parse_args(['--state', '2', '--crop-size', '4000', '4000']), VOC, torch.device('cpu'))
    monkeypatch.setattr('utils.device.cgroup_memory_limit', lambda: None)
    assert memory_available(torch.device('cpu'))[0] > 1 << 30


class Huge(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        return torch.empty(1 << 50, dtype=torch.uint8)


def test_out_of_memory_is_recognised_on_every_device():
    """The CPU allocator's error, CUDA's, Python's and numpy's MemoryError, the same from a
    loader worker (re-raised with its traceback in the message) and a fork refused for lack of
    memory; not other errors."""
    with pytest.raises(RuntimeError) as cpu:
        torch.empty(1 << 50, dtype=torch.uint8)
    with pytest.raises(MemoryError) as numpy_error:
        np.empty(1 << 50, dtype=np.uint8)
    with pytest.raises(RuntimeError) as from_worker:
        next(iter(torch.utils.data.DataLoader(Huge(), num_workers=1)))
    assert 'DataLoader worker' in str(from_worker.value)
    for error in (cpu.value, numpy_error.value, from_worker.value, MemoryError(),
                  torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB'),
                  OSError(errno.ENOMEM, 'Cannot allocate memory'),
                  RuntimeError('Caught MemoryError in DataLoader worker process 0.\nOriginal Traceback ...')):
        assert is_out_of_memory(error), error
    for error in (RuntimeError('mat1 and mat2 shapes cannot be multiplied'), ValueError('memory'),
                  OSError(errno.ENOSPC, 'No space left on device'), KeyboardInterrupt()):
        assert not is_out_of_memory(error), error


@pytest.mark.skipif(not os.path.exists('/proc/self/status'), reason='reads VmSize from /proc')
def test_a_real_out_of_memory_inside_the_network_is_one_line_exit_6(synthetic_voc, supervised_checkpoint, tmp_path):
    """Under `ulimit -v` the network's first convolution on 2000x2000 inputs cannot allocate:
    the CPU allocator's RuntimeError was a traceback, exit 1."""
    (tmp_path / 'sup.pt').write_bytes(supervised_checkpoint.read_bytes())
    script = LIMITED_RUN.format(repo=str(MAIN.parent), headroom=900)
    completed = subprocess.run([sys.executable, '-c', script, '--state', '3', '--exp-name', 'oom', '--continue-from',
                                'sup.pt', *map(str, TINY_FLAGS), '--data-root', str(synthetic_voc), '--eval-size',
                                '2000', '2000'], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, TQDM_DISABLE='1'))
    errors = [line for line in completed.stderr.splitlines() if line.strip()]
    assert completed.returncode == 6 and len(errors) == 1, completed.stderr[-3000:]
    assert errors[0].startswith('error: out of memory: ') and "DefaultCPUAllocator: can't allocate memory" in errors[0]
    assert 'you tried to allocate 1024000000 bytes' in errors[0], 'the first convolution: 4 x 64 x 1000 x 1000 float32'
    assert 'lower --batch-size' in errors[0]
    assert 'ended: failed (exit 6): out of memory' in (tmp_path / 'logs' / 'oom' / 'run.log').read_text()


def test_full_shared_memory_is_one_line_exit_6(synthetic_voc, supervised_checkpoint, tmp_path):
    """Loader workers hand their batches over in /dev/shm (64 MB in a Docker container by default):
    when it is full, torch's "unable to write to file </torch_...>: No space left on device" came
    back from the worker as a traceback, exit 1. A file size limit of 200 kB (kept only for the
    run, in this process) lets the run write its small files but not a batch's 590 kB segment:
    EFBIG rather than ENOSPC, as a full /dev/shm refuses to grow one."""
    (tmp_path / 'sup.pt').write_bytes(supervised_checkpoint.read_bytes())
    flags = list(TINY_FLAGS)
    flags[flags.index('--workers') + 1] = '2'
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
    try:
        completed = run_main(tmp_path, '--state', '3', '--exp-name', 'shm', '--continue-from', 'sup.pt', *flags,
                             '--data-root', synthetic_voc)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    errors = [line for line in completed.stderr.splitlines() if line.strip()]
    assert completed.returncode == 6 and len(errors) == 1, completed.stderr[-3000:]
    assert errors[0].startswith('error: out of shared memory (/dev/shm)') and '--workers 0' in errors[0]
    assert '--shm-size' in errors[0]
