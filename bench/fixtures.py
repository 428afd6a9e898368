"""The benchmarks' inputs, built once and cached under the data directory: demo image trees, their
ingest and transform outputs, and trained, exported models.

A demo tree is generated into a staging directory and renamed into place, and stage outputs are
complete when their manifest.json is (the stages stage their own outputs), so a killed run leaves
nothing that is reused half-built. What no benchmark times runs its Beam jobs in this process
(`UNTIMED`): the outputs are the same, without the start-up of worker processes.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.artifacts import MANIFEST_FILE, TransformStats, version_directories
from components.config import load_config
from components.demo_data import CLASSES, generate_demo_dataset
from components.export.run import run_export
from components.ingest.run import run_ingest
from components.train.run import run_training
from components.transform.run import run_transform

SEED = 0
UNTIMED = ("beam.direct_running_mode=in_memory", "beam.direct_num_workers=1")


def demo_per_class(images: int) -> int:
    """Images per class of the smallest demo dataset with at least `images` images."""
    return -(-images // len(CLASSES))


def demo_images(data_dir: Path, images: int) -> Path:
    """The demo dataset (seed 0) of `demo_per_class(images)` images per class, generated once."""
    path = data_dir / f"demo-seed{SEED}-{demo_per_class(images)}"
    if not path.is_dir():
        data_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=data_dir))
        try:
            generate_demo_dataset(staging, seed=SEED, per_class=demo_per_class(images))
            staging.rename(path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return path


def image_files(directory: Path) -> list[str]:
    """Every file below `directory`, sorted: the inputs of a run over a demo tree."""
    return sorted(str(p) for p in directory.rglob("*") if p.is_file())


def _finished(directory: Path) -> bool:
    return (directory / MANIFEST_FILE).is_file()


def ingested(data_dir: Path, images: int) -> str:
    """The ingest output of `demo_images(data_dir, images)` (default configuration), built once."""
    output = data_dir / f"ingest-seed{SEED}-{demo_per_class(images)}"
    if not _finished(output):
        run_ingest(str(demo_images(data_dir, images)), str(output), load_config(overrides=list(UNTIMED)),
                   overwrite=True)
    return str(output)


@dataclass(frozen=True)
class Transformed:
    """A transform output of the demo data and its statistics."""

    output: str
    stats: TransformStats


def transformed(data_dir: Path, images: int, image_size: int, *, timed: bool = False) -> Transformed:
    """The demo data ingested and transformed at `image_size`, built once; with `timed`, transformed
    again in the default configuration, its stats timing this run."""
    output = data_dir / f"transform-seed{SEED}-{demo_per_class(images)}-{image_size}"
    if timed or not _finished(output):
        overrides = [f"transform.image_size={image_size}", *([] if timed else UNTIMED)]
        run_transform(ingested(data_dir, images), str(output), load_config(overrides=overrides), overwrite=True)
    return Transformed(str(output), TransformStats.read(str(output)))


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: `model` trained `epochs` on the demo data at `image_size`, exported as `name`."""

    name: str
    image_size: int
    epochs: int
    model: str = "small_cnn"


@dataclass(frozen=True)
class ExportedModel:
    """An exported benchmark model: its base path (BASE/NAME, what a server serves) and version directory."""

    base: Path
    version_dir: Path


def exported_model(data_dir: Path, spec: ModelSpec, images: int) -> ExportedModel:
    """`spec` trained on `demo_images(data_dir, images)` and exported (built once, then reused)."""
    root = data_dir / "models" / f"{spec.model}-{spec.image_size}px-{spec.epochs}epochs-{demo_per_class(images)}"
    base = root / spec.name
    finished = {number: Path(v) for number, v in version_directories(str(base)).items() if _finished(Path(v))}
    if finished:
        return ExportedModel(base, finished[max(finished)])
    transform = transformed(data_dir, images, spec.image_size)
    config = load_config(overrides=[f"train.model={spec.model}", f"train.epochs={spec.epochs}",
                                    "train.tensorboard_images=0", "export.tflite=[]", "export.warmup_requests=1"])
    train = run_training(transform.output, str(root / "train"), config, overwrite=True)
    return ExportedModel(base, Path(run_export(train.output, transform.output, str(base), config).output))
