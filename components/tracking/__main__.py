"""`python -m components.tracking`: start a pipeline run and print its id, or finish one.

    python -m components.tracking start [--run-name NAME] [--tag KEY=VALUE ...]
    python -m components.tracking finish RUN_ID [--status FINISHED|FAILED|KILLED]

The id printed by `start` goes into $CVPIPE_MLFLOW_PARENT_RUN_ID, so that the stage CLIs log their
outputs as its children.
"""

from __future__ import annotations

import argparse
import os

from components.cli import add_config_arguments, config_from_args
from components.logging_setup import configure_logging
from components.tracking.runs import finish_run, start_pipeline_run


def main(argv: list[str] | None = None) -> int:
    """CLI: `start` prints a new pipeline run's id (for $CVPIPE_MLFLOW_PARENT_RUN_ID); `finish RUN_ID` ends it."""
    parser = argparse.ArgumentParser(prog="python -m components.tracking",
                                     description="Start or finish the MLflow parent run of a pipeline run.")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="create a pipeline run and print its id")
    start.add_argument("--run-name", help="the run's name in MLflow")
    start.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag (repeatable)")
    finish = commands.add_parser("finish", help="end a pipeline run")
    finish.add_argument("run_id")
    finish.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED"])
    for command in (start, finish):
        add_config_arguments(command)
    args = parser.parse_args(argv)
    configure_logging()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout carries the run id
    config = config_from_args(parser, args)
    if args.command == "start":
        tags = dict(tag.partition("=")[::2] for tag in args.tag)
        print(start_pipeline_run(config, run_name=args.run_name, tags=tags))  # noqa: T201 (the command's output)
    else:
        finish_run(args.run_id, config, status=args.status)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
