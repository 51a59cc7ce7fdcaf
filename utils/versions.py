"""The oldest torch and torchvision this program runs on, checked at start with one line.

torch 2.6 is the first with `torch.nn.utils.get_total_norm` (the fused non-finite checks of the
training step and of every checkpoint), but before torch 2.8 a run of several processes can hang
at its very end: the gloo process group's destructor holds the GIL while it waits for a worker
thread that needs the GIL to free a finished collective's tensor (fixed by pytorch#154976, merged
in June 2025, first released in 2.8). Seen here in two two-process tests on 2.6; a small script
that ends right after collectives hung 3 times out of 3 on 2.6 and 0 out of 6 on 2.8. Hence
torch 2.8, with torchvision 0.23, the release paired with it. Python 3.10 is needed
for the `X | None` annotations (main.py checks it before any import that would fail). Older
releases fail deep inside a run, hang, or, worse, run with other numerics, so they are refused
up front.
"""
import re

from utils.errors import InputError

MINIMUM_TORCH = (2, 8)
MINIMUM_TORCHVISION = (0, 23)


def release(version):
    """(major, minor) of a version string such as '2.8.0+cu128' or '2.14.0a0+gitabc'."""
    match = re.match(r'(\d+)\.(\d+)', str(version))
    if match is None:
        raise ValueError(f'not a version: {version!r}')
    return int(match[1]), int(match[2])


def check_versions(torch_version, torchvision_version):
    for name, version, minimum in (('torch', torch_version, MINIMUM_TORCH),
                                   ('torchvision', torchvision_version, MINIMUM_TORCHVISION)):
        if release(version) < minimum:
            raise InputError(f'{name} {version} is older than {minimum[0]}.{minimum[1]}, the oldest this program '
                             f'runs on: install torch>={MINIMUM_TORCH[0]}.{MINIMUM_TORCH[1]} with its matching '
                             f'torchvision>={MINIMUM_TORCHVISION[0]}.{MINIMUM_TORCHVISION[1]} (requirements.txt)')
