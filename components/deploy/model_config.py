"""TF Serving's `models.config` (a text `ModelServerConfig`): read, change one model's entry, write.

Each model is served with a `specific` version policy holding its `stable` version and, during a
canary, its `canary` version; the labels name them. Other models in the file are left as they are.
"""

from __future__ import annotations

import posixpath

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from components.artifacts import MODEL_CONFIG_FILE
from components.files import excerpt, read_state_file, write_file

STABLE, CANARY = "stable", "canary"


def read_model_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """The parsed file, or an empty config when it does not exist yet; a damaged one raises
    DamagedFileError (which names its backup, `models.config.bak`)."""
    config = read_state_file(path, _parse)
    return model_server_config_pb2.ModelServerConfig() if config is None else config


def write_model_config(path: str, config: model_server_config_pb2.ModelServerConfig) -> None:
    """Writes atomically, keeping the replaced config as its backup: a polling server never reads half a file."""
    write_file(path, text_format.MessageToString(config), backup=True)


def _parse(text: str) -> model_server_config_pb2.ModelServerConfig:
    if not text.strip():  # the stage never writes an empty config: this one lost its content
        raise ValueError(excerpt(text, 0))
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        lines = text.splitlines(keepends=True)
        position = sum(len(line) for line in lines[:max(e.GetLine() - 1, 0)]) + max(e.GetColumn() - 1, 0)
        raise ValueError(f"not a valid TF Serving model config (ModelServerConfig text: {e}; "
                         f"{excerpt(text, position)})") from None
    return config


def labels(config: model_server_config_pb2.ModelServerConfig, name: str) -> dict[str, int]:
    """The version labels of model `name` (empty when it is not in the config)."""
    for entry in config.model_config_list.config:
        if entry.name == name:
            return dict(entry.version_labels)
    return {}


def set_versions(config: model_server_config_pb2.ModelServerConfig, name: str, base_path: str,
                 stable: int, canary: int | None = None) -> None:
    """Makes model `name` serve `stable` (and `canary`) with those labels, adding its entry if needed."""
    entry = next((e for e in config.model_config_list.config if e.name == name), None)
    if entry is None:
        entry = config.model_config_list.config.add(name=name, model_platform="tensorflow")
    entry.base_path = base_path
    entry.model_version_policy.Clear()
    entry.model_version_policy.specific.versions.extend(sorted({stable} | ({canary} if canary else set())))
    entry.version_labels.clear()
    entry.version_labels[STABLE] = stable
    if canary:
        entry.version_labels[CANARY] = canary


def model_config_path(model_base_path: str) -> str:
    """Where the deploy stage keeps the config: `<model base path>/models.config`."""
    return posixpath.join(model_base_path.rstrip("/"), MODEL_CONFIG_FILE)
