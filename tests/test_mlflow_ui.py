"""The MLflow UI as a user meets it: a pipeline-like sequence tracked into a real `mlflow server`, its
experiment and run pages rendered by headless Chromium and checked for what a user looks for."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import pytest

from browser import open_page, screenshot_path
from components.evaluate.run import run_evaluate
from components.manifest import read_manifest
from components.register import run_register
from components.tracking.client import ui_page
from components.tracking.datasets import DIGEST_LENGTH
from components.tracking.registry import ModelVersionInfo
from components.tracking.runs import finish_run, log_stage, start_pipeline_run
from conftest import make_config
from mlflow_server import mlflow_server  # noqa: F401

# A run name like kfp.local's artifact folder of a pipeline run.
RUN_NAME = "cvpipe-2026-12-03-06-30-45-567612"
# A React page renders after its data arrives: wait this long for an element.
RENDER_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class Tracked:
    experiment_page: str  # the addresses cvpipe logs (components.tracking.client.ui_page)
    run_page: str
    version: ModelVersionInfo
    dataset_digest: str


@pytest.fixture(scope="module")
def tracked(mlflow_server, tiny_run, tiny_export, tmp_path_factory) -> Tracked:
    """The tiny run's stage outputs tracked as one pipeline run, its model evaluated and registered."""
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        config = make_config("tracking.experiment=ui-check", "tracking.registered_model=ui-check",
                             "evaluate.min_accuracy=0", "evaluate.min_class_recall=0")
        parent = start_pipeline_run(config, run_name=RUN_NAME)
        for stage, output in (("ingest", tiny_run.ingest), ("transform", tiny_run.transform),
                              ("train", tiny_run.train), ("export", tiny_export)):
            log_stage(stage, output, config, parent_run_id=parent)
        evaluation = run_evaluate(tiny_export, tiny_run.ingest, str(tmp_path_factory.mktemp("ui") / "evaluate"), config)
        log_stage("evaluate", evaluation.output, config, parent_run_id=parent)
        version = run_register(tiny_export, evaluation.output, config, parent_run_id=parent)
        finish_run(parent, config)
        experiment = mlflow.MlflowClient(mlflow_server).get_run(parent).info.experiment_id
        return Tracked(ui_page(config.tracking, experiment).url, ui_page(config.tracking, experiment, parent).url, version,
                       read_manifest(tiny_run.ingest, "ingest").fingerprint[:DIGEST_LENGTH])


def visible(page, text: str, *, exact: bool = False):
    """The first element showing `text`, once it is visible (a failure names the text and the page)."""
    element = page.get_by_text(text, exact=exact).first
    try:
        element.wait_for(state="visible", timeout=RENDER_TIMEOUT_MS)
    except Exception as e:
        pytest.fail(f"{page.url} shows no {text!r}: {e}", pytrace=False)
    return element


def screenshot(page, name: str, tmp_path) -> None:
    page.screenshot(path=screenshot_path(name, tmp_path), full_page=True)


def test_the_experiment_opens_in_the_model_training_view(tracked, browser, tmp_path):
    page = open_page(browser, tracked.experiment_page)
    visible(page, RUN_NAME)  # the runs table, with the pipeline run ...
    assert "/runs?" in page.url, page.url  # ... not the GenAI overview (traces, tokens)
    for column in ("Run Name", "Dataset", "Duration", "Models"):
        visible(page, column, exact=True)
    for split in ("train", "valid", "test"):
        visible(page, f"{split} ({tracked.dataset_digest})")  # the datasets column: splits by fingerprint
    assert page.get_by_text("Token Usage").count() == 0
    screenshot(page, "mlflow-experiment.png", tmp_path)
    assert not page.errors


def test_the_run_page_shows_metrics_datasets_and_the_registered_model(tracked, browser, tmp_path):
    page = open_page(browser, tracked.run_page)
    visible(page, RUN_NAME)
    for stage in ("ingest", "transform", "train", "export", "evaluate", "register"):  # the child runs
        visible(page, stage, exact=True)
    for metric in ("test.accuracy", "test.macro_f1", "valid.accuracy", "blessed", "registered_version"):
        visible(page, metric, exact=True)
    visible(page, f"train ({tracked.dataset_digest})")  # the datasets
    visible(page, "Logged models (1)")  # the model, linked to its registered version
    visible(page, tracked.version.name, exact=True)
    visible(page, f"v{tracked.version.version}", exact=True)
    screenshot(page, "mlflow-run.png", tmp_path)
    assert not page.errors
