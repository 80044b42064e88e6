"""Whether progress bars can redraw in place where the output goes."""

from __future__ import annotations

import sys


def interactive() -> bool:
    """True on a terminal or in a Jupyter kernel. False when stderr goes to a file, a pipe
    or a cloud job's console, where each redraw of a progress bar is appended to one
    endless line: ferjax (and TFDS, while building) log plain lines there instead."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules
