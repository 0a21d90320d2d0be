"""Errors that the CLI turns into one clear line and exit code 2 (no traceback)."""


class UserError(ValueError):
    """Bad input from the user: a missing folder, an invalid ``--set``, an unknown experiment... A ``ValueError``,
    so library callers (``vislab.run``) catch it as one."""


class TrainingDiverged(Exception):
    """Training produced a non-finite loss: the CLI prints one line naming the variant, epoch and step and exits 3."""
