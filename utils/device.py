"""Where tensors cross between the host and the device: one home for both directions.

Towards the device (`to_device`, `batch_to_device`): every loop (training, self-training,
evaluation, labeling) moves its batches here, so none can forget it. Loaders pin their batches
when the device is CUDA (utils/training.py `make_loader`), so the copies are asynchronous
(`non_blocking=True`) and overlap with the work already queued on the GPU.

Towards the host (`to_host`, `host_values`, `HostCopy`): a read of a device value makes the host
wait for the GPU to finish everything queued before it (a host sync). Every such read in the
project goes through these functions, so that the training step can be held to one of them, and
so that a test can see them: on the `meta` device (tensors without data) any other read raises,
and a test that replaces `to_host` runs the whole program with the network on `meta`, where a
tensor left on the CPU meets one on the device and raises as it would on a GPU.

And how much the device holds (`memory_available`), and whether an error says it ran out
(`is_out_of_memory`, on every device).
"""
import errno
import math
import os
import resource
from pathlib import Path

import torch

from utils.labels import IGNORE_INDEX


def to_device(tensor, device):
    """One tensor onto `device`; asynchronous when it comes from pinned memory."""
    return tensor.to(device, non_blocking=True)


def batch_to_device(batch, device):
    """(images, labels) of a loader batch on `device` (labels None when the batch has none).

    Images go as they come (contiguous); a channels-last run reorders them on the device
    (`Runtime.forward`), where that is one fast kernel, rather than during the copy.
    """
    labels = batch.get('label')
    return to_device(batch['image'], device), None if labels is None else to_device(labels, device)


def to_host(tensor):
    """A device tensor's values on the host (a host sync on a GPU; the CPU returns it as is)."""
    return tensor.detach().to('cpu')


def host_values(tensor):
    """A small device tensor as a Python list (one host sync)."""
    return to_host(tensor).tolist()


class HostCopy:
    """A device-to-host copy of several tensors that the host collects later.

    On CUDA the copy goes into pinned memory, queued behind the work that computes the tensors,
    and an event marks its end: the host can queue the next batch's forward pass before waiting,
    so the GPU never idles while the host works on the copied maps. Elsewhere the copy is made
    at once through `to_host`.
    """

    def __init__(self, tensors):
        tensors = [tensor.detach() for tensor in tensors]
        self.event = None
        if tensors and tensors[0].device.type == 'cuda':
            self.host = [torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True) for tensor in tensors]
            for target, source in zip(self.host, tensors):
                target.copy_(source, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = [to_host(tensor) for tensor in tensors]

    def wait(self):
        """The host tensors, once the copy has finished."""
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.host


def nonfinite_flag(tensors):
    """A device scalar, 1 if any of the floating-point tensors (None and integer ones are
    skipped) holds a NaN or an infinity: their largest absolute value (one fused reduction) is
    then not finite. None when there is nothing to check. Nothing is read back here."""
    tensors = [t.detach() for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not tensors:
        return None
    largest = torch.nn.utils.get_total_norm(tensors, norm_type=math.inf)
    return (~torch.isfinite(largest)).to(torch.float64)


def all_finite(tensors):
    """True if no floating-point tensor among them holds a NaN or an infinity (one host sync)."""
    flag = nonfinite_flag(tensors)
    return flag is None or not host_values(flag)


def valid_pixels(labels):
    """How many pixels of a host label batch take part in the loss (label != 255).

    Counted on the host, where the labels are before their copy, so that the training step
    knows its loss denominator without reading it back from the device.
    """
    return int((labels != IGNORE_INDEX).sum()) if labels.numel() else 0


def configure_backends(device):
    """cuDNN picks the fastest convolution algorithm for each input size once and reuses it:
    every size here is fixed (training crops, the evaluation canvas), so the search pays off
    after the first batch of each size."""
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True


def use_channels_last(device, amp_dtype):
    """Channels-last memory layout for convolutions under float16 or bfloat16 autocast on CUDA,
    where cuDNN's tensor-core kernels work in NHWC and would otherwise transpose every layer."""
    return device.type == 'cuda' and amp_dtype is not None


# What an allocator's error says where its type does not: a CPU allocation that fails is a plain
# RuntimeError; CUDA's comes as a RuntimeError too when it passed through a DataLoader worker.
OUT_OF_MEMORY_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", 'DefaultCPUAllocator: not enough memory',
                          'CUDA out of memory', 'CUDA error: out of memory')


def is_out_of_memory(error):
    """Does `error` say that the device or the host ran out of memory, on any device?

    CUDA's OutOfMemoryError and Python's MemoryError (numpy's included) say it by their type; a
    CPU allocation that fails raises a RuntimeError ("DefaultCPUAllocator: can't allocate
    memory"), and an error of a DataLoader worker comes back re-raised with the worker's
    traceback in its message ("Caught MemoryError in DataLoader worker process 0 ..."). A
    process or thread that cannot start for lack of memory raises OSError ENOMEM.
    """
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(error, OSError):
        return error.errno == errno.ENOMEM
    if not isinstance(error, RuntimeError):
        return False
    text = str(error)
    first_line = text.split('\n', 1)[0]
    return (any(message in text for message in OUT_OF_MEMORY_MESSAGES)
            or (first_line.startswith('Caught ') and 'MemoryError' in first_line))


SHARED_MEMORY_ADVICE = ('out of shared memory (/dev/shm), where the loader workers hand their batches over: use '
                        '--workers 0, or give the container more /dev/shm (e.g. docker --shm-size=8g)')


def is_shared_memory_exhausted(error):
    """Does `error` (or an exception it was raised from) say that shared memory ran out?

    DataLoader workers hand their batches over in shared memory (/dev/shm, 64 MB by default in a
    Docker container). Running out of it is neither the device's memory nor the host's, and the
    cure differs (no loader workers, or a larger /dev/shm), so it is told apart from
    `is_out_of_memory`. torch says it only in a RuntimeError's text: creating or growing a
    segment fails with ENOSPC, or EFBIG under a file size limit ("unable to write to file
    </torch_...>: No space left on device (28)", "unable to resize file <...> to the right size:
    File too large (27)"), re-raised in the main process with the worker's traceback when a
    worker met it; or a worker dies of SIGBUS on a page that could not be backed, which the
    loader reports as "... out of shared memory ...".
    """
    failures = ('unable to resize file', 'unable to write to file', 'unable to allocate shared memory',
                'unable to open shared memory')
    full = ('No space left on device', 'File too large')
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, RuntimeError):
            text = str(error)
            if 'out of shared memory' in text or (any(failure in text for failure in failures)
                                                  and any(reason in text for reason in full)):
                return True
        error = error.__cause__ or error.__context__
    return False


def memory_available(device):
    """(bytes, what they are) that the device has at most, or None where that is unknown (meta,
    ...): a GPU's total memory; on a CPU the physical memory, or where lower the address-space
    limit (ulimit -v) or the memory limit of the process's cgroup (a container's or job's). An
    upper bound of what a run can use, for refusing sizes that cannot fit (utils/guards.py),
    never for admitting one."""
    if device.type == 'cuda':
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).total_memory, f'{torch.cuda.get_device_name(index)}\'s memory'
    if device.type != 'cpu':
        return None
    candidates = []
    try:
        candidates.append((os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'), 'physical memory'))
    except (AttributeError, ValueError, OSError):
        pass
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        candidates.append((limit, 'address space allowed (ulimit -v)'))
    limit = cgroup_memory_limit()
    if limit is not None:
        candidates.append((limit, "memory limit of this process's cgroup (its container's or job's)"))
    return min(candidates) if candidates else None


# Limits at or above this mean "no limit" (cgroup v1 writes the largest page-aligned int64).
UNLIMITED = 1 << 60


def cgroup_memory_limit(membership=Path('/proc/self/cgroup'), mount=Path('/sys/fs/cgroup')):
    """The lowest memory limit over the cgroups that hold this process and their ancestors, in
    bytes, or None where there is none. A container or a cluster job (Slurm, Kubernetes) caps a
    process's memory this way, below the machine's physical memory; a run over the cap is killed
    by the kernel (SIGKILL: no line, no save), so the memory check must compare against it.
    cgroup v2 keeps the cap in `memory.max`, v1 in `memory/.../memory.limit_in_bytes`. Where the
    process's own folder is not visible (a container shows its cgroup as the mount's root), the
    mount's root is read."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        fields = line.split(':', 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == '':
            base, name = mount, 'memory.max'
        elif 'memory' in controllers.split(','):
            base, name = mount / 'memory', 'memory.limit_in_bytes'
        else:
            continue
        folder = base / path.lstrip('/')
        if not folder.is_dir():
            folder = base
        while True:
            limit = read_memory_limit(folder / name)
            if limit is not None:
                limits.append(limit)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


def read_memory_limit(path):
    """A cgroup's memory limit file as bytes; None for no file, no limit (`max`) or no number."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) >= UNLIMITED:
        return None
    return int(text)
