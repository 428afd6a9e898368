"""`python -m components.tracking`: start a pipeline run and print its id, or finish one.

    python -m components.tracking start [--run-name NAME] [--tag KEY=VALUE ...]
    python -m components.tracking finish RUN_ID [--status FINISHED|FAILED|KILLED]

The id printed by `start` goes into $CVPIPE_MLFLOW_PARENT_RUN_ID, so that the stage CLIs log their
outputs as its children.
"""

from __future__ import annotations

import os

from components import cli


def main(argv: list[str] | None = None) -> int:
    """CLI: `start` prints a new pipeline run's id (for $CVPIPE_MLFLOW_PARENT_RUN_ID); `finish RUN_ID` ends it."""
    parser = cli.parser("python -m components.tracking", "Start or finish the MLflow parent run of a pipeline run "
                        "(the id `start` prints goes into $CVPIPE_MLFLOW_PARENT_RUN_ID).")
    commands = parser.add_subparsers(dest="command", required=True)
    start = cli.add_subcommand(commands, "start", "create a pipeline run and print its id")
    start.add_argument("--run-name", help="the run's name in MLflow")
    start.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag (repeatable)")
    finish = cli.add_subcommand(commands, "finish", "end a pipeline run")
    finish.add_argument("run_id", help="the id `start` printed")
    finish.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED"],
                        help="the run's final status")
    for command in (start, finish):
        cli.add_config_arguments(command)
    args = parser.parse_args(argv)
    cli.start_logging(args)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout carries the run id
    config = cli.config_from_args(parser, args)
    from components.tracking.runs import finish_run, start_pipeline_run  # MLflow loads after the arguments

    if args.command == "start":
        tags = dict(tag.partition("=")[::2] for tag in args.tag)
        print(start_pipeline_run(config, run_name=args.run_name, tags=tags))  # noqa: T201 (the command's output)
    else:
        finish_run(args.run_id, config, status=args.status)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
