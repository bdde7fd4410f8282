"""Small shared helpers: atomic writes, directory swaps, safe file names.

Crash consistency: every atomic write goes to a fresh private temporary
directory beside its target (``mkdtemp``: no name is ever reused), is
fsynced, renamed onto the target, and the parent directory is fsynced. A
directory swap (:func:`replace_dir`) that was killed between its two
renames is repaired by :func:`recover_replaced_dir` on the next start.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
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


#: The one rule for a name taken from data (an ID, a language code, a manifest
#: name) that becomes part of a file name: 1 to 128 ASCII letters, digits,
#: ``.``, ``_`` and ``-``, starting with a letter or a digit (so never ``.``,
#: ``..``, a hidden file, an option-like ``-x``, an absolute path or a separator).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def safe_name(value: Any, what: str, where: str | Path | None = None) -> str:
    """``value`` unchanged when it may be part of a file name under the one
    rule :data:`SAFE_NAME`; else :class:`ilt.errors.IltInputError`, one line.

    Every ID, language code or name that comes from data (manifests, corpora,
    RTTMs, prompts, configs of others) and becomes part of a file or directory
    name goes through this helper, right where the path is built::

        out_dir / f"{safe_name(session_id, 'session ID', rttm_path)}.rttm"
        exp / "experts" / safe_name(language, "language code", manifest)

    Names are validated, never rewritten: an output keeps the ID a user can
    look up, and two IDs never map to one file. ``..``, ``/x``, ``a/b``, NUL
    bytes, newlines, spaces and names over 128 characters are all refused.

    :param what: what the value is, for the message (``"cut ID"``, ``"language code"``).
    :param where: the file (or option) the value came from, named first in the message.
    :raises IltInputError: ``"WHERE: WHAT 'VALUE' cannot be part of a file
        name: ...; rename it in the input"`` (long values shortened).
    """
    from ilt.errors import IltInputError

    if isinstance(value, str) and SAFE_NAME.fullmatch(value):
        return value
    shown = repr(value) if not isinstance(value, str) or len(value) <= 60 else \
        f"{value[:40]!r}... ({len(value)} characters)"
    prefix = f"{where}: " if where is not None else ""
    raise IltInputError(f"{prefix}{what} {shown} cannot be part of a file name: use 1-128 letters, digits, "
                        f"'.', '_' or '-', starting with a letter or digit; rename it in the input")


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


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory (its entries); errors are ignored where a
    file system cannot fsync a directory."""
    try:
        flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync a written file, or every file and directory of a written tree."""
    if path.is_dir():
        for root, _dirs, files in os.walk(path):
            for name in files:
                fsync_path(Path(root) / name)
            fsync_path(root)
    elif path.exists():
        fsync_path(path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Readers never see a half-written file: on any exception the temporary file
    (or directory) is removed and ``path`` is left as it was. The temporary
    path lies in a fresh private directory ``.NAME.XXXX.tmp`` (``mkdtemp``:
    no other process can have made or reused it) and keeps ``path``'s name, so
    writers that infer the format from the suffixes (``.jsonl.gz``) keep
    working. What was written is fsynced before the rename, and the parent
    directory after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp_path = holder / path.name
    try:
        yield tmp_path
        _fsync_tree(tmp_path)
        os.replace(tmp_path, path)
        fsync_path(path.parent)
    except Exception as exc:  # a full or read-only disk: say so, naming the file
        failed = _write_failed(path, exc)
        if failed is None:
            raise
        raise failed from exc
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def recover_replaced_dir(dst: str | Path) -> list[Path]:
    """Repair what a killed :func:`replace_dir` of ``dst`` left: when ``dst``
    is missing and a ``.NAME.*.old`` copy of it exists, the copy is renamed
    back (the swap is undone: the new directory was never complete in
    ``dst``); otherwise the ``.old`` copies are removed. Returns the ``.old``
    directories handled. Call it only where no other writer of ``dst`` runs
    (every writer here does, before it writes)."""
    dst = Path(dst)
    if not dst.parent.is_dir():
        return []
    olds = sorted((p for p in dst.parent.glob(f".{dst.name}.*.old") if p.is_dir()),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds:
        kept = old / dst.name
        if not dst.exists() and not dst.is_symlink() and kept.exists():
            os.replace(kept, dst)
            fsync_path(dst.parent)
            log.warning("%s: restored the previous copy (a swap of it was interrupted)", dst)
        shutil.rmtree(old, ignore_errors=True)
    return olds


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Put the complete directory ``src`` at ``dst``; an existing ``dst`` is
    moved aside first (into ``.NAME.XXXX.old``) and removed only after the
    rename. A kill between the two renames leaves ``dst`` missing and the
    old copy aside: :func:`recover_replaced_dir` (run here first, and by the
    next start of every writer) puts it back."""
    src, dst = Path(src), Path(dst)
    recover_replaced_dir(dst)
    _fsync_tree(src)
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    fsync_path(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; on success it replaces
    ``path`` (see :func:`replace_dir`); on error it is removed and ``path`` is
    left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_replaced_dir(path)
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
    up): ``.NAME.*.tmp*``, and repairs an interrupted directory swap of
    ``path`` (:func:`recover_replaced_dir`). Call it only where no other
    writer of ``path`` runs."""
    path = Path(path)
    recover_replaced_dir(path)
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


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, through the descriptor of a file
    created exclusively (``O_EXCL``) in :func:`atomic_path`'s private directory."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


