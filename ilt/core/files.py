"""Small shared helpers: atomic writes, logging set-up."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("ilt")

#: A write that fails with fewer free bytes than this on its device is put down to a full disk.
LOW_SPACE = 1 << 20
_NO_SPACE_FIX = "free disk space or choose another output directory, then rerun the same command (finished work is kept)"
_NOT_WRITABLE_FIX = "choose a writable output directory or fix its permissions, then rerun the same command"
#: errno -> the fix a user can make
STORAGE_FIXES = {errno.ENOSPC: _NO_SPACE_FIX, errno.EDQUOT: _NO_SPACE_FIX, errno.EROFS: _NOT_WRITABLE_FIX,
                 errno.EACCES: _NOT_WRITABLE_FIX, errno.EPERM: _NOT_WRITABLE_FIX}


def storage_problem(path: str | Path) -> tuple[str, str] | None:
    """``(cause, fix)`` when files cannot be written under ``path`` because its
    file system is read-only or (nearly) full, or it is not writable; else None.

    Writers whose errors do not say why (safetensors, ``torch.save``) are
    diagnosed with this after a failed write, before its partial output is removed.
    """
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return f"{p} is on a read-only file system", _NOT_WRITABLE_FIX
    if st.f_bavail * st.f_frsize < LOW_SPACE:
        return f"no space left on the device of {p} ({st.f_bavail * st.f_frsize} bytes free)", _NO_SPACE_FIX
    if not os.access(p, os.W_OK):
        return f"{p} is not writable", _NOT_WRITABLE_FIX
    return None


def os_error_line(exc: BaseException) -> str | None:
    """``"FILE: cause; fix"`` for an ``OSError`` a user can fix (no space, read-only, permissions)."""
    if isinstance(exc, OSError) and exc.errno in STORAGE_FIXES:
        return f"{exc.filename or '?'}: {exc.strerror or os.strerror(exc.errno)}; {STORAGE_FIXES[exc.errno]}"
    return None


def _write_failed(path: Path, exc: BaseException) -> BaseException | None:
    """The user-facing error for a failed write of ``path`` when the disk is
    the cause (None otherwise: the original exception stands)."""
    from ilt.errors import IltInputError

    if isinstance(exc, IltInputError) or not isinstance(exc, Exception):
        return None
    line = os_error_line(exc)
    problem = None if line else storage_problem(path)
    if line is None and problem is None:
        return None
    return IltInputError(line or f"{path}: cannot write it: {problem[0]}; {problem[1]}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Readers never see a half-written file: on any exception the temporary file
    (or directory) is removed and ``path`` is left as it was. The temporary
    name keeps ``path``'s suffixes so writers that infer the format from the
    name (``.jsonl.gz``) keep working.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except Exception as exc:  # a full or read-only disk: say so, naming the file
        failed = _write_failed(path, exc)
        if failed is None:
            raise
        raise failed from exc
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Put the complete directory ``src`` at ``dst``; an existing ``dst`` is
    moved aside first and removed only after the rename."""
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; on success it replaces
    ``path`` (see :func:`replace_dir`); on error it is removed and ``path`` is
    left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give it the usual mode
    try:
        yield tmp
        replace_dir(tmp, path)
    except Exception as exc:  # a full or read-only disk: say so, naming the directory
        failed = _write_failed(path, exc)
        if failed is None:
            raise
        raise failed from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries :func:`atomic_path` / :func:`atomic_dir` left
    beside ``path`` when a writer was killed (SIGKILL gives no chance to clean
    up): ``.NAME.*.tmp*``. Call it only where no other writer of ``path`` runs."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp*")) if path.parent.is_dir() else []
    for item in stale:
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
    return stale


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; ``None`` when the file does not exist; an
    :class:`ilt.errors.IltInputError` naming the file when it cannot be read."""
    from ilt.errors import IltInputError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IltInputError(f"{path}: cannot read JSON: {exc}") from None


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


