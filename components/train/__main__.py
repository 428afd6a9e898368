"""CLI: python -m components.train --transformed DIR --output DIR [--model NAME] [hyperparameters]."""

from __future__ import annotations

import argparse
import sys

from components.cli import add_config_arguments, config_from_args
from components.config import DISTRIBUTE, MODELS
from components.logging_setup import configure_logging
from components.stage_runner import run_stage

# Flags that set one train.* value each, for the common hyperparameters.
_FLAGS = {
    "model": (str, MODELS), "weights": (str, None), "batch_size": (int, None), "epochs": (int, None),
    "learning_rate": (float, None), "lr_schedule": (str, ("constant", "cosine", "exponential")),
    "l1": (float, None), "l2": (float, None), "dropout": (float, None), "hidden_units": (int, None),
    "fine_tune_fraction": (float, None), "fine_tune_epochs": (int, None), "seed": (int, None),
    "distribute": (str, DISTRIBUTE), "num_training_examples": (int, None),
    "checkpoint_every_steps": (int, None), "crop_ratio": (float, None),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.train",
                                     description="Train a Keras model on a transform output.")
    parser.add_argument("--transformed", required=True, help="transform output directory")
    parser.add_argument("--output", required=True, help="training output directory (rerun the same command to resume)")
    parser.add_argument("--overwrite", action="store_true", help="train again over a finished run")
    for name, (kind, choices) in _FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, choices=choices,
                            help=f"train.{'augment.' if name == 'crop_ratio' else ''}{name}")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    for name in _FLAGS:
        value = getattr(args, name)
        if value is not None:
            args.overrides.append(f"train.{'augment.' if name == 'crop_ratio' else ''}{name}={value}")
    configure_logging()
    config = config_from_args(parser, args)
    from components.train.run import run_training  # TensorFlow loads after the arguments are checked


    def train() -> str | None:
        result = run_training(args.transformed, args.output, config, overwrite=args.overwrite)
        return result.output if result.chief else None

    return run_stage("train", train, config)


if __name__ == "__main__":
    sys.exit(main())
