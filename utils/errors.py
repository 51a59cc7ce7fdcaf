"""The one exception type that main.py turns into a one-line message instead of a traceback."""


class InputError(Exception):
    """Bad user input (a file, a flag, a dataset): the message names it and says what is wrong.

    Raise it before any work is lost; main.py prints `error: <message>` and exits with status 2.
    """


class TrainingDiverged(InputError):
    """The loss became NaN or infinite; the last good checkpoint is kept and named."""


class Interrupted(InputError):
    """SIGINT/SIGTERM arrived: the last state was saved and the message says how to resume."""
