"""Text shown on a terminal: file names with their control characters escaped, as ``ls`` shows them.

A file name may hold any character but "/" and NUL: an escape sequence would clear the screen or
set the window title, a newline would print a line of its own (a forged result line).
"""
from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\x1b": "\\e", "\\": "\\\\"}


def printable(text: str) -> str:
    """``text`` with control and format characters (and characters that are no text at all: a file
    name's undecodable bytes) escaped: "\\n", "\\e", "\\x07", "\\u202e"; a backslash doubled."""
    out = []
    for ch in str(text):
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            code = ord(ch)
            if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name (surrogateescape)
                out.append(f"\\x{code - 0xDC00:02x}")
            else:
                out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
