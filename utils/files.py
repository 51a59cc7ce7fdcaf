"""Writing files so that a crash, a kill or a full disk never leaves half a file under its name."""
import errno
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """A temporary path beside `path` to write to: renamed over `path` when the block succeeds,
    removed when it fails. The temporary file is created by the caller's writer with the usual
    permissions (0o666 less the umask), so lists and labels stay readable to a shared group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f'{path.name}.{os.getpid()}.tmp')
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_failure(error):
    """Why a write failed, in a few words for a one-line message."""
    return 'disk full' if error.errno == errno.ENOSPC else (error.strerror or str(error))
