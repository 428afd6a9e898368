"""CLI: python -m components.ingest --input PATH --output DIR [--runner R] [beam options]."""

from __future__ import annotations

import argparse
import sys

from components.cli import add_beam_stage_arguments, config_from_args
from components.ingest.run import IngestError, run_ingest
from components.logging_setup import configure_logging
from components.stage_runner import run_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.ingest",
        description="Validate, deduplicate, split and shard images into TFRecords with Apache Beam. "
        "Arguments not listed here are passed to Beam (e.g. --project, --region, --temp_location).",
    )
    add_beam_stage_arguments(parser, "class-folder directory or CSV (uri,label | split,uri,label)")
    args, beam_args = parser.parse_known_args(argv)
    configure_logging()
    config = config_from_args(parser, args)
    return run_stage("ingest", lambda: run_ingest(args.input, args.output, config, runner=args.runner,
                                                  beam_args=beam_args, overwrite=args.overwrite).output,
                     config, (IngestError, OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
