"""When one process of several fails where the others cannot hear of it, they end promptly with one
line anyway.

Most failures are agreed at a collective every rank reaches (utils/distributed.py
`agree_on_errors`, the training step's reduction). Some cannot be: an out-of-memory error or a bug
in the middle of a forward pass on one rank, while the others already wait inside a collective
for it; a rank killed outright; a stop signal that arrives while this process waits for such a
rank. A process blocked in a collective runs no Python code of its main thread, so this module
keeps one small thread per process that:

- polls the rendezvous store (the TCP key-value store every rank already shares) for a failure
  report: a failing rank writes its one-line message there before it exits, and every other
  rank prints it and exits with status 5 (PeerFailure) within about `poll + grace` seconds;
- treats a store that stops answering as the loss of the rank that hosts it (rank 0, or the
  launcher's agent), likewise;
- wakes on SIGINT/SIGTERM (through `signal.set_wakeup_fd`, which the interpreter writes to even
  while the main thread is blocked) and, if the main thread has not ended the run within
  `stop_grace` seconds (it normally saves its state at the end of the step and exits 130),
  prints one line and exits 130. torchrun and Slurm send SIGTERM to the remaining processes when
  one dies and SIGKILL 30 s later, so the grace stays below that.

Every wait ends in a line and an exit status, never in a silent kill. In one process nothing here
runs.
"""
import datetime
import os
import select
import signal
import sys
import threading
import time

FAILURE_KEY = 'dstcbc/failure'
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class FailureWatch:
    def __init__(self, store, rank, poll=1.0, grace=3.0, stop_grace=20.0, exit=os._exit):
        self.store = store
        self.rank = rank
        self.poll = poll
        self.grace = grace
        self.stop_grace = stop_grace
        self.exit = exit
        self.done = threading.Event()     # the main thread is ending the run itself
        self.stop_signal = None
        self.read_fd = self.write_fd = None
        self.thread = threading.Thread(target=self.watch, name='failure-watch', daemon=True)

    def start(self):
        """Start watching; called from the main thread (the signal wake-up needs it)."""
        if threading.current_thread() is threading.main_thread():
            self.read_fd, self.write_fd = os.pipe()
            os.set_blocking(self.write_fd, False)
            try:
                signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
            except ValueError:
                os.close(self.read_fd), os.close(self.write_fd)
                self.read_fd = self.write_fd = None
        self.thread.start()
        return self

    def report(self, message):
        """This rank is failing: tell the others (first report wins), then stand down."""
        self.done.set()
        try:
            self.store.compare_set(FAILURE_KEY, '', f'rank {self.rank}: {message}')
        except Exception:
            pass   # the store is gone too: the others find that out for themselves

    def close(self):
        """The run ends normally (or with an error every rank agreed on): stop watching."""
        self.done.set()
        if self.write_fd is not None:
            try:
                signal.set_wakeup_fd(-1)
            except ValueError:
                pass

    # --- the watching thread ----------------------------------------------------------------

    def watch(self):
        while not self.done.is_set():
            self.wait_for_signal_or_poll()
            if self.done.is_set():
                return
            if self.stop_signal is not None:
                self.end_after(self.stop_grace, 130,
                               f'stopped: {self.stop_signal} while this process waited for another one, '
                               f'which did not answer within {self.stop_grace:.0f} s; the last saved state '
                               f'is kept (--resume continues from it)')
                return
            failure = self.peer_failure()
            if failure is not None:
                self.end_after(self.grace, 5, f'error: another process failed ({failure}); this one stops too')
                return

    def wait_for_signal_or_poll(self):
        if self.read_fd is None:
            time.sleep(self.poll)
            return
        ready, _, _ = select.select([self.read_fd], [], [], self.poll)
        if ready:
            for number in os.read(self.read_fd, 64):
                if number in [int(s) for s in STOP_SIGNALS] and self.stop_signal is None:
                    self.stop_signal = signal.Signals(number).name

    def peer_failure(self):
        """Another rank's report, a lost store, or None."""
        try:
            if self.store.check([FAILURE_KEY]):
                return self.store.get(FAILURE_KEY).decode(errors='replace') or None
        except Exception as error:
            return f'the rendezvous store stopped answering ({type(error).__name__}): a process was lost'
        return None

    def end_after(self, seconds, status, line):
        """Give the main thread `seconds` to end the run itself; else say why and exit."""
        if self.done.wait(seconds):
            return
        print(line, file=sys.stderr, flush=True)
        self.exit(status)


def store_client(timeout_seconds=30):
    """A client of the rendezvous store at MASTER_ADDR:MASTER_PORT (the one init_process_group
    used), its own connection so the watching thread never shares one with the main thread."""
    import torch.distributed as dist
    return dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), is_master=False,
                         timeout=datetime.timedelta(seconds=timeout_seconds))
