"""The exported SavedModel: signatures, the transform inside, labels, warm-up, TFLite, versions."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from PIL import Image

from components.dataset import read_labels
from components.export import tflite
from components.artifacts import next_version
from components.export.run import ExportError, run_export
from components.export.warmup import read_warmup_requests
from conftest import make_config

OUTPUTS = {"probabilities", "class_id", "label", "score"}


def test_signatures_as_saved_model_cli_shows_them(tiny_export):
    shown = subprocess.run([str(Path(sys.executable).parent / "saved_model_cli"), "show", "--dir", tiny_export,
                            "--all"], capture_output=True, text=True, check=True).stdout
    default = shown.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    assert "inputs['image_bytes'] tensor_info:\n        dtype: DT_STRING\n        shape: (-1)" in default
    for name, dtype, shape in (("probabilities", "DT_FLOAT", "(-1, 3)"), ("class_id", "DT_INT64", "(-1)"),
                               ("label", "DT_STRING", "(-1)"), ("score", "DT_FLOAT", "(-1)")):
        assert f"outputs['{name}'] tensor_info:\n        dtype: {dtype}\n        shape: {shape}" in default
    keyed = shown.split("signature_def['predict_with_key']:")[1].split("signature_def[")[0]
    assert "inputs['key']" in keyed and "outputs['key']" in keyed
    images = shown.split("signature_def['predict_images']:")[1].split("signature_def[")[0]
    assert "dtype: DT_UINT8\n        shape: (-1, -1, -1, 3)" in images
    assert "predict_filenames" not in shown  # no server-side file reads unless configured


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bytes_in_labels_out_and_the_same_graph_as_training(tiny_run, tiny_export):
    model = tf.saved_model.load(tiny_export)
    files = sorted(tiny_run.images.rglob("*.jpg"))[:4] + sorted(tiny_run.images.rglob("*.png"))[:2]
    assert len(files) == 6
    image_bytes = [f.read_bytes() for f in files]
    out = model.signatures["serving_default"](image_bytes=tf.constant(image_bytes))
    labels = read_labels(tiny_run.transform)
    assert set(out["label"].numpy().astype(str)) <= set(labels)
    np.testing.assert_array_equal(out["label"].numpy().astype(str), np.array(labels)[out["class_id"].numpy()])
    np.testing.assert_allclose(out["score"].numpy(), out["probabilities"].numpy().max(axis=1))

    # Training-time path: the tf.transform layer, then the trained Keras model.
    layer = tft.TFTransformOutput(tiny_run.transform).transform_features_layer()
    trained = keras.models.load_model(str(Path(tiny_run.train) / "model"), compile=False)
    expected = trained(layer({"image/encoded": tf.constant(image_bytes)})["image"], training=False)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected.numpy(), atol=1e-6)

    keyed = model.signatures["predict_with_key"](image_bytes=tf.constant(image_bytes),
                                                  key=tf.constant([f.name for f in files]))
    assert keyed["key"].numpy().astype(str).tolist() == [f.name for f in files]
    np.testing.assert_allclose(keyed["probabilities"], out["probabilities"], atol=1e-6)


def test_pixel_signatures_take_any_size_and_match_the_bytes_signature(tiny_export):
    model = tf.saved_model.load(tiny_export)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 45, 70, 3), dtype=np.uint8)
    from_bytes = model.signatures["serving_default"](image_bytes=tf.constant([_png(p) for p in pixels]))
    from_uint8 = model.signatures["predict_images"](images=tf.constant(pixels))
    from_float = model.signatures["predict_images_float"](images=tf.constant(pixels / 255.0, tf.float32))
    for out in (from_uint8, from_float):
        assert set(out) == OUTPUTS
        np.testing.assert_allclose(out["probabilities"], from_bytes["probabilities"], atol=1e-6)


def test_filename_signature_is_limited_to_its_prefix(tiny_run, tmp_path):
    allowed = tiny_run.images / "red"
    version = run_export(tiny_run.train, tiny_run.transform, str(tmp_path / "m"),
                         make_config(f"export.filename_prefix={allowed}/", "export.tflite=[]")).output
    read = tf.saved_model.load(version).signatures["predict_filenames"]
    inside = sorted(allowed.iterdir())[0]
    assert read(filenames=tf.constant([str(inside)]))["label"].shape == (1,)
    for refused in (str(sorted((tiny_run.images / "blue").iterdir())[0]), f"{allowed}/../blue/x.jpg", "/etc/passwd"):
        with pytest.raises(tf.errors.InvalidArgumentError, match="reads only paths under"):
            read(filenames=tf.constant([str(inside), refused]))


def test_labels_asset_warmup_requests_and_export_report(tiny_run, tiny_export):
    assert (Path(tiny_export) / "assets" / "labels.txt").read_text().split() == read_labels(tiny_run.transform)
    requests = read_warmup_requests(tiny_export)
    assert [len(r.inputs["image_bytes"].string_val) for r in requests] == [1, 1, 1, 3]
    assert {r.model_spec.name for r in requests} == {"tiny"}
    serve = tf.saved_model.load(tiny_export).signatures["serving_default"]
    for request in requests:  # every warm-up request is a real, servable image
        image_bytes = tf.make_ndarray(request.inputs["image_bytes"])
        assert serve(image_bytes=tf.constant(image_bytes))["label"].shape == image_bytes.shape
    export = json.loads((Path(tiny_export) / "export.json").read_text())
    assert export["version"] == 1 and export["model_name"] == "tiny" and export["warmup_requests"] == 3
    assert json.loads((Path(tiny_export) / "manifest.json").read_text())["stage"] == "export"


def test_tflite_accuracy_delta_is_measured(tiny_run, tiny_export):
    export = json.loads((Path(tiny_export) / "export.json").read_text())
    images, labels = tflite.split_pixels(tiny_run.transform, "test")
    reference = tf.saved_model.load(tiny_export).signatures["predict_images"](images=tf.constant(images))
    reference_accuracy = np.mean(np.argmax(reference["probabilities"], axis=1) == labels)
    for variant in ("float16", "int8"):
        flatbuffer = (Path(tiny_export) / "tflite" / f"model_{variant}.tflite").read_bytes()
        classify = tflite.tflite_classifier(flatbuffer)
        accuracy = np.mean([np.argmax(classify(image)) == label for image, label in zip(images, labels)])
        report = export["tflite"][variant]
        assert report["bytes"] == len(flatbuffer) and report["examples"] == len(labels)
        assert report["accuracy"] == pytest.approx(accuracy, abs=1e-6)
        assert report["accuracy_delta"] == pytest.approx(accuracy - reference_accuracy, abs=1e-6)
    int8 = tf.lite.Interpreter(model_content=(Path(tiny_export) / "tflite" / "model_int8.tflite").read_bytes())
    assert int8.get_input_details()[0]["dtype"] == np.uint8
    assert export["tflite"]["int8"]["bytes"] < export["tflite"]["float16"]["bytes"]


def test_versions_count_up_and_unfinished_ones_are_ignored(tiny_run, tmp_path):
    base = tmp_path / "models" / "tiny"
    (base / "7.tmp-deadbeef").mkdir(parents=True)  # an interrupted export
    config = make_config("export.tflite=[]", "export.warmup_requests=0")
    first = run_export(tiny_run.train, tiny_run.transform, str(base), config)
    second = run_export(tiny_run.train, tiny_run.transform, str(base), config)
    assert (first.version, second.version) == (1, 2) and next_version(str(base)) == 3
    assert sorted(p.name for p in base.iterdir()) == ["1", "2", "7.tmp-deadbeef"]


def test_a_model_and_another_transform_are_refused(tiny_run, mixed_ingest, tmp_path):
    from components.transform.run import run_transform

    other = run_transform(mixed_ingest.output, str(tmp_path / "transform"), make_config("transform.image_size=32"))
    with pytest.raises(ExportError, match="trained on another transform output"):
        run_export(tiny_run.train, other.output, str(tmp_path / "m"), make_config())
