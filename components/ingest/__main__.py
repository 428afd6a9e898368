"""CLI: python -m components.ingest --input PATH --output DIR [--runner R] [beam options]."""

from __future__ import annotations

import sys

from components import cli
from components.ingest.layout import EXPECTED_LAYOUT, local_input_problem
from components.stage_runner import run_stage


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(
        "python -m components.ingest",
        "Validate, deduplicate, split and shard images into TFRecords with Apache Beam. "
        "Arguments not listed here are passed to Beam (e.g. --project, --region, --temp_location).",
    )
    cli.add_beam_stage_arguments(parser, f"the images: {EXPECTED_LAYOUT} (any tf.io.gfile path, e.g. gs://)")
    args, beam_args = parser.parse_known_args(argv)
    problem = local_input_problem(args.input)
    if problem:
        cli.usage_error(parser, f"--input {problem}")
    cli.start_logging(args)
    config = cli.config_from_args(parser, args)
    from components.ingest.run import IngestError, run_ingest  # TensorFlow loads after the arguments are checked

    return run_stage("ingest", lambda: run_ingest(args.input, args.output, config, runner=args.runner,
                                                  beam_args=beam_args, overwrite=args.overwrite).output,
                     config, (IngestError, OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
