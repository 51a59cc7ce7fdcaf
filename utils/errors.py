"""What can end a run, each with its own type and exit status, printed by main.py as one line.

A user's bad input, a write that failed, a run that diverged, a run that was stopped and a run
whose other process failed are different things for the person reading the message and for the
script that chains runs: each gets its own class and exit status, under one base class so that
main.py has one place that turns them into `error: <message>`. Anything else is a bug and keeps
its traceback.
"""


class RunError(Exception):
    """Base of the errors that end a run with a one-line message and `exit_status`."""
    exit_status = 1
    prefix = 'error'


class InputError(RunError):
    """Bad user input (a file, a flag, a dataset): the message names it and says what is wrong."""
    exit_status = 2


class OutputError(RunError):
    """A file could not be written (read-only folder, full disk); what was written before is
    intact, since every write goes to a temporary name first."""
    exit_status = 4


class TrainingDiverged(RunError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept."""
    exit_status = 3


class Interrupted(RunError):
    """SIGINT/SIGTERM arrived: the last state was saved and the message says how to resume."""
    exit_status = 130
    prefix = 'stopped'


class OutOfMemory(RunError):
    """The device (or host) ran out of memory; the message says what to lower."""
    exit_status = 6


class StopRequested(Interrupted):
    """A stop request (utils/stopping.py) acted on at a safe point outside a training loop, which
    words its own message: main.py rewords this one with what the run saved. On the other ranks
    of a run of several processes the message names the rank that was asked."""

    def __init__(self, message, signal_name=None):
        super().__init__(message)
        self.signal_name = signal_name or message


class PeerFailure(RunError):
    """Another process of a distributed run failed or was lost; its message is repeated here."""
    exit_status = 5


def one_line(error):
    """The message of `error` on one line.

    An exception raised inside a DataLoader worker comes back as the same type whose message is
    "Caught X in DataLoader worker process N" followed by the worker's traceback; its last line
    holds the original message, which is the only part a user needs.
    """
    text = str(error)
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith('Caught ') and 'Traceback' in text:
        last = lines[-1].strip()
        name = f'{type(error).__name__}: '
        position = last.find(name)
        return last[position + len(name):] if position >= 0 else last
    return ' '.join(text.split())

