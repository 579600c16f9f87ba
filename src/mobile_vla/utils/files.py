"""File helpers with one implementation each: the sha256 of a file's bytes and atomic (optionally durable)
writes. A reader of a file written here sees the old content, no file, or the whole new content, never a part;
with ``durable=True`` (the default) the data is fsynced before the rename, so a power cut cannot leave an
empty file under the final name either.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

TMP_SUFFIX = ".tmp"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str | Path) -> None:
    """Flush a file that is already written (and closed) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then ``os.replace``.

    The temporary name is unique per process and call (``.{name}.{pid}.{random}.tmp``), so concurrent writers
    never share one; on any error it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, *, durable: bool = True) -> None:
    """``atomic_write_bytes`` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)
