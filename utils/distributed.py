"""Several processes (GPUs, machines) through torch.distributed: the few facts and collectives the
states need, each a no-op in a single process so that no caller branches on the world size.

Launch: `torchrun --nproc_per_node N main.py ...` (and --nnodes / rendezvous flags for several
machines), or Slurm's `srun` with one task per GPU (SLURM_PROCID, SLURM_STEP_NUM_TASKS and
SLURM_LOCALID, plus MASTER_ADDR/MASTER_PORT). One process per device: NCCL on CUDA, gloo on CPU.

Errors: a process that fails must not leave the others waiting forever in a collective. Where
ranks can diverge (a data error on one of them, a stop request), they meet in `agree_on_errors`
or in the training step's one reduction (utils/training.py `agree_on_step`), which every rank
reaches, and all of them raise the same one-line error. A failure no collective can carry (out of
memory or a bug on one rank mid-step, a rank killed outright) reaches the others through the
failure watch (utils/failure_watch.py). A collective that waits longer than --dist-timeout raises
in Python on both backends: under NCCL that needs TORCH_NCCL_BLOCKING_WAIT=1, set here unless the
user set it (otherwise NCCL's watchdog tears the process down without a message).
"""
import datetime
import os
import subprocess
import time

import torch
import torch.distributed as dist

from utils import errors
from utils.device import host_values, to_host
from utils.errors import InputError, PeerFailure
from utils.failure_watch import FailureWatch, store_client

BACKENDS = {'cuda': 'nccl', 'cpu': 'gloo'}


def launched_world():
    """(rank, world size, local rank) from torchrun's or Slurm's environment; None when this is a
    plain single process."""
    env = os.environ
    if int(env.get('WORLD_SIZE', '1')) > 1:
        return int(env['RANK']), int(env['WORLD_SIZE']), int(env.get('LOCAL_RANK', '0'))
    if int(env.get('SLURM_STEP_NUM_TASKS', '1')) > 1 and 'SLURM_PROCID' in env:
        env.setdefault('MASTER_ADDR', first_slurm_host())
        env.setdefault('MASTER_PORT', '29500')
        return int(env['SLURM_PROCID']), int(env['SLURM_STEP_NUM_TASKS']), int(env.get('SLURM_LOCALID', '0'))
    return None


def first_slurm_host():
    nodes = os.environ.get('SLURM_STEP_NODELIST') or os.environ.get('SLURM_JOB_NODELIST')
    if not nodes:
        raise InputError('a Slurm step of several tasks needs MASTER_ADDR (or SLURM_JOB_NODELIST)')
    try:
        hosts = subprocess.run(['scontrol', 'show', 'hostnames', nodes], capture_output=True,
                               text=True, check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        raise InputError(f'cannot expand the Slurm node list {nodes!r}: set MASTER_ADDR to the first '
                         f'node\'s address') from None
    return hosts[0]


def init(device, timeout_seconds):
    """Join the process group when launched as several processes; return the device this rank
    uses. A single process is left as it is."""
    world = launched_world()
    if world is None:
        return device
    rank, world_size, local_rank = world
    if device.type == 'cuda':
        device = rank_device(device, local_rank, torch.cuda.device_count())
        torch.cuda.set_device(device)
    if device.type not in BACKENDS:
        raise InputError(f'--device {device}: several processes need cuda or cpu')
    if device.type == 'cuda':
        os.environ.setdefault('TORCH_NCCL_BLOCKING_WAIT', '1')
    dist.init_process_group(BACKENDS[device.type], rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_seconds))
    global _watch, _device
    _watch = FailureWatch(store_client(), rank).start()
    _device = device
    return device


def rank_device(device, local_rank, visible):
    """The GPU of this process: the one given (--device cuda:N); the only one it sees (a launcher
    that gives each process one GPU, as `srun --gpus-per-task 1` does, numbers local ranks 0..N-1
    while every process sees its GPU as cuda:0); else cuda:<local rank>."""
    if device.index is not None:
        if device.index >= visible:
            raise InputError(f'--device {device}: only {visible} GPU(s) visible to this process')
        return device
    if visible == 1:
        return torch.device('cuda', 0)
    if local_rank >= visible:
        raise InputError(f'local rank {local_rank} has no GPU ({visible} visible): start at most one '
                         f'process per GPU')
    return torch.device('cuda', local_rank)


_watch = None   # this process's FailureWatch while it belongs to a process group
_device = None  # this process's device while it belongs to a process group


def report_failure(message):
    """This process ends with an error: tell the others (they may be waiting in a collective for
    it), and give them a moment to read it before this process (which may host the store) exits."""
    if _watch is not None:
        _watch.report(message)
        time.sleep(_watch.poll + 0.5)


def shutdown():
    global _watch, _device
    if _watch is not None:
        _watch.close()
        _watch = None
    _device = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    return rank() == 0


def barrier():
    if active():
        dist.barrier()


def _collective_device():
    """Where the numbers this module builds for a collective go: the rank's own device, which
    is the backend's (NCCL reduces CUDA tensors, gloo CPU ones), so that what reaches a
    collective is on the device the run was given like every other tensor of the run."""
    return _device if _device is not None else torch.device('cpu')


def sum_tensor(tensor):
    """Sum `tensor` over all ranks in place (on the device the backend needs) and return it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_numbers(values, dtype=torch.float64):
    """Sum a short list of numbers over all ranks."""
    if not active():
        return list(values)
    tensor = torch.tensor(values, dtype=dtype, device=_collective_device())
    return host_values(sum_tensor(tensor))


def sum_array(array):
    """Sum a numpy array over all ranks (e.g. histograms); returns a numpy array."""
    if not active():
        return array
    tensor = torch.from_numpy(array).to(_collective_device())
    return to_host(sum_tensor(tensor)).numpy()


def broadcast_buffers(model):
    """Rank 0's buffers (BatchNorm statistics) on every rank, so every rank computes with the
    model rank 0 saves."""
    if not active():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def gather_objects(value):
    """Every rank's `value` (picklable), in rank order; [value] in one process."""
    if not active():
        return [value]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value):
    """Rank 0's `value` on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree_on_errors(error):
    """Every rank calls this with the RunError it caught (or None). If any rank failed, all raise:
    the failing rank its own error, the others the same type of error with the same message,
    naming the rank, so every process exits with the same line and status."""
    if not active():
        if error is not None:
            raise error
        return
    reports = gather_objects(None if error is None else (type(error).__name__, errors.one_line(error)))
    if error is not None:
        raise error
    for source, report in enumerate(reports):
        if report is not None:
            name, message = report
            error_type = getattr(errors, name, PeerFailure)
            raise error_type(f'{message} (reported by rank {source})')


def shard(indices):
    """This rank's share of a list of sample indices: every world_size-th from position rank.

    No sample is repeated to even the shards out, so a sum over ranks counts each sample once.
    """
    return list(indices)[rank()::world_size()]


def split_batch(batch):
    """This rank's part of a global batch: contiguous, as even as possible (the first ranks take
    one more when it does not divide; a rank may get none from a short last batch)."""
    size, parts, me = len(batch), world_size(), rank()
    base, extra = divmod(size, parts)
    start = me * base + min(me, extra)
    return batch[start:start + base + (1 if me < extra else 0)]


def is_distributed_error(error):
    """A collective that failed: a timeout, or a peer that went away."""
    dist_error = getattr(dist, 'DistError', None)
    if dist_error is not None and isinstance(error, dist_error):
        return True
    text = str(error)
    return active() and isinstance(error, RuntimeError) and any(
        word in text for word in ('Gloo', 'gloo', 'NCCL', 'Connection closed', 'Connection reset',
                                  'timed out', 'Timed out'))
