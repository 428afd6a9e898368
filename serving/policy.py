"""The version policy choosing which of a model's versions to serve, and what identifies a version's content.

As TF Serving's file system source: the versions are the integer directories under the base path
(components.artifacts.version_directories); `latest {num_versions: N}` (default 1), `all {}`,
`specific {versions: ...}`.
"""

from __future__ import annotations

import posixpath
from typing import Iterable

import tensorflow as tf
from tensorflow_serving.config import file_system_storage_path_source_pb2

from components.artifacts import SAVED_MODEL_FILE, SAVED_MODEL_TEXT_FILE, VARIABLES_INDEX_FILE, WARMUP_FILE

VersionPolicy = file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy
# The files whose change means a version directory holds something new (see `fingerprint`).
_WATCHED = (SAVED_MODEL_FILE, SAVED_MODEL_TEXT_FILE, VARIABLES_INDEX_FILE, WARMUP_FILE)


def aspired_versions(policy: VersionPolicy, present: Iterable[int]) -> set[int]:
    """The versions the policy wants served, among those present on disk."""
    present = set(present)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return present
    if choice == "specific":
        return present & set(policy.specific.versions)
    count = max(policy.latest.num_versions, 1) if choice == "latest" else 1
    return set(sorted(present)[-count:])


def describe(policy: VersionPolicy) -> str:
    """The policy in words, for logs."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return "all versions"
    if choice == "specific":
        return f"versions {sorted(policy.specific.versions)}"
    return f"latest {max(policy.latest.num_versions, 1) if choice else 1}"


def fingerprint(path: str) -> tuple:
    """What identifies the content of a version directory: its entries and its key files' sizes and times.
    A failed version is retried only when this changes."""
    try:
        entries = tuple(sorted(tf.io.gfile.listdir(path)))
    except tf.errors.OpError:
        return ()
    stats = []
    for name in _WATCHED:
        try:
            stat = tf.io.gfile.stat(posixpath.join(path, name))
            stats.append((name, stat.length, stat.mtime_nsec))
        except tf.errors.OpError:
            stats.append((name, None, None))
    return entries, tuple(stats)
