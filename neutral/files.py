"""Writing a file so that readers see the old file or the complete new one, never a partial one."""
from __future__ import annotations

import os
import tempfile
from typing import IO, Callable


def write_atomically(path: str, write: Callable[[IO], None], binary: bool = True) -> str:
    """Call write(f) on a temporary file in path's folder, then rename it onto path (atomic on POSIX).
    The temporary file is removed on any error. Returns path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.splitext(path)[1] + ".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
