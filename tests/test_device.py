"""Device placement and host syncs, seen without a GPU.

Tests run on CPUs, where the model and its inputs always share a device, so a batch that never
reaches the GPU goes unnoticed. Here the network runs on the `meta` device (tensors with shapes
but no data) while the loaders stay on the CPU, under a dispatch mode that refuses any operation
mixing a meta tensor with a CPU tensor of more than one element, as CUDA refuses a CPU tensor
(0-dim CPU scalars mix with any device there too; copies between devices are what moving is). The
host cannot read meta tensors, so every read goes through `utils.device.to_host`, which these
tests replace by zeros of the right shape and count: any other read raises. Runs of two
processes (tests/meta_ranks.py) do the same and record every tensor handed to a collective.
"""
from pathlib import Path

import pytest
import torch

import main
from helpers import confident_checkpoint
from meta_device import HostReads, RefuseMixedDevices
from utils.errors import InputError, Interrupted, TrainingDiverged
from utils.losses import DynamicLoss
from utils.metrics import ConfusionMatrix
from utils.stopping import StopRequest
from utils.synthetic import make_synthetic_voc
from utils.training import (Fetched, LoopHooks, Runtime, StepBatch, TrainState, build_optimizer,
                            build_scheduler, fetch, train_loop, SKIPPED_STEPS_LIMIT)

@pytest.fixture(scope='module')
def meta_work(tmp_path_factory):
    work = tmp_path_factory.mktemp('meta')
    make_synthetic_voc(work / 'voc', num_train=16, num_val=4, seed=3)
    confident_checkpoint(work / 'start.pt', architecture={'backbone': 'resnet14', 'head_branches': 2})
    return work


META = ['--device', 'meta', '--backbone', 'resnet14', '--crop-size', '32', '32', '--eval-size', '96', '128',
        '--workers', '0', '--batch-size', '4', '--split', '8', '--sets-id', '0', '--save-every', '3']


def run_on_meta(work, monkeypatch, capsys, *args):
    monkeypatch.chdir(work)
    reads = HostReads(monkeypatch.setattr)
    with RefuseMixedDevices():
        status = main.main([*META, '--data-root', str(work / 'voc'), *map(str, args)])
    captured = capsys.readouterr()
    assert status == 0, captured.err[-3000:]
    return reads


# Every state, as the meta-device tests run it; `state_command` names the run.
META_STATES = {
    'supervised': ('--state', 2, '--continue-from', 'start.pt', '--init-epochs', 2, '--val-num-steps', 2),
    'pseudo-labeling': ('--state', 0, '--continue-from', 'start.pt', '--label-ratio', 0.5),
    'self-training': ('--state', 1, '--continue-from', 'start.pt', '--iters', 1, '--st-epochs', 1,
                      '--init-epochs', 1, '--val-num-steps', 2, '--gamma', 2),
    'evaluation': ('--state', 3, '--continue-from', 'start.pt', '--scales', 1.0, 0.75, '--flip',
                   '--save-predictions', '{run}-predictions'),
}


def state_command(state, run):
    """The flags of one of META_STATES as the experiment `run` (its outputs named after it)."""
    return ['--exp-name', run, *(str(value).format(run=run) for value in META_STATES[state])]


# Loading a CPU checkpoint into a network on `meta` copies nothing, and torch says so per tensor.
@pytest.mark.filterwarnings('ignore:for .*copying from a non-meta parameter')
@pytest.mark.parametrize('state', list(META_STATES))
def test_every_state_computes_on_the_device_it_was_given(meta_work, monkeypatch, capsys, state):
    """The network on `meta`, the data on the CPU: every batch must be moved before it meets the
    network, the loss or a device tensor, and every host read must go through to_host."""
    reads = run_on_meta(meta_work, monkeypatch, capsys, *state_command(state, f'one-{state}'))
    assert reads.count > 0, 'the run read results back from the device through to_host'


def meta_state(steps, scaler_enabled=False, lr=0.01):
    torch.manual_seed(0)
    from models import deeplab_v2
    model = deeplab_v2(3, backbone='resnet14').to('meta')
    optimizer = build_optimizer(model, lr, 5e-4)
    scaler = torch.amp.GradScaler('cpu', enabled=scaler_enabled)
    return TrainState(model, optimizer, build_scheduler(optimizer, steps), scaler, steps)


def quiet_hooks(log=None):
    return LoopHooks(validate=lambda: ConfusionMatrix(3), on_best=lambda state, scores: None,
                     on_validated=lambda state, scores: None, save_last=lambda state: 'last.pt',
                     log=log or (lambda message: None), scalar=lambda *values: None)


def meta_batches(count):
    images = torch.zeros(2, 3, 32, 32, device='meta')
    labels = torch.zeros(2, 32, 32, dtype=torch.uint8, device='meta')
    return iter([StepBatch(images, labels, None, 2 * 32 * 32)] * count)


def test_a_training_step_reads_the_device_once(monkeypatch):
    """Whatever is read once per phase (the first batch's count and status, the weights and both
    confusion matrices at the validation after the last step), each step adds one read."""
    counts = {}
    for steps in (3, 6):
        reads = HostReads(monkeypatch.setattr)
        with RefuseMixedDevices():
            train_loop(meta_state(steps), meta_batches(steps), DynamicLoss(0.0), Runtime(torch.device('meta')),
                       quiet_hooks(), val_every=1000, save_every=0, num_classes=3)
        counts[steps] = reads.count
    assert counts[6] - counts[3] == 3, counts


def cpu_state(steps, scaler_enabled=False, lr=0.01):
    torch.manual_seed(0)
    from models import deeplab_v2
    model = deeplab_v2(3, backbone='resnet14')
    optimizer = build_optimizer(model, lr, 0.0)
    scaler = torch.amp.GradScaler('cpu', enabled=scaler_enabled)
    return TrainState(model, optimizer, build_scheduler(optimizer, steps), scaler, steps)


def cpu_batches(count, split_index=None):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 3, (2, 32, 32), generator=generator, dtype=torch.uint8)
    return iter([StepBatch(images, labels, split_index, labels.numel())] * count)


class InfiniteGradient(torch.autograd.Function):
    """Passes values through and sends infinite gradients back: a finite loss whose gradients
    overflow, as float16 ones do."""

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, gradient):
        return gradient * float('inf')


class OverflowingLoss(DynamicLoss):
    def sum_and_count(self, logits, targets, split_index=None):
        return super().sum_and_count(InfiniteGradient.apply(logits), targets, split_index)


def test_float16_skips_are_logged_and_a_long_run_of_them_stops_the_run():
    state = cpu_state(SKIPPED_STEPS_LIMIT + 5, scaler_enabled=True)
    before = {name: p.detach().clone() for name, p in state.model.named_parameters()}
    logged = []
    with pytest.raises(TrainingDiverged, match=f'overflowed at {SKIPPED_STEPS_LIMIT} steps in a row') as error:
        train_loop(state, cpu_batches(SKIPPED_STEPS_LIMIT + 5), OverflowingLoss(0.0), Runtime(torch.device('cpu')),
                   quiet_hooks(logged.append), val_every=1000, save_every=0, num_classes=3)
    assert len(str(error.value).splitlines()) == 1
    skips = [line for line in logged if 'skipped the update' in line]
    assert len(skips) == SKIPPED_STEPS_LIMIT and 'step 1:' in skips[0]
    assert all(torch.equal(before[name], p) for name, p in state.model.named_parameters()), \
        'no skipped step changed the weights'


def test_non_finite_gradients_without_loss_scaling_stop_before_the_update():
    state = cpu_state(4)
    before = {name: p.detach().clone() for name, p in state.model.named_parameters()}
    with pytest.raises(TrainingDiverged, match='gradients are NaN or infinite at step 1; stopped before the update'):
        train_loop(state, cpu_batches(4), OverflowingLoss(0.0), Runtime(torch.device('cpu')), quiet_hooks(),
                   val_every=1000, save_every=0, num_classes=3)
    assert all(torch.equal(before[name], p) for name, p in state.model.named_parameters())


class BrokenAfter:
    """Batches that fail with a data error (or a stop) when the `failing`-th is fetched."""

    def __init__(self, batches, failing, error=None, stop=None):
        self.batches, self.failing, self.error, self.stop, self.fetched = batches, failing, error, stop, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.fetched += 1
        if self.fetched == self.failing:
            if self.stop is not None:
                self.stop.signal_name = 'SIGTERM'
                raise RuntimeError('DataLoader worker (pid 1) exited unexpectedly')
            raise self.error
        return next(self.batches)


@pytest.mark.parametrize('kind', ['data error', 'stop'])
def test_a_failure_fetching_the_next_batch_ends_the_run_after_the_completed_step(kind):
    """The next batch is fetched before the step's sync: its failure is learned there, the step
    in hand is completed, the state after it saved, and the run ends."""
    state = cpu_state(6)
    saved = []
    hooks = quiet_hooks()
    hooks.save_last = lambda s: saved.append(s.step) or 'last.pt'
    stop = StopRequest()
    batches = BrokenAfter(cpu_batches(6), failing=3, error=InputError('x.png: cannot read label'),
                          stop=stop if kind == 'stop' else None)
    expected = InputError if kind == 'data error' else Interrupted
    with pytest.raises(expected):
        train_loop(state, batches, DynamicLoss(0.0), Runtime(torch.device('cpu'), stop=stop), hooks,
                   val_every=1000, save_every=0, num_classes=3)
    assert saved == [2] and state.step == 2, 'two steps were taken, then the state was saved'


def test_fetch_reports_what_happened():
    stop = StopRequest()
    stop.signal_name = 'SIGINT'
    assert fetch(iter([1]), stop).status == 1
    error = InputError('broken')
    fetched = fetch(BrokenAfter(iter([]), 1, error=error), StopRequest())
    assert fetched.status == 2 and fetched.error is error and fetched.valid_pixels == 0
    assert Fetched().valid_pixels == 0


BROADCAST_SCRIPT = '''
import torch
from models import deeplab_v2
from utils import distributed
from utils.training import Runtime, evaluate, make_loader

device = distributed.init(torch.device('cpu'), 60)
rank = distributed.rank()
torch.manual_seed(0)
model = deeplab_v2(3, backbone='resnet14')
with torch.no_grad():
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.add_(rank + 1)   # as if each rank's BatchNorm had seen its own batches
dataset = [{'image': torch.zeros(3, 32, 32), 'label': torch.zeros(32, 32, dtype=torch.uint8)}] * 3
evaluate(model, make_loader(dataset, batch_size=1), 3, Runtime(device, rank=rank, world_size=2))
sums = [float(buffer.double().sum()) for buffer in model.buffers() if buffer.is_floating_point()]
print('SUMS', rank, sums)
distributed.shutdown()
'''


def test_every_rank_validates_the_model_rank_0_saves(tmp_path):
    """Per-process BatchNorm leaves each rank with its own running statistics; evaluation first
    gives every rank rank 0's, so all of them score the model that rank 0 saves."""
    from test_distributed import finish, start_script
    script = tmp_path / 'broadcast.py'
    script.write_text(BROADCAST_SCRIPT)
    outputs = finish(start_script(tmp_path, 2, script), timeout=300)
    sums = {}
    for code, stdout, stderr in outputs:
        assert code == 0, stderr[-2000:]
        line = next(line for line in stdout.splitlines() if line.startswith('SUMS'))
        rank, values = line.split(' ', 2)[1:]
        sums[int(rank)] = values
    torch.manual_seed(0)
    from models import deeplab_v2
    reference = deeplab_v2(3, backbone='resnet14')
    expected = [float(buffer.double().sum() + buffer.numel()) for buffer in reference.buffers()
                if buffer.is_floating_point()]
    assert sums[0] == sums[1] == str(expected)


@pytest.mark.parametrize('device, local_rank, visible, expected', [
    ('cuda', 5, 1, 'cuda:0'),     # srun --gpus-per-task 1: local ranks 0..7, one GPU visible each
    ('cuda', 3, 8, 'cuda:3'),     # torchrun on one machine of 8 GPUs
    ('cuda:2', 0, 4, 'cuda:2'),   # --device names it
])
def test_each_process_uses_the_gpu_it_sees(device, local_rank, visible, expected):
    from utils.distributed import rank_device
    assert str(rank_device(torch.device(device), local_rank, visible)) == expected


def test_a_process_without_its_gpu_is_one_line():
    from utils.distributed import rank_device
    with pytest.raises(InputError, match='local rank 4 has no GPU \\(2 visible\\)'):
        rank_device(torch.device('cuda'), 4, 2)
    with pytest.raises(InputError, match='--device cuda:3: only 2 GPU'):
        rank_device(torch.device('cuda:3'), 0, 2)


def test_precision_flags(monkeypatch):
    from utils.experiment import resolve_precision
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    assert resolve_precision(None, False, cuda) == 'fp32'
    assert resolve_precision(None, True, cuda) == 'fp16', '--mixed-precision keeps the original meaning on CUDA'
    assert resolve_precision('bf16', True, cpu) == 'bf16'
    assert resolve_precision('fp16', False, cpu) == 'fp16'
    with pytest.raises(InputError, match='--mixed-precision .* --precision fp32'):
        resolve_precision('fp32', True, cpu)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda: False)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Tesla V100')
    with pytest.raises(InputError, match='--precision bf16: Tesla V100 does not compute bfloat16'):
        resolve_precision('bf16', False, cuda)


def test_only_float16_scales_the_loss_and_layouts_follow_the_precision():
    from utils.device import use_channels_last
    from utils.experiment import AUTOCAST_DTYPES
    assert Runtime(torch.device('cpu'), AUTOCAST_DTYPES['fp16']).grad_scaler().is_enabled()
    assert not Runtime(torch.device('cpu'), AUTOCAST_DTYPES['bf16']).grad_scaler().is_enabled()
    assert not Runtime(torch.device('cpu')).grad_scaler().is_enabled()
    assert use_channels_last(torch.device('cuda'), torch.bfloat16)
    assert not use_channels_last(torch.device('cuda'), None) and not use_channels_last(torch.device('cpu'), torch.bfloat16)
    args = main.parse_args(['--state', '2', '--precision', 'bf16', '--channels-last', 'yes'])
    runtime = main.build_runtime(args, torch.device('cpu'))
    assert runtime.precision == 'bf16' and runtime.channels_last


def test_channels_last_reaches_the_network():
    seen = []
    model = torch.nn.Conv2d(3, 2, 1)
    model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last)))
    wrapped = lambda images: {'out': model(images)}   # noqa: E731
    Runtime(torch.device('cpu'), channels_last=True).forward(wrapped, torch.zeros(2, 3, 4, 4))
    Runtime(torch.device('cpu')).forward(wrapped, torch.zeros(2, 3, 4, 4))
    assert seen == [True, False]


def test_loaders_pin_batches_only_for_cuda_and_keep_validation_workers():
    from utils.training import make_loader
    dataset = [{'image': torch.zeros(3, 2, 2)}] * 2
    assert make_loader(dataset, device=torch.device('cuda')).pin_memory
    assert not make_loader(dataset, device=torch.device('cpu')).pin_memory
    assert make_loader(dataset, workers=2, persistent=True).persistent_workers
    assert not make_loader(dataset, workers=0, persistent=True).persistent_workers


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


@cuda
def test_host_copies_arrive_whole_on_cuda():
    from utils.device import HostCopy
    values = torch.arange(1000, device='cuda', dtype=torch.float32).reshape(10, 100)
    copied = HostCopy([values, values.to(torch.uint8)]).wait()
    assert copied[0].is_pinned() and torch.equal(copied[0], values.cpu())


@cuda
def test_a_cuda_training_step_syncs_once(monkeypatch):
    """torch's sync debug mode warns at every host sync; a training step makes one."""
    import warnings
    steps = {}
    for count in (2, 4):
        state = cpu_state(count)
        state.model.cuda()
        state.optimizer = build_optimizer(state.model, 0.01, 0.0, fused=True)
        state.scheduler = build_scheduler(state.optimizer, count)
        images = torch.randn(2, 3, 32, 32, device='cuda')
        labels = torch.randint(0, 3, (2, 32, 32), device='cuda', dtype=torch.uint8)
        batches = iter([StepBatch(images, labels, None, labels.numel())] * count)
        torch.cuda.set_sync_debug_mode('warn')
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                train_loop(state, batches, DynamicLoss(0.0), Runtime(torch.device('cuda')), quiet_hooks(),
                           val_every=1000, save_every=0, num_classes=3)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        steps[count] = sum('synchroniz' in str(warning.message) for warning in caught)
    assert steps[4] - steps[2] == 2, steps


@pytest.mark.parametrize('torch_version, torchvision_version, named', [
    ('2.7.1+cu126', '0.22.1', 'torch 2.7.1+cu126 is older than 2.8'),
    ('2.8.0', '0.22.1', 'torchvision 0.22.1 is older than 0.23'),
])
def test_too_old_torch_is_one_line(monkeypatch, capsys, torch_version, torchvision_version, named):
    monkeypatch.setattr(torch, '__version__', torch_version)
    monkeypatch.setattr(main.torchvision, '__version__', torchvision_version)
    assert main.main(['--state', '3', '--device', 'cpu']) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and 'torch>=2.8' in lines[0]


def test_the_minimum_versions_are_the_ones_requirements_and_readme_state(repo_root):
    from utils.versions import MINIMUM_TORCH, MINIMUM_TORCHVISION, check_versions, release
    check_versions('2.8.0', '0.23.0')
    check_versions('2.14.1', '0.29.1')
    assert release('2.14.0a0+git1234') == (2, 14)
    torch_minimum = '.'.join(map(str, MINIMUM_TORCH))
    vision_minimum = '.'.join(map(str, MINIMUM_TORCHVISION))
    for name in ('requirements.txt', 'README.md'):
        text = (repo_root / name).read_text()
        assert f'torch >= {torch_minimum}' in text and f'torchvision >= {vision_minimum}' in text, name


@pytest.fixture(scope='module')
def collectives_of_states(meta_work):
    """Every state of META_STATES in one two-process run of tests/meta_ranks.py (one process start
    per rank for the four): per state, per rank, (exit status, records, output)."""
    import json
    from test_distributed import finish, free_port, start
    argv = []
    for state in META_STATES:
        argv += [*(['--then', free_port()] if argv else []), *META, '--data-root', meta_work / 'voc',
                 '--dist-timeout', 60, *state_command(state, f'ranks-{state}')]
    outputs = finish(start(meta_work, 2, argv, program=Path(__file__).with_name('meta_ranks.py')), timeout=600)
    found = {state: [] for state in META_STATES}
    for rank, (code, stdout, stderr) in enumerate(outputs):
        assert code == 0, f'rank {rank}:\n{stdout[-2000:]}\n{stderr[-3000:]}'
        lines = [line.split(' ', 2)[1:] for line in stdout.splitlines() if line.startswith('RECORDS ')]
        assert len(lines) == len(META_STATES), f'rank {rank}:\n{stdout[-2000:]}\n{stderr[-3000:]}'
        for state, (status, recorded) in zip(META_STATES, lines):
            found[state].append((status, json.loads(recorded), stderr[-3000:]))
    return found


@pytest.mark.parametrize('state', list(META_STATES))
def test_every_tensor_handed_to_a_collective_is_on_the_device(collectives_of_states, state):
    """Two gloo processes with the network on `meta` (tests/meta_ranks.py): NCCL reduces device
    tensors only, so every tensor the project hands to a collective must be on the run's device,
    and DDP must wrap a network already there."""
    for rank, (status, recorded, stderr) in enumerate(collectives_of_states[state]):
        assert status == '0', (rank, stderr)
        names = {name for name, _, _ in recorded}
        assert 'all_reduce' in names, names
        if state != 'pseudo-labeling':
            assert 'broadcast' in names, 'evaluation gives every rank the BatchNorm statistics of rank 0'
        if state in ('supervised', 'self-training'):
            assert 'DistributedDataParallel' in names, names
        off_device = [entry for entry in recorded if set(entry[1]) - {'meta'}]
        assert not off_device, off_device
        assert all(ids is None for name, _, ids in recorded if name == 'DistributedDataParallel'), \
            'device_ids name a GPU only on CUDA'
