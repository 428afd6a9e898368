"""`python -m bench [--only NAME] [--images N]`: runs the benchmarks, prints a table, writes
bench/results.json and bench/results.md."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
from pathlib import Path

from bench import batch_predict, ingest, machine, serving, train
from components.cli import configure_logging
from components.config import load_config
from components.manifest import code_version

BENCHMARKS = {"ingest": ingest.run, "train": train.run, "serving": serving.run, "batch_predict": batch_predict.run}
HERE = Path(__file__).resolve().parent
logger = logging.getLogger("bench")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="run only these benchmarks")
    parser.add_argument("--images", type=int, default=3000, help="demo images per benchmark (default 3000)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each variant; the fastest counts")
    args = parser.parse_args()
    configure_logging()
    rows = machine.run()
    for name in args.only or sorted(BENCHMARKS):
        logger.info("benchmark %s: %d images, %d repeats", name, args.images, args.repeats)
        rows += BENCHMARKS[name](HERE / "data", args.images, args.repeats)
    results = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "code_version": code_version(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rows": rows,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2))
    table = _table(rows)
    (HERE / "results.md").write_text(table + "\n")
    print(table)  # the table is the command's output
    config = load_config()
    if config.tracking.enabled:
        from components.tracking.runs import log_benchmark

        log_benchmark(results, [str(HERE / "results.json"), str(HERE / "results.md")], config)


def _table(rows: list[dict]) -> str:
    columns = ["benchmark", "variant", "images", "seconds", "images_per_s", "mb_per_s", "vs_baseline", "note"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
