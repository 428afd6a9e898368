"""Shared fixtures: small real image trees and one ingest run of them, and every kustomization of infra/
built, each once per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from browser import browser  # noqa: F401 (one headless Chromium for the session, shared by every test module)
from components.config import Config, load_config
from components.ingest.run import IngestResult, run_ingest
from image_files import write_bad, write_colour_classes, write_plain, write_special
from infra_checks.kustomize import build
from infra_checks.layout import BUILD_DIRS

# Stage CLIs track to MLflow by default: into a throwaway store, never the checkout's runs/.
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='cvpipe-test-mlflow-')}/mlflow.db"

CLASSES = ("cat", "dog", "fox")
PER_CLASS = 20


def make_config(*overrides: str) -> Config:
    """Test configuration: the in-process DirectRunner (no worker start-up) plus overrides."""
    return load_config(overrides=["beam.direct_running_mode=in_memory", "beam.direct_num_workers=1", *overrides])


@dataclass(frozen=True)
class MixedTree:
    root: Path
    specials: dict[str, Path]
    # path -> expected reject reason
    rejects: dict[Path, str]


def write_class_tree(root: Path, classes=CLASSES, per_class: int = PER_CLASS, seed: int = 0) -> list[Path]:
    paths = []
    for c, label in enumerate(classes):
        for i in range(per_class):
            suffix = ".png" if i % 3 == 0 else ".jpg"
            paths.append(write_plain(root / label / f"{label}_{i:03d}{suffix}", seed=seed + 1000 * c + i))
    return paths


@pytest.fixture(scope="session")
def mixed_tree(tmp_path_factory) -> MixedTree:
    """Three classes of plain images plus every special mode, bad file, duplicate and conflict."""
    root = tmp_path_factory.mktemp("mixed") / "images"
    write_class_tree(root)
    specials = write_special(root / "cat", seed=7)
    rejects = {path: reason for path, reason in write_bad(root / "dog", seed=8).values()}
    shutil.copy(root / "fox" / "fox_001.jpg", root / "fox" / "fox_001_copy.jpg")  # the smaller URI is kept
    rejects[root / "fox" / "fox_001_copy.jpg"] = "duplicate"
    shutil.copy(root / "cat" / "cat_001.jpg", root / "dog" / "conflict.jpg")
    rejects[root / "dog" / "conflict.jpg"] = "label_conflict"
    rejects[root / "cat" / "cat_001.jpg"] = "label_conflict"
    (root / "README.txt").write_text("not in a class folder")
    rejects[root / "README.txt"] = "missing_label"
    return MixedTree(root, specials, rejects)


@dataclass(frozen=True)
class TinyRun:
    """Real stage outputs of a tiny, quickly learnt dataset (3 colour classes x 30 images at 32x32)."""

    images: Path
    ingest: str
    transform: str
    train: str


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """Colour-class images through ingest, transform and a short training run, once per session."""
    from components.train.run import run_training
    from components.transform.run import run_transform

    root = tmp_path_factory.mktemp("tiny")
    write_colour_classes(root / "images", per_class=30)
    config = make_config("transform.image_size=32", "train.epochs=4", "train.batch_size=16",
                         "train.tensorboard_images=0")
    ingest = run_ingest(str(root / "images"), str(root / "ingest"), config)
    transform = run_transform(ingest.output, str(root / "transform"), config)
    train = run_training(transform.output, str(root / "train"), config)
    return TinyRun(root / "images", ingest.output, transform.output, train.output)


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory) -> str:
    """The tiny run's model exported (version 1 of model `tiny`); returns the version directory."""
    from components.export.run import run_export

    base = tmp_path_factory.mktemp("models") / "tiny"
    return run_export(tiny_run.train, tiny_run.transform, str(base), make_config("export.warmup_requests=3")).output


@pytest.fixture(scope="session")
def worse_export(tiny_run, tmp_path_factory) -> str:
    """A certainly worse model of the tiny run, exported: its classifier answers the first class for every
    image, so its accuracy is that class's share of a split (below 1 on any split of several classes),
    whatever training reached."""
    import numpy as np
    import tf_keras as keras

    from components.artifacts import MODEL_DIR
    from components.export.run import run_export

    root = tmp_path_factory.mktemp("worse")
    train = shutil.copytree(tiny_run.train, root / "train")
    model = keras.models.load_model(str(train / MODEL_DIR), compile=False)
    classifier = model.get_layer("probabilities")
    kernel, bias = classifier.get_weights()
    classifier.set_weights([np.zeros_like(kernel), np.eye(len(bias), dtype=bias.dtype)[0] * 10])
    model.save(str(train / MODEL_DIR))
    config = make_config("export.tflite=[]", "export.warmup_requests=1")
    return run_export(str(train), tiny_run.transform, str(root / "models" / "tiny"), config).output


@pytest.fixture(scope="session")
def mixed_ingest(mixed_tree, tmp_path_factory) -> IngestResult:
    output = tmp_path_factory.mktemp("mixed-ingest") / "out"
    return run_ingest(str(mixed_tree.root), str(output), make_config("ingest.max_pixels=4000000"))


@pytest.fixture(scope="session")
def builds() -> dict[str, list[dict]]:
    """What `kustomize build` makes of every kustomization in infra/, by its name in BUILD_DIRS."""
    return {name: build(path) for name, path in BUILD_DIRS.items()}
