"""CLI: python -m components.batch_predict --model M --input IN --output DIR [--format F] [beam options]."""

from __future__ import annotations

import sys

from components import cli
from components.config import BatchPredictConfig
from components.stage_runner import run_stage


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(
        "python -m components.batch_predict",
        "Score images in batch with an exported model (SavedModel directory, models:/NAME@alias or "
        "models:/NAME/VERSION from the MLflow registry) or a TF Serving endpoint (http://host:8501/v1/models/NAME, "
        "grpc://host:8500/NAME), with Apache Beam RunInference. Arguments not listed here are passed to Beam "
        "(e.g. --project, --region, --temp_location).")
    parser.add_argument("--model", required=True,
                        help="BASE/NAME[/<version>], models:/NAME@ALIAS, models:/NAME/VERSION, "
                        "http(s)://host:port/v1/models/NAME[/versions/N|/labels/L] or grpc://host:port/NAME")
    cli.add_beam_stage_arguments(parser, "glob of image files, a directory, a CSV of URIs (first column) or an ingest "
                             "output directory")
    parser.add_argument("--format", choices=BatchPredictConfig.FORMATS,
                        help="prediction file format (default: batch_predict.format, jsonl)")
    parser.add_argument("--split", action="append", default=[], choices=["train", "valid", "test"],
                        help="ingest input only: score these splits (repeatable; default: all)")
    parser.add_argument("--labels", help="labels.txt with the class names in id order, for the top-k labels of an "
                        "endpoint (default for a SavedModel: its assets/labels.txt)")
    args, beam_args = parser.parse_known_args(argv)
    if not args.model.startswith("models:/"):
        cli.require_path(parser, args.model, "--model", "an exported SavedModel (BASE/NAME[/<version>]), models:/... "
                         "or a serving endpoint URL")
    cli.require_path(parser, args.input, "--input", "image files (a glob), a directory, a CSV or an ingest output")
    cli.start_logging(args)
    config = cli.config_from_args(parser, args)
    from components.batch_predict.run import BatchPredictError, EndpointError, run_batch_predict

    return run_stage(
        "batch_predict",
        lambda: run_batch_predict(args.model, args.input, args.output, config, output_format=args.format,
                                  splits=args.split, labels=args.labels, runner=args.runner, beam_args=beam_args,
                                  overwrite=args.overwrite).output,
        config, (BatchPredictError, EndpointError, OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
