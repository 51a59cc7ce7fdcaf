"""The `meta` device standing in for a GPU in tests (see test_device.py): a dispatch mode that
refuses a meta tensor meeting a CPU one, as CUDA refuses it, and host reads of meta tensors
through `utils.device.to_host` (the one place the project reads the device) as zeros."""
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from utils import device as device_module

MOVES = {'aten::_to_copy', 'aten::copy_', 'aten::_copy_from', 'aten::_copy_from_and_resize', 'aten::lift_fresh'}


class RefuseMixedDevices(TorchDispatchMode):
    """Raise where a meta tensor meets a CPU tensor with more than one element (what CUDA does,
    and what some meta kernels, e.g. a convolution's, do not check by themselves)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._schema.name not in MOVES:
            tensors = [value for value in tree_flatten((args, kwargs))[0] if isinstance(value, torch.Tensor)]
            kinds = {tensor.device.type for tensor in tensors if tensor.dim() > 0}
            if {'meta', 'cpu'} <= kinds:
                shapes = [(tuple(t.shape), t.device.type) for t in tensors]
                raise RuntimeError(f'{func._schema.name} mixes devices: {shapes}')
        return func(*args, **kwargs)


class HostReads:
    """Replaces `to_host` in every module that uses it (through `replace`, e.g. a pytest
    monkeypatch's setattr): meta tensors read as zeros; counts reads."""

    def __init__(self, replace=setattr):
        self.count = 0
        original = device_module.to_host

        def to_host(tensor):
            self.count += 1
            if tensor.device.type == 'meta':
                return torch.zeros(tensor.shape, dtype=tensor.dtype)
            return original(tensor)

        for module in list(sys.modules.values()):
            if getattr(module, 'to_host', None) is original:
                replace(module, 'to_host', to_host)
