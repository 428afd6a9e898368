"""`python -m bench [--only NAME] [--data DIR] [--results DIR] [--images N] ...`: runs the benchmarks, prints a
table, writes results.json and results.md (into bench/ unless --results says otherwise)."""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Sequence

from bench import machine
from bench.settings import BENCH_DIR, BenchSettings
from components import cli
from components.config import load_config
from components.manifest import code_version

# The benchmarks, each the module bench.NAME with `run(settings) -> rows`; imported once the arguments are checked
# (they load TensorFlow).
BENCHMARKS = ("batch_predict", "ingest", "serving", "train", "tune")
RESULT_FILES = ("results.json", "results.md")
logger = logging.getLogger("bench")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; its defaults are `make bench`'s (BenchSettings' defaults)."""
    defaults = BenchSettings()
    parser = cli.parser("python -m bench", "Run the benchmarks (ingest, training, serving, batch scoring, tuning), print a "
                        "table and write results.json and results.md; the results are logged to MLflow when "
                        "tracking is on.")
    parser.add_argument("--only", choices=BENCHMARKS, action="append",
                        help="run only this benchmark (repeatable; default: all)")
    parser.add_argument("--data", type=Path, default=defaults.data_dir,
                        help="where demo data and models are built once and reused (default bench/data)")
    parser.add_argument("--results", type=Path, default=BENCH_DIR,
                        help="where results.json and results.md are written (default bench/)")
    parser.add_argument("--images", type=int, default=defaults.images,
                        help=f"demo images for ingest and batch scoring (default {defaults.images})")
    parser.add_argument("--train-images", type=int, default=defaults.train_images,
                        help=f"demo images for transform, training and the benchmark models "
                             f"(default {defaults.train_images})")
    parser.add_argument("--repeats", type=int, default=defaults.repeats,
                        help=f"timed runs of each variant; the fastest counts (default {defaults.repeats})")
    parser.add_argument("--seconds", type=float, default=defaults.seconds,
                        help=f"each timed serving variant (default {defaults.seconds:g})")
    parser.add_argument("--load-seconds", type=float, default=defaults.load_seconds,
                        help=f"the serving load test (default {defaults.load_seconds:g})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = BenchSettings(data_dir=args.data, images=args.images, train_images=args.train_images,
                             repeats=args.repeats, seconds=args.seconds, load_seconds=args.load_seconds)
    cli.start_logging(args)
    rows = machine.run()
    for name in args.only or BENCHMARKS:
        logger.info("benchmark %s: %s", name, settings)
        rows += importlib.import_module(f"bench.{name}").run(settings)
    results = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "code_version": code_version(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rows": rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    json_file, table_file = (args.results / name for name in RESULT_FILES)
    json_file.write_text(json.dumps(results, indent=2))
    table = _table(rows)
    table_file.write_text(table + "\n")
    print(table)  # the table is the command's output
    config = load_config()
    if config.tracking.enabled:
        from components.tracking.runs import log_benchmark

        log_benchmark(results, [str(json_file), str(table_file)], config)


def _table(rows: list[dict]) -> str:
    columns = ["benchmark", "variant", "images", "seconds", "images_per_s", "mb_per_s", "vs_baseline", "note"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
