"""The deploy stage: a blessed SavedModel goes into TF Serving's model base path; labels move.

    BASE/models.config                 ModelServerConfig: each model's versions and labels
    BASE/NAME/<version>/               the SavedModel, copied whole (temporary name, then rename)
    BASE/NAME/deployments.json         what was deployed, promoted and rolled back, when and why

models.config and deployments.json are replaced atomically, each keeping the content it replaced
as `<file>.bak`; a damaged one stops the stage with a message naming the backup to restore.

`push` copies a version in, after a servability check (TFX's InfraValidator idea: the version is
loaded in a model server and answers its own warm-up requests), and makes it the `stable` version,
or the `canary` next to the stable one. `promote` makes the canary stable; `rollback` drops the
canary, or returns `stable` to the previous stable version. A TF Serving polling the same base
path and config picks every change up.

TF Serving moves an existing label only to a version that is already AVAILABLE (with
`--allow_version_labels_for_unavailable_models` a new label may name a loading version). So with
`server` (its REST address) given, a label move is two writes: first the target version is added
to the policy, the labels unchanged; once the server reports it AVAILABLE, the labels move and the
old version leaves the policy. Without a server to watch, the final config is written at once
(right for a first deployment, or a server started afterwards).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import posixpath
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

import tensorflow as tf

from components.artifacts import (BLESSING_FILE, DEPLOYMENTS_FILE, EVALUATION_FILE, SAVED_MODEL_FILE, next_version,
                                  saved_model_dir, version_directories)
from components.config import Config
from components.deploy import model_config
from components.files import excerpt, parse_json, read_json, read_state_file, write_json
from components.manifest import read_manifest
from components.staging import copy_tree, staged_output

logger = logging.getLogger(__name__)


class DeployError(ValueError):
    """The deployment is refused or cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class DeployResult:
    action: str
    name: str
    version: int | None  # the version pushed (push only)
    labels: dict[str, int]
    model_config_file: str


# A servability check: (SavedModel directory, model name) -> None, raising when the version cannot serve.
ServabilityCheck = Callable[[str, str], None]


def push(model: str, model_base_path: str, name: str, config: Config, *, evaluation: str | None = None,
         force: bool = False, canary: bool = False, server: str | None = None,
         check: ServabilityCheck | None = None, version: int | None = None) -> DeployResult:
    """Copies the exported `model` into `model_base_path/name/<version>` (default: the next free
    version; a given one must be free) and labels it.

    Refuses a model that `evaluation` did not bless (or without an evaluation) unless `force`;
    a forced push is logged and recorded. `check` (default: the project's model server) must pass
    before the version appears.
    """
    source = saved_model_dir(model)
    blessing = blessing_of(source, evaluation)
    if not blessing["blessed"]:
        reasons = "; ".join(blessing["reasons"])
        if not force:
            raise DeployError(f"{source} is not blessed ({reasons}); evaluate it (python -m components.evaluate) "
                              f"or pass --force to deploy it anyway")
        logger.warning("Deploying %s although it is not blessed (%s): forced", source, reasons)
    base, config_file, server_config, current = _deployed(model_base_path, name)
    model_dir = posixpath.join(base, name)
    if version is None:
        version = next_version(model_dir)
    elif version < 1 or version in (taken := sorted(version_directories(model_dir))):
        raise DeployError(f"{name} cannot be deployed as version {version}: "
                          + ("versions start at 1" if version < 1 else f"{model_dir} already holds versions {taken}")
                          + "; pass another version (or none for the next free one)")

    with staged_output(posixpath.join(model_dir, str(version)), overwrite=False) as work_dir:
        copy_tree(source, work_dir)
        (check or _servability_check)(work_dir, name)
    stable = current.get(model_config.STABLE, version) if canary else version
    _switch(server_config, config_file, name, model_dir, current, server, stable, version if canary else None)
    result = DeployResult("push", name, version, model_config.labels(server_config, name), config_file)
    _record(model_dir, result, source=source, blessed=blessing["blessed"], forced=force and not blessing["blessed"],
            evaluation=evaluation)
    return result


def promote(model_base_path: str, name: str, *, server: str | None = None) -> DeployResult:
    """Makes the canary version the stable one (the old stable version is unloaded)."""
    base, config_file, server_config, current = _deployed(model_base_path, name)
    if model_config.CANARY not in current:
        raise DeployError(f"{name} has no canary in {config_file} to promote (labels {current})")
    _switch(server_config, config_file, name, posixpath.join(base, name), current, server, current[model_config.CANARY])
    return _finish("promote", base, name, server_config, config_file)


def rollback(model_base_path: str, name: str, *, server: str | None = None) -> DeployResult:
    """Drops the canary if there is one, else returns `stable` to the previous stable version."""
    base, config_file, server_config, current = _deployed(model_base_path, name)
    if model_config.STABLE not in current:
        raise DeployError(f"{name} is not deployed in {config_file}")
    if model_config.CANARY in current:
        stable = current[model_config.STABLE]
    else:
        previous = [entry["labels"].get(model_config.STABLE) for entry in _history(posixpath.join(base, name))]
        earlier = [v for v in previous if v is not None and v != current[model_config.STABLE]]
        if not earlier:
            raise DeployError(f"{name} has no earlier stable version to roll back to")
        stable = earlier[-1]
        if not tf.io.gfile.exists(posixpath.join(base, name, str(stable), SAVED_MODEL_FILE)):
            raise DeployError(f"the previous stable version {stable} of {name} is no longer on disk")
    _switch(server_config, config_file, name, posixpath.join(base, name), current, server, stable)
    return _finish("rollback", base, name, server_config, config_file)


def _switch(server_config, config_file: str, name: str, model_dir: str, current: dict[str, int],
            server: str | None, stable: int, canary: int | None = None) -> None:
    """Writes the config serving `stable` (and `canary`); with a `server`, in two steps when a label
    moves: the new versions are loaded under the current labels first (see the module doc)."""
    moves = current.get(model_config.STABLE) not in (None, stable) or current.get(model_config.CANARY) not in (None, canary)
    if server and moves:
        wanted = sorted({stable} | ({canary} if canary else set()))
        model_config.set_versions(server_config, name, model_dir, current[model_config.STABLE],
                                  current.get(model_config.CANARY))
        entry = next(e for e in server_config.model_config_list.config if e.name == name)
        entry.model_version_policy.specific.versions[:] = sorted(set(entry.model_version_policy.specific.versions)
                                                                 | set(wanted))
        model_config.write_model_config(config_file, server_config)
        for version in wanted:
            wait_until_available(server, name, version)
    model_config.set_versions(server_config, name, model_dir, stable, canary)
    model_config.write_model_config(config_file, server_config)


def wait_until_available(server: str, name: str, version: int, timeout: float = 300.0) -> None:
    """Polls TF Serving's REST status of `name` version `version` until it is AVAILABLE."""
    url = f"{server.rstrip('/')}/v1/models/{name}/versions/{version}"
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                statuses = json.load(response)["model_version_status"]
            state = statuses[0]["state"]
            if state == "AVAILABLE":
                return
            if state == "END":
                raise DeployError(f"{server} failed to load {name} version {version}: {statuses[0]['status']}")
        except (urllib.error.URLError, OSError) as e:  # not loaded yet (404) or the server is restarting
            state = str(e)
        time.sleep(0.5)
    raise DeployError(f"{name} version {version} did not become AVAILABLE on {server} within {timeout:.0f} s "
                      f"(last: {state}); the labels were not moved")


def _deployed(model_base_path: str, name: str):
    """(absolute base path, models.config path, the parsed config, `name`'s labels)."""
    base = _absolute(model_base_path)
    config_file = model_config.model_config_path(base)
    server_config = model_config.read_model_config(config_file)
    _history(posixpath.join(base, name))  # a damaged history stops the action before anything changes
    return base, config_file, server_config, model_config.labels(server_config, name)


def _absolute(path: str) -> str:
    """TF Serving requires absolute base paths (or URIs such as gs://)."""
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


def _finish(action: str, base: str, name: str, server_config, config_file: str) -> DeployResult:
    result = DeployResult(action, name, None, model_config.labels(server_config, name), config_file)
    _record(posixpath.join(base, name), result)
    return result


def blessing_of(source: str, evaluation: str | None) -> dict[str, Any]:
    """The blessing (`blessed`, `reasons`) that `evaluation` gave the SavedModel `source`; unblessed
    when there is no evaluation."""
    if evaluation is None:
        return {"blessed": False, "reasons": ["no evaluation given (--evaluation)"]}
    read_manifest(evaluation, "evaluate")
    evaluated = read_json(posixpath.join(evaluation, EVALUATION_FILE))["model"]
    if posixpath.normpath(evaluated) != posixpath.normpath(source):
        raise DeployError(f"{evaluation} evaluated {evaluated}, not {source}")
    return read_json(posixpath.join(evaluation, BLESSING_FILE))


def _history(model_dir: str) -> list[dict[str, Any]]:
    """The entries of deployments.json (none yet: empty); a damaged file raises DamagedFileError."""
    return read_state_file(posixpath.join(model_dir, DEPLOYMENTS_FILE), _parse_history) or []


def _parse_history(text: str) -> list[dict[str, Any]]:
    history = parse_json(text)
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise ValueError(f"not a JSON list of deployment entries but {type(history).__name__} {excerpt(text, 0)}")
    return history


def _record(model_dir: str, result: DeployResult, **details: Any) -> None:
    """Appends the action to deployments.json (the replaced content kept as deployments.json.bak) and logs it."""
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(), "action": result.action,
             "version": result.version, "labels": result.labels, **details}
    write_json(posixpath.join(model_dir, DEPLOYMENTS_FILE), [*_history(model_dir), entry], backup=True)
    logger.info("%s %s: labels %s (%s)", result.action, result.name, result.labels, result.model_config_file)


def _servability_check(saved_model: str, name: str) -> None:
    """Loads the version in the project's model server and sends it its warm-up requests over gRPC."""
    from components.deploy.servability import check_servable

    check_servable(saved_model, name)
