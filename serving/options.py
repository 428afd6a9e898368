"""The server's options: one dataclass for the in-process API, which `python -m serving.server`'s flags
fill (serving.cli).

Flags are named and behave as tensorflow_model_server's (`--port`, `--rest_api_port`,
`--model_config_file`, ...; booleans accept `--flag`, `--flag=true|false`), plus this server's own:
`--bind_address`, `--shutdown_grace_seconds`, the request limits (`--rest_api_max_body_bytes`,
`--rest_api_max_json_depth`, `--rest_api_max_json_values`, `--rest_api_max_number_digits`,
`--max_request_instances`), the bounds of prediction logs (`--prediction_log_max_file_bytes`,
`--prediction_log_max_files`), the slow-client
timeouts (`--rest_api_header_timeout_seconds`, `--rest_api_body_timeout_seconds`) and the guard on
gRPC reloads (`--allow_reload_config_request`, `--reload_config_base_path_prefixes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_CPUS = os.cpu_count() or 1


@dataclass(frozen=True)
class ServerOptions:
    """What to serve and how. Port 0 picks a free port; `rest_api_port=None` disables REST.

    On the command line `--rest_api_port=0` disables REST, as in tensorflow_model_server.
    """

    port: int = 8500
    rest_api_port: int | None = 8501
    bind_address: str = "127.0.0.1"
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    enable_batching: bool = False
    batching_parameters_file: str = ""
    monitoring_config_file: str = ""
    rest_api_timeout_in_ms: int = 30000
    rest_api_num_threads: int = 4 * _CPUS
    rest_api_max_body_bytes: int = 64 * 2**20
    rest_api_max_json_depth: int = 32
    rest_api_max_json_values: int = 4 * 2**20
    rest_api_max_number_digits: int = 40
    rest_api_header_timeout_seconds: float = 10.0
    rest_api_body_timeout_seconds: float = 10.0
    max_request_instances: int = 10_000
    grpc_max_threads: int = 4 * _CPUS
    grpc_channel_arguments: str = ""
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    allow_version_labels_for_unavailable_models: bool = False
    saved_model_tags: str = "serve"
    shutdown_grace_seconds: float = 30.0
    allow_reload_config_request: bool = False
    reload_config_base_path_prefixes: str = ""
    prediction_log_max_file_bytes: int = 64 * 2**20
    prediction_log_max_files: int = 1000

    def __post_init__(self) -> None:
        if not self.model_config_file and not self.model_base_path:
            raise ValueError("nothing to serve: set --model_base_path (with --model_name) or --model_config_file")
        for name in ("rest_api_num_threads", "rest_api_max_body_bytes", "grpc_max_threads",
                     "num_request_iterations_for_warmup", "rest_api_max_json_depth", "rest_api_max_json_values",
                     "rest_api_max_number_digits",
                     "max_request_instances", "prediction_log_max_file_bytes", "prediction_log_max_files"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("rest_api_header_timeout_seconds", "rest_api_body_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.reload_config_base_path_prefixes and not self.allow_reload_config_request:
            raise ValueError("--reload_config_base_path_prefixes needs --allow_reload_config_request")
        if self.batching_parameters_file and not self.enable_batching:
            raise ValueError("--batching_parameters_file needs --enable_batching")
