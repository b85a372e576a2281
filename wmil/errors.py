"""Errors a user can act on.

Anything raised as :class:`UserError` is printed by the CLI as one line (no traceback) and
exits non-zero. The message names what is wrong (file, field, value) and how to fix it.
"""


class UserError(Exception):
    """Bad input from the user: printed as one line by the CLI, exit code 2."""
