"""Hostile input (issue 13): what an attacker or a careless client sends `python -m serving.server`.

One real server subprocess serves the exported classifier (`tiny`) and half_plus_two with small limits
(`SERVER_FLAGS`). Every case is one request (or one attack) as data, its own test id, the rank-33 crash
first. Each case asserts
- the answer: its HTTP status or gRPC code is in the case's set, and an error has TF Serving's shape:
  REST `{"error": "<message>"}` (one key, a non-empty string, JSON content type, at most
  MAX_ERROR_CHARS characters, none of TensorFlow's graph internals); gRPC a details string under
  MAX_GRPC_DETAILS_BYTES, same rule on internals; bad input never answers 5xx / UNKNOWN / INTERNAL /
  UNAVAILABLE;
- that the server is alive afterwards and answers a real Predict (a small PNG -> a label) over both APIs;
- that the server's peak RSS during the case (VmHWM, reset before each case with
  `echo 5 > /proc/<pid>/clear_refs`) stays under its idle RSS (after loading and warm-up) plus
  MEMORY_BOUND_BYTES; the last test asserts the same over the whole corpus.

A case that kills the server, or takes it over the memory bound, fails, and the server is started again
(killed first, in the second case) so that the next cases are measured from a fresh idle server.
`HOSTILE_RESULTS=<file>` writes what every case got (status, time, memory) as JSON.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, input_pb2, model_management_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from half_plus_two import build_half_plus_two
from hostile_corpus import (ServerProcess, build_request, chunked, deflate_bomb, exchange, gzip_bomb,
                            parse_response, png_bomb, png_bomb_header_only, png_of_about, reset_peak, small_png,
                            wait_closed)

TINY, HPT = "tiny", "half_plus_two"
MAX_BODY = 4 * 2**20  # --rest_api_max_body_bytes
HEADER_TIMEOUT = 2.0  # --rest_api_header_timeout_seconds
BODY_TIMEOUT = 2.0  # --rest_api_body_timeout_seconds
MAX_INSTANCES = 1000  # --max_request_instances
MAX_JSON_DEPTH = 64  # --rest_api_max_json_depth: deep enough that a rank-33 body reaches the tensor code
# Peak RSS over idle RSS allowed during any case: 64 request bodies of the largest size accepted. The
# legitimate worst case (a 3 MB body of uint8 pixels, `max_body_uint8_pixels_control`) needs far less.
MEMORY_BOUND_BYTES = 64 * MAX_BODY
SLACK = 3.0  # seconds past a timeout by which the server must have acted on it
BOMB_SECONDS = 10.0  # a bomb must be refused within this (a decoded 20000x20000 PNG takes 16 s)
MAX_ERROR_CHARS = 2100  # serving.errors cuts messages at 2,000 characters, plus its "...(N more characters)"
MAX_GRPC_DETAILS_BYTES = 4096
TF_INTERNALS = ("Graph execution error", "[[{{node", "__inference")
CLIENT_TIMEOUT = 30.0

SERVER_FLAGS = [
    f"--rest_api_max_body_bytes={MAX_BODY}",
    f"--rest_api_header_timeout_seconds={HEADER_TIMEOUT:g}",
    f"--rest_api_body_timeout_seconds={BODY_TIMEOUT:g}",
    f"--max_request_instances={MAX_INSTANCES}",
    f"--rest_api_max_json_depth={MAX_JSON_DEPTH}",
    "--file_system_poll_wait_seconds=0",
]

PNG = small_png(16, seed=1)
PNG_1PX = small_png(1, seed=2)
PNG_1KB = png_of_about(1024, seed=3)


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


# ---- the server ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one case got, for the summary."""

    case: str
    answer: str
    seconds: float
    peak_over_idle_kb: int | None = None
    problems: list[str] = field(default_factory=list)


class Harness:
    """The server process and clients of it; restarts the server when a case killed it."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.idle_kb = 0
        self.crashes: list[str] = []
        self.outcomes: list[Outcome] = []
        self.channel: grpc.Channel | None = None
        self.prediction: prediction_service_pb2_grpc.PredictionServiceStub | None = None
        self.models: model_service_pb2_grpc.ModelServiceStub | None = None

    @property
    def rest_port(self) -> int:
        return self.server.rest_port

    def start(self) -> None:
        self.server.start()
        if self.channel is not None:
            self.channel.close()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.grpc_port}", options=[
            ("grpc.max_receive_message_length", 2**31 - 1), ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_metadata_size", 64 * 2**10)])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        for _ in range(3):  # first requests build TensorFlow's kernels: not the corpus's memory
            problems = self.health()
            assert not problems, f"the freshly started server is not healthy: {problems}\n{self.server.log_tail()}"
        self.idle_kb = self.server.rss_kb()

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.server.stop()

    def health(self) -> list[str]:
        """Problems of a real Predict over REST and over gRPC (none when both answer a label)."""
        problems = []
        answer = exchange(self.rest_port, build_request(
            "POST", f"/v1/models/{TINY}:predict", json.dumps({"instances": [b64(PNG)]}).encode()), timeout=20)
        try:
            label = json.loads(answer.body)["predictions"][0]["label"]
            if answer.status != 200 or not isinstance(label, str) or not label:
                raise ValueError(label)
        except (ValueError, KeyError, IndexError, TypeError):
            problems.append(f"health: REST predict got {answer.describe()}")
        try:
            response = self.prediction.Predict(predict_request({"image_bytes": strings([PNG])}), timeout=20)
            if not response.outputs["label"].string_val[0]:
                problems.append("health: gRPC predict answered no label")
        except grpc.RpcError as e:
            problems.append(f"health: gRPC predict got {e.code().name}: {(e.details() or '')[:200]}")
        return problems

    def run(self, case: "Case") -> list[str]:
        """Runs one case; returns every problem found (answer, health, memory)."""
        if not self.server.alive():
            self.start()
        reset_peak(self.server.pid)
        started = time.monotonic()
        answer, problems = case.run(self)
        outcome = Outcome(case.id, answer, time.monotonic() - started)
        health = self.health()
        if health and self.server.alive():
            try:  # a process that is dying answers nothing: give it a moment to be seen dead
                self.server.process.wait(2)
            except subprocess.TimeoutExpired:
                pass
        peak = None
        if self.server.alive():
            try:
                peak = self.server.hwm_kb() - self.idle_kb
            except (OSError, KeyError):  # gone between the two looks
                peak = None
        if peak is None:
            self.server.process.wait(10)
            fatal = re.findall(r"^F\d{4} [^\n]*|^Fatal Python error[^\n]*|^Segmentation fault[^\n]*",
                               self.server.log_tail(20_000), re.MULTILINE)
            crash = f"the server died (exit code {self.server.process.returncode}) during {case.id}: " \
                    f"{fatal[-1] if fatal else 'no fatal log line'}"
            self.crashes.append(crash)
            problems.append(crash)
            self.start()
        else:
            problems += health
            outcome.peak_over_idle_kb = peak
            if peak * 1024 > MEMORY_BOUND_BYTES:
                problems.append(f"peak RSS {peak // 1024} MiB over idle ({self.idle_kb // 1024} MiB), more than "
                                f"the {MEMORY_BOUND_BYTES // 2**20} MiB allowed (the server is restarted: what it "
                                f"holds, or still computes, must not count against the next cases)")
                self.server.stop(kill=True)
                self.start()
        outcome.problems = problems
        self.outcomes.append(outcome)
        return problems


@pytest.fixture(scope="module")
def harness(tiny_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    (root / TINY).mkdir()
    os.symlink(tiny_export, root / TINY / "1")
    build_half_plus_two(str(root / HPT / "1"))
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{root / name}" model_platform: "tensorflow" }}\n'
        for name in (TINY, HPT)) + "}\n")
    running = Harness(ServerProcess([f"--model_config_file={config}", *SERVER_FLAGS], root / "server.log"))
    running.start()
    yield running
    running.stop()
    if os.environ.get("HOSTILE_RESULTS"):
        Path(os.environ["HOSTILE_RESULTS"]).write_text(json.dumps({
            "idle_rss_kb": running.idle_kb, "crashes": running.crashes,
            "outcomes": [vars(o) for o in running.outcomes]}, indent=1))


# ---- checks ---------------------------------------------------------------------------------------------------


def rest_error_problems(body: bytes, content_type: str) -> list[str]:
    """What is wrong with a REST error response's shape."""
    try:
        doc = json.loads(body)
    except ValueError:
        return [f"error body is not JSON ({content_type}): {body[:200]!r}"]
    if not isinstance(doc, dict) or set(doc) != {"error"} or not isinstance(doc["error"], str) \
            or not doc["error"].strip():
        return [f'error body is not {{"error": "<message>"}}: {body[:200]!r}']
    problems = []
    if not content_type.startswith("application/json"):
        problems.append(f"error content type is {content_type!r}, not application/json")
    problems += message_problems(doc["error"], MAX_ERROR_CHARS, "characters")
    return problems


def message_problems(message: str, limit: int, unit: str) -> list[str]:
    problems = []
    size = len(message) if unit == "characters" else len(message.encode("utf-8", "backslashreplace"))
    if size > limit:
        problems.append(f"error message of {size} {unit}, more than {limit}: {message[:200]!r}")
    for noise in TF_INTERNALS:
        if noise in message:
            problems.append(f"error message shows TensorFlow internals ({noise!r}): {message[:300]!r}")
    return problems


@dataclass
class Case:
    """A hostile request: `run` returns a short description of the answer and the problems found."""

    id: str

    def run(self, harness: Harness) -> tuple[str, list[str]]:
        raise NotImplementedError


@dataclass
class Rest(Case):
    """One raw HTTP exchange; `request` builds the bytes (lazily: bombs are built only when run)."""

    request: Callable[[], bytes] = lambda: b""
    expect: frozenset = frozenset({400})
    message: str | None = None  # a regex the error message must match (case-insensitive)
    within: float | None = None
    timeout: float = CLIENT_TIMEOUT

    def run(self, harness):
        answer = exchange(harness.rest_port, self.request(), timeout=self.timeout)
        problems = []
        if answer.status not in self.expect:
            problems.append(f"expected HTTP {sorted(self.expect)}, got {answer.describe()}")
        if answer.status is not None and answer.status >= 400:
            problems += rest_error_problems(answer.body, answer.headers.get("content-type", ""))
            if self.message:
                try:
                    error = json.loads(answer.body).get("error", "")
                except (ValueError, AttributeError):
                    error = ""
                if not re.search(self.message, str(error), re.IGNORECASE | re.DOTALL):
                    problems.append(f"error message does not match {self.message!r}: {str(error)[:300]!r}")
        if self.within is not None and answer.seconds > self.within:
            problems.append(f"answered after {answer.seconds:.1f} s, more than {self.within:g} s")
        return answer.describe(), problems


@dataclass
class Grpc(Case):
    """One RPC: `call(harness, timeout)` makes it (raising grpc.RpcError on failure)."""

    call: Callable[[Harness, float], Any] = lambda harness, timeout: None
    expect: frozenset = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
    message: str | None = None
    within: float | None = None
    timeout: float = CLIENT_TIMEOUT

    def run(self, harness):
        started = time.monotonic()
        try:
            self.call(harness, self.timeout)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
        seconds = time.monotonic() - started
        answer = f"{code.name} after {seconds:.1f} s: {details[:200]!r}"
        problems = []
        if code not in self.expect:
            problems.append(f"expected {sorted(c.name for c in self.expect)}, got {answer}")
        if code != grpc.StatusCode.OK:
            if not details.strip():
                problems.append("error without a message")
            problems += message_problems(details, MAX_GRPC_DETAILS_BYTES, "bytes")
            if self.message and not re.search(self.message, details, re.IGNORECASE | re.DOTALL):
                problems.append(f"error message does not match {self.message!r}: {details[:300]!r}")
        if self.within is not None and seconds > self.within:
            problems.append(f"answered after {seconds:.1f} s, more than {self.within:g} s")
        return answer, problems


@dataclass
class Attack(Case):
    """Anything else (slow clients): `attack(harness)` returns (answer, problems)."""

    attack: Callable[[Harness], tuple[str, list[str]]] = lambda harness: ("", [])

    def run(self, harness):
        return self.attack(harness)


# ---- REST requests ---------------------------------------------------------------------------------------------

PREDICT = f"/v1/models/{TINY}:predict"
HPT_PREDICT = f"/v1/models/{HPT}:predict"
HPT_CLASSIFY = f"/v1/models/{HPT}:classify"
BAD, NOT_FOUND = frozenset({400}), frozenset({404})
BAD_OR_NOT_FOUND = frozenset({400, 404})
# The message must say which instance was bad (the third) and, for a bomb, that it has too many pixels.
INDEX_2 = r"(instance|element|item|index|image|input|row|example|image_bytes)\D{0,30}\b2\b|\[2\]|#2\b"
PIXELS = r"pixel|limit"


def body_of(doc: Any) -> bytes:
    return doc if isinstance(doc, bytes) else (doc if isinstance(doc, str) else json.dumps(doc)).encode()


def post(path: str, doc: Any, headers: dict | None = None) -> Callable[[], bytes]:
    """A POST of `doc` (JSON-encoded unless bytes or str): json.dumps escapes lone surrogates as \\udXXX."""
    return lambda: build_request("POST", path, body_of(doc), headers)


def raw(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def request(method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Callable[[], bytes]:
    return lambda: build_request(method, path, body, headers)


def images(signature: str, value: Any) -> dict:
    return {"signature_name": signature, "inputs": {"images": value}}


def pixels(height: int, width: int, value: Any = 0) -> list:
    return [[[value] * 3 for _ in range(width)] for _ in range(height)]


@functools.cache
def cached(builder: Callable[[], bytes]) -> bytes:
    return builder()


def nested(depth: int, leaf: str) -> str:
    return "[" * depth + leaf + "]" * depth


def keyed(*rows: dict) -> dict:
    return {"signature_name": "predict_with_key", "instances": list(rows)}


GOOD_ROW = {"image_bytes": b64(PNG), "key": "k"}
PNG_TEXT = b64(PNG)["b64"]


def gzip_body(doc: Any) -> bytes:
    return gzip.compress(body_of(doc))


def bad_crc_gzip() -> bytes:
    data = bytearray(gzip.compress(body_of({"instances": [b64(PNG)]})))
    data[-8] ^= 0xFF  # the CRC-32 of the member
    return bytes(data)


def chunked_request(path: str, body: bytes) -> Callable[[], bytes]:
    return lambda: build_request("POST", path, chunked(body), {"Transfer-Encoding": "chunked"})


def uint8_pixels_body() -> bytes:
    """A legitimate body near the limit: 1 x 512 x 512 x 3 pixels of 255 (3.1 MB of JSON)."""
    row = "[" + ",".join(["[255,255,255]"] * 512) + "]"
    return ('{"signature_name": "predict_images", "inputs": {"images": [[' + ",".join([row] * 512) + "]]}}").encode()


REST_CASES: list[Case] = [
    # The 80-byte request that killed the server: a string nested 33 deep (tensor rank 33).
    Rest("rank33_string_instances", post(PREDICT, '{"instances": ' + nested(33, '"x"') + "}")),
    Rest("rank33_uint8_inputs", post(PREDICT, '{"signature_name": "predict_images", "inputs": {"images": '
                                              + nested(33, "0") + "}}")),
    Rest("rank33_b64_instances", post(PREDICT, '{"instances": ' + nested(33, json.dumps(b64(PNG))) + "}")),
    Rest("rank62_float_inputs", post(HPT_PREDICT, '{"inputs": ' + nested(62, "1.0") + "}")),
    # JSON nesting and numbers.
    Rest("json_arrays_nested_100000", post(PREDICT, nested(100_000, ""))),
    Rest("json_objects_nested_100000_unclosed", post(PREDICT, '{"a": ' * 100_000)),
    Rest("json_mixed_nesting_100000_in_instances", post(PREDICT, '{"instances": ' + '[{"a": ' * 50_000)),
    Rest("instances_nested_65", post(HPT_PREDICT, '{"instances": ' + nested(65, "1.0") + "}")),
    Rest("instances_nested_70", post(HPT_PREDICT, '{"instances": ' + nested(70, "1.0") + "}")),
    Rest("integer_of_5000_digits", post(HPT_PREDICT, '{"instances": [' + "9" * 5000 + "]}")),
    Rest("integer_of_5000_digits_in_unused_key", post(HPT_PREDICT, '{"x": ' + "1" * 5000 + ', "instances": [1.0]}')),
    Rest("float_of_5000_digits_overflows", post(HPT_PREDICT, '{"instances": [1' + "0" * 5000 + ".0]}")),
    Rest("float_1e999", post(HPT_PREDICT, '{"instances": [1e999]}')),
    Rest("classify_integer_below_int64", post(HPT_CLASSIFY, '{"signature_name": "classify_x_to_y", "examples": '
                                                            '[{"x": -9223372036854775809}]}')),
    Rest("classify_integer_2_pow_64", post(HPT_CLASSIFY, '{"signature_name": "classify_x_to_y", "examples": '
                                                         '[{"x": 18446744073709551616}]}')),
    # Text that is not text.
    Rest("lone_surrogate_in_input", post(PREDICT, {"instances": ["\ud800"]})),
    Rest("lone_surrogate_in_signature_name", post(PREDICT, {"signature_name": "\udc00", "instances": [b64(PNG)]})),
    Rest("lone_surrogate_in_key", post(PREDICT, keyed({"image_bytes": b64(PNG), "key": "\ud83d"}))),
    Rest("lone_surrogate_echoed_in_error", post(PREDICT, keyed({"image_bytes": b64(PNG), "key": "k",
                                                               "\udfff": "x"}))),
    Rest("lone_surrogate_in_feature_name", post(HPT_CLASSIFY, {"signature_name": "classify_x_to_y",
                                                              "examples": [{"\ud800": 1.0}]})),
    Rest("lone_surrogate_in_model_name_path", post("/v1/models/%ED%A0%80:predict", {"instances": [1.0]}),
         BAD_OR_NOT_FOUND),
    Rest("invalid_utf8_in_body", post(PREDICT, b'{"instances": ["\xff\xfe\xfd"]}')),
    # Content encodings.
    Rest("gzip_body_that_is_not_gzip", post(PREDICT, b"this is not gzip data", {"Content-Encoding": "gzip"}),
         frozenset({400, 415})),
    Rest("gzip_body_truncated", lambda: build_request("POST", PREDICT, gzip_body({"instances": [b64(PNG)]})[:40],
                                                      {"Content-Encoding": "gzip"}), frozenset({400, 415})),
    Rest("gzip_body_bad_crc", lambda: build_request("POST", PREDICT, bad_crc_gzip(), {"Content-Encoding": "gzip"}),
         frozenset({400, 415})),
    Rest("deflate_body_that_is_not_deflate", post(PREDICT, b"\x00\x01 definitely not zlib",
                                                  {"Content-Encoding": "deflate"}), frozenset({400, 415})),
    Rest("br_body_that_is_not_brotli", post(PREDICT, b"not brotli", {"Content-Encoding": "br"}),
         frozenset({400, 415})),
    Rest("unknown_content_encoding", post(PREDICT, {"instances": [b64(PNG)]}, {"Content-Encoding": "x-hostile"}),
         frozenset({400, 415})),
    Rest("gzip_bomb_1gib", lambda: build_request("POST", PREDICT, cached(gzip_bomb), {"Content-Encoding": "gzip"}),
         frozenset({413}), within=BOMB_SECONDS),
    Rest("deflate_bomb_1gib", lambda: build_request("POST", PREDICT, cached(deflate_bomb),
                                                    {"Content-Encoding": "deflate"}),
         frozenset({413}), within=BOMB_SECONDS),
    Rest("gzip_of_valid_body_control", lambda: build_request("POST", PREDICT, gzip_body({"instances": [b64(PNG)]}),
                                                             {"Content-Encoding": "gzip"}), frozenset({200})),
    # Sizes.
    Rest("declared_10_gib_body", raw(build_request("POST", PREDICT, headers={"Content-Length": str(10 * 2**30)})
                                     + b'{"instances": '), frozenset({413}), within=5),
    Rest("declared_over_max_with_expect_100_continue",
         raw(build_request("POST", PREDICT, headers={"Content-Length": str(MAX_BODY + 1),
                                                     "Expect": "100-continue"})), frozenset({413, 417}), within=5),
    Rest("body_over_max_sent", lambda: build_request("POST", PREDICT, b" " * (MAX_BODY + 2**20)), frozenset({413})),
    Rest("chunked_body_over_max", lambda: chunked_request(PREDICT, b" " * (MAX_BODY + 2**20))(), frozenset({413})),
    Rest("chunk_size_not_hex", raw(build_request("POST", PREDICT, headers={"Transfer-Encoding": "chunked"})
                                   + b"zz\r\nhello\r\n0\r\n\r\n")),
    Rest("content_length_not_a_number", raw(build_request("POST", PREDICT, headers={"Content-Length": "abc"})
                                            + b"{}")),
    Rest("content_length_negative", raw(build_request("POST", PREDICT, headers={"Content-Length": "-1"}) + b"{}")),
    Rest("content_length_and_chunked", raw(build_request("POST", PREDICT, headers={
        "Content-Length": "5", "Transfer-Encoding": "chunked"}) + b"0\r\n\r\n")),
    Rest("max_body_uint8_pixels_control", lambda: build_request("POST", PREDICT, cached(uint8_pixels_body)),
         frozenset({200})),
    Rest("instances_10000_over_the_limit", post(PREDICT, {"instances": [b64(PNG_1PX)] * 10_000})),
    Rest("instances_10000_over_the_limit_floats", post(HPT_PREDICT, {"instances": [[1.0]] * 10_000})),
    # Not a JSON object.
    Rest("empty_body", post(PREDICT, b"")),
    Rest("whitespace_body", post(PREDICT, b" \r\n\t ")),
    Rest("not_json", post(PREDICT, b"hello, server")),
    Rest("json_array_at_top", post(PREDICT, [b64(PNG)])),
    Rest("json_number_at_top", post(PREDICT, b"42")),
    Rest("json_string_at_top", post(PREDICT, b'"instances"')),
    Rest("json_null_at_top", post(PREDICT, b"null")),
    Rest("json_with_trailing_garbage", post(PREDICT, json.dumps({"instances": [b64(PNG)]}) + " ]]] garbage")),
    # Request shapes.
    Rest("both_instances_and_inputs", post(PREDICT, {"instances": [b64(PNG)], "inputs": [b64(PNG)]})),
    Rest("neither_instances_nor_inputs", post(PREDICT, {"signature_name": "serving_default"})),
    Rest("instances_empty", post(PREDICT, {"instances": []})),
    Rest("instances_a_number", post(PREDICT, {"instances": 5})),
    Rest("instances_a_string", post(PREDICT, {"instances": PNG_TEXT})),
    Rest("instances_an_object", post(PREDICT, {"instances": {"image_bytes": b64(PNG)}})),
    Rest("instances_null", post(PREDICT, {"instances": None})),
    Rest("instances_mixing_objects_and_values", post(PREDICT, keyed(GOOD_ROW, b64(PNG)))),
    Rest("instances_mixing_values_and_objects", post(PREDICT, {"instances": [b64(PNG), {"image_bytes": b64(PNG)}]})),
    Rest("row_object_missing_a_key", post(PREDICT, keyed(GOOD_ROW, {"image_bytes": b64(PNG)}))),
    Rest("row_object_with_an_extra_key", post(PREDICT, keyed({**GOOD_ROW, "extra": "x"}))),
    Rest("row_object_with_10000_keys", post(PREDICT, keyed({**GOOD_ROW, **{f"k{i}": "x" for i in range(10_000)}}))),
    Rest("signature_name_a_number", post(PREDICT, {"signature_name": 5, "instances": [b64(PNG)]})),
    Rest("signature_name_null", post(PREDICT, {"signature_name": None, "instances": [b64(PNG)]})),
    Rest("signature_name_of_100000_characters", post(PREDICT, {"signature_name": "s" * 100_000,
                                                               "instances": [b64(PNG)]})),
    Rest("unknown_signature", post(PREDICT, {"signature_name": "nope", "instances": [b64(PNG)]}),
         message=r'"nope" not found'),
    Rest("inputs_scalar_for_a_vector_input", post(PREDICT, {"inputs": b64(PNG)})),
    Rest("inputs_rank_2_for_a_vector_input", post(PREDICT, {"inputs": [[b64(PNG)]]})),
    Rest("inputs_empty_batch", post(PREDICT, {"inputs": []}), frozenset({200, 400})),
    Rest("mismatched_batch_sizes_across_inputs", post(PREDICT, {"signature_name": "predict_with_key", "inputs": {
        "image_bytes": [b64(PNG), b64(PNG)], "key": ["a", "b", "c"]}})),
    # Values of the wrong kind.
    Rest("b64_not_a_string", post(PREDICT, {"instances": [{"b64": 5}]})),
    Rest("b64_null", post(PREDICT, {"instances": [{"b64": None}]})),
    Rest("b64_with_an_extra_key", post(PREDICT, {"instances": [{"b64": PNG_TEXT, "x": 1}]})),
    Rest("b64_invalid_base64", post(PREDICT, {"instances": [{"b64": "!!!!not base64!!!!"}]})),
    Rest("b64_empty", post(PREDICT, {"instances": [{"b64": ""}]})),
    Rest("b64_of_non_image_bytes_names_the_instance", post(PREDICT, {"instances": [
        b64(PNG), b64(PNG), b64(b"these bytes are no image at all" * 4)]}), message=INDEX_2),
    Rest("b64_of_truncated_png", post(PREDICT, {"instances": [b64(PNG[: len(PNG) // 2])]})),
    Rest("png_bomb_20000x20000", lambda: build_request("POST", PREDICT, json.dumps(
        {"instances": [b64(cached(png_bomb))]}).encode()),
         message=PIXELS, within=BOMB_SECONDS, timeout=BOMB_SECONDS + 5),
    Rest("png_bomb_20000x20000_header_only", post(PREDICT, {"instances": [b64(png_bomb_header_only())]}),
         message=PIXELS, within=BOMB_SECONDS, timeout=BOMB_SECONDS + 5),
    Rest("number_for_a_string_input", post(PREDICT, {"instances": [5]})),
    Rest("bool_for_a_string_input", post(PREDICT, {"instances": [True]})),
    Rest("null_for_a_string_input", post(PREDICT, {"instances": [None]})),
    Rest("key_null", post(PREDICT, keyed({"image_bytes": b64(PNG), "key": None}))),
    Rest("float_image_nan", post(PREDICT, images("predict_images_float", [pixels(2, 2, float("nan"))]))),
    Rest("float_image_infinity", post(PREDICT, images("predict_images_float", [pixels(2, 2, float("inf"))]))),
    Rest("float_image_minus_infinity", post(PREDICT, images("predict_images_float", [pixels(2, 2, float("-inf"))]))),
    Rest("float_image_1e999", post(PREDICT, '{"signature_name": "predict_images_float", "inputs": {"images": '
                                            '[[[[1e999, 0.5, 0.5]]]]}}')),
    Rest("uint8_image_negative", post(PREDICT, images("predict_images", [pixels(2, 2, -1)]))),
    Rest("uint8_image_256", post(PREDICT, images("predict_images", [pixels(2, 2, 256)]))),
    Rest("uint8_image_float", post(PREDICT, images("predict_images", [pixels(2, 2, 0.5)]))),
    Rest("uint8_image_bool", post(PREDICT, images("predict_images", [pixels(2, 2, True)]))),
    Rest("uint8_image_string", post(PREDICT, images("predict_images", [pixels(2, 2, "0")]))),
    Rest("uint8_image_rank_3", post(PREDICT, images("predict_images", pixels(2, 2)))),
    Rest("uint8_image_rank_5", post(PREDICT, images("predict_images", [[pixels(2, 2)]]))),
    Rest("uint8_image_rank_1_empty", post(PREDICT, images("predict_images", []))),
    Rest("uint8_image_4_channels", post(PREDICT, images("predict_images", [[[[0, 0, 0, 0]] * 2] * 2]))),
    Rest("ragged_floats", post(HPT_PREDICT, {"instances": [[1.0], [2.0, 3.0]]})),
    Rest("ragged_image_rows", post(PREDICT, images("predict_images", [[[[0, 0, 0]] * 2, [[0, 0, 0]] * 3]]))),
    Rest("ragged_instances_of_images", post(PREDICT, {"signature_name": "predict_images",
                                                      "instances": [pixels(2, 2), pixels(3, 3)]})),
    # Examples (classify / regress).
    Rest("classify_on_a_model_without_classify_signature", post(f"/v1/models/{TINY}:classify",
                                                                {"examples": [{"x": 1.0}]})),
    Rest("classify_examples_not_a_list", post(HPT_CLASSIFY, {"signature_name": "classify_x_to_y", "examples": 5})),
    Rest("classify_examples_empty", post(HPT_CLASSIFY, {"signature_name": "classify_x_to_y", "examples": []})),
    Rest("classify_example_not_an_object", post(HPT_CLASSIFY, {"signature_name": "classify_x_to_y",
                                                               "examples": [[1.0]]})),
    Rest("classify_feature_nested_list", post(HPT_CLASSIFY, {"signature_name": "classify_x_to_y",
                                                             "examples": [{"x": [[1.0]]}]})),
    Rest("regress_feature_of_mixed_types", post(f"/v1/models/{HPT}:regress", {
        "signature_name": "regress_x_to_y", "examples": [{"x": [1.0, "a"]}]})),
    # Models, versions, labels, paths and methods.
    Rest("unknown_model", post("/v1/models/nope:predict", {"instances": [1.0]}), NOT_FOUND),
    Rest("unknown_version", post(f"/v1/models/{TINY}/versions/7:predict", {"instances": [b64(PNG)]}), NOT_FOUND),
    Rest("unknown_label_in_predict", post(f"/v1/models/{TINY}/labels/nope:predict", {"instances": [b64(PNG)]})),
    Rest("unknown_label_status", request("GET", f"/v1/models/{TINY}/labels/NOPE"), BAD_OR_NOT_FOUND),
    Rest("unknown_label_metadata", request("GET", f"/v1/models/{TINY}/labels/NOPE/metadata"), BAD_OR_NOT_FOUND),
    Rest("version_not_a_number", post(f"/v1/models/{TINY}/versions/abc:predict", {"instances": [b64(PNG)]}),
         BAD_OR_NOT_FOUND),
    Rest("version_negative", post(f"/v1/models/{TINY}/versions/-1:predict", {"instances": [b64(PNG)]}),
         BAD_OR_NOT_FOUND),
    Rest("version_of_30_digits", post(f"/v1/models/{TINY}/versions/{'9' * 30}:predict", {"instances": [b64(PNG)]}),
         BAD_OR_NOT_FOUND),
    Rest("unknown_verb", post(f"/v1/models/{TINY}:explode", {"instances": [b64(PNG)]}), BAD_OR_NOT_FOUND),
    Rest("empty_model_name", post("/v1/models/:predict", {"instances": [b64(PNG)]}), BAD_OR_NOT_FOUND),
    Rest("version_and_label", post(f"/v1/models/{TINY}/versions/1/labels/x:predict", {"instances": [b64(PNG)]}),
         BAD_OR_NOT_FOUND),
    Rest("path_traversal", request("GET", "/v1/models/../../../../etc/passwd"), BAD_OR_NOT_FOUND),
    Rest("percent_encoded_nul_in_model_name", post("/v1/models/ti%00ny:predict", {"instances": [b64(PNG)]}),
         BAD_OR_NOT_FOUND),
    Rest("invalid_utf8_percent_encoded_in_path", post("/v1/models/%ff%fe:predict", {"instances": [1.0]}),
         BAD_OR_NOT_FOUND),
    Rest("model_name_of_8000_characters", post(f"/v1/models/{'m' * 8000}:predict", {"instances": [1.0]}),
         BAD_OR_NOT_FOUND),
    Rest("url_of_100000_characters", request("GET", "/v1/models/" + "a" * 100_000), frozenset({400, 404, 414})),
    Rest("header_of_100000_characters", request("GET", f"/v1/models/{TINY}", headers={"X-Big": "a" * 100_000}),
         frozenset({400, 431})),
    Rest("post_to_metadata", post(f"/v1/models/{TINY}/metadata", {"instances": [b64(PNG)]}),
         frozenset({400, 404, 405})),
    Rest("method_put", request("PUT", PREDICT, b"{}"), frozenset({400, 404, 405})),
    Rest("method_delete", request("DELETE", f"/v1/models/{TINY}"), frozenset({400, 404, 405})),
    Rest("method_patch", request("PATCH", PREDICT, b"{}"), frozenset({400, 404, 405})),
    Rest("method_options", request("OPTIONS", PREDICT), frozenset({400, 404, 405})),
    Rest("method_made_up", request("BREW", PREDICT, b"{}"), frozenset({400, 404, 405})),
    Rest("outside_the_api", request("GET", "/admin/shutdown"), NOT_FOUND),
    Rest("garbage_request_line", raw(b"HELLO THERE\r\n\r\n")),
    Rest("http_version_9", raw(b"GET /v1/models/tiny HTTP/9.9\r\nHost: x\r\n\r\n"), frozenset({400, 505})),
    Rest("nul_byte_in_request_line", raw(b"GET /v1/models/ti\x00ny HTTP/1.1\r\nHost: x\r\n\r\n")),
]


# ---- slow clients ----------------------------------------------------------------------------------------------

def _open(port: int, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if first:
        sock.sendall(first)
    return sock


def _all_closed(sockets: list[socket.socket], until: float) -> int:
    """How many of `sockets` are still open at `until` (closed ones may have got a 408 first)."""
    still_open = 0
    for sock in sockets:
        closed, _ = wait_closed(sock, until)
        still_open += not closed
        sock.close()
    return still_open


def slowloris(count: int, first: bytes, trickle: bytes = b"") -> Callable[[Harness], tuple[str, list[str]]]:
    """`count` connections that send `first` (part of a request head) and then nothing, or `trickle` a byte
    every 0.25 s: each must be closed within the header timeout, and the server must serve others meanwhile."""
    def attack(harness):
        started = time.monotonic()
        sockets = [_open(harness.rest_port, first) for _ in range(count)]
        stop = threading.Event()

        def drip():
            position = 0
            while not stop.wait(0.25):
                for sock in sockets:
                    try:
                        sock.send(trickle[position % len(trickle):position % len(trickle) + 1])
                    except OSError:
                        pass
                position += 1

        dripper = threading.Thread(target=drip, daemon=True)
        if trickle:
            dripper.start()
        problems = [f"while {count} slow connections were open: {p}" for p in harness.health()]
        still_open = _all_closed(sockets, started + HEADER_TIMEOUT + SLACK)
        stop.set()
        if trickle:
            dripper.join()
        if still_open:
            problems.append(f"{still_open} of {count} connections still open {HEADER_TIMEOUT + SLACK:g} s after they "
                            f"opened (header timeout {HEADER_TIMEOUT:g} s)")
        return f"{count - still_open}/{count} closed in {time.monotonic() - started:.1f} s", problems
    return attack


def stalled_body(cut: Callable[[bytes], bytes]) -> Callable[[Harness], tuple[str, list[str]]]:
    """A request whose body stops (`cut` gives what is sent of a whole request): the server must answer 408 (with
    the error JSON) or not at all, and close the connection, within the body timeout."""
    def attack(harness):
        body = json.dumps({"instances": [b64(PNG)] * 8}).encode()
        started = time.monotonic()
        sock = _open(harness.rest_port, cut(body))
        closed, data = wait_closed(sock, started + BODY_TIMEOUT + SLACK)
        sock.close()
        status, payload = parse_response(data)
        seconds = time.monotonic() - started
        answer = f"{'closed' if closed else 'still open'} after {seconds:.1f} s, HTTP {status}: {payload[:200]!r}"
        problems = []
        if status is not None and status != 408:
            problems.append(f"expected 408 or no answer, got {answer}")
        if status == 408:
            head = data.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
            content_type = re.search(r"\r\ncontent-type: *([^\r]*)", head)
            problems += rest_error_problems(payload, content_type.group(1) if content_type else "")
        if not closed:
            problems.append(f"the connection of a stalled body is still open {BODY_TIMEOUT + SLACK:g} s after it "
                            f"opened (body timeout {BODY_TIMEOUT:g} s){', after a 408' if status == 408 else ''}")
        return answer, problems
    return attack


def _half_body(body: bytes) -> bytes:
    return build_request("POST", PREDICT, body)[: -len(body) // 2]


def _head_only(body: bytes) -> bytes:
    return build_request("POST", PREDICT, body)[: -len(body)]


def _one_chunk(body: bytes) -> bytes:
    return build_request("POST", PREDICT, chunked(body, size=256), {"Transfer-Encoding": "chunked"})[:-300]


PARTIAL_HEAD = b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le"

ATTACKS: list[Case] = [
    Attack("slowloris_64_partial_heads", slowloris(64, PARTIAL_HEAD)),
    Attack("slowloris_64_silent_connections", slowloris(64, b"")),
    Attack("slowloris_8_heads_trickled_a_byte_at_a_time", slowloris(8, PARTIAL_HEAD, trickle=b"X-Slow: aaaa\r\n")),
    Attack("stalled_half_body", stalled_body(_half_body)),
    Attack("stalled_body_after_the_head", stalled_body(_head_only)),
    Attack("stalled_chunked_body", stalled_body(_one_chunk)),
]


# ---- gRPC requests ---------------------------------------------------------------------------------------------

IA = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
IA_OR_RE = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED})
OK_OR_IA = frozenset({grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT})  # an empty batch may be answered


def tensor(dtype: int, shape: list[int], **values: Any) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]))
    for name, value in values.items():
        if name == "tensor_content":
            proto.tensor_content = value
        else:
            getattr(proto, name).extend(value)
    return proto


def strings(values: list[bytes], shape: list[int] | None = None) -> tensor_pb2.TensorProto:
    return tensor(types_pb2.DT_STRING, shape if shape is not None else [len(values)], string_val=values)


def predict_request(inputs: dict[str, tensor_pb2.TensorProto], model: str = TINY, signature: str = "",
                    version: int | None = None, label: str | None = None,
                    output_filter: tuple[str, ...] = ()) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(output_filter=list(output_filter))
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for alias, proto in inputs.items():
        request.inputs[alias].CopyFrom(proto)
    return request


def predict(inputs: dict, **spec: Any) -> Callable[[Harness, float], Any]:
    built = functools.cache(lambda: predict_request(inputs() if callable(inputs) else inputs, **spec))
    return lambda harness, timeout: harness.prediction.Predict(built(), timeout=timeout)


def float_images(value: float) -> dict:
    return {"images": tensor(types_pb2.DT_FLOAT, [1, 2, 2, 3], float_val=[0.5] * 11 + [value])}


def raw_rpc(method: str, data: bytes) -> Callable[[Harness, float], Any]:
    """`data` as the serialized request of `method` (bytes no protobuf parser accepts)."""
    return lambda harness, timeout: harness.channel.unary_unary(method)(data, timeout=timeout)


def predict_bytes_with_invalid_utf8_model_name() -> bytes:
    spec = model_pb2.ModelSpec(name="tiny").SerializeToString().replace(b"tiny", b"t\xffny")
    return b"\x0a" + bytes([len(spec)]) + spec  # PredictRequest field 1 (model_spec)


def examples_input(x: float) -> input_pb2.Input:
    model_input = input_pb2.Input()
    feature = model_input.example_list.examples.add().features.feature["x"]
    feature.float_list.value.append(x)
    return model_input


def reload_into_proc(harness, timeout):
    """A reload whose config points a model at /proc (plus the two served models, unchanged)."""
    config = model_server_config_pb2.ModelServerConfig()
    base = harness.server.flags[0].partition("=")[2]
    for name in (TINY, HPT):
        config.model_config_list.config.add(name=name, base_path=str(Path(base).parent / name),
                                            model_platform="tensorflow")
    config.model_config_list.config.add(name="proc", base_path="/proc", model_platform="tensorflow")
    return harness.models.HandleReloadConfigRequest(
        model_management_pb2.ReloadConfigRequest(config=config), timeout=timeout)


def spec(model: str = TINY, signature: str = "", version: int | None = None) -> model_pb2.ModelSpec:
    model_spec = model_pb2.ModelSpec(name=model, signature_name=signature)
    if version is not None:
        model_spec.version.value = version
    return model_spec


def _many_inputs(count: int, real: bool) -> dict:
    inputs = {f"unknown_input_{i:05d}": strings([b"x"]) for i in range(count - real)}
    if real:
        inputs["image_bytes"] = strings([PNG])
    return inputs


GRPC_CASES: list[Case] = [
    # The image_bytes tensor of 33 dimensions that killed the server.
    Grpc("rank33_image_bytes", predict({"image_bytes": strings([PNG], [1] * 33)})),
    Grpc("rank33_uint8_images", predict({"images": tensor(types_pb2.DT_UINT8, [1] * 33, int_val=[0])},
                                        signature="predict_images")),
    Grpc("rank200_float_images", predict({"images": tensor(types_pb2.DT_FLOAT, [1] * 200, float_val=[0.5])},
                                         signature="predict_images_float")),
    # Declared sizes without the values.
    Grpc("shape_of_2_pow_40_strings", predict({"image_bytes": strings([b"x"], [2**40])}), IA_OR_RE),
    Grpc("shape_of_12_tib_of_floats", predict({"images": tensor(types_pb2.DT_FLOAT, [1, 2**20, 2**20, 3],
                                                                float_val=[0.5])},
                                              signature="predict_images_float"), IA_OR_RE),
    Grpc("shape_of_12_tib_of_uint8_without_values", predict({"images": tensor(types_pb2.DT_UINT8,
                                                                              [4, 2**20, 2**20, 3])},
                                                            signature="predict_images"), IA_OR_RE),
    Grpc("shape_overflowing_int64", predict({"image_bytes": strings([b"x"], [2**62, 2**62, 2**62])}), IA_OR_RE),
    Grpc("image_bytes_20000_copies_of_one_1kb_png", predict({"image_bytes": strings([PNG_1KB], [20_000])}),
         IA_OR_RE, within=BOMB_SECONDS),
    Grpc("image_bytes_3000_copies_of_one_png_over_the_instance_limit", predict({"image_bytes": strings(
        [PNG], [3000])}), IA_OR_RE, within=BOMB_SECONDS),
    Grpc("negative_dimension", predict({"image_bytes": strings([PNG], [-1])})),
    Grpc("negative_dimension_large", predict({"image_bytes": strings([PNG], [-(2**40)])})),
    Grpc("unknown_rank", predict({"image_bytes": tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[PNG], tensor_shape=tensor_shape_pb2.TensorShapeProto(
            unknown_rank=True))})),
    Grpc("more_values_than_the_shape_holds", predict({"image_bytes": strings([PNG, PNG], [1])})),
    Grpc("scalar_for_a_vector_input", predict({"image_bytes": strings([PNG], [])})),
    # Many inputs: refused with a short message (10,000 names echoed overflow the client's metadata limit).
    Grpc("10000_unknown_input_names", predict(lambda: _many_inputs(10_000, real=False))),
    Grpc("10000_inputs_with_the_real_one", predict(lambda: _many_inputs(10_000, real=True))),
    Grpc("one_unknown_input_name_of_100000_characters", predict({"i" * 100_000: strings([PNG])})),
    # Dtypes and encodings.
    Grpc("dtype_invalid", predict({"image_bytes": tensor(types_pb2.DT_INVALID, [1], string_val=[PNG])})),
    Grpc("dtype_out_of_the_enum", predict({"image_bytes": tensor(999, [1], string_val=[PNG])})),
    Grpc("dtype_resource", predict({"image_bytes": tensor(types_pb2.DT_RESOURCE, [1])})),
    Grpc("dtype_variant", predict({"image_bytes": tensor(types_pb2.DT_VARIANT, [1])})),
    Grpc("float_for_a_string_input", predict({"image_bytes": tensor(types_pb2.DT_FLOAT, [1], float_val=[1.0])})),
    Grpc("half_for_a_float_input", predict({"images": tensor(types_pb2.DT_HALF, [1, 1, 1, 3], half_val=[0] * 3)},
                                           signature="predict_images_float")),
    Grpc("tensor_content_of_the_wrong_length", predict({"images": tensor(
        types_pb2.DT_UINT8, [1, 2, 2, 3], tensor_content=b"\x00" * 5)}, signature="predict_images")),
    Grpc("tensor_content_for_a_string", predict({"image_bytes": tensor(types_pb2.DT_STRING, [1],
                                                                       tensor_content=b"\x00" * 64)})),
    # Image contents.
    Grpc("png_bomb_20000x20000", predict(lambda: {"image_bytes": strings([cached(png_bomb)])}),
         message=PIXELS, within=BOMB_SECONDS, timeout=BOMB_SECONDS + 5),
    Grpc("png_bomb_20000x20000_header_only", predict({"image_bytes": strings([png_bomb_header_only()])}),
         message=PIXELS, within=BOMB_SECONDS, timeout=BOMB_SECONDS + 5),
    Grpc("non_image_bytes_names_the_instance", predict({"image_bytes": strings(
        [PNG, PNG, b"these bytes are no image at all" * 4])}), message=INDEX_2),
    Grpc("truncated_png", predict({"image_bytes": strings([PNG[: len(PNG) // 2]])})),
    Grpc("empty_image_bytes", predict({"image_bytes": strings([b""])})),
    Grpc("declared_shape_filled_with_empty_strings", predict({"image_bytes": strings([], [2])})),
    Grpc("float_image_nan", predict(float_images(float("nan")), signature="predict_images_float")),
    Grpc("float_image_infinity", predict(float_images(float("inf")), signature="predict_images_float")),
    Grpc("uint8_image_rank_3", predict({"images": tensor(types_pb2.DT_UINT8, [2, 2, 3], int_val=[0] * 12)},
                                       signature="predict_images")),
    Grpc("uint8_image_without_pixels", predict({"images": tensor(types_pb2.DT_UINT8, [1, 0, 0, 3])},
                                               signature="predict_images")),
    Grpc("float_image_without_pixels", predict({"images": tensor(types_pb2.DT_FLOAT, [1, 0, 0, 3])},
                                               signature="predict_images_float")),
    Grpc("uint8_image_of_zero_width", predict({"images": tensor(types_pb2.DT_UINT8, [2, 5, 0, 3])},
                                              signature="predict_images")),
    Grpc("uint8_image_of_zero_height", predict({"images": tensor(types_pb2.DT_UINT8, [1, 0, 5, 3])},
                                               signature="predict_images")),
    Grpc("uint8_image_wider_than_png_allows", predict(lambda: {"images": tensor(
        types_pb2.DT_UINT8, [1, 1, 2_000_000, 3], tensor_content=bytes(6_000_000))}, signature="predict_images")),
    Grpc("uint8_image_taller_than_png_allows", predict(lambda: {"images": tensor(
        types_pb2.DT_UINT8, [1, 2_000_000, 1, 3], tensor_content=bytes(6_000_000))}, signature="predict_images")),
    Grpc("uint8_image_of_zero_channels", predict({"images": tensor(types_pb2.DT_UINT8, [1, 2, 2, 0])},
                                                 signature="predict_images")),
    Grpc("empty_batch_of_image_bytes", predict({"image_bytes": strings([], [0])}), OK_OR_IA),
    Grpc("empty_batch_of_uint8_images", predict({"images": tensor(types_pb2.DT_UINT8, [0, 2, 2, 3])},
                                                signature="predict_images"), OK_OR_IA),
    Grpc("empty_batch_with_key", predict({"image_bytes": strings([], [0]), "key": strings([], [0])},
                                         signature="predict_with_key"), OK_OR_IA),
    Grpc("mismatched_batch_sizes_across_inputs", predict({"image_bytes": strings([PNG, PNG]),
                                                          "key": strings([b"a", b"b", b"c"])},
                                                         signature="predict_with_key")),
    # Models, versions, labels, signatures, output filters.
    Grpc("empty_model_name", predict({"image_bytes": strings([PNG])}, model="")),
    Grpc("unknown_model", predict({"image_bytes": strings([PNG])}, model="nope"),
         frozenset({grpc.StatusCode.NOT_FOUND})),
    Grpc("unknown_version", predict({"image_bytes": strings([PNG])}, version=7),
         frozenset({grpc.StatusCode.NOT_FOUND})),
    Grpc("unknown_label", predict({"image_bytes": strings([PNG])}, label="nope")),
    Grpc("unknown_signature", predict({"image_bytes": strings([PNG])}, signature="nope"),
         frozenset({grpc.StatusCode.FAILED_PRECONDITION})),
    Grpc("unknown_output_filter", predict({"image_bytes": strings([PNG])}, output_filter=("nope",))),
    Grpc("duplicate_output_filter", predict({"image_bytes": strings([PNG])}, output_filter=("label", "label"))),
    Grpc("empty_predict_request", lambda harness, timeout: harness.prediction.Predict(predict_pb2.PredictRequest(),
                                                                              timeout=timeout)),
    Grpc("predict_without_inputs", predict({})),
    Grpc("garbage_bytes_as_the_request", raw_rpc("/tensorflow.serving.PredictionService/Predict",
                                                 b"\xff\xff\xff\xff\xff\xff")),
    Grpc("invalid_utf8_in_the_model_name", raw_rpc("/tensorflow.serving.PredictionService/Predict",
                                                   predict_bytes_with_invalid_utf8_model_name())),
    # Other methods.
    Grpc("classify_on_a_model_without_classify_signature", lambda harness, timeout: harness.prediction.Classify(
        classification_pb2.ClassificationRequest(model_spec=spec(), input=examples_input(1.0)),
        timeout=timeout)),
    Grpc("classify_without_examples", lambda harness, timeout: harness.prediction.Classify(
        classification_pb2.ClassificationRequest(model_spec=spec(HPT, "classify_x_to_y")), timeout=timeout)),
    Grpc("multi_inference_without_tasks", lambda harness, timeout: harness.prediction.MultiInference(
        inference_pb2.MultiInferenceRequest(input=examples_input(1.0)), timeout=timeout)),
    Grpc("metadata_unknown_field", lambda harness, timeout: harness.prediction.GetModelMetadata(
        get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec(), metadata_field=["nope"]),
        timeout=timeout)),
    Grpc("metadata_without_field", lambda harness, timeout: harness.prediction.GetModelMetadata(
        get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec()), timeout=timeout)),
    Grpc("status_of_unknown_model", lambda harness, timeout: harness.models.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec=spec("nope")), timeout=timeout),
         frozenset({grpc.StatusCode.NOT_FOUND})),
]

# Last: a reload that is not refused would change what the server serves.
RELOAD = Grpc("reload_config_into_proc", reload_into_proc,
              frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}))


def _ordered() -> list[Case]:
    """Both rank-33 crashes first, then REST, slow clients, gRPC and the reload."""
    rest_first, grpc_first = REST_CASES[0], GRPC_CASES[0]
    return [rest_first, grpc_first, *REST_CASES[1:], *ATTACKS, *GRPC_CASES[1:], RELOAD]


CASES = _ordered()


def _case_id(case: Case) -> str:
    kind = "rest" if isinstance(case, (Rest, Attack)) else "grpc"
    return f"{kind}-{case.id}"


def test_the_corpus_is_large_enough():
    ids = [_case_id(c) for c in CASES]
    assert len(ids) == len(set(ids))
    assert sum(isinstance(c, (Rest, Attack)) for c in CASES) >= 50
    assert sum(isinstance(c, Grpc) for c in CASES) >= 15
    assert ids[:2] == ["rest-rank33_string_instances", "grpc-rank33_image_bytes"]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_hostile_input(harness, case):
    problems = harness.run(case)
    assert not problems, f"{_case_id(case)}:\n  " + "\n  ".join(problems)


def test_peak_rss_over_the_whole_corpus_stays_bounded(harness):
    """Over every case: no crash, and the peak RSS stays within the idle RSS plus MEMORY_BOUND_BYTES."""
    measured = [o for o in harness.outcomes if o.peak_over_idle_kb is not None]
    if not measured:
        pytest.skip("no case ran: this test reads what the cases measured")
    worst = sorted(measured, key=lambda o: o.peak_over_idle_kb, reverse=True)[:5]
    summary = ", ".join(f"{o.case} +{o.peak_over_idle_kb // 1024} MiB" for o in worst)
    print(f"\nidle RSS {harness.idle_kb // 1024} MiB; largest peaks over idle: {summary}")
    assert not harness.crashes, f"the server died: {harness.crashes}"
    assert worst[0].peak_over_idle_kb * 1024 <= MEMORY_BOUND_BYTES, (
        f"peak RSS over idle ({harness.idle_kb // 1024} MiB) beyond {MEMORY_BOUND_BYTES // 2**20} MiB: {summary}")
