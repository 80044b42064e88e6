"""The terminal side of ferjax's commands: their --help, their error lines, and whether
progress bars can redraw in place where the output goes."""

from __future__ import annotations

import argparse
import sys


def command_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of `python -m module`: its --help shows that command line, the
    docstring's first paragraph above the options and the rest (examples) below them."""
    summary, _, details = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(prog=f"python -m {module}", description=summary,
                                   epilog=details or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def interactive() -> bool:
    """True on a terminal or in a Jupyter kernel. False when stderr goes to a file, a pipe
    or a cloud job's console, where each redraw of a progress bar is appended to one
    endless line: ferjax (and TFDS, while building) log plain lines there instead."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def print_error(e: BaseException) -> None:
    """Prints 'error: <message>' to stderr. A KeyError's str() wraps its message in quotes
    (it is meant for a missing key); the line shows the message as written."""
    message = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else e
    print(f"error: {message}", file=sys.stderr)
