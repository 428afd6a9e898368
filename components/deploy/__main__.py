"""CLI: python -m components.deploy [push] --model EXPORT_DIR --model-base-path BASE --name NAME
        python -m components.deploy promote|rollback --model-base-path BASE --name NAME"""

from __future__ import annotations

import logging
import sys

from components import cli

logger = logging.getLogger("components.deploy")

COMMANDS = ("push", "promote", "rollback")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "push")  # `python -m components.deploy --model ...` pushes
    parser = cli.parser("python -m components.deploy",
                        "Deploy SavedModels to a TF Serving model base path: push a blessed export (the command "
                        "when none is named), promote its canary, or roll back.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    push = cli.add_subcommand(commands, "push", "copy a blessed export in as the stable (or canary) version")
    push.add_argument("--model", required=True, help="exported SavedModel (BASE/NAME/<version> or BASE/NAME)")
    push.add_argument("--evaluation", help="the evaluate output holding the model's blessing")
    push.add_argument("--force", action="store_true", help="deploy although the model is not blessed (recorded)")
    push.add_argument("--canary", action="store_true", help="serve it as `canary` next to the stable version")
    push.add_argument("--version", type=int, help="the version number to serve it as, e.g. the export's own "
                      "(default: the next free one); refused when it is taken")
    push.add_argument("--if-blessed", action="store_true",
                      help="an unblessed model is skipped (exit 0) instead of refused (exit 1)")
    promote = cli.add_subcommand(commands, "promote", "make the canary the stable version")
    rollback = cli.add_subcommand(commands, "rollback", "drop the canary, or go back to the previous stable version")
    for command in (push, promote, rollback):
        command.add_argument("--model-base-path", required=True, help="TF Serving's model base path (holds "
                             "models.config and one directory per model)")
        command.add_argument("--name", required=True, help="model name, as clients address it")
        command.add_argument("--server", help="REST address of the TF Serving that polls this base path "
                             "(http://host:8501): labels move only once it has loaded the new version")
        cli.add_config_arguments(command)
    args = parser.parse_args(argv)
    if args.command == "push":
        cli.require_path(parser, args.model, "--model", "an exported SavedModel (BASE/NAME/<version> or BASE/NAME)")
        if args.evaluation:
            cli.require_path(parser, args.evaluation, "--evaluation", "an evaluate output directory")
    cli.start_logging(args)
    config = cli.config_from_args(parser, args)
    from components.artifacts import saved_model_dir
    from components.deploy import run  # TensorFlow loads after the arguments are checked

    try:
        if args.command == "push" and args.if_blessed:
            blessing = run.blessing_of(saved_model_dir(args.model), args.evaluation)
            if not blessing["blessed"]:
                logger.info("Not deploying %s: not blessed (%s); what is deployed stays", args.model,
                            "; ".join(blessing["reasons"]))
                return 0
        if args.command == "push":
            run.push(args.model, args.model_base_path, args.name, config, evaluation=args.evaluation,
                     force=args.force, canary=args.canary, server=args.server, version=args.version)
        else:
            getattr(run, args.command)(args.model_base_path, args.name, server=args.server)
    except (OSError, ValueError) as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
