"""Small clients of the TF Serving APIs (this server's or tensorflow_model_server's): REST and gRPC.

    rest = RestClient("http://127.0.0.1:8501")
    rest.predict("flowers", instances=[{"b64": base64.b64encode(jpeg).decode()}])

A RestClient keeps one HTTP/1.1 connection open: use one per thread. GrpcClient is in serving.grpc_client
(it loads TensorFlow for its tensors).

CLI: `python -m serving.client --host H [--grpc] --model NAME IMAGE...` classifies image files through
a model's `serving_default` (image bytes in; label and score out), over REST (b64 JSON) or gRPC; a
file the model refuses (or that cannot be read) is named with the reason, the others are classified,
and the exit status is 1.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import sys
import time
import urllib.parse
from typing import Any, Mapping, Sequence

import grpc
import numpy as np

from components.artifacts import IMAGE_INPUT


class RestError(Exception):
    """A REST call answered with an error status; `message` is the body's "error"."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def model_path(model: str, version: int | None = None, label: str | None = None) -> str:
    """`/v1/models/{model}[/versions/{v}|/labels/{l}]`."""
    path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{version}"
    if label is not None:
        path += f"/labels/{urllib.parse.quote(label, safe='')}"
    return path


class RestClient:
    """TF Serving's REST API over one kept-alive HTTP connection."""

    def __init__(self, url: str, timeout: float = 60.0):
        parsed = urllib.parse.urlsplit(url)
        self._host, self._port, self._timeout = parsed.hostname, parsed.port, timeout
        self._connection: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: bytes | str | Mapping | None = None) -> tuple[int, bytes]:
        """One request; returns the HTTP status and the raw body. A broken connection raises (and is replaced
        on the next call)."""
        if isinstance(body, Mapping):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        if self._connection is None:
            self._connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            self._connection.request(method, path, body=body,
                                     headers={"Content-Type": "application/json"} if body is not None else {})
            response = self._connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def json(self, method: str, path: str, body: bytes | str | Mapping | None = None) -> Any:
        """One request whose JSON answer is returned; error statuses raise RestError."""
        status, data = self.call(method, path, body)
        document = json.loads(data) if data else {}
        if status != 200:
            raise RestError(status, document.get("error", data.decode(errors="replace")))
        return document

    def predict(self, model: str, *, instances: Sequence | None = None, inputs: Any = None,
                signature_name: str | None = None, version: int | None = None, label: str | None = None) -> Any:
        """`:predict` with row (`instances`) or columnar (`inputs`) data; returns predictions or outputs."""
        body: dict[str, Any] = {"instances": instances} if instances is not None else {"inputs": inputs}
        if signature_name:
            body["signature_name"] = signature_name
        answer = self.json("POST", model_path(model, version, label) + ":predict", body)
        return answer["predictions"] if instances is not None else answer["outputs"]

    def status(self, model: str, version: int | None = None) -> list[dict]:
        return self.json("GET", model_path(model, version))["model_version_status"]

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        return self.json("GET", model_path(model, version, label) + "/metadata")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def wait_until_available(url: str, model: str, timeout: float) -> None:
    """Polls the REST status of `model` until a version is AVAILABLE; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        client = RestClient(url, timeout=5)
        try:
            states = [v["state"] for v in client.status(model)]
            if "AVAILABLE" in states:
                return
            last = f"states {states}"
        except (OSError, RestError) as e:
            last = str(e)
        finally:
            client.close()
        time.sleep(0.5)
    raise TimeoutError(f"{model} at {url} was not AVAILABLE within {timeout:.0f} s ({last})")


def _refused_instance(message: str) -> int | None:
    """The instance index an error names (`image_bytes[3]: ...`, the served model's own refusals), if any."""
    match = re.search(rf"\b{IMAGE_INPUT}\[(\d+)\]", message)
    return int(match.group(1)) if match else None


def _classify_batch(images: Sequence[bytes], model: str, host: str, use_grpc: bool, port: int | None,
                    version: int | None, label: str | None) -> list[tuple[str, float]]:
    if use_grpc:
        from serving.grpc_client import GrpcClient  # TensorFlow loads for gRPC only

        client = GrpcClient(f"{host}:{port or 8500}")
        try:
            outputs = client.predict(model, {IMAGE_INPUT: np.array(images, dtype=object)}, version=version,
                                     label=label, output_filter=["label", "score"])
        finally:
            client.close()
        return [(name.decode(), float(score)) for name, score in zip(outputs["label"], outputs["score"])]
    rest = RestClient(f"http://{host}:{port or 8501}")
    try:
        rows = rest.predict(model, instances=[{"b64": base64.b64encode(image).decode()} for image in images],
                            version=version, label=label)
    finally:
        rest.close()
    return [(row["label"], float(row["score"])) for row in rows]


def classify_files(paths: Sequence[str], model: str, host: str, *, use_grpc: bool = False, port: int | None = None,
                   version: int | None = None, label: str | None = None) -> list[tuple[str, float] | str]:
    """(label, score) per image file, from the model's `serving_default` (`image_bytes` in), or the reason the
    file was refused: a file that cannot be read, or that the model refuses by its index, is left out and the
    rest is sent again. Other errors (unknown model, server down) raise."""
    results: list[tuple[str, float] | str | None] = [None] * len(paths)
    images: dict[int, bytes] = {}
    for index, path in enumerate(paths):
        try:
            with open(path, "rb") as f:
                images[index] = f.read()
        except OSError as e:
            results[index] = f"cannot read the file: {e.strerror or e}"
    pending = list(images)
    while pending:
        try:
            answers = _classify_batch([images[i] for i in pending], model, host, use_grpc, port, version, label)
        except (RestError, grpc.RpcError) as e:
            message = e.message if isinstance(e, RestError) else e.details() or ""
            refused = _refused_instance(message)
            if refused is None or refused >= len(pending):
                raise
            results[pending.pop(refused)] = message
            continue
        for index, answer in zip(pending, answers):
            results[index] = answer
        break
    return results


def main(argv: Sequence[str] | None = None) -> int:
    from components import cli

    parser = cli.parser("python -m serving.client", "Classify image files with a model served by TF Serving (or "
                        "this project's server), over REST or gRPC: one line per file, PATH<TAB>LABEL<TAB>SCORE.")
    parser.add_argument("--host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8501 for REST, 8500 for gRPC)")
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of REST")
    parser.add_argument("--model", required=True, help="model name")
    address = parser.add_mutually_exclusive_group()
    address.add_argument("--version", type=int, help="a version number (default: the latest)")
    address.add_argument("--label", help="a version label, e.g. stable or canary")
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for the model to be AVAILABLE (REST status; default: 0, "
                        "no wait)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    args = parser.parse_args(argv)
    cli.start_logging(args)
    try:
        if args.wait:
            wait_until_available(f"http://{args.host}:{args.port or 8501}", args.model, args.wait)
        results = classify_files(args.images, args.model, args.host, use_grpc=args.grpc, port=args.port,
                                 version=args.version, label=args.label)
    except (OSError, RestError, grpc.RpcError) as e:  # TimeoutError is an OSError
        logging.getLogger("serving.client").error("%s", e)
        return 1
    for path, result in zip(args.images, results):
        if isinstance(result, str):
            logging.getLogger("serving.client").error("%s: %s", path, result)
        else:
            print(f"{path}\t{result[0]}\t{result[1]:.4f}")  # noqa: T201 (the command's output)
    return 1 if any(isinstance(result, str) for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
