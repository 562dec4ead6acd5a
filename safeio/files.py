"""Every file the project writes: into a temporary file created exclusively (O_EXCL, so a planted
file or symlink is never followed) under a random name in the destination folder, then renamed over
the target (`replace`) or hard-linked to the first free name (never over an existing file: a link,
unlike a rename, fails if the name exists). The temporary file is removed whatever happens, Ctrl-C
included; one a killed process left behind (SIGKILL, power loss) is removed by `remove_stale`."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

TEMPORARY_SUFFIX = ".tmp"
STALE_AFTER_S = 60  # a temporary untouched this long, of a process gone from this machine, is stale
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp")


def temporary_name(name: str) -> str:
    """`.{name}.{pid}-{random}.tmp`: hidden, unguessable, and telling which process made it."""
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"


def write_atomically(
    path: str | os.PathLike,
    data: bytes | str | Callable[[BinaryIO], None],
    *,
    replace: bool = True,
    alternatives: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write `data` (bytes, text as UTF-8, or a function that writes to the open file) to `path`.

    `replace`: rename over `path`. Otherwise link to `path`, else to the first of `alternatives`
    that does not exist (FileExistsError when none is free). Returns the path written. An OSError
    without a file name (a full disk) is raised again naming `path`."""
    path = Path(path)
    temporary = path.with_name(temporary_name(path.name))
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 under the umask
        try:
            with os.fdopen(fd, "wb") as file:
                if callable(data):
                    data(file)
                else:
                    file.write(data.encode() if isinstance(data, str) else data)
                file.flush()
                os.fsync(file.fileno())
            if replace:
                os.replace(temporary, path)
                return path
            for target in itertools.chain([path], alternatives):
                with contextlib.suppress(FileExistsError):
                    os.link(temporary, target)
                    return Path(target)
            raise FileExistsError(17, "File exists", str(path))
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as err:
        if err.filename is None or Path(err.filename) == temporary:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        raise


def remove_stale(directory: str | os.PathLike, name: str | None = None) -> int:
    """Remove the temporaries of `write_atomically` in `directory` (only those for `name`, if given)
    whose process no longer runs on this machine and which nothing touched for STALE_AFTER_S
    (so a live writer on another machine sharing the folder keeps its file). Returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        with contextlib.suppress(OSError):
            if _running(int(match["pid"])) or time.time() - entry.stat().st_mtime < STALE_AFTER_S:
                continue
            os.unlink(entry.path)
            removed += 1
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or not a pid: leave the file alone
    return True


def reason(err: BaseException) -> str:
    """Why an operation failed, as one line: a system error's own words (its strerror), else the error's
    text with newlines folded, else its type's name."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return " ".join(str(err).split()) or type(err).__name__
