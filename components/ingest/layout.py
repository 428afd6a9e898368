"""What an ingest input looks like, and the check of a local one that runs before anything heavy is imported
(the command lines' usage errors)."""

from __future__ import annotations

import os

EXPECTED_LAYOUT = ("class folders PATH/<label>/<image> (e.g. PATH/cat/0001.jpg), or a CSV file of uri,label "
                   "(or split,uri,label) rows")


def local_input_problem(path: str) -> str | None:
    """Why the local ingest input `path` cannot be used (None: it may be; remote URIs are not checked here):
    it does not exist, or it is a folder with files but no class sub-folder."""
    if "://" in path:
        return None
    if not os.path.exists(path):
        return f"{path} does not exist; expected {EXPECTED_LAYOUT}"
    if os.path.isdir(path):
        entries = [entry for entry in os.scandir(path) if not entry.name.startswith(".")]
        if not any(entry.is_dir() for entry in entries):
            found = f"{len(entries)} file(s)" if entries else "nothing"
            return f"{path} holds {found} but no class folder; expected {EXPECTED_LAYOUT}"
    return None
