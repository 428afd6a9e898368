"""`python -m bench` (what `make bench` runs) from an empty data directory at the smallest sizes: every
benchmark builds its demo data and models (bench.fixtures) and writes a row per variant with numbers into
results.json and results.md, so that the benchmarks cannot rot. No timing is asserted: on a shared machine
the numbers of a run this small say nothing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every code path at the smallest sizes: two images per class to score and ingest (three times as
# many for the marginal rate), ten per class to transform and train on, one repeat, short serving loops.
SMALL = ["--images", "10", "--train-images", "50", "--repeats", "1", "--seconds", "1", "--load-seconds", "1"]
# Rows per benchmark: the machine's capacity; ingest's four variants, the baseline and the default on
# 3x the images and the marginal rate; a transform row and four training rows per model (two models);
# serving's three in-process rows, 2 transports x 2 client counts x batching off/on, the load and the
# 2 x 2 variants with every request logged; the batch scoring baseline and its three in-process and two remote variants; three search variants.
ROWS = {"machine": 1, "ingest": 7, "transform": 2, "train": 8, "serving": 16, "batch_predict": 6, "tune": 3}
RESULT_FILES = [ROOT / "bench" / "results.json", ROOT / "bench" / "results.md"]
NUMBERS = ("images", "seconds", "images_per_s", "mb_per_s", "vs_baseline", "p50_ms", "p99_ms")


@pytest.mark.slow
def test_every_benchmark_runs_from_an_empty_cache(tmp_path):
    data, results = tmp_path / "data", tmp_path / "results"
    checkout_results = [(p, p.stat().st_mtime_ns) for p in RESULT_FILES if p.exists()]
    command = [sys.executable, "-m", "bench", "--data", str(data), "--results", str(results), *SMALL]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3000)
    assert run.returncode == 0, run.stderr[-5000:]
    assert [(p, p.stat().st_mtime_ns) for p in RESULT_FILES if p.exists()] == checkout_results

    rows = json.loads((results / "results.json").read_text())["rows"]
    counts = {name: sum(row["benchmark"] == name for row in rows) for name in ROWS}
    assert counts == ROWS and len(rows) == sum(ROWS.values()), [(r["benchmark"], r["variant"]) for r in rows]
    assert len({(row["benchmark"], row["variant"]) for row in rows}) == len(rows)
    ingest_variants = [row["variant"] for row in rows if row["benchmark"] == "ingest"]
    assert sum(v.endswith(", 3x the images") for v in ingest_variants) == 2 and ingest_variants[-1].endswith(
        ", marginal rate")
    assert [row["variant"].startswith("beam -> endpoint") for row in rows if row["benchmark"] == "batch_predict"] \
        == [False] * 4 + [True] * 2  # the project's server was there for the remote variants
    for row in rows:
        numbers = {key: row[key] for key in NUMBERS if key in row}
        assert numbers, row
        assert all(isinstance(n, (int, float)) and math.isfinite(n) and n >= 0 for n in numbers.values()), row
        assert row.get("images_per_s", 1) > 0, row
    load = next(row for row in rows if row["variant"].startswith("load:"))
    assert load["errors"] == 0 and load["images"] > 0

    table = (results / "results.md").read_text().splitlines()
    assert len(table) == 2 + len(rows)
    for line, row in zip(table[2:], rows):
        assert line.startswith(f"| {row['benchmark']} | {row['variant']} | "), (line, row)
    # The demo data and both benchmark models were built under --data.
    assert sorted(p.name for p in data.glob("demo-*")) == ["demo-seed0-10", "demo-seed0-2", "demo-seed0-6"]
    assert len(list(data.glob("models/*/*/1/saved_model.pb"))) == 2
