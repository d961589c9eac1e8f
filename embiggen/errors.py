"""How a problem reaches the user: `UserError`, one line that names what to fix, and `printable`,
text made safe to echo to a terminal.

Nothing here imports torch: the command line (`embiggen/cli.py`) uses both before it has parsed
its arguments, so `embiggen --help` and a mistyped flag answer at once.
"""

from __future__ import annotations

import errno


class UserError(ValueError):
    """A problem the user can fix, with a message of one line that names what to fix (a
    variable, a flag, a file or a folder). The command line prints it without a traceback and
    exits with 2; `embiggen.notebook.session.setup` makes notebooks show it as one line too."""


def printable(text: str) -> str:
    """`text` safe to echo to a terminal: control characters (escape sequences, bells, ...)
    written as escapes, line breaks and tabs kept."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def utf8_problem(text: str, what: str) -> str | None:
    """Why `text` is not valid UTF-8 (None if it is). Python hands undecodable bytes of the
    command line and of stdin on as lone surrogates ("surrogateescape"); a tokenizer cannot
    read them."""
    for i, c in enumerate(text):
        if "\udc80" <= c <= "\udcff":
            return (f"{what} is not valid UTF-8 (byte 0x{ord(c) - 0xdc00:02x} at character {i + 1}): write it in "
                    "UTF-8, as a terminal does by default")
        if "\ud800" <= c <= "\udfff":
            return f"{what} is not valid UTF-8 (a lone surrogate at character {i + 1})"
    return None


def is_disk_full(exc: BaseException | None) -> bool:
    """Is `exc` (or an error it was raised from) a write that found no space on the disk? (The
    safetensors writer says so only in its message.)"""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
