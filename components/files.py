"""Files replaced whole: an interrupted write leaves the old content or the new one, never a mix.

`write_file` writes a temporary file next to the target and renames it over the target. On a local
file system the temporary file is flushed and fsynced first and the directory after the rename, so
neither a killed process nor a power loss leaves a partial file. On other tf.io.gfile file systems
(gs://, ...) the rename is what tf.io.gfile offers; an object store's object appears whole.

State files that a stage replaces again and again (deploy's `deployments.json`, TF Serving's
`models.config`) are written with `backup=True`: the content they replace is kept in `<file>.bak`.
`read_state_file` reports a damaged state file (truncated, not parseable) with its name, what is
wrong and the way out (restoring the backup).

`read_json` and `write_json` read and write the JSON files stages and state files hold.

Local paths need no TensorFlow: it is imported only for URIs.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import posixpath
import shlex
import time
import uuid
from typing import Any, Callable, TypeVar

logger = logging.getLogger(__name__)

BACKUP_SUFFIX = ".bak"
TEMPORARY_MARKER = ".tmp-"
# A temporary file lives for one write; one older than this was left by a killed writer.
STALE_TEMPORARY_SECONDS = 3600
_EXCERPT = 30

T = TypeVar("T")


class DamagedFileError(ValueError):
    """A state file cannot be parsed; the message names it, says what is wrong and the way out."""


def _is_local(path: str) -> bool:
    """Whether `path` is on the local file system (not a URI such as gs://...)."""
    return "://" not in path


def exists(path: str) -> bool:
    """Whether the file or directory `path` exists (any tf.io.gfile path)."""
    return os.path.exists(path) if _is_local(path) else _gfile().exists(path)


def is_directory(path: str) -> bool:
    """Whether `path` is a directory (any tf.io.gfile path)."""
    return os.path.isdir(path) if _is_local(path) else _gfile().isdir(path)


def list_directory(path: str) -> list[str]:
    """The names in the directory `path` (any tf.io.gfile path), without trailing slashes; [] when
    `path` is not a directory."""
    if not is_directory(path):
        return []
    names = os.listdir(path) if _is_local(path) else _gfile().listdir(path)
    return [name.rstrip("/") for name in names]


def read_bytes(path: str) -> bytes:
    """The content of the file `path` (any tf.io.gfile path)."""
    if _is_local(path):
        with open(path, "rb") as f:
            return f.read()
    with _gfile().GFile(path, "rb") as f:
        return f.read()


def write_file(path: str, content: str | bytes, *, backup: bool = False) -> None:
    """Replaces the file `path` with `content` atomically (see the module doc).

    With `backup`, the content it replaces is first kept in `<path>.bak` (the same way), and
    temporary files that killed writers of `path` left behind are removed.
    """
    if backup:
        _remove_stale_temporaries(path)
        if exists(path):
            _replace(path + BACKUP_SUFFIX, read_bytes(path))
    _replace(path, content.encode() if isinstance(content, str) else content)


def read_json(path: str) -> Any:
    """A JSON file at any tf.io.gfile path; a clear ValueError when it is not valid JSON."""
    try:
        return parse_json(read_bytes(path).decode("utf-8", errors="replace"))
    except ValueError as e:
        raise ValueError(f"{path} is {e}") from None


def parse_json(text: str) -> Any:
    """JSON `text` parsed; a ValueError saying what is wrong and where otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno}; {excerpt(text, e.pos)})") from None


def write_json(path: str, data: Any, *, backup: bool = False) -> None:
    """Writes `data` as JSON to `path` atomically (`write_file`; `backup` keeps the replaced content)."""
    write_file(path, json.dumps(data, indent=2, sort_keys=True), backup=backup)


def remove(path: str) -> None:
    """Removes the file `path` (any tf.io.gfile path)."""
    if _is_local(path):
        os.remove(path)
    else:
        _gfile().remove(path)


def read_state_file(path: str, parse: Callable[[str], T]) -> T | None:
    """`parse(text)` of the state file `path`, or None when it does not exist.

    `parse` raises ValueError saying in a few words what is wrong; a damaged file then raises
    DamagedFileError naming the file, its backup and how to restore it.
    """
    if not exists(path):
        return None
    try:
        return parse(_text(path))
    except ValueError as e:
        raise DamagedFileError(_damage_report(path, str(e), parse)) from None


def excerpt(text: str, position: int) -> str:
    """A few words on what `text` holds at `position` (where a parser stopped), for an error message."""
    if not text.strip():
        return "the file is empty"
    if position >= len(text.rstrip()):
        return f"it ends after {len(text)} characters with {text[-_EXCERPT:]!r}: cut short"
    return f"near {text[max(0, position - _EXCERPT):position + _EXCERPT]!r}"


def _move_command(source: str, target: str) -> str:
    """The shell command that renames `source` to `target`, for an error message."""
    if _is_local(source):
        return f"mv {shlex.quote(source)} {shlex.quote(target)}"
    if source.startswith("gs://"):
        return f"gcloud storage mv {shlex.quote(source)} {shlex.quote(target)}"
    return f"move {source} to {target}"


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _text(path: str) -> str:
    # Undecodable bytes (a block of zeros, say) become U+FFFD: the parser then says where they are.
    return read_bytes(path).decode("utf-8", errors="replace")


def _replace(path: str, data: bytes) -> None:
    temporary = f"{path}{TEMPORARY_MARKER}{uuid.uuid4().hex[:8]}"
    try:
        if _is_local(path):
            with open(temporary, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
            _fsync_directory(os.path.dirname(path) or ".")
        else:
            with _gfile().GFile(temporary, "wb") as f:
                f.write(data)
            _gfile().rename(temporary, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(Exception):  # the write's own error is the one to report
            if exists(temporary):
                remove(temporary)
        raise


def _fsync_directory(directory: str) -> None:
    """Makes a rename in `directory` durable; a file system that cannot fsync directories is skipped."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(descriptor)


def _remove_stale_temporaries(path: str) -> None:
    """Removes `<path>.tmp-*` and `<path>.bak.tmp-*` files older than STALE_TEMPORARY_SECONDS."""
    directory, name = posixpath.split(path)
    directory = directory or "."
    entries = list_directory(directory)
    prefixes = (name + TEMPORARY_MARKER, name + BACKUP_SUFFIX + TEMPORARY_MARKER)
    for entry in entries:
        if not entry.startswith(prefixes):
            continue
        temporary = posixpath.join(directory, entry)
        modified = _modified(temporary)
        if modified is not None and time.time() - modified > STALE_TEMPORARY_SECONDS:
            try:
                remove(temporary)
            except Exception as e:  # removed meanwhile by another writer (FileNotFoundError, tf.errors.NotFoundError)
                logger.debug("%s is gone already: %s", temporary, e)
                continue
            logger.warning("Removed %s, left by a write of %s that was killed at %s", temporary, path,
                           datetime.datetime.fromtimestamp(modified).isoformat(timespec="seconds"))


def _modified(path: str) -> float | None:
    """The modification time of `path` in seconds, None when it is gone meanwhile."""
    try:
        return os.stat(path).st_mtime if _is_local(path) else _gfile().stat(path).mtime_nsec / 1e9
    except Exception:  # removed meanwhile (OSError, tf.errors.NotFoundError)
        return None


def _damage_report(path: str, what: str, parse: Callable[[str], object]) -> str:
    backup = path + BACKUP_SUFFIX
    report = f"{path} is damaged: {what}. "
    if not exists(backup):
        return report + (f"It has no backup ({backup}): repair it by hand, or move it aside to start it afresh: "
                         f"{_move_command(path, path + '.damaged')}")
    try:
        parse(_text(backup))
    except ValueError as e:
        return report + f"Its backup {backup} is damaged too ({e}): repair one of them by hand"
    modified = _modified(backup)
    saved = f"saved {datetime.datetime.fromtimestamp(modified).isoformat(timespec='seconds')}, " if modified else ""
    return report + (f"Its previous content ({saved}before its last change) is in {backup}; restore it with: "
                     f"{_move_command(backup, path)} (the last change is then lost: to repair the damaged file by "
                     f"hand instead, keep a copy of it)")
