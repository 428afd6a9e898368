"""Command-line arguments shared by the entry points: configuration and Beam stage flags, `--verbose`, and the
usage errors they exit with (one line, exit status 2, before any heavy import)."""

from __future__ import annotations

import argparse
import os
from typing import NoReturn

from components.config import Config, ConfigError, load_config
from components.logging_setup import configure_logging

USAGE_ERROR = 2  # argparse's exit status for a bad command line


class HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help, unless it has none (None, False, an empty list) or the help
    already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if (not action.option_strings or "default" in text or default is None or default is False
                or default == [] or default is argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An entry point's parser: its description, defaults in the help, and `--verbose`."""
    result = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    add_verbose_argument(result)
    return result


def add_subcommand(commands: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand's parser: `help` is its line in the parent's help and its own description; `--verbose`."""
    result = commands.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    add_verbose_argument(result)
    return result


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """Adds `--verbose`: DEBUG logging, and the traceback of an error (without it: one line)."""
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log at DEBUG level and show the traceback of an error")


def start_logging(args: argparse.Namespace) -> None:
    """Configures logging for the parsed command line (`--verbose` or not)."""
    configure_logging(verbose=getattr(args, "verbose", False))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `--config FILE` and repeatable `--set section.key=value`."""
    parser.add_argument("--config", help="YAML or JSON configuration file (any tf.io.gfile path)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one configuration value, e.g. --set ingest.min_side=64 (repeatable)",
    )


def add_beam_stage_arguments(parser: argparse.ArgumentParser, input_help: str) -> None:
    """The arguments every Beam stage takes: --input, --output, --runner, --overwrite, config.

    Parse with `parse_known_args`: what is left over are Beam pipeline options, passed on unchanged.
    """
    parser.add_argument("--input", required=True, help=input_help)
    parser.add_argument("--output", required=True, help="output directory (any tf.io.gfile path)")
    parser.add_argument("--runner", help="Beam runner: DirectRunner (default), DataflowRunner, FlinkRunner, SparkRunner")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    add_config_arguments(parser)


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """Loads the configuration named by the parsed arguments; a bad one exits with a clear message."""
    if args.config:
        require_path(parser, args.config, "--config", "a YAML or JSON file")
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as e:
        usage_error(parser, str(e))


def require_path(parser: argparse.ArgumentParser, path: str, flag: str, expected: str) -> None:
    """Exits with a usage error when `path` (a local path; remote URIs such as gs://... and globs are not
    checked here) does not exist; the message names the flag, the path and what it should be."""
    if "://" not in path and not any(c in path for c in "*?[") and not os.path.exists(path):
        usage_error(parser, f"{flag} {path} does not exist; expected {expected}")


def usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Exits with status 2 and one line `PROG: error: MESSAGE`."""
    parser.exit(USAGE_ERROR, f"{parser.prog}: error: {message}\n")
