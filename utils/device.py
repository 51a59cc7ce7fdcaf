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
"""
import math

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
