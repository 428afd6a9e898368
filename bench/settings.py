"""What one `python -m bench` run measures with: where its data is cached, how many demo images, how
many timed repeats and how long the timed serving loops run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BenchSettings:
    """The sizes and durations of a benchmark run (the defaults are `make bench`'s)."""

    data_dir: Path = BENCH_DIR / "data"  # demo data and models, built once and reused (bench.fixtures)
    images: int = 3000  # demo images for ingest (and 3x as many) and batch scoring
    train_images: int = 1500  # demo images that transform, training and every benchmark model use
    repeats: int = 2  # timed runs of each variant; the fastest (or the median) counts
    seconds: float = 6.0  # each timed serving variant, after its warm-up
    load_seconds: float = 60.0  # the serving load test

    def __post_init__(self) -> None:
        if min(self.images, self.train_images, self.repeats) < 1 or min(self.seconds, self.load_seconds) <= 0:
            raise ValueError(f"benchmark sizes and durations must be positive: {self}")
