"""Runs the pipeline on this machine with kfp.local (the embedded default) and says where it all went.

Every step runs as a subprocess of this Python (kfp.local.SubprocessRunner, no container, no
virtualenv of its own), its artifacts under `pipeline_root`. kfp.local's cache is on: a rerun
on the same data content and config reuses ingest and transform, as a cluster would.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, TextIO

from components.config import Config
from components.logging_setup import StartNoiseFilter
from components.tracking.client import UiPage
from components.tracking.registry import ModelVersionInfo
from pipeline.definition import PlatformOptions, build_pipeline

logger = logging.getLogger(__name__)

# What a local run shows on the terminal: step starts and ends, cache hits, cvpipe's own log lines,
# any logged error and exceptions. The rest (kfp.local's executor inputs and outputs, TensorFlow's
# and the libraries' chatter) is in the log file.
_PROGRESS = re.compile(r"Executing task|finished with status|cache hit|^\s*[\d-]+ [\d:,]+ (\w+ (components|pipeline)\."
                       r"|ERROR )|Traceback|^\s*\w+(Error|Exception): ")
# Terminal colour and cursor codes (kfp.local colours its step lines): kept on the terminal, not in the log file.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# kfp.local's warnings that every step of a cluster pipeline triggers locally.
_LOCAL_NOOP_WARNINGS = (r"Task .* have no effect in the current local runner", r"You may be attemping to run")


class PipelineRunError(RuntimeError):
    """A local pipeline run failed; the message names the step."""


@dataclass(frozen=True)
class RunSummary:
    """Where one pipeline run's results are."""

    pipeline_root: str
    tracking_uri: str
    mlflow_run_id: str | None
    mlflow_run_page: UiPage | None = None  # the run's page in the MLflow UI
    files: dict[str, str] = field(default_factory=dict)  # what a user opens after the run -> its path
    outputs: dict[str, str] = field(default_factory=dict)  # stage -> output directory
    blessing: dict[str, Any] | None = None
    model_versions: list[ModelVersionInfo] = field(default_factory=list)
    serving_base_path: str = ""
    model_name: str = ""
    served: dict[str, int] = field(default_factory=dict)  # label -> version
    batch_summary: dict[str, Any] | None = None

    def __str__(self) -> str:
        lines = [f"Pipeline run: artifacts under {self.pipeline_root}"]
        if self.mlflow_run_id:
            lines.append(f"MLflow run {self.mlflow_run_id} at {self.tracking_uri}"
                         + (f": {self.mlflow_run_page}" if self.mlflow_run_page else ""))
        for stage, output in self.outputs.items():
            lines.append(f"  {stage:<14} {output}")
        if self.files:
            lines.append("Open:")
            lines.extend(f"  {what:<18} {clickable(path)}" for what, path in self.files.items())
        if self.blessing is not None:
            verdict = "blessed" if self.blessing["blessed"] else "NOT blessed"
            lines.append(f"Model {verdict}: {'; '.join(self.blessing['reasons'])}")
        for version in self.model_versions:
            lines.append(f"Registered {version.uri}{' (champion)' if version.champion else ''}")
        if self.served:
            labels = ", ".join(f"{label}={version}" for label, version in sorted(self.served.items()))
            lines.append(f"Served: {self.model_name} in {self.serving_base_path} ({labels}); start it with make serve")
        else:
            lines.append(f"Served: nothing deployed in {self.serving_base_path or '(no serving base path)'}")
        if self.batch_summary is not None:
            s = self.batch_summary
            lines.append(f"Batch predictions: {s['predictions']} predictions, {s['errors']} errors of {s['inputs']} "
                         f"inputs in {self.outputs.get('batch_predict', '?')}")
        return "\n".join(lines)


def clickable(path: str) -> str:
    """A local path as a file:// URI (terminals open it on a click); a remote one (gs://, s3://, ...) as it is."""
    from pathlib import Path

    return path if "://" in path else Path(path).absolute().as_uri()


class _ProgressFilter(io.TextIOBase):
    """A text stream that keeps every line in `log` (without colour codes and TensorFlow's start-up lines,
    which Beam's worker processes print) and shows the progress lines on `terminal`."""

    def __init__(self, log: TextIO, terminal: TextIO):
        self.log, self.terminal, self.pending, self.noise = log, terminal, "", StartNoiseFilter()

    def write(self, text: str) -> int:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            self._log(line + "\n")
            if _PROGRESS.search(line):
                self.terminal.write(line.strip() + "\n")
        self.terminal.flush()
        return len(text)

    def _log(self, line: str) -> None:
        line = _ANSI_ESCAPE.sub("", line)
        if self.noise.keep(line):
            self.log.write(line)

    def flush(self) -> None:
        self.log.flush()

    def close(self) -> None:
        """Writes a last line that has no newline yet."""
        if self.pending:
            self._log(self.pending)
            self.pending = ""
        self.flush()
        super().close()


def run_local(arguments: Mapping[str, Any], config: Config, *, pipeline_root: str, log_file: str,
              platform: PlatformOptions = PlatformOptions(), cache: bool = True) -> RunSummary:
    """Runs the pipeline compiled with `config` on `arguments`, its whole output in `log_file` and its
    progress on stderr; raises PipelineRunError when a step fails."""
    from kfp import local

    pipeline_root = os.path.abspath(pipeline_root)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True,
               enable_caching=cache)
    pipeline = build_pipeline(config, platform)
    started_ms = int(time.time() * 1000)
    logger.info("Running the pipeline with kfp.local: artifacts under %s, the whole log in %s", pipeline_root,
                log_file)
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    with open(log_file, "w") as log, contextlib.closing(_ProgressFilter(log, sys.stderr)) as output, \
            contextlib.redirect_stdout(output), warnings.catch_warnings():
        for message in _LOCAL_NOOP_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        try:
            pipeline(**arguments)
        except RuntimeError as e:
            raise PipelineRunError(f"the local pipeline run failed: {e}; the step's log is in {log_file}") from e
    return summarize(config, arguments, pipeline_root=pipeline_root, since_ms=started_ms, log_file=log_file)


def summarize(config: Config, arguments: Mapping[str, Any], *, pipeline_root: str, since_ms: int,
              log_file: str = "") -> RunSummary:
    """What the newest pipeline run on `arguments["data_source"]` since `since_ms` produced, from MLflow's
    records of it and the serving model base path."""
    from components.artifacts import BLESSING_FILE, SUMMARY_FILE
    from components.deploy import model_config
    from components.files import read_json
    from components.tracking.client import mlflow_client, tracking_uri, ui_page
    from components.tracking.registry import registered_versions
    from components.tracking.runs import child_runs, pipeline_runs
    from pipeline.parameters import CONFIG_KEYS, resolve_config

    # What the run's configure step made of the configuration (model name, MLflow URI, ...).
    config = resolve_config(config.to_dict(), {k: v for k, v in arguments.items() if k in CONFIG_KEYS})
    settings = config.tracking
    model_name = settings.registered_model
    serving_base_path = arguments.get("serving_base_path", "")
    served = {}
    if serving_base_path:
        served = model_config.labels(
            model_config.read_model_config(model_config.model_config_path(serving_base_path)), model_name)
    log = {"whole log": os.path.abspath(log_file)} if log_file else {}
    summary = dict(pipeline_root=pipeline_root, tracking_uri=tracking_uri(settings), mlflow_run_id=None,
                   serving_base_path=serving_base_path, model_name=model_name, served=served, files=log)
    if not settings.enabled:
        return RunSummary(**summary)
    run_id = arguments.get("mlflow_run_id")  # reserved before the run started (python -m pipeline retrain)
    if not run_id:
        runs = [run for run in pipeline_runs(config, data_source=arguments["data_source"], max_results=5)
                if run.info.start_time >= since_ms]
        if not runs:
            logger.warning("No MLflow pipeline run on %s since the run started", arguments["data_source"])
            return RunSummary(**summary)
        run_id = runs[0].info.run_id
    outputs, register_run = {}, None
    for child in child_runs(config, run_id):
        stage = child.data.tags.get("cvpipe.stage")
        if stage == "register":
            register_run = child.info.run_id
        elif stage and "cvpipe.output" in child.data.tags:
            outputs[stage] = child.data.tags["cvpipe.output"]
    blessing = read_json(f"{outputs['evaluate']}/{BLESSING_FILE}") if "evaluate" in outputs else None
    batch = read_json(f"{outputs['batch_predict']}/{SUMMARY_FILE}") if "batch_predict" in outputs else None
    versions = registered_versions(config, register_run) if register_run else []
    order = ["ingest", "transform", "tune", "train", "export", "evaluate", "batch_predict"]
    outputs = dict(sorted(outputs.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
    page = ui_page(settings, mlflow_client(settings).get_run(run_id).info.experiment_id, run_id)
    files = {**_files_to_open(outputs, config), **summary["files"]}
    return RunSummary(**{**summary, "mlflow_run_id": run_id, "files": files}, outputs=outputs, blessing=blessing,
                      model_versions=versions, batch_summary=batch, mlflow_run_page=page)


def _files_to_open(outputs: Mapping[str, str], config: Config) -> dict[str, str]:
    """What a user opens after a run, by what it shows: the report, the confusion matrix, the training curves
    and, for a tuned run, the search's plot."""
    from components.artifacts import CURVES_FILE, REPORT_FILE, TUNING_PLOT_FILE, confusion_matrix_file

    files = {}
    if "evaluate" in outputs:
        files["evaluation report"] = f"{outputs['evaluate']}/{REPORT_FILE}"
        files["confusion matrix"] = f"{outputs['evaluate']}/{confusion_matrix_file(config.evaluate.splits[0])}"
    if "train" in outputs:
        files["training curves"] = f"{outputs['train']}/{CURVES_FILE}"
    if "tune" in outputs:
        files["tuning trials"] = f"{outputs['tune']}/{TUNING_PLOT_FILE}"
    return files
