"""The serving pods' exec probes run for real: a fake TF Serving status endpoint and a runner that points
a probe at it."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


from infra_checks.layout import SERVING_DEPLOYMENT
from infra_checks.manifests import one, pod_spec


def status_body(*states: str) -> str:
    """The JSON of GET /v1/models/<name>, laid out as TF Serving prints it."""
    versions = [{"version": str(len(states) - i), "state": state,
                 "status": {"error_code": "OK" if state != "END" else "UNKNOWN", "error_message": ""}}
                for i, state in enumerate(states)]
    return json.dumps({"model_version_status": versions}, indent=1)


class FakeStatusServer:
    """GET -> (status, body). keep_open: ignore the client's `Connection: close` and hold the connection."""

    def __init__(self, status: int, body: str, keep_open: bool = False):
        outer = self
        self.paths: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                outer.paths.append(self.path)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                if keep_open:
                    self.close_connection = False

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def run_probe(command: list[str], port: int) -> int:
    """Runs an exec probe whose target 127.0.0.1:8501 is redirected to `port`."""
    command = [part.replace("/dev/tcp/127.0.0.1/8501", f"/dev/tcp/127.0.0.1/{port}") for part in command]
    return subprocess.run(command, capture_output=True, timeout=15).returncode


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readiness_command(docs) -> list[str]:
    return pod_spec(one(docs, "Deployment", SERVING_DEPLOYMENT))["containers"][0]["readinessProbe"]["exec"]["command"]
