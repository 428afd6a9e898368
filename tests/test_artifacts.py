"""components.artifacts (the stage output contract) and components.normalisation: TensorFlow-free."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from components import artifacts
from components.artifacts import IngestStats, SplitCounts, TransformStats
from components.normalisation import normalise, pixels_from_normalised, scaled_from_normalised


def test_needs_no_tensorflow():
    code = ("import sys, components.artifacts, components.normalisation, components.manifest; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize(("name", "version"), [
    ("1", 1), ("00000123", 123), ("0", 0), ("7/", 7), ("9" * 18, int("9" * 18)),
    ("9" * 19, None), ("", None), ("3.tmp-abc", None), ("v2", None), ("-1", None), ("+1", None), (" 1", None),
    ("1.0", None), ("\u0661", None),  # an Arabic-Indic digit: not a TF Serving version
])
def test_version_number(name, version):
    assert artifacts.version_number(name) == version


def test_version_directories(tmp_path, caplog):
    assert artifacts.version_directories(str(tmp_path)) == {}
    assert artifacts.version_directories(str(tmp_path / "missing")) == {}
    assert artifacts.next_version(str(tmp_path)) == 1
    for name in ("1", "007", "3.tmp-abc", "x", "12"):
        (tmp_path / name).mkdir()
    (tmp_path / "99").write_text("a file, not a version")
    assert artifacts.version_directories(str(tmp_path)) == {1: str(tmp_path / "1"), 7: str(tmp_path / "007"),
                                                            12: str(tmp_path / "12")}
    assert artifacts.next_version(str(tmp_path)) == 13
    (tmp_path / "01").mkdir()
    with caplog.at_level(logging.WARNING):
        assert artifacts.version_directories(str(tmp_path))[1] == str(tmp_path / "01")  # first in name order
    assert "Version 1 of" in caplog.text and "appears twice" in caplog.text


def test_saved_model_dir_and_model_version(tmp_path):
    base = tmp_path / "cvpipe"
    with pytest.raises(FileNotFoundError, match=f"{base} holds no SavedModel"):
        artifacts.saved_model_dir(str(base))
    for name in ("2", "10", "9"):
        (base / name).mkdir(parents=True)
    assert artifacts.saved_model_dir(str(base) + "/") == str(base / "10")  # numeric order, not name order
    (base / "2" / artifacts.SAVED_MODEL_FILE).write_bytes(b"")
    assert artifacts.saved_model_dir(str(base / "2")) == str(base / "2")
    assert artifacts.model_version(str(base / "010")) == ("cvpipe", 10)
    assert artifacts.model_version(str(tmp_path / "exported")) == ("exported", None)


def test_fingerprint_is_sha256_of_sorted_json():
    content = {"transform": {"image_size": 32}, "ingest": "abc"}
    assert artifacts.fingerprint(content) == hashlib.sha256(
        json.dumps(content, sort_keys=True).encode()).hexdigest()
    assert artifacts.fingerprint(content) == artifacts.fingerprint(dict(reversed(content.items())))


def _ingest_stats() -> IngestStats:
    return IngestStats(
        inputs=5, accepted=4, rejected=1,
        splits={"train": SplitCounts(3, 1, 300), "valid": SplitCounts(1, 1, 90), "test": SplitCounts(0, 0, 0)},
        classes={"a": {"train": 2, "valid": 1, "test": 0, "total": 3}, "b": {"train": 1, "valid": 0, "test": 0,
                                                                            "total": 1}},
        rejects={"duplicate": 1}, source_bytes=500, record_bytes=390, bytes_ratio=0.78, seconds=1.5,
        images_per_second=3.3)


def test_ingest_stats_round_trip(tmp_path):
    stats = _ingest_stats()
    stats.write(str(tmp_path))
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written["splits"]["train"] == {"images": 3, "shards": 1, "record_bytes": 300}
    assert written["accepted"] == 4 and written["rejects"] == {"duplicate": 1}
    assert IngestStats.read(str(tmp_path)) == stats
    assert stats.split_images() == {"train": 3, "valid": 1, "test": 0}


def test_transform_stats_round_trip(tmp_path):
    stats = TransformStats(images={"train": 3, "valid": 1, "test": 0}, image_size=32, resize_method="pad",
                           channel_mean=[0.5, 0.4, 0.3], channel_std=[0.2, 0.2, 0.25], record_bytes=400,
                           bytes_per_image=100, seconds=2.0, images_per_second=2.0)
    stats.write(str(tmp_path))
    assert TransformStats.read(str(tmp_path)) == stats


def test_damaged_or_incomplete_stats_name_the_file(tmp_path):
    path = tmp_path / "stats.json"
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no stats.json"):
        IngestStats.read(str(tmp_path))
    data = _ingest_stats().to_dict()
    del data["accepted"], data["rejects"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{path} does not hold IngestStats: it lacks accepted, rejects"):
        IngestStats.read(str(tmp_path))
    data = _ingest_stats().to_dict()
    data["splits"]["train"]["unexpected"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{path} does not hold IngestStats: .*unexpected"):
        IngestStats.read(str(tmp_path))
    path.write_text('{"inputs": 5, "accep')
    with pytest.raises(ValueError, match=f"{path} is not valid JSON .*Unterminated string"):
        IngestStats.read(str(tmp_path))
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=f"{path} does not hold TransformStats: it holds a JSON list"):
        TransformStats.read(str(tmp_path))


def test_normalisation_round_trip():
    pixels = np.array([[0.0, 127.0, 255.0]], np.float32)
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.5])
    image = normalise(pixels, mean, std)
    np.testing.assert_allclose(image, (pixels / 255 - mean) / std)
    np.testing.assert_allclose(pixels_from_normalised(image, mean, std), pixels, atol=1e-4)
    np.testing.assert_allclose(scaled_from_normalised(image, mean, std), pixels / 255, atol=1e-6)
