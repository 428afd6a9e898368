"""The command line of `python -m serving.server`: a flag per ServerOptions field, `--verbose`, and the
options checked into one-line usage errors before TensorFlow loads."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Sequence

from components import cli
from serving.options import ServerOptions

_HELP = {
    "port": "gRPC port (0: pick a free one)",
    "rest_api_port": "HTTP/REST port (0: REST disabled)",
    "bind_address": "address both servers listen on: 127.0.0.1 (default, this machine only) or 0.0.0.0 "
                    "(every interface, as tensorflow_model_server)",
    "model_name": "name of the model served with --model_base_path",
    "model_base_path": "directory holding the model's integer version directories",
    "model_config_file": "text-format ModelServerConfig naming every model (--model_name and --model_base_path "
                         "are then ignored)",
    "model_config_file_poll_wait_seconds": "re-read --model_config_file this often (0: read once)",
    "file_system_poll_wait_seconds": "look for new versions this often (0 or less: only at start)",
    "enable_batching": "merge concurrent requests into batches",
    "batching_parameters_file": "text-format BatchingParameters (with --enable_batching)",
    "monitoring_config_file": "text-format MonitoringConfig; prometheus_config { enable: true } serves metrics "
                              "on the REST port",
    "rest_api_timeout_in_ms": "REST requests not answered within this time fail with 504 (<= 0: no timeout)",
    "rest_api_num_threads": "threads decoding, running and encoding REST requests",
    "rest_api_max_body_bytes": "larger REST request bodies (after Content-Encoding) are refused with 413",
    "rest_api_max_json_depth": "REST bodies nesting JSON arrays and objects deeper than this are refused with 400",
    "rest_api_max_json_values": "REST bodies with more JSON values (array elements and object members) are "
                                "refused with 400: each costs 30-60 bytes of memory while it is parsed",
    "rest_api_max_number_digits": "REST bodies holding a number of more digits are refused with 400",
    "rest_api_header_timeout_seconds": "an HTTP connection must send a whole request head within this time of "
                                       "its first byte (or of opening), else it is closed",
    "rest_api_body_timeout_seconds": "longest wait between two reads of a REST request body; a stalled body "
                                     "gets 408",
    "max_request_instances": "Predict requests with more instances (a larger batch dimension) are refused with "
                             "INVALID_ARGUMENT (REST 400)",
    "grpc_max_threads": "threads decoding, running and encoding gRPC requests",
    "grpc_channel_arguments": "extra gRPC server arguments: key=value,key=value",
    "enable_model_warmup": "replay assets.extra/tf_serving_warmup_requests before a version becomes AVAILABLE",
    "num_request_iterations_for_warmup": "times each warm-up request is replayed",
    "allow_version_labels_for_unavailable_models": "allow a new label to point at a version that is not "
                                                   "AVAILABLE yet",
    "saved_model_tags": "comma-separated MetaGraphDef tags to load",
    "shutdown_grace_seconds": "on SIGTERM/SIGINT, wait this long for in-flight requests",
    "allow_reload_config_request": "accept gRPC ModelService/HandleReloadConfigRequest (off: PERMISSION_DENIED; "
                                   "tensorflow_model_server always accepts it)",
    "reload_config_base_path_prefixes": "comma-separated directories or URIs the base paths of a reloaded config "
                                        "must lie under (default: the folder of --model_config_file, or the "
                                        "parent of --model_base_path)",
    "prediction_log_max_file_bytes": "a model's prediction log (logging_config in --model_config_file) starts a "
                                     "new file once its current one holds this many bytes",
    "prediction_log_max_files": "closed prediction log files kept per filename_prefix (the oldest are removed)",
}


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m serving.server`: the ServerOptions flags and `--verbose`."""
    parser = cli.parser("python -m serving.server", "A model server speaking TensorFlow Serving's REST and gRPC "
                        "APIs (flags as tensorflow_model_server's; booleans accept --flag or --flag=true|false).")
    for field in fields(ServerOptions):
        flag, default = f"--{field.name}", field.default
        if field.type == "bool":
            parser.add_argument(flag, type=_bool, nargs="?", const=True, default=default,
                                help=f"{_HELP[field.name]} (default {str(default).lower()})")
        else:
            kind = {"int": int, "float": float, "str": str, "int | None": int}[field.type]
            parser.add_argument(flag, type=kind, default=default,
                                help=_HELP[field.name] if "default" in _HELP[field.name]
                                else f"{_HELP[field.name]} (default {default if default != '' else 'unset'})")
    return parser


def parse_command_line(argv: Sequence[str] | None = None) -> tuple[ServerOptions, bool]:
    """ServerOptions from command-line flags, and whether --verbose was given; exits with a message naming a
    bad flag."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    verbose = args.pop("verbose", False)
    if args["rest_api_port"] == 0:
        args["rest_api_port"] = None
    try:
        return ServerOptions(**args), verbose
    except ValueError as e:
        cli.usage_error(parser, str(e))
