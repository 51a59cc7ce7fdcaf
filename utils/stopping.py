"""How a run stops: SIGINT and SIGTERM are requests, acted on at safe points.

A signal handler that raises an exception does so wherever the main thread happens to be: inside
logging's lock, inside a DataLoader starting its workers, inside the loader's own error handling.
The locks it held stayed held and the loaders half made, so runs hung for good (a label-writer
thread waiting for the logging lock), swallowed the stop (the exception raised inside a
`__del__` is only printed) or ended in a traceback. So the handler here only records the request
and says so at once on stdout (stderr keeps its one line for the end). The run asks its
`StopRequest` at safe points, between training steps, evaluation and labeling batches, label
writes and the files of the data check, and at the boundaries of start-up, and ends there
(`StopRequested`, exit 130) with the training state saved where there is one. A second signal is
acknowledged and never interrupts a save; a third, outside a save, ends the process at once
with one line (and run.log's `ended:` line), for a run that has no safe point near.

Loader workers: a terminal sends Ctrl-C to its whole foreground process group, the loader's
worker processes included, and a worker that dies of it makes the loader raise in the main
process (from torch's SIGCHLD handler, again wherever the main thread is). A stop is the main
process's to act on; it ends its workers itself. So SIGINT and SIGTERM are blocked while a
loader starts its workers (the mask is inherited across fork and exec: spawn and forkserver
workers start with them blocked too, imports included), and each worker then ignores SIGINT
and leaves quietly on SIGTERM (status 0, which the loader does not report as a failure; it is
also how the loader itself ends a worker that does not join).
"""
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager

from utils.errors import StopRequested

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FORCED_AT = 3   # the third signal outside a save ends the process at once


def log_line(message):
    """A line of run.log: the date and time, then the message."""
    return f'{time.strftime("%Y-%m-%d %H:%M:%S")} {message}\n'


class StopRequest:
    """Whether, and by which signal, the run was asked to stop.

    Set by the signal handler (`on_signals`), or by a test; asked at the safe points (`check`,
    `until_stopped`, and the training step's `fetch`). `write` and `exit` are the handler's only
    ways out (os.write and os._exit: neither takes a lock nor raises into the interrupted code);
    tests pass stand-ins.
    """

    def __init__(self, write=os.write, exit=os._exit):
        self.signal_name = None
        self.signals = 0
        self.saves = 0          # saves in progress: no signal interrupts them
        self.run_log = None     # run.log of the run once it began (Experiment.begin): a forced exit's last line
        self._write = write
        self._exit = exit

    def __bool__(self):
        return self.signal_name is not None

    def request(self, signal_name):
        """What a signal does: record the stop and acknowledge it at once."""
        self.signals += 1
        self.signal_name = self.signal_name or signal_name
        if self.signals == 1:
            self.say(1, f'stopping ({signal_name}): the run ends after the current step or batch, saving its '
                        f'state where it has one to resume from')
        elif self.saves:
            self.say(1, f'already stopping ({signal_name}): saving the state, which no signal interrupts')
        elif self.signals < FORCED_AT:
            self.say(1, f'already stopping ({signal_name}): the run ends after the current step or batch; '
                        f'a third signal ends it at once, without saving')
        else:
            line = (f'stopped: {signal_name} a third time: ended at once, without waiting for the current '
                    f'step or batch; what was saved before is kept')
            self.append_to_run_log(f'ended: stopped (exit 130): {line.removeprefix("stopped: ")}')
            self.say(2, line)
            self._exit(130)

    def append_to_run_log(self, line):
        """run.log's last line for an exit that skips the run's own ending: one os.write in append
        mode (no Python lock, which the interrupted code may hold)."""
        if self.run_log is None:
            return
        try:
            descriptor = os.open(self.run_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(descriptor, log_line(line).encode())
            finally:
                os.close(descriptor)
        except OSError:
            pass   # a log that cannot be written must not keep the process from ending

    def say(self, descriptor, line):
        try:
            self._write(descriptor, f'{line}\n'.encode())
        except OSError:
            pass   # a closed terminal or pipe: the stop goes on regardless

    def error(self):
        return StopRequested(self.signal_name, self.signal_name)

    def check(self):
        """A safe point: end the run here if it was asked to stop."""
        if self:
            raise self.error()

    def until_stopped(self, iterable):
        """The items of `iterable` (a loader) until a stop is requested: asked before each item is
        fetched, so a stop that comes while the last item is worked on still stops the run, and
        after, so an item that arrives after the stop (from loader workers that were still
        starting) is not worked on. An error that fetching raises once a stop is requested is the
        stop."""
        iterator = iter(iterable)
        while True:
            self.check()
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception:
                if self:
                    raise self.error() from None
                raise
            self.check()
            yield item

    @contextmanager
    def saving(self):
        """A save in progress: signals meanwhile are acknowledged, never acted on."""
        self.saves += 1
        try:
            yield
        finally:
            self.saves -= 1

    @contextmanager
    def on_signals(self):
        """SIGINT and SIGTERM become this request while the block runs (Python runs signal
        handlers in the main thread only; elsewhere nothing is installed)."""
        if sys.platform == 'win32' or threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            self.request(signal.Signals(signum).name)

        previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
        try:
            yield self
        finally:
            for number, old in previous.items():
                signal.signal(number, old)


@contextmanager
def stop_signals_blocked(start_method='fork'):
    """SIGINT and SIGTERM held back from this thread while a loader starts its workers: they
    inherit the mask (across exec too) and keep it until `worker_ignores_stops` has set them up.
    A signal that comes meanwhile reaches the process through another thread, or this one when
    the block ends, and is acted on as usual.

    Under spawn and forkserver, multiprocessing's resource tracker is started first: starting it
    unblocks both signals (it blocks them around its own start, then unblocks rather than
    restores), which done inside the block would let the workers start unprotected."""
    if not hasattr(signal, 'pthread_sigmask'):
        yield
        return
    if start_method != 'fork':
        from multiprocessing import resource_tracker   # here: the start-up handler imports this module first

        resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def end_on_stop_signals(status, line=''):
    """Until the run's own handler is in place (`StopRequest.on_signals`), SIGINT and SIGTERM end
    the process at once with `status` and `line` (formatted with the signal's name): before it,
    nothing is saved yet (the imports take seconds, and the interpreter would print a
    KeyboardInterrupt traceback from inside one); after it, the run has ended and the process
    only exits. Programs install it first thing, so this module imports only what is cheap."""
    def end(signum, frame):
        if line:
            os.write(2, line.format(signal=signal.Signals(signum).name).encode())
        os._exit(status)

    for number in STOP_SIGNALS:
        signal.signal(number, end)


def worker_ignores_stops(worker_id):
    """A loader worker's start (its worker_init_fn): SIGINT is ignored, SIGTERM ends it quietly
    with status 0; then the signals blocked since its start are let through (a SIGINT pending
    meanwhile is dropped, being ignored)."""
    if not hasattr(signal, 'pthread_sigmask'):
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, leave_quietly)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def leave_quietly(signum, frame):
    os._exit(0)


def quiet_when_stopped(kind, value, traceback):
    """sys.excepthook of a loader worker that spawn or forkserver starts (a new interpreter, seconds
    of imports with SIGINT and SIGTERM blocked): when its main process, being stopped, has given
    up on it meanwhile, its start fails (the queues it was to unpickle are gone) with a stop
    signal pending for it. That is the stop, not an error: it leaves without a traceback. Any
    other failure is printed as usual."""
    if hasattr(signal, 'sigpending') and set(STOP_SIGNALS) & signal.sigpending():
        os._exit(0)
    sys.__excepthook__(kind, value, traceback)
