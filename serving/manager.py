"""Which model versions are served: configuration, file system polling, loading, unloading, labels, status.

As TF Serving's ServerCore with its AvailabilityPreservingPolicy:
- each poll lists a model's integer version directories and applies its version policy;
- a new version is loaded (and warmed up, by the loader) before an old one is unloaded, and an old
  one is only unloaded once an aspired version is AVAILABLE: serving never has a gap;
- a version that fails to load ends in state END with its error; it never replaces what is served
  and is retried on a later poll only if its directory changed;
- version labels may only point at AVAILABLE versions (FAILED_PRECONDITION otherwise, unless
  allowed), and a request resolves `version`, `version_label` or the latest AVAILABLE version; the
  first config's versions are loaded before its labels are checked, so a server starts on a config
  whose labels name the versions it lists (tensorflow_model_server needs
  `--allow_version_labels_for_unavailable_models` for that; this server does not);
- models dropped from a new config are unloaded; their states stay visible as END.
"""

from __future__ import annotations

import gc
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import grpc
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from components.artifacts import version_directories
from serving import policy
from serving.errors import ServingError, as_serving_error, failed_precondition, invalid_argument, not_found
from serving.servable import Servable

logger = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
Loader = Callable[[str, int, str], Servable]
ModelConfig = model_server_config_pb2.ModelConfig
TENSORFLOW_PLATFORM = "tensorflow"


@dataclass
class VersionRecord:
    """What the server knows about one version: its state, error and, when AVAILABLE, the servable."""

    version: int
    path: str
    state: int = State.START
    error: ServingError | None = None
    servable: Servable | None = None
    fingerprint: tuple = ()


@dataclass
class _Model:
    config: ModelConfig
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    configured: bool = True


class ModelManager:
    """The served models and their versions. Thread-safe; `poll()` and `apply_config()` do the loading."""

    def __init__(self, loader: Loader, allow_labels_for_unavailable_versions: bool = False):
        self._loader = loader
        self._allow_unavailable_labels = allow_labels_for_unavailable_versions
        self._models: dict[str, _Model] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()  # guards the dicts above; never held while loading
        self._work_lock = threading.RLock()  # one config change or poll at a time
        self._started = False  # whether a config was applied (the first one loads before its labels count)

    # ---- configuration ---------------------------------------------------------------------------

    def apply_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Serves exactly the models of `config`: validates it and its labels, unloads dropped models and
        loads new ones; fails (UNKNOWN) when an initial version of a new model does not load."""
        kind = config.WhichOneof("config")
        if kind is None:
            logger.info("Taking no action for empty config.")
            return
        if kind != "model_config_list":
            raise invalid_argument("ServerModelConfig type not supported: only model_config_list is supported "
                                   "(custom_model_config is not)")
        configs = {c.name: c for c in _validated(config.model_config_list.config)}
        with self._work_lock:
            labels_first = self._started or self._allow_unavailable_labels
            labels = self._label_map(list(configs.values())) if labels_first else self._labels
            with self._lock:
                self._labels = labels
                moved = [name for name, model in self._models.items() if model.configured and name in configs
                         and model.config.base_path != configs[name].base_path]
                for name, model in self._models.items():
                    if model.configured and (name not in configs or name in moved):
                        model.configured = False
                        logger.info("Model %s is no longer served from %s: unloading it", name,
                                    model.config.base_path)
            for name in moved:
                self._poll_model(name)  # unloads it; it is loaded again from its new base path below
            with self._lock:
                new = [name for name in configs if name not in self._models or not self._models[name].configured]
                for name, model_config in configs.items():
                    if name in new:
                        logger.info("Adding model %s: %s under %s", name,
                                    policy.describe(model_config.model_version_policy), model_config.base_path)
                    if name in self._models:
                        self._models[name].config, self._models[name].configured = model_config, True
                    else:
                        self._models[name] = _Model(model_config)
            for name in list(self._models):
                self._poll_model(name)
            failed = [(name, record) for name in new for record in self._versions(name)
                      if record.state == State.END and record.error is not None]
            if not labels_first and not failed:
                labels = self._label_map(list(configs.values()))
                with self._lock:
                    self._labels = labels
            self._started = True
        if failed:
            details = ", ".join(f"{{{{name: {name} version: {r.version}}} due to error: {r.error}}}" for name, r in failed)
            raise ServingError(grpc.StatusCode.UNKNOWN,
                               f"{len(failed)} servable(s) did not become available: {{{details}, }}")

    def _label_map(self, configs: list[ModelConfig]) -> dict[str, dict[str, int]]:
        """The new labels, checked against the versions AVAILABLE now (ServerCore::UpdateModelVersionLabelMap)."""
        labels: dict[str, dict[str, int]] = {}
        with self._lock:
            for config in configs:
                model = self._models.get(config.name)
                for label, version in sorted(config.version_labels.items()):
                    record = model.versions.get(version) if model and model.configured else None
                    available = record is not None and record.state == State.AVAILABLE
                    moved = self._labels.get(config.name, {}).get(label, version) != version
                    if not available and not (self._allow_unavailable_labels and not moved):
                        raise failed_precondition(
                            f"Request to assign label to version {version} of model {config.name}, which is not "
                            f"currently available for inference")
                    labels.setdefault(config.name, {})[label] = version
        return labels

    # ---- polling, loading, unloading -----------------------------------------------------------------

    def poll(self) -> None:
        """One pass over every model's base path: loads new aspired versions, then unloads old ones."""
        with self._work_lock:
            for name in list(self._models):
                self._poll_model(name)

    def _versions(self, name: str) -> list[VersionRecord]:
        with self._lock:
            model = self._models.get(name)
            return list(model.versions.values()) if model else []

    def _poll_model(self, name: str) -> None:
        with self._lock:
            model = self._models[name]
            config, configured = model.config, model.configured
        present = version_directories(config.base_path) if configured else {}
        aspired = policy.aspired_versions(config.model_version_policy, present) if configured else set()
        if configured and not present:
            logger.warning("No versions of servable %s found under base path %s", name, config.base_path)
        for version in sorted(aspired, reverse=True):
            self._maybe_load(name, version, present[version])
        self._unload_unaspired(name, aspired)

    def _maybe_load(self, name: str, version: int, path: str) -> None:
        fingerprint = policy.fingerprint(path)
        with self._lock:
            versions = self._models[name].versions
            record = versions.get(version)
            if record is not None and record.state != State.END:
                return
            if record is not None and record.error is not None and record.fingerprint == fingerprint:
                return  # failed before and unchanged since: not retried
            record = versions[version] = VersionRecord(version, path, State.LOADING, fingerprint=fingerprint)
        logger.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        try:
            servable = self._loader(name, version, path)
        except Exception as e:  # any failure ends this version, never the server
            error = as_serving_error(e)
            logger.error("Loading servable version {name: %s version: %d} failed: %s", name, version, error)
            with self._lock:
                record.state, record.error = State.END, error
            return
        with self._lock:
            record.servable, record.state = servable, State.AVAILABLE
        logger.info("Successfully loaded servable version {name: %s version: %d}", name, version)

    def _unload_unaspired(self, name: str, aspired: set[int]) -> None:
        """Unloads AVAILABLE versions no longer aspired, preserving availability
        (AvailabilityPreservingPolicy: only once an aspired version is AVAILABLE, or none is aspired)."""
        with self._lock:
            versions = self._models[name].versions
            serving = sorted(v for v, r in versions.items() if r.state == State.AVAILABLE and v not in aspired)
            aspired_available = any(versions[v].state == State.AVAILABLE for v in aspired if v in versions)
            if not aspired or aspired_available:
                victims = serving
            else:
                victims = serving[:-1]  # keep the newest old version until an aspired one is AVAILABLE
            for version in victims:
                versions[version].state = State.UNLOADING
        for version in victims:
            with self._lock:
                record = versions[version]
                record.servable, record.state = None, State.END  # in-flight requests keep their reference
            logger.info("Successfully unloaded servable version {name: %s version: %d}", name, version)
        if victims:
            gc.collect()  # a loaded SavedModel holds reference cycles: free its memory now

    def unload_all(self) -> None:
        """Unloads every version (server shutdown)."""
        with self._work_lock:
            with self._lock:
                for model in self._models.values():
                    model.configured = False
            self.poll()

    # ---- requests --------------------------------------------------------------------------------------

    def resolve(self, spec: model_pb2.ModelSpec) -> Servable:
        """The servable a request's model_spec names: its version, its label's version or the latest."""
        name = spec.name
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        with self._lock:
            model = self._models.get(name)
            versions = model.versions if model and model.configured else {}
            choice = spec.WhichOneof("version_choice")
            if choice == "version":
                version, request = spec.version.value, f"Specific({name}, {spec.version.value})"
            elif choice == "version_label":
                version = self._labels.get(name, {}).get(spec.version_label)
                if version is None:
                    raise invalid_argument(f"Unrecognized servable version label: {spec.version_label}")
                request = f"Specific({name}, {version})"
            else:
                available = [v for v, r in versions.items() if r.state == State.AVAILABLE]
                version, request = max(available, default=None), f"Latest({name})"
            record = versions.get(version)
            if record is None or record.state != State.AVAILABLE:
                raise not_found(f"Servable not found for request: {request}")
            return record.servable

    def model_status(self, name: str, version: int | None,
                     label: str | None = None) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus: one version (by number or label), or every version the server has seen, newest
        first."""
        response = get_model_status_pb2.GetModelStatusResponse()
        with self._lock:
            model = self._models.get(name)
            records = dict(model.versions) if model else {}
            if label is not None and records:
                version = self._labels.get(name, {}).get(label)
                if version is None:
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
            if version is not None:
                if version not in records:
                    raise not_found(f"Could not find version {version} of model {name}")
                records = {version: records[version]}
            elif not records:
                raise not_found(f"Could not find any versions of model {name}")
            for number in sorted(records, reverse=True):
                record = records[number]
                status = response.model_version_status.add(version=number, state=record.state)
                if record.error is not None:
                    status.status.CopyFrom(record.error.to_status_proto())
                else:
                    status.status.SetInParent()  # printed as {"error_code": "OK", "error_message": ""}
        return response

    def available_versions(self) -> list[tuple[str, int]]:
        """(model, version) of every AVAILABLE version."""
        with self._lock:
            return sorted((name, v) for name, model in self._models.items()
                          for v, r in model.versions.items() if r.state == State.AVAILABLE)


def _validated(configs) -> list[ModelConfig]:
    """ServerCore's checks of a ModelConfigList: unique names, TensorFlow platform, absolute base paths."""
    seen: set[str] = set()
    for config in configs:
        if not config.name:
            raise invalid_argument(f"a model in the config list has no name (base_path {config.base_path!r})")
        if config.name in seen:
            raise invalid_argument(f"Illegal to list model {config.name} multiple times in config list")
        seen.add(config.name)
        if not config.model_platform:
            raise invalid_argument("Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                                   f"ModelServerConfig::model_platform (model {config.name}: add "
                                   f'model_platform: "{TENSORFLOW_PLATFORM}")')
        if config.model_platform != TENSORFLOW_PLATFORM:
            raise invalid_argument(f"Model {config.name} requests unsupported platform {config.model_platform}")
        if "://" not in config.base_path and not config.base_path.startswith("/"):
            raise invalid_argument(f"Expected model {config.name} to have an absolute path or URI; got "
                                   f"base_path()={config.base_path}")
    return list(configs)
