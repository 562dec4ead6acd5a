"""Every file the project reads is opened by `open_regular` (or checked by `check_regular` where a
library opens it by name): a FIFO would block the open until a writer came, a device may never end, a
folder reads as nothing, so each is refused, naming the path, before a byte is read (the null device,
which reads as an empty file, is let through).

Every file the project writes: into a temporary file created exclusively (O_EXCL, so a planted
file or symlink is never followed) under a random name in the destination folder, then renamed over
the target (`replace`) or hard-linked to the first free name (never over an existing file: a link,
unlike a rename, fails if the name exists). The temporary file is removed whatever happens, Ctrl-C
included; one a killed process left behind (SIGKILL, power loss) is removed by `remove_stale`."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from safeio.refusals import InputError

TEMPORARY_SUFFIX = ".tmp"
STALE_AFTER_S = 60  # a temporary untouched this long, of a process gone from this machine, is stale
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp")


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _refuse_special(status: os.stat_result, path: str | os.PathLike) -> None:
    mode = status.st_mode
    if stat.S_ISREG(mode) or (stat.S_ISCHR(mode) and os.path.samestat(status, os.stat(os.devnull))):
        return  # the null device reads as an empty file
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
    raise OSError(code, f"it is {kind}, not a file; pass a regular file", str(path))


def check_regular(path: str | os.PathLike) -> None:
    """Refuse (OSError naming `path`) what is not a regular file, for readers that open by name; a
    missing file is left to the reader's own message."""
    try:
        status = os.stat(path)
    except OSError:
        return
    _refuse_special(status, path)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` open for reading in binary, or OSError naming it when it is not a regular file. The open
    does not wait for a FIFO's writer (O_NONBLOCK), and the check is on what was opened (fstat), so a
    file swapped in between cannot slip through."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        _refuse_special(os.fstat(fd), path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of the regular file `path` (`open_regular`)."""
    with open_regular(path) as file:
        return file.read()


def read_text(path: str | os.PathLike) -> str:
    """The text of the regular file `path`, strictly UTF-8 (UnicodeDecodeError otherwise)."""
    return read_bytes(path).decode("utf-8")


def check_target(path: str | os.PathLike, what: str, force: bool = False) -> Path:
    """Refuse, before any work, an output file `path` (given as the input `what`) that is a folder, or
    that exists when not `force`, or whose folder is missing; `write_atomically(path, ...,
    replace=force)` then writes it."""
    path = Path(path)
    given = f"{{{what}}} {{path}}"
    if path.is_dir():
        raise InputError(given + " is a folder; give a file name", path=path)
    if not force and (path.exists() or path.is_symlink()):
        raise InputError(given + " exists; pass {force} to replace it, or give another file name", path=path)
    if not path.parent.is_dir():
        raise InputError(
            given + ": the folder {folder} does not exist; create it first", path=path, folder=path.parent
        )
    return path


def temporary_name(name: str) -> str:
    """`.{name}.{pid}-{random}.tmp`: hidden, unguessable, and telling which process made it."""
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"


def check_writable(folder: str | os.PathLike) -> None:
    """Create `folder` if missing and prove that a file can be created in it (raises OSError)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / temporary_name("write-test")
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    probe.unlink()


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
