"""MLflow tracking: every pipeline run, stage output and model version.

A pipeline run is a parent MLflow run holding the whole configuration; each finished stage output
is logged as a child run (params from its manifest, and the metrics, documents and files its stage
declares: `stage_log.StageLog`, looked up by `stages`). An exported SavedModel is logged as a pyfunc
model (`pyfunc_model.ImageClassifier`) and registered as a new version of `tracking.registered_model`;
a blessed version gets the alias `champion`.

Modules: `client` (the MLflow client, experiment, keys and values), `runs` (pipeline, stage and
benchmark runs), `stage_log` and `stages` (what a stage output logs), `registry` (model versions
and the champion), `pyfunc_model` (the served model as a pyfunc model), `__main__` (the CLI that
starts and finishes pipeline runs).
"""
