"""Command-line arguments shared by the stage CLIs: the configuration flags and the Beam stage flags."""

from __future__ import annotations

import argparse

from components.config import Config, ConfigError, load_config


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
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as e:
        parser.error(str(e))
