"""How a problem reaches the user: `UserError`, one line that names what to fix, and `printable`,
text made safe to echo to a terminal.

Nothing here imports torch: the command line (`embiggen/cli.py`) uses both before it has parsed
its arguments, so `embiggen --help` and a mistyped flag answer at once.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem the user can fix, with a message of one line that names what to fix (a
    variable, a flag, a file or a folder). The command line prints it without a traceback and
    exits with 2; `embiggen.notebook.session.setup` makes notebooks show it as one line too."""


def printable(text: str) -> str:
    """`text` safe to echo to a terminal: control characters (escape sequences, bells, ...)
    written as escapes, line breaks and tabs kept."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)
