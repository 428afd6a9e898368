"""Stage outputs appear whole or not at all: written in a work directory, then renamed into place.

    <output>.tmp-<id>/     the work directory of one run
    <output>.owner-<id>    that run's owner record (JSON): host, process, start time, heartbeat
    <output>.old-<id>/     the previous output, for the moment the new one replaces it

A killed run leaves these behind. The next run staging an output in the same directory (that
output, or another one: a deploy's next version) removes them once their owner is gone: on the
same machine (host name, boot and pid namespace) when its process no longer exists (or its pid
now belongs to a later process); from anywhere else (another host or pod, as for outputs on an
object store) when the heartbeat that a live run rewrites every HEARTBEAT_SECONDS is older than
STALE_SECONDS. A run killed while it replaced an output gets the previous output back. Work
directories kept for inspection (`keep_on`) and directories without an owner record (left by an
older cvpipe) are reported, never removed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import posixpath
import re
import socket
import threading
import time
import uuid
from typing import Any, Iterator

import tensorflow as tf

from components.artifacts import MANIFEST_FILE
from components.files import parse_json, remove, write_file
from components.manifest import Origin

logger = logging.getLogger(__name__)

WORK_MARKER, OWNER_MARKER, OLD_MARKER = ".tmp-", ".owner-", ".old-"
_LEFTOVER = re.compile(r"(?P<output>.+)(?P<marker>\.tmp-|\.owner-|\.old-)(?P<run>[0-9a-f]{8})")
HEARTBEAT_SECONDS = 60.0
# An owner elsewhere whose heartbeat is older than this is gone (15 missed heartbeats: far beyond
# a slow object store or clock skew between hosts).
STALE_SECONDS = 15 * 60.0


class OutputExistsError(FileExistsError):
    """The output exists and the run may not replace it. `origin`: what the refused run would have
    made the output from (None when its stage does not say)."""

    def __init__(self, output: str, origin: Origin | None = None):
        super().__init__(f"output {output} already exists; pass --overwrite to replace it")
        self.output, self.origin = output, origin


@contextlib.contextmanager
def staged_output(output: str, overwrite: bool, keep_on: tuple[type[BaseException], ...] = (), *,
                  origin: Origin | None = None) -> Iterator[str]:
    """Yields `<output>.tmp-<id>`; when the block succeeds it replaces `output`.

    What killed runs of `output` left behind is removed first (see the module doc). On an
    exception the work directory is removed, except for the `keep_on` types, where it is kept
    (and logged) so a user can inspect what was written. `origin` goes into the OutputExistsError
    raised when `output` exists and `overwrite` is not given.
    """
    output = output.rstrip("/")
    remove_leftovers(output)
    if tf.io.gfile.exists(output) and not overwrite:
        raise OutputExistsError(output, origin)
    run = uuid.uuid4().hex[:8]
    work_dir, old = f"{output}{WORK_MARKER}{run}", f"{output}{OLD_MARKER}{run}"
    if posixpath.dirname(output):
        tf.io.gfile.makedirs(posixpath.dirname(output))
    with _OwnerRecord(f"{output}{OWNER_MARKER}{run}") as owner:
        tf.io.gfile.makedirs(work_dir)
        try:
            yield work_dir
        except keep_on:
            owner.keep()
            logger.error("the unfinished output is kept for inspection in %s (later runs leave it alone; "
                         "remove it when done)", work_dir)
            raise
        except BaseException:
            tf.io.gfile.rmtree(work_dir)
            owner.release()
            raise
        if tf.io.gfile.exists(output):
            owner.update(replacing=True)  # from here until the update below, a gone `output` is in `old`
            tf.io.gfile.rename(output, old)
            tf.io.gfile.rename(work_dir, output)
            owner.update(replacing=False)
            tf.io.gfile.rmtree(old)
        else:
            tf.io.gfile.rename(work_dir, output)
        owner.release()


def resumable_output(output: str, overwrite: bool, finished_what: str) -> str:
    """`output` (without a trailing slash) for a stage that resumes in place (train, tune): a finished
    output (its manifest written) is removed with `overwrite`, else a FileExistsError."""
    output = output.rstrip("/")
    if tf.io.gfile.exists(posixpath.join(output, MANIFEST_FILE)):
        if not overwrite:
            raise FileExistsError(f"{output} holds a finished {finished_what}; pass --overwrite to start again")
        tf.io.gfile.rmtree(output)
    return output


def remove_leftovers(output: str) -> None:
    """Removes what killed runs left behind in the directory of `output` (theirs, or those of another
    output there: a deploy's other versions), and logs what it removed or kept."""
    output = output.rstrip("/")
    parent, name = posixpath.split(output)
    if not tf.io.gfile.isdir(parent or "."):
        return
    runs: dict[tuple[str, str], set[str]] = {}
    for entry in tf.io.gfile.listdir(parent or "."):
        match = _LEFTOVER.fullmatch(entry.rstrip("/"))
        if match:
            runs.setdefault((match["output"], match["run"]), set()).add(match["marker"])
    for (other, run), markers in sorted(runs.items()):
        if OWNER_MARKER in markers or other == name:  # names like these without a record are not ours to judge
            _remove_run(posixpath.join(parent, other), run, markers)


def _remove_run(output: str, run: str, markers: set[str]) -> None:
    work_dir, old, record = (f"{output}{marker}{run}" for marker in (WORK_MARKER, OLD_MARKER, OWNER_MARKER))
    left = [path for marker, path in ((WORK_MARKER, work_dir), (OLD_MARKER, old)) if marker in markers]
    owner = _read_owner(record) if OWNER_MARKER in markers else None
    if owner is None:
        logger.warning("%s has no readable owner record (an older cvpipe wrote it?): remove it by hand once no "
                       "run writes it", " and ".join(left) or record)
        return
    who = f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('created')}"
    if owner.get("kept"):
        if WORK_MARKER in markers:
            logger.info("%s is kept for inspection since a failed run (%s): remove it when done", work_dir, who)
        else:  # removed by hand: its record goes too
            remove(record)
        return
    if _is_alive(owner):
        logger.info("%s is being written by a running process (%s): left alone", " and ".join(left) or record, who)
        return
    try:
        if OLD_MARKER in markers and owner.get("replacing") and not tf.io.gfile.exists(output):
            tf.io.gfile.rename(old, output)
            left.remove(old)
            logger.warning("Restored %s from %s: the run replacing it (%s) was killed midway", output, old, who)
        for path in left:
            tf.io.gfile.rmtree(path)
            logger.warning("Removed %s, left by a run that was killed or crashed (%s)", path, who)
        remove(record)
    except (tf.errors.NotFoundError, FileNotFoundError) as e:  # another run is removing them too
        logger.info("Leftovers of %s were removed meanwhile: %s", who, e)


class _OwnerRecord:
    """The owner record of one run's work directory, rewritten every HEARTBEAT_SECONDS while the run
    lasts. It goes (`release`) once the run's directories are gone or in place."""

    def __init__(self, path: str):
        self.path = path
        self._record = {**_this_process(), "created": _now()}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._heartbeat = threading.Thread(target=self._beat, name="staging-heartbeat", daemon=True)

    def __enter__(self) -> _OwnerRecord:
        self.update()
        self._heartbeat.start()
        return self

    def __exit__(self, *_) -> None:
        self._finish()

    def update(self, **changes: Any) -> None:
        """Rewrites the record with `changes` and a fresh heartbeat."""
        with self._lock:
            self._record.update(changes, heartbeat=time.time())
            write_file(self.path, json.dumps(self._record, indent=2))

    def keep(self) -> None:
        """Marks the work directory as kept for inspection: no later run removes it."""
        self._finish()
        self.update(kept=True)

    def release(self) -> None:
        """Removes the record: nothing of the run is left to clean up."""
        self._finish()
        remove(self.path)

    def _finish(self) -> None:
        self._stop.set()
        self._heartbeat.join()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.update()
            except Exception as e:  # the next beat tries again; STALE_SECONDS allows many misses
                logger.warning("Could not renew the owner record %s: %s", self.path, e)


def _read_owner(path: str) -> dict[str, Any] | None:
    try:
        with tf.io.gfile.GFile(path) as f:
            owner = parse_json(f.read())
    except (ValueError, tf.errors.OpError) as e:  # removed meanwhile, or damaged by hand
        logger.warning("Cannot read the owner record %s: %s", path, e)
        return None
    return owner if isinstance(owner, dict) and {"machine", "pid", "heartbeat"} <= set(owner) else None


def _is_alive(owner: dict[str, Any]) -> bool:
    """Whether the process that wrote the owner record `owner` may still be writing."""
    if owner.get("machine") != _machine():
        return time.time() - float(owner.get("heartbeat", 0)) < STALE_SECONDS
    state = _process_state(int(owner["pid"]))
    return state is not None and state[0] not in "ZX" and state[1] == owner.get("started", state[1])


def _this_process() -> dict[str, Any]:
    state = _process_state(os.getpid())
    return {"host": socket.gethostname(), "machine": _machine(), "pid": os.getpid(),
            "started": state[1] if state else None}


def _machine() -> str:
    """Host name, boot id and pid namespace: processes with the same value see the same pids."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return " ".join(parts)


def _process_state(pid: int) -> tuple[str, str | None] | None:
    """(state letter, start time in clock ticks after boot) of process `pid`; None when there is no
    such process. Without /proc (not Linux) the state is `?` and the start time unknown."""
    if os.path.exists("/proc/self/stat"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after `pid (command)`: fields 3, 4, ...
        except FileNotFoundError:
            return None
        return fields[0], fields[19]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # another user's process
        pass
    return "?", None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def copy_tree(source: str, target: str) -> None:
    """Copies the directory tree `source` to `target` (any tf.io.gfile paths)."""
    for directory, _, files in tf.io.gfile.walk(source):
        relative = posixpath.relpath(directory, source)
        destination = target if relative == "." else posixpath.join(target, relative)
        tf.io.gfile.makedirs(destination)
        for name in files:
            tf.io.gfile.copy(posixpath.join(directory, name), posixpath.join(destination, name), overwrite=True)
