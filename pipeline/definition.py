"""The cvpipe pipeline: the stages wired as one kfp v2 pipeline. No stage logic lives here.

    configure, start_run ─> ingest ─> transform ─> tune ─> train ─> export ─> evaluate ─> register
                                                                          └─ if blessed ─> deploy
                                                                               └─ if batch_input ─> batch_predict
    finish_run: the exit handler, always (it ends the MLflow run with the pipeline's state)
    tune searches only with the `tune` parameter (tune.enabled); off, it passes train nothing to apply

`build_pipeline(config)` makes the pipeline for one compiled configuration: it is the `config`
parameter's default and the typed parameters' defaults (see pipeline.parameters). No
`from __future__ import annotations` here: kfp reads the pipeline function's annotations as types.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from kfp import dsl

from components.config import Config
from pipeline import components as steps
from pipeline.image import GPU_IMAGE, check_pinned
from pipeline.parameters import parameter_defaults

PIPELINE_NAME = "cvpipe"


@dataclass(frozen=True)
class Resources:
    """Kubernetes requests and limits of one step (CPU cores, memory with unit)."""

    cpu: str
    memory: str


# Per-step requests = limits on a cluster; kfp.local ignores them.
RESOURCES = {
    "configure": Resources("0.5", "1G"),
    "start-run": Resources("1", "2G"),
    "finish-run": Resources("0.5", "2G"),
    "ingest": Resources("2", "4G"),
    "track-stage": Resources("0.5", "2G"),
    "transform": Resources("2", "8G"),
    "tune": Resources("4", "16G"),
    "train": Resources("4", "16G"),
    "export": Resources("2", "8G"),
    "evaluate": Resources("2", "8G"),
    "register": Resources("1", "4G"),
    "deploy": Resources("2", "8G"),
    "batch-predict": Resources("2", "8G"),
}
# Steps whose output is a function of their content-derived inputs: they may be served from cache.
CACHED_STEPS = frozenset({"ingest", "transform"})
# A retried train or tune step resumes from its checkpoints (BackupAndRestore; the search's oracle state)
# where its artifact path outlives the pod (kfp.local, GCS FUSE on Vertex AI); elsewhere it starts over.
TRAIN_RETRIES = 2
TRAINING_STEPS = ("tune", "train")  # retried, and on the GPU image with --gpus


@dataclass(frozen=True)
class PlatformOptions:
    """Compile-time choices for a cluster: images, GPUs, volumes and credentials (kfp-kubernetes)."""

    image: str | None = None  # replaces pipeline.image.PROJECT_IMAGE for every step
    gpus: int = 0  # GPUs for the tune and train steps, which then run GPU_IMAGE (or gpu_image)
    gpu_image: str | None = None
    accelerator_type: str = "nvidia.com/gpu"
    pvcs: dict[str, str] = field(default_factory=dict)  # PVC name -> mount path, on every step
    gcp_secret: str | None = None  # Secret with key.json: GOOGLE_APPLICATION_CREDENTIALS
    aws_secret: str | None = None  # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    mlflow_secret: str | None = None  # Secret with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD


GCP_SECRET_MOUNT = "/var/secrets/google"
AWS_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def code_fingerprint() -> str:
    """A hash of the stage code (the `components` package's Python files): part of the cached steps'
    cache keys, so changed code is never served from a cache filled by the old code under the same
    image tag."""
    root = Path(__file__).resolve().parent.parent / "components"
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root)}\n".encode() + path.read_bytes())
    return digest.hexdigest()


def build_pipeline(config: Config, platform: PlatformOptions = PlatformOptions()):
    """The cvpipe kfp pipeline, its parameters defaulting to `config`."""
    defaults = parameter_defaults(config)
    compiled_config = config.to_dict()
    code = code_fingerprint()

    def configure(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
        _configure_task(task, name, platform)
        return task

    @dsl.pipeline(name=PIPELINE_NAME, description="Images in, a served model out: ingest, transform, train, "
                  "export, evaluate, register, deploy if blessed, batch scoring.")
    def cvpipe(
        data_source: str,
        model_name: str = defaults["model_name"],
        serving_base_path: str = "/models",
        serving_address: str = "",
        batch_input: str = "",
        image_size: int = defaults["image_size"],
        model: str = defaults["model"],
        epochs: int = defaults["epochs"],
        batch_size: int = defaults["batch_size"],
        learning_rate: float = defaults["learning_rate"],
        tune: bool = defaults["tune"],
        tune_trials: int = defaults["tune_trials"],
        tune_algorithm: str = defaults["tune_algorithm"],
        min_accuracy: float = defaults["min_accuracy"],
        min_class_recall: float = defaults["min_class_recall"],
        max_accuracy_drop: float = defaults["max_accuracy_drop"],
        beam_runner: str = defaults["beam_runner"],
        beam_options: list = defaults["beam_options"],
        mlflow_tracking_uri: str = "",
        mlflow_run_id: str = "",
        config: dict = compiled_config,
    ):
        """`data_source`: class folders or a CSV (any tf.io.gfile path); `model_name`: the registered and
        served model's name; `serving_base_path`: TF Serving's model root; `serving_address`: a running
        server for a safe label move; `batch_input`: what to score after deploy ("": nothing,
        `split:test`: this run's test split); `mlflow_run_id`: an MLflow run reserved for this run (by
        `python -m pipeline retrain`); `tune`: search hyperparameters before train (`tune_trials` trials of
        `tune_algorithm`). The typed parameters are set on `config` and win over its values."""
        finish = configure(steps.finish_run(kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, mlflow_run_id=mlflow_run_id,
                                            config=config, mlflow_tracking_uri=mlflow_tracking_uri), "finish-run")
        with dsl.ExitHandler(finish, name="tracked-run"):
            settings = configure(steps.configure(
                config=config, model_name=model_name, image_size=image_size, model=model, epochs=epochs,
                batch_size=batch_size, learning_rate=learning_rate, tune=tune, tune_trials=tune_trials,
                tune_algorithm=tune_algorithm, min_accuracy=min_accuracy,
                min_class_recall=min_class_recall, max_accuracy_drop=max_accuracy_drop, beam_runner=beam_runner,
                beam_options=beam_options, mlflow_tracking_uri=mlflow_tracking_uri), "configure")
            resolved = settings.outputs["config"]
            start = configure(steps.start_run(data_source=data_source, config=resolved, mlflow_run_id=mlflow_run_id,
                                              kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                              kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER), "start-run")
            run_id = start.outputs["mlflow_run_id"]
            ingest = configure(steps.ingest(data_source=data_source, data_fingerprint=start.outputs["data_fingerprint"],
                                            code_fingerprint=code, config=settings.outputs["ingest_config"]), "ingest")
            records = ingest.outputs["records"]
            configure(steps.track_stage(stage="ingest", output=records, config=resolved, parent_run_id=run_id),
                      "track-stage").set_display_name("track-ingest")
            transform = configure(steps.transform(records=records, code_fingerprint=code,
                                                  config=settings.outputs["transform_config"]), "transform")
            transformed = transform.outputs["transformed"]
            configure(steps.track_stage(stage="transform", output=transformed, config=resolved, parent_run_id=run_id),
                      "track-stage").set_display_name("track-transform")
            search = configure(steps.tune(transformed=transformed, config=resolved, parent_run_id=run_id), "tune")
            train = configure(steps.train(transformed=transformed, tuning=search.outputs["tuning"], config=resolved,
                                          parent_run_id=run_id), "train")
            export = configure(steps.export(model=train.outputs["model"], transformed=transformed,
                                            model_name=model_name, serving_base_path=serving_base_path,
                                            config=resolved, parent_run_id=run_id), "export")
            saved_model = export.outputs["saved_model"]
            evaluate = configure(steps.evaluate(saved_model=saved_model, records=records, config=resolved,
                                                parent_run_id=run_id), "evaluate")
            register = configure(steps.register(saved_model=saved_model, evaluation=evaluate.outputs["evaluation"],
                                                config=resolved, parent_run_id=run_id), "register")
            with dsl.If(evaluate.outputs["Output"] == True, name="blessed"):  # noqa: E712 (a kfp condition)
                deploy = configure(steps.deploy(saved_model=saved_model, evaluation=evaluate.outputs["evaluation"],
                                                serving_base_path=serving_base_path, model_name=model_name,
                                                serving_address=serving_address, config=resolved),
                                   "deploy").after(register)
                with dsl.If(batch_input != "", name="batch-scoring"):
                    configure(steps.batch_predict(saved_model=saved_model, records=records, batch_input=batch_input,
                                                  config=resolved, parent_run_id=run_id),
                              "batch-predict").after(deploy)

    return cvpipe


def _configure_task(task: dsl.PipelineTask, name: str, platform: PlatformOptions) -> None:
    """Caching, resources, image, retries and Kubernetes volumes/secrets of one step."""
    task.set_caching_options(name in CACHED_STEPS)
    resources = RESOURCES[name]
    task.set_cpu_request(resources.cpu).set_cpu_limit(resources.cpu)
    task.set_memory_request(resources.memory).set_memory_limit(resources.memory)
    if platform.image:
        task.set_container_image(check_pinned(platform.image))
    if name in TRAINING_STEPS:
        task.set_retry(TRAIN_RETRIES)
        if platform.gpus:
            task.set_container_image(check_pinned(platform.gpu_image or GPU_IMAGE))
            task.set_accelerator_type(platform.accelerator_type).set_accelerator_limit(platform.gpus)
    _kubernetes(task, platform)


def _kubernetes(task: dsl.PipelineTask, platform: PlatformOptions) -> None:
    if not (platform.pvcs or platform.gcp_secret or platform.aws_secret or platform.mlflow_secret):
        return
    from kfp import kubernetes

    for pvc, mount_path in platform.pvcs.items():
        kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=mount_path)
    if platform.gcp_secret:
        kubernetes.use_secret_as_volume(task, secret_name=platform.gcp_secret, mount_path=GCP_SECRET_MOUNT)
        task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{GCP_SECRET_MOUNT}/key.json")
    for secret, keys in ((platform.aws_secret, AWS_SECRET_KEYS), (platform.mlflow_secret, MLFLOW_SECRET_KEYS)):
        if secret:
            kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={key: key for key in keys})
