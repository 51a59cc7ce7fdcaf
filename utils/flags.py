"""What the command lines share: a parser whose bad flag is one line, and the argparse types
that refuse a value no run could use (--scales nan, --batch-size 0), so that main.py and
predict.py take their common flags by one rule."""
import argparse
import math

from utils.errors import InputError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (no usage block) and exit 2, as every other
    input error of every script here; `prog` names the script in the hint."""

    def error(self, message):
        self.exit(InputError.exit_status, f'error: {message} (see python {self.prog} --help)\n')


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where there is one worth showing (not None or False: a flag's help
    says in words what its absence means)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def finite_number(text, low, low_inclusive, what):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a number, got {text}') from None
    if not math.isfinite(value) or value < low or (value == low and not low_inclusive):
        raise argparse.ArgumentTypeError(f'must be a finite number {what}, got {text}')
    return value


def positive_number(text):
    return finite_number(text, 0.0, False, '> 0')


def non_negative_number(text):
    return finite_number(text, 0.0, True, '>= 0')
