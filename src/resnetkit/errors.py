"""Errors a user can cause. The CLI prints their message as one sentence and exits non-zero."""


class UserError(Exception):
    """A problem with the user's input (arguments, paths, data, checkpoints), not a bug.

    The message is one sentence that says what is wrong and, where possible, what to do.
    """

    exit_code = 2
