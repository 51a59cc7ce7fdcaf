"""Writing files so that a crash, a kill, a power cut or a full disk never leaves half a file under
its name, and a failed write is one line naming the file.

Every write goes to `<name>.<pid>.tmp` beside the target and is renamed over it once complete.
With `durable=True` the file is fsynced before the rename and its folder after it, so after a
power cut the name holds either the old or the new content, and a manifest written after its
labels never reaches the disk before them.
"""
import errno
import fcntl
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path

from utils.errors import InputError, OutputError

TEMPORARY_PATTERN = re.compile(r'^(?P<name>.+)\.(?P<pid>\d+)\.tmp$')


# The longest `.<pid>.tmp` suffix: Linux PIDs stay below pid_max, at most 2**22 (7 digits).
LONGEST_TEMPORARY_SUFFIX = len(f'.{2 ** 22}.tmp')
DEFAULT_NAME_MAX = 255


def walk_following_links(folder, onerror=None):
    """os.walk with links to folders followed, as a user who links a subfolder in expects, each
    real folder entered once, so that a link to a folder above cannot loop. Yields (folder,
    subfolders, files, seen_before); a folder seen before is yielded once more with its
    subfolders emptied (not entered), for the caller to say so. Like os.walk's, `subfolders` may
    be pruned or reordered in place before the walk goes on."""
    searched = set()
    for current, subfolders, files in os.walk(folder, onerror=onerror, followlinks=True):
        real = os.path.realpath(current)
        seen_before = real in searched
        if seen_before:
            subfolders[:] = []
        searched.add(real)
        yield current, subfolders, files, seen_before


def temporary_name(path):
    path = Path(path)
    return path.with_name(f'{path.name}.{os.getpid()}.tmp')


def existing_ancestor(path):
    """`path` itself or the nearest folder above it that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def name_max(folder):
    """The longest file name (in bytes) the file system of `folder` accepts (255 on ext4, XFS,
    btrfs, tmpfs); asked of the nearest existing folder, since outputs are made later."""
    try:
        return os.pathconf(existing_ancestor(folder), 'PC_NAME_MAX')
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX


def longest_name_fits(path, written_atomically=True):
    """(fits, bytes needed, limit) for the last part of `path`, counting the `.<pid>.tmp` suffix
    its atomic write adds: a name that fits but whose temporary name does not would fail only
    when the file is written, after the work."""
    path = Path(path)
    needed = len(os.fsencode(path.name)) + (LONGEST_TEMPORARY_SUFFIX if written_atomically else 0)
    limit = name_max(path.parent)
    return needed <= limit, needed, limit


def fsync_path(path):
    """Flush a file's (or a folder's) data to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path, durable=False):
    """A temporary path beside `path` to write to: renamed over `path` when the block succeeds,
    removed when it fails. The temporary file is created by the caller's writer with the usual
    permissions (0o666 less the umask), so lists and labels stay readable to a shared group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        yield temporary
        if durable:
            fsync_path(temporary)
        os.replace(temporary, path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_failure(error):
    """Why a write failed, in a few words for a one-line message."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return 'disk full'
    if error.errno == errno.EFBIG:
        return 'file size limit reached'
    return error.strerror or str(error)


@contextmanager
def guarded_write(path, what='file'):
    """Turn an OS error while writing `path` into a one-line OutputError naming it."""
    try:
        yield
    except OSError as error:
        raise OutputError(f'{path}: cannot write {what} ({write_failure(error)})') from None


def remove_stale_temporaries(folder, prefix=''):
    """Remove `<prefix>*.<pid>.tmp` files in `folder` left by processes that no longer exist
    (a kill -9 during a save leaves a file as large as a checkpoint); returns the paths removed.

    Only files of dead processes go, so a live process's half-written file is never touched.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = TEMPORARY_PATTERN.match(path.name)
        if not match or not path.name.startswith(prefix) or process_alive(int(match['pid'])):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """An exclusive lock on a file, held while the process lives (the kernel drops it on exit,
    so a lock of a killed run never needs cleaning up). The file names the holder's PID and host
    for the message a second run gets."""

    def __init__(self, path):
        self.path = Path(path)
        self._file = None

    def acquire(self, what):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = open(self.path, 'a+')
        except OSError as error:
            raise OutputError(f'{self.path}: cannot create the lock file ({write_failure(error)})') from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or 'another process'
            handle.close()
            raise InputError(f'{what} is in use by a live run ({holder}, lock {self.path}); wait for '
                             f'it to finish or choose another name') from None
        handle.seek(0)
        handle.truncate()
        handle.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
        handle.flush()
        self._file = handle
        return self

    @property
    def held(self):
        """Does this process hold the lock (acquired and not released)?"""
        return self._file is not None

    def release(self):
        if self._file is not None:
            self._file.close()
            self._file = None
