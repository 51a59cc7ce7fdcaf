"""One rank of a two-process gloo run whose network sits on `meta`, standing for a GPU under NCCL
(which takes device tensors only): it runs main.py command lines and records every tensor the
project hands to a collective, and what it hands to DistributedDataParallel.

The collective itself runs on CPU stand-ins of the same shapes, so that the ranks meet in the
same order as they would with data (a rank that calls a collective the other does not call
hangs the run, and the test sees it). Meta tensors hold no data, so the values summed are zeros,
as every host read of a meta tensor is (tests/meta_device.py). DDP cannot wrap a meta network; it
is replaced by a recorder of the module's device and `device_ids`.

Usage, as torchrun starts ranks (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set): meta_ranks.py
<main.py flags> [--then PORT <main.py flags> ...]; runs the command lines one after the other
(one process start for all: each start imports torch, seconds), each after the first on its own
MASTER_PORT (a rank that finished a run early would otherwise join the other rank's store of the
run before), and prints for each "RECORDS <exit status> <json list of [name, device types,
device_ids]>".
"""
import json
import os
import sys
import warnings

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_flatten, tree_map

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

import main  # noqa: E402
from meta_device import HostReads, RefuseMixedDevices  # noqa: E402
from utils import distributed  # noqa: E402

COLLECTIVES = ('all_reduce', 'broadcast', 'reduce', 'all_gather', 'all_gather_into_tensor', 'gather',
               'scatter', 'reduce_scatter', 'reduce_scatter_tensor', 'all_to_all', 'all_to_all_single',
               'send', 'recv', 'isend', 'irecv')
UNTOUCHED = ('barrier', 'all_gather_object', 'broadcast_object_list')   # recorded in the sequence only

records = []


def devices_of(tree):
    return sorted({value.device.type for value in tree_flatten(tree)[0] if isinstance(value, torch.Tensor)})


def stand_in(value):
    if isinstance(value, torch.Tensor) and value.device.type == 'meta':
        return torch.zeros(value.shape, dtype=value.dtype)
    return value


def recording(name, collective, on_stand_ins=True):
    def call(*args, **kwargs):
        records.append([name, devices_of((args, kwargs)), None])
        if on_stand_ins:
            args, kwargs = tree_map(stand_in, (args, kwargs))
        return collective(*args, **kwargs)
    return call


def recording_ddp(module, device_ids=None, **kwargs):
    records.append(['DistributedDataParallel', devices_of([*module.parameters(), *module.buffers()]), device_ids])
    return module


def main_of_rank(argv):
    for name in COLLECTIVES:
        setattr(dist, name, recording(name, getattr(dist, name)))
    for name in UNTOUCHED:
        setattr(dist, name, recording(name, getattr(dist, name), on_stand_ins=False))
    torch.nn.parallel.DistributedDataParallel = recording_ddp
    distributed.BACKENDS['meta'] = 'gloo'
    # Loading a CPU checkpoint into a network on `meta` copies nothing, and torch says so per tensor.
    warnings.filterwarnings('ignore', 'for .*copying from a non-meta parameter')
    HostReads()
    for port, command in commands(argv):
        if port is not None:
            os.environ['MASTER_PORT'] = port
        records.clear()
        with RefuseMixedDevices():
            status = main.main(command)
        print('RECORDS', status, json.dumps(records), flush=True)


def commands(argv):
    """[(port or None, command line)] of `argv`: command lines separated by --then PORT."""
    found = [(None, [])]
    arguments = iter(argv)
    for arg in arguments:
        if arg == '--then':
            found.append((next(arguments), []))
        else:
            found[-1][1].append(arg)
    return found


if __name__ == '__main__':
    main_of_rank(sys.argv[1:])
