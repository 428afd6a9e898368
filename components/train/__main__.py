"""CLI: python -m components.train --transformed DIR --output DIR [--model NAME] [hyperparameters]."""

from __future__ import annotations

import sys

from components import cli
from components.config import DISTRIBUTE, MODELS, AugmentConfig, TrainConfig, meaning_of
from components.stage_runner import run_stage

# Flags that set one train.* value each, for the common hyperparameters: (type, choices).
_FLAGS = {
    "model": (str, MODELS), "weights": (str, None), "batch_size": (int, None), "epochs": (int, None),
    "learning_rate": (float, None), "lr_schedule": (str, ("constant", "cosine", "exponential")),
    "l1": (float, None), "l2": (float, None), "dropout": (float, None), "hidden_units": (int, None),
    "fine_tune_fraction": (float, None), "fine_tune_epochs": (int, None), "seed": (int, None),
    "distribute": (str, DISTRIBUTE), "num_training_examples": (int, None),
    "checkpoint_every_steps": (int, None), "crop_ratio": (float, None),
}


def _key(name: str) -> tuple[type, str]:
    """The configuration section holding the flag `name`, and its `train.` key."""
    return (AugmentConfig, f"train.augment.{name}") if name == "crop_ratio" else (TrainConfig, f"train.{name}")


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m components.train", "Train a Keras model on a transform output. The "
                        "hyperparameter flags set one train.* configuration value each (as --set does).")
    parser.add_argument("--transformed", required=True, help="transform output directory")
    parser.add_argument("--output", required=True, help="training output directory (rerun the same command to resume)")
    parser.add_argument("--overwrite", action="store_true", help="train again over a finished run")
    parser.add_argument("--tuning", metavar="DIR", help="a finished search (python -m components.tune): train with "
                        "its best hyperparameters (over --config and the flags) and record the search in "
                        "training.json")
    for name, (kind, choices) in _FLAGS.items():
        section, key = _key(name)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, choices=choices,
                            help=f"{meaning_of(section, name)} ({key}, default: {getattr(section(), name)})")
    cli.add_config_arguments(parser)
    args = parser.parse_args(argv)
    cli.require_path(parser, args.transformed, "--transformed", "a transform output directory")
    for name in _FLAGS:
        value = getattr(args, name)
        if value is not None:
            args.overrides.append(f"{_key(name)[1]}={value}")
    cli.start_logging(args)
    config = cli.config_from_args(parser, args)
    best = None
    if args.tuning:
        from components.tune.best import read_best_trial

        try:
            best = read_best_trial(args.tuning)
        except (OSError, ValueError) as e:
            cli.usage_error(parser, f"--tuning {e}")
        config = best.apply(config)
    from components.train.run import run_training  # TensorFlow loads after the arguments are checked

    def train() -> str | None:
        result = run_training(args.transformed, args.output, config, overwrite=args.overwrite,
                              tuning=best.record() if best else None)
        return result.output if result.chief else None

    return run_stage("train", train, config)


if __name__ == "__main__":
    sys.exit(main())
