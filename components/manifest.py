"""`manifest.json`: what a stage wrote, from which inputs, with which config, and its fingerprint.

A stage writes its manifest last, so an output directory without one is not finished. Caching,
lineage and tracking tags all read these same facts; its `started` and `created` times are the span
of the stage's run in MLflow.
"""

from __future__ import annotations

import datetime
import json
import os
import posixpath
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.artifacts import DATASET_FINGERPRINT, MANIFEST_FILE
from components.files import exists, read_json, write_json

# The image sets it at build time: a container has no git checkout.
CODE_VERSION_ENV = "CVPIPE_CODE_VERSION"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


# When the stage making an output began: when its process started (each stage runs in a process of
# its own, a stage CLI or a pipeline step, which loads this module as it starts), or when the previous
# output this process wrote was finished.
_stage_clock = {"started": _now()}


@dataclass(frozen=True)
class Manifest:
    stage: str
    # Content fingerprint of the output (same inputs and config give the same fingerprint).
    fingerprint: str
    inputs: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    # When the stage finished the output (it writes its manifest last) and when it started (see
    # `_stage_clock`; a manifest of an older cvpipe has none, and gets the reading process's).
    created: str = field(default_factory=_now)
    started: str = field(default_factory=lambda: _stage_clock["started"])
    code_version: str = field(default_factory=lambda: code_version())

    def span_ms(self) -> tuple[int, int]:
        """When the stage started and finished, in milliseconds since the epoch (MLflow's unit)."""
        finished = datetime.datetime.fromisoformat(self.created).timestamp()
        started = min(datetime.datetime.fromisoformat(self.started).timestamp(), finished)
        return int(started * 1000), int(finished * 1000)

    @property
    def dataset_fingerprint(self) -> str:
        """The fingerprint of the ingest output this output derives from ("" when none does)."""
        return self.fingerprint if self.stage == "ingest" else self.inputs.get(DATASET_FINGERPRINT, "")


@dataclass(frozen=True)
class Origin:
    """What a stage output is made from, as its manifest records it: its `inputs` and `config`.

    A stage passes it to `staging.staged_output` too: a rerun onto a finished output made from the
    same origin can then finish what the killed run did not (its tracking, see `stage_runner.run_stage`).
    """

    inputs: dict[str, Any]
    config: dict[str, Any]

    def difference(self, manifest: Manifest) -> str | None:
        """None when `manifest` records this origin, else its first difference in a few words."""
        for part in ("inputs", "config"):
            recorded, wanted = getattr(manifest, part), json.loads(json.dumps(getattr(self, part)))
            difference = _first_difference(recorded, wanted, part)
            if difference:
                return difference
        return None


def _first_difference(recorded: Any, wanted: Any, key: str) -> str | None:
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        for name in sorted(set(recorded) | set(wanted)):
            difference = _first_difference(recorded.get(name), wanted.get(name), f"{key}.{name}")
            if difference:
                return difference
        return None
    return None if recorded == wanted else f"{key} is {json.dumps(recorded)} there, {json.dumps(wanted)} now"


def write_manifest(directory: str, manifest: Manifest) -> None:
    """Writes `manifest` into `directory`; the next stage of this process starts now."""
    write_json(posixpath.join(directory, MANIFEST_FILE), asdict(manifest))
    _stage_clock["started"] = _now()


def read_manifest(directory: str, *stages: str) -> Manifest:
    """Reads the manifest of a finished output of one of `stages`; a clear error otherwise."""
    path = posixpath.join(directory, MANIFEST_FILE)
    expected = " or ".join(stages)
    if not exists(path):
        raise FileNotFoundError(
            f"{directory} has no {MANIFEST_FILE}: it is not a finished {expected} output "
            f"(run `python -m components.{stages[0]}` to create it)"
        )
    manifest = Manifest(**read_json(path))
    if manifest.stage not in stages:
        raise ValueError(f"{directory} holds a {manifest.stage!r} output, not a {expected} output")
    return manifest


def code_version() -> str:
    """$CVPIPE_CODE_VERSION (set in the project image), else the git commit of this checkout (with
    `-dirty` when modified), else `unknown`."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit
