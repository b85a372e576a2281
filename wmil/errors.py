"""Errors and warnings a user can act on.

Anything raised as :class:`UserError` is printed by the CLI as one line (no traceback) and
exits non-zero. The message names what is wrong (file, field, value) and how to fix it.
:func:`warn` reports something that did not stop the command (a damaged checkpoint skipped, a
torn metrics line dropped): a :class:`WmilWarning` that the CLI prints as one ``warning:`` line
and that library users can filter or turn into errors like any Python warning.
"""

import warnings


class UserError(Exception):
    """Bad input from the user: printed as one line by the CLI, exit code 2."""


class WmilWarning(UserWarning):
    """Something the user should know that did not stop the command (one line)."""


def warn(message: str) -> None:
    warnings.warn(message, WmilWarning, stacklevel=2)
