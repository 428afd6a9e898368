"""`python -m serving.client` over REST and gRPC against the project's server: the in-process labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from serving.options import ServerOptions
from serving.model_server import ModelServer


@pytest.mark.parametrize("api", ["rest", "grpc"])
def test_client_prints_the_served_label_and_score_per_file(tiny_run, tiny_export, api):
    files = sorted(tiny_run.images.rglob("*.jpg"))[:2] + sorted(tiny_run.images.rglob("*.png"))[:1]
    expected = tf.saved_model.load(tiny_export).signatures["serving_default"](
        image_bytes=tf.constant([f.read_bytes() for f in files]))
    options = ServerOptions(port=0, rest_api_port=0, model_name="tiny", model_base_path=str(Path(tiny_export).parent))
    with ModelServer(options) as server:
        port = server.ports.grpc if api == "grpc" else server.ports.rest
        done = subprocess.run([sys.executable, "-m", "serving.client", "--port", str(port), "--model", "tiny",
                               *(["--grpc"] if api == "grpc" else []), *map(str, files)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert [r[0] for r in rows] == [str(f) for f in files]
    assert [r[1] for r in rows] == expected["label"].numpy().astype(str).tolist()
    np.testing.assert_allclose([float(r[2]) for r in rows], expected["score"].numpy(), atol=1e-4)


def test_client_reports_an_unknown_model(tiny_export):
    options = ServerOptions(port=0, rest_api_port=0, model_name="tiny", model_base_path=str(Path(tiny_export).parent))
    with ModelServer(options) as server:
        done = subprocess.run([sys.executable, "-m", "serving.client", "--port", str(server.ports.rest),
                               "--model", "nope", str(Path(tiny_export) / "saved_model.pb")],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "HTTP 404" in done.stderr and "Servable not found" in done.stderr


@pytest.mark.parametrize("api", ["rest", "grpc"])
def test_client_names_the_file_the_model_refuses_and_classifies_the_others(tiny_run, tiny_export, api, tmp_path):
    good = sorted(tiny_run.images.rglob("*.png"))[:2]
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"these are not the pixels you are looking for" * 4)
    missing = tmp_path / "gone.png"
    files = [good[0], bad, missing, good[1]]
    options = ServerOptions(port=0, rest_api_port=0, model_name="tiny", model_base_path=str(Path(tiny_export).parent))
    with ModelServer(options) as server:
        port = server.ports.grpc if api == "grpc" else server.ports.rest
        done = subprocess.run([sys.executable, "-m", "serving.client", "--port", str(port), "--model", "tiny",
                               *(["--grpc"] if api == "grpc" else []), *map(str, files)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == [str(good[0]), str(good[1])]
    assert f"{bad}: image_bytes[1]" in done.stderr
    assert f"{missing}: cannot read the file" in done.stderr
    assert "Graph execution error" not in done.stderr
