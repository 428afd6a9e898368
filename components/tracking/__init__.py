"""MLflow tracking: every pipeline run, stage output and model version.

A pipeline run is a parent MLflow run holding the whole configuration, its datasets, model and
headline metrics, in an experiment of MLflow's model-training kind; each finished stage output is
logged as a child run spanning the stage's run (params from its manifest, the splits it used as
dataset inputs, and the metrics, documents and files its stage declares: `stage_log.StageLog`,
looked up by `stages`). An exported SavedModel is logged as a pyfunc LoggedModel
(`pyfunc_model.ImageClassifier`) and registered as a new version of `tracking.registered_model`; a
blessed version gets the alias `champion`.

Modules: `client` (the MLflow client, experiment, UI pages, keys and values), `runs` (pipeline,
stage and benchmark runs), `datasets` (splits as dataset inputs), `stage_log` and `stages` (what a
stage output logs), `registry` (model versions and the champion), `pyfunc_model` (the served model
as a pyfunc model), `__main__` (the CLI that starts and finishes pipeline runs).
"""
