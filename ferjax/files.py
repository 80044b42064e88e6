"""A workdir's small files on local disk or in cloud storage (`gs://...`) alike.

Cloud TPU jobs keep their workdir in a bucket (launch/tpu_vm.sh), so everything ferjax
writes there besides checkpoints (orbax) and TensorBoard events (tensorboardX) goes
through here. Local paths use the os directly: appends, and writes that are atomic through
a renamed temporary file. URLs go through etils.epath (fsspec; gcsfs comes with
`pip install 'ferjax[tpu]'`); an object store cannot append, so an append rewrites the
object, and an object is replaced whole or not at all, which makes every write atomic.
"""

from __future__ import annotations

import os
import time


def is_url(path: str) -> bool:
    """Whether `path` names cloud storage ('gs://bucket/...', 's3://...')."""
    return "://" in str(path)


def absolute(path: str) -> str:
    """`path` made absolute; URLs are kept as they are (os.path.abspath would turn
    'gs://b/run' into '<cwd>/gs:/b/run')."""
    return str(path) if is_url(path) else os.path.abspath(path)


def join(*parts: str) -> str:
    return "/".join([str(parts[0]).rstrip("/"), *map(str, parts[1:])]) if is_url(parts[0]) \
        else os.path.join(*parts)


def _epath(path: str):
    from etils import epath
    return epath.Path(path)


def exists(path: str) -> bool:
    return _epath(path).exists() if is_url(path) else os.path.exists(path)


def is_dir(path: str) -> bool:
    return _epath(path).is_dir() if is_url(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """Names in the folder `path` ([] when it does not exist)."""
    if is_url(path):
        folder = _epath(path)
        return [p.name for p in folder.iterdir()] if folder.exists() else []
    return os.listdir(path) if os.path.isdir(path) else []


def makedirs(path: str) -> None:
    if is_url(path):
        _epath(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def read_text(path: str) -> str:
    if is_url(path):
        return _epath(path).read_text()
    with open(path) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Replaces `path` whole: a crash leaves the old file or the new one, never half."""
    if is_url(path):
        _epath(path).write_bytes(data)
        return
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


class LineLog:
    """A text file that grows by lines (metrics.jsonl, evals.jsonl). Locally an append.

    Cloud storage cannot append, so there the whole object is rewritten: at most once per
    `upload_every_s` seconds (0: with every line), and on `flush` and `close`. A busy log
    (metrics.jsonl, a line every few steps) would otherwise upload a growing file every few
    steps; the loop flushes it before each checkpoint, so a resume loses no line it keeps.
    """

    def __init__(self, path: str, upload_every_s: float = 0.0):
        self.path = path
        self.upload_every_s = upload_every_s
        self._file = None
        self._lines: list[str] | None = None
        self._unsent = False
        self._sent_at = float("-inf")
        if is_url(path):
            self._lines = read_text(path).splitlines(keepends=True) if exists(path) else []

    def append(self, line: str) -> None:
        if self._lines is not None:
            self._lines.append(line + "\n")
            self._unsent = True
            if time.monotonic() - self._sent_at >= self.upload_every_s:
                self.flush()
            return
        if self._file is None:
            self._file = open(self.path, "a")
        self._file.write(line + "\n")
        self._file.flush()

    def flush(self) -> None:
        """Uploads lines not yet in cloud storage (local appends are already written)."""
        if self._lines is not None and self._unsent:
            write_text(self.path, "".join(self._lines))
            self._unsent = False
            self._sent_at = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
