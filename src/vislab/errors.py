"""Errors that the CLI turns into one clear line and exit code 2 (no traceback)."""


class UserError(Exception):
    """Bad input from the user: a missing folder, an invalid ``--set``, an unknown experiment..."""
