"""Which model a run scores with (driver side): a SavedModel directory, a registered MLflow model
version, or a TF Serving endpoint.

  BASE/NAME/<version> or BASE/NAME (its highest integer version)  a SavedModel, run in process
  models:/NAME@alias | models:/NAME/VERSION                       downloaded from the MLflow registry
  http(s)://host:8501/v1/models/NAME[/versions/N | /labels/L]     TF Serving REST
  grpc(s)://host:8500/NAME[/versions/N | /labels/L]               TF Serving gRPC
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from dataclasses import dataclass

from components.artifacts import LABELS_FILE, MANIFEST_FILE, MODEL_LABELS_FILE, model_version, saved_model_dir
from components.batch_predict.remote import Endpoint, parse_endpoint, resolve
from components.config import Config
from components.files import exists, read_json

logger = logging.getLogger(__name__)

_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelInfo:
    """A resolved model: where it runs and what the rows say about it."""

    uri: str  # as given
    kind: str  # "saved_model" | "rest" | "grpc"
    name: str
    version: str
    labels: list[str] | None  # class names in id order (top-k labels), when known
    saved_model: str = ""  # the SavedModel directory (in process)
    endpoint: Endpoint | None = None  # the endpoint, version pinned (remote)
    fingerprint: str = ""  # the export's manifest fingerprint, when known

    @property
    def remote(self) -> bool:
        return self.endpoint is not None

    @property
    def model_id(self) -> str:
        return f"{self.name}/{self.version}" if self.version else self.name

    def describe(self) -> dict[str, str]:
        where = self.endpoint.describe() if self.endpoint else self.saved_model
        return {"uri": self.uri, "kind": self.kind, "name": self.name, "version": self.version, "location": where,
                "fingerprint": self.fingerprint}


def resolve_model(uri: str, config: Config, scratch: str, *, labels: str | None = None,
                  shared_dir: str | None = None) -> ModelInfo:
    """Resolves `uri`. A registered model is downloaded into `scratch` (a local directory) and, when
    `shared_dir` is given (workers on other machines), copied there. `labels` (a labels.txt, or a
    directory holding one or assets/labels.txt) overrides the model's own label list; endpoints need
    it for top-k labels."""
    endpoint = parse_endpoint(uri)
    if endpoint is not None:
        endpoint = resolve(endpoint, config.batch_predict)
        info = ModelInfo(uri, endpoint.protocol, endpoint.name, endpoint.version,
                         _read_labels(labels, required=True) if labels else None, endpoint=endpoint)
        logger.info("Scoring with %s (version %s)", endpoint.describe(), endpoint.version or "unknown")
        return info
    registered = _REGISTERED.match(uri)
    if registered:
        saved_model, version = _download_registered(registered["name"], registered["alias"], registered["version"],
                                                    config, scratch)
        if shared_dir:
            saved_model = _copy_tree(saved_model, shared_dir)
        name = registered["name"]
    elif uri.startswith("models:/"):
        raise ValueError(f"--model {uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    elif "://" in uri and not uri.startswith(("gs://", "s3://", "hdfs://", "file://")):
        raise ValueError(f"--model {uri}: not a SavedModel path, models:/ URI, http://host:port/v1/models/NAME "
                         "or grpc://host:port/NAME")
    else:
        saved_model = saved_model_dir(uri)
        name, number = model_version(saved_model)
        version = "" if number is None else str(number)
    info = ModelInfo(uri, "saved_model", name, version,
                     _read_labels(labels, required=True) if labels
                     else _read_labels(posixpath.join(saved_model, MODEL_LABELS_FILE)),
                     saved_model=saved_model, fingerprint=_export_fingerprint(saved_model))
    logger.info("Scoring in process with %s (%s, version %s)", saved_model, name, version or "unknown")
    return info


def _download_registered(name: str, alias: str | None, version: str | None, config: Config,
                         scratch: str) -> tuple[str, str]:
    """Downloads a registered model version's SavedModel; returns (its directory, the version)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from components.tracking.client import tracking_uri
    from components.tracking.pyfunc_model import SAVED_MODEL_ARTIFACT

    uri = tracking_uri(config.tracking)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    try:
        version = client.get_model_version_by_alias(name, alias).version if alias else version
        # Not models:/ itself: mlflow resolves those through its global registry URI, not this client's.
        location = client.get_model_version_download_uri(name, version)
    except MlflowException as e:
        what = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
        raise ValueError(f"{what} is not in the MLflow registry at {uri}: {e.message}") from e
    model_dir = mlflow.artifacts.download_artifacts(location, dst_path=os.path.join(scratch, "registered"),
                                                    tracking_uri=uri)
    try:
        artifact = Model.load(model_dir).flavors["python_function"]["artifacts"][SAVED_MODEL_ARTIFACT]
    except KeyError as e:
        raise ValueError(f"models:/{name}/{version} is not a cvpipe model (no {SAVED_MODEL_ARTIFACT} artifact)") from e
    saved_model = os.path.join(model_dir, artifact["path"])
    logger.info("Downloaded models:/%s/%s%s to %s", name, version, f" (@{alias})" if alias else "", saved_model)
    return saved_model, str(version)


def _copy_tree(local: str, destination: str) -> str:
    import tensorflow as tf

    for directory, _, files in os.walk(local):
        relative = os.path.relpath(directory, local)
        target = destination if relative == "." else posixpath.join(destination, relative.replace(os.sep, "/"))
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(directory, name), posixpath.join(target, name), overwrite=True)
    return destination


def _read_labels(path: str, required: bool = False) -> list[str] | None:
    """Class names in id order from a labels.txt (or a directory with labels.txt or assets/labels.txt)."""
    import tensorflow as tf

    if tf.io.gfile.isdir(path):
        candidates = [posixpath.join(path, LABELS_FILE), posixpath.join(path, MODEL_LABELS_FILE)]
        path = next((c for c in candidates if tf.io.gfile.exists(c)), candidates[0])
    if not tf.io.gfile.exists(path):
        if required:
            raise FileNotFoundError(f"--labels {path}: no such file (give a labels.txt, or a model or ingest "
                                    "directory holding one)")
        return None
    with tf.io.gfile.GFile(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _export_fingerprint(saved_model: str) -> str:
    path = posixpath.join(saved_model, MANIFEST_FILE)
    return read_json(path).get("fingerprint", "") if exists(path) else ""
