"""Hyperparameter search over the train stage (KerasTuner here; the same space as a Katib Experiment)."""
