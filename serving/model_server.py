"""The model server in-process: `ModelServer(options)` (its command line is serving.server).

    with ModelServer(ServerOptions(model_name="flowers", model_base_path="/models/flowers",
                                   port=0, rest_api_port=0)) as server:
        server.ports.grpc, server.ports.rest   # the ports it bound

`start()` reads the config files, loads every model's initial versions (failing if one does not
load, as tensorflow_model_server), then serves gRPC and REST from one asyncio loop thread and
polls the file system (and the model config file) on background threads. `stop()` (also on
SIGTERM/SIGINT from the command line) stops accepting, lets in-flight requests finish within
`shutdown_grace_seconds`, drains the batch queues and unloads the models.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import grpc
from aiohttp import web
from tensorflow_serving.config import model_server_config_pb2

from serving import config as config_files
from serving.batching import BatchScheduler
from serving.config import ServerConfigError
from serving.connections import HeadDeadlines, HeadTimeoutSite
from serving.core import ServingCore
from serving.errors import ServingError, invalid_argument, permission_denied
from serving.grpc_api import MAX_MESSAGE_BYTES, add_services
from serving.json_tensor import JsonLimits
from serving.manager import ModelManager
from serving.metrics import ServingMetrics
from serving.options import ServerOptions
from serving.request_logging import RequestLogging, WriterOptions
from serving.rest import RestApi
from serving.servable import Servable, load_servable
from serving.warmup import warm_up

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoundPorts:
    """The ports the server listens on (rest is None when REST is disabled)."""

    grpc: int
    rest: int | None


class _Poller:
    """Calls `action` every `seconds` on a daemon thread until stopped; failures are logged, not raised."""

    def __init__(self, name: str, seconds: float, action: Callable[[], None]):
        self._seconds, self._action = seconds, action
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._seconds):
            try:
                self._action()
            except Exception:  # a bad poll must not stop the next one
                logger.exception("%s failed", self._thread.name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _grpc_arguments(text: str) -> list[tuple[str, int | str]]:
    """`--grpc_channel_arguments` (key=value,key=value) as gRPC options; integer values as integers."""
    arguments = []
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ServerConfigError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        arguments.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()))
    return arguments


class ModelServer:
    """A TF Serving-compatible server in this process. Use `start()`/`stop()` or a `with` block."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self._ports: BoundPorts | None = None
        self._pollers: list[_Poller] = []
        self._batcher: BatchScheduler | None = None
        self._manager: ModelManager | None = None
        self._request_logging: RequestLogging | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._executors: list[ThreadPoolExecutor] = []

    @property
    def ports(self) -> BoundPorts:
        if self._ports is None:
            raise RuntimeError("the server is not running: call start() first")
        return self._ports

    def __enter__(self) -> "ModelServer":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ---- start ---------------------------------------------------------------------------------------

    def _load(self, name: str, version: int, path: str) -> Servable:
        servable = load_servable(name, version, path, [t for t in self.options.saved_model_tags.split(",") if t])
        if self.options.enable_model_warmup:
            warm_up(servable, self.options.num_request_iterations_for_warmup)
        return servable

    def _model_config(self) -> model_server_config_pb2.ModelServerConfig:
        if self.options.model_config_file:
            if self.options.model_base_path:
                logger.warning("--model_base_path is ignored: --model_config_file %s names the models",
                               self.options.model_config_file)
            return config_files.read_model_server_config(self.options.model_config_file)
        return config_files.single_model_config(self.options.model_name, self.options.model_base_path)

    def start(self) -> BoundPorts:
        """Loads the models and starts serving; returns the bound ports. Raises ServerConfigError for bad
        configuration and ServingError when a model's initial version fails to load."""
        options = self.options
        model_config = self._model_config()
        metrics_path = config_files.prometheus_path(options.monitoring_config_file)
        batching = config_files.batching_options(options.batching_parameters_file) if options.enable_batching else None
        grpc_arguments = _grpc_arguments(options.grpc_channel_arguments)
        self._manager = ModelManager(self._load, options.allow_version_labels_for_unavailable_models)
        metrics = ServingMetrics(self._manager.available_versions)
        self._request_logging = RequestLogging(
            [t for t in options.saved_model_tags.split(",") if t],
            WriterOptions(options.prediction_log_max_file_bytes, options.prediction_log_max_files),
            metrics.observe_log)
        if batching is not None:
            self._batcher = BatchScheduler(batching, metrics.observe_batch)
            logger.info("Batching: %s", batching)
        try:
            self.reload_config(model_config)
            core = ServingCore(self._manager, metrics, self._batcher, self._request_logging)
            self._start_front_ends(core, metrics_path, grpc_arguments)
        except BaseException:
            self.stop()
            raise
        if options.file_system_poll_wait_seconds > 0:
            self._pollers.append(_Poller("file system poll", options.file_system_poll_wait_seconds,
                                         self._manager.poll))
        if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
            self._pollers.append(_Poller("model config poll", options.model_config_file_poll_wait_seconds,
                                         self._reload_config_file))
        return self.ports

    def _start_front_ends(self, core: ServingCore, metrics_path: str | None, grpc_arguments: list) -> None:
        options = self.options
        grpc_pool = ThreadPoolExecutor(options.grpc_max_threads, thread_name_prefix="grpc")
        rest_pool = ThreadPoolExecutor(options.rest_api_num_threads, thread_name_prefix="rest")
        self._executors = [grpc_pool, rest_pool]
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="serving-io", daemon=True)
        self._loop_thread.start()

        async def start() -> BoundPorts:
            self._grpc = grpc.aio.server(options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                                  ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                                  *grpc_arguments])
            add_services(self._grpc, core, grpc_pool, self.handle_reload_config_request, options.max_request_instances)
            grpc_port = self._grpc.add_insecure_port(f"{options.bind_address}:{options.port}")
            if not grpc_port:
                raise ServerConfigError(f"cannot listen for gRPC on {options.bind_address}:{options.port}: in use "
                                        f"or not a local address (choose --port or --bind_address)")
            await self._grpc.start()
            logger.info("Running gRPC ModelServer at %s:%d ...", options.bind_address, grpc_port)
            rest_port = None
            if options.rest_api_port is not None:
                timeout = options.rest_api_timeout_in_ms / 1000 if options.rest_api_timeout_in_ms > 0 else None
                api = RestApi(core, rest_pool, timeout, options.rest_api_max_body_bytes, metrics_path,
                              body_timeout_seconds=options.rest_api_body_timeout_seconds,
                              json_limits=JsonLimits(max_depth=options.rest_api_max_json_depth,
                                                     max_values=options.rest_api_max_json_values,
                                                     max_number_digits=options.rest_api_max_number_digits),
                              max_instances=options.max_request_instances)
                app = api.app()
                deadlines = HeadDeadlines(options.rest_api_header_timeout_seconds)
                app.on_response_prepare.append(deadlines.on_response_prepare)
                self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=options.shutdown_grace_seconds)
                await self._runner.setup()
                listener = socket.socket(socket.AF_INET6 if ":" in options.bind_address else socket.AF_INET)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    listener.bind((options.bind_address, options.rest_api_port))
                except OSError as e:
                    listener.close()
                    raise ServerConfigError(f"cannot listen for HTTP on {options.bind_address}:"
                                            f"{options.rest_api_port}: {e.strerror} (choose --rest_api_port or "
                                            f"--bind_address)") from e
                await HeadTimeoutSite(self._runner, listener, deadlines).start()
                rest_port = listener.getsockname()[1]
                logger.info("Exporting HTTP/REST API at:%s:%d ...", options.bind_address, rest_port)
                if metrics_path:
                    logger.info("Prometheus metrics at http://%s:%d%s", options.bind_address, rest_port,
                                metrics_path)
            return BoundPorts(grpc_port, rest_port)

        self._ports = asyncio.run_coroutine_threadsafe(start(), self._loop).result()

    # ---- configuration -----------------------------------------------------------------------------------

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Serves (and logs requests for) the models of `config` from now on; raises ServingError, having
        changed nothing when a logging_config cannot be used."""
        self._request_logging.check(config)
        self._manager.apply_config(config)
        self._request_logging.update(config)

    def handle_reload_config_request(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """gRPC HandleReloadConfigRequest: refused unless --allow_reload_config_request, and then only for base
        paths under the allowed prefixes (a client must not make the server read any path of the host)."""
        if not self.options.allow_reload_config_request:
            raise permission_denied("HandleReloadConfigRequest is disabled on this server: change the models with "
                                    "--model_config_file (re-read every --model_config_file_poll_wait_seconds), "
                                    "or start the server with --allow_reload_config_request")
        if config.WhichOneof("config") != "model_config_list":
            raise invalid_argument("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                                   "ModelConfigList is currently supported")
        prefixes = self._reload_prefixes()
        for model in config.model_config_list.config:
            if not any(_under(model.base_path, prefix) for prefix in prefixes):
                raise permission_denied(f"model {model.name}: base_path {model.base_path[:200]} is not under an "
                                        f"allowed prefix ({', '.join(prefixes)}; "
                                        f"--reload_config_base_path_prefixes)")
        self.reload_config(config)

    def _reload_prefixes(self) -> list[str]:
        """--reload_config_base_path_prefixes, else the folder of the model config file or the parent of the
        model base path."""
        options = self.options
        if options.reload_config_base_path_prefixes:
            return [p.strip() for p in options.reload_config_base_path_prefixes.split(",") if p.strip()]
        if options.model_config_file:
            return [_parent(options.model_config_file)]
        return [_parent(options.model_base_path)]

    def _reload_config_file(self) -> None:
        try:
            self.reload_config(config_files.read_model_server_config(self.options.model_config_file))
        except (ServerConfigError, ServingError) as e:
            logger.error("Failed to reload the model config file %s, still serving the previous config: %s",
                         self.options.model_config_file, e)

    # ---- stop ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stops accepting, finishes in-flight requests and enqueued batches, unloads every model."""
        for poller in self._pollers:
            poller.stop()
        self._pollers = []
        if self._loop is not None:
            grace = self.options.shutdown_grace_seconds

            async def stop_front_ends() -> None:
                waits = []
                if self._grpc is not None:
                    waits.append(self._grpc.stop(grace))
                if self._runner is not None:
                    waits.append(self._runner.cleanup())
                await asyncio.gather(*waits)

            asyncio.run_coroutine_threadsafe(stop_front_ends(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join()
            self._loop.close()
            self._loop = self._grpc = self._runner = None
        if self._batcher is not None:
            self._batcher.stop()
            self._batcher = None
        for executor in self._executors:
            executor.shutdown(wait=True)
        self._executors = []
        if self._request_logging is not None:
            self._request_logging.close()
        if self._manager is not None:
            self._manager.unload_all()
        if self._ports is not None:
            logger.info("Server stopped")
        self._ports = None


def _parent(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if "://" in path else os.path.dirname(os.path.abspath(path))


def _under(path: str, prefix: str) -> bool:
    """Whether `path` lies under the directory `prefix`: symbolic links and `..` resolved for local paths, the
    normalised text compared for URIs (gs://...)."""
    if "://" in path or "://" in prefix:
        scheme, _, rest = path.partition("://")
        normal = f"{scheme}://{posixpath.normpath(rest)}"
        return normal == prefix.rstrip("/") or normal.startswith(prefix.rstrip("/") + "/")
    real, root = os.path.realpath(path), os.path.realpath(prefix)
    return os.path.commonpath([real, root]) == root
