"""Typed exceptions: every user mistake is a ``BayeslmmError`` with a one-line message.

The CLI prints ``error: <message>`` and exits with code 2 for these; anything else is a bug.
"""

from __future__ import annotations


class BayeslmmError(Exception):
    """Base class for mistakes a user can fix (bad data, formula, options or study file)."""


class DataError(BayeslmmError):
    """The data file cannot be read or does not suit the model."""


class FormulaError(BayeslmmError):
    """The lmer formula is malformed or names columns the data does not have."""


class StudyError(BayeslmmError):
    """The study file is missing or invalid."""


class OptionsError(BayeslmmError):
    """A command-line or API option has an invalid value."""


class OutputError(BayeslmmError):
    """The output folder cannot be written."""
