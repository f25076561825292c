"""Errors a user can cause. The CLI prints their message as one sentence and exits non-zero.

A message names an option as ``<<name>>`` (or ``<<name=value>>``), so each audience reads its own
spelling: ``str(error)`` gives the Python keyword (``skip_bad_images=True``) and
:meth:`UserError.cli_message` the command-line flag (``--skip-bad-images``); never both at once.
"""

from __future__ import annotations

import re

_OPTION = re.compile(r"<<([a-z][a-z0-9_]*)(?:=([^>]*))?>>")


def _python(m: re.Match) -> str:
    return m.group(1) if m.group(2) is None else f"{m.group(1)}={m.group(2)}"


def _cli(m: re.Match) -> str:
    flag = "--" + m.group(1).replace("_", "-")
    value = m.group(2)
    return flag if value in (None, "True") else f"{flag} {value}"


class UserError(Exception):
    """A problem with the user's input (arguments, paths, data, checkpoints), not a bug.

    The message is one sentence that says what is wrong and, where possible, what to do.
    """

    exit_code = 2

    def _raw(self) -> str:
        # the message itself, not Exception.__str__ (a KeyError subclass would quote it)
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()

    def __str__(self) -> str:
        return _OPTION.sub(_python, self._raw())

    def cli_message(self) -> str:
        """The message with every option written as its command-line flag."""
        return _OPTION.sub(_cli, self._raw())
