"""Continuous evaluation end to end on loopback: a trained model served with every request logged, traffic in
three phases (like the training data, colour-inverted, like the training data again) with labels for part of
it; the monitor finds the accuracy drop and the drift in the shifted window only, and its live metric makes
the retrain policy retrain."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.ingest.fingerprint import SourceFingerprint
from components.monitor.__main__ import ALERT_EXIT_CODE, main as monitor_main
from components.artifacts import LIVE_METRICS_FILE, MONITOR_FILE, MONITOR_PLOTS
from components.monitor.run import run_monitor
from conftest import make_config
from image_files import write_colour_classes
from pipeline.retrain import PipelineRunRecord, RetrainPolicy, decide, read_live_metric
from serving.client import RestClient
from serving.model_server import ModelServer
from serving.options import ServerOptions

WINDOW_SECONDS = 4
PHASES = ("like training", "inverted", "like training again")
PER_CLASS = 12
LABELLED_FRACTION = 2 / 3  # of each phase's images, every first two of three
MONITOR = ("monitor.window=4s", "monitor.min_labelled=10", "monitor.min_drift_sample=20",
           "monitor.drift_alpha=0.001", "monitor.mmd_permutations=200", "monitor.baseline_images=60")


@pytest.fixture(scope="module")
def evaluated(tiny_run, tiny_export, tmp_path_factory) -> str:
    from components.evaluate.run import run_evaluate

    return run_evaluate(tiny_export, tiny_run.ingest, str(tmp_path_factory.mktemp("eval") / "out"),
                        make_config("evaluate.min_accuracy=0", "evaluate.min_class_recall=0")).output


def _phase_images(root: Path, phase: int) -> list[tuple[bytes, str]]:
    """(file bytes, true label) of one phase: new colour-class images (seeded), inverted in phase 2."""
    paths = write_colour_classes(root / f"phase{phase}", per_class=PER_CLASS, seed=100 + phase)
    images = []
    for path in paths:
        if phase == 1:
            image = Image.open(path)
            buffer = io.BytesIO()
            Image.fromarray(255 - np.asarray(image.convert("RGB"))).save(buffer, format=image.format)
            data = buffer.getvalue()
        else:
            data = path.read_bytes()
        images.append((data, path.parent.name))
    return images


def _next_window() -> None:
    """Sleeps to the start of the next window (windows are aligned to the epoch)."""
    time.sleep(WINDOW_SECONDS - time.time() % WINDOW_SECONDS + 0.05)


@pytest.fixture(scope="module")
def served_traffic(tiny_export, tmp_path_factory) -> dict:
    """Three phases of traffic to the served tiny model, a window each, every request logged; the labels."""
    root = tmp_path_factory.mktemp("traffic")
    base = Path(tiny_export).parent
    logs = root / "logs"
    config = root / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "tiny" base_path: "{base}" model_platform: "tensorflow" '
                      f'logging_config {{ log_collector_config {{ type: "file" filename_prefix: "{logs}/tiny" }} '
                      f'sampling_config {{ sampling_rate: 1.0 }} }} }} }}')
    phases = [_phase_images(root, phase) for phase in range(len(PHASES))]
    labels, answers = [], []
    with ModelServer(ServerOptions(model_config_file=str(config), port=0, rest_api_port=0,
                                   file_system_poll_wait_seconds=0)) as server:
        rest = RestClient(f"http://127.0.0.1:{server.ports.rest}")
        for phase, images in enumerate(phases):
            _next_window()
            started = time.time()
            for i, (data, label) in enumerate(images):
                answers.append((phase, rest.predict("tiny", instances=[{"b64": base64.b64encode(data).decode()}])[0]))
                if i % 3 != 2:
                    labels.append({"sha256": hashlib.sha256(data).hexdigest(), "label": label})
            assert time.time() - started < WINDOW_SECONDS - 0.5, "a phase must fit in its window"
        rest.close()
    labels.append({"sha256": "0" * 64, "label": "red"})  # matches nothing served: counted
    labels.append({"sha256": "f" * 64, "label": "purple"})  # a class the model does not have: refused
    labels_file = root / "labels.csv"
    with open(labels_file, "w", newline="") as f:
        writer = csv.DictWriter(f, ["sha256", "label"])
        writer.writeheader()
        writer.writerows(labels)
    return {"logs": logs, "labels": labels_file, "answers": answers, "root": root,
            "images": sum(len(p) for p in phases)}


def test_the_monitor_finds_the_shifted_window_and_only_it(evaluated, served_traffic, tmp_path):
    result = run_monitor([str(served_traffic["logs"])], str(served_traffic["labels"]), evaluated,
                         str(tmp_path / "monitor"), make_config(*MONITOR),
                         export_labelled=str(tmp_path / "labelled"))
    summary = json.loads((tmp_path / "monitor" / MONITOR_FILE).read_text())
    assert summary["predictions"] == served_traffic["images"] == 3 * 3 * PER_CLASS
    labelled = sum(1 for i in range(PER_CLASS * 3) if i % 3 != 2) * 3
    assert (summary["labelled"], summary["unlabelled"]) == (labelled, summary["predictions"] - labelled)
    assert summary["labels"]["unmatched"] == 1 and summary["labels"]["problems"] == {
        "label not among the model's classes (purple)": 1}
    assert summary["logs"]["records"] == served_traffic["images"] and not summary["logs"]["skipped"]
    normal, shifted, again = summary["windows"]
    assert [w["predictions"] for w in summary["windows"]] == [3 * PER_CLASS] * 3
    for window in (normal, again):
        assert window["status"] == "ok", window["alerts"]
        assert window["accuracy"] >= 0.9
        assert window["drift"]["image_brightness"]["p_value"] > 0.001
    assert shifted["status"] == "alert"
    assert shifted["accuracy"] < 0.5 and any("below the baseline" in a for a in shifted["alerts"])
    assert shifted["drift"]["image_brightness"]["p_value"] < 1e-6 and shifted["drift"]["image_brightness"]["drift"]
    # Every test made with its p-value, or its reason for none (one channel count only: nothing to compare).
    assert all((test["p_value"] is None) == bool(test["note"]) for test in shifted["drift"].values())
    assert shifted["drift"]["image_channels"]["note"] and shifted["drift"]["image_format"]["p_value"] > 0.001
    assert set(shifted["per_class_recall"]) == {"blue", "green", "red"}
    assert set(shifted["slices"]) == {"image/original_format", "image/channels", "size"}
    assert again["accuracy_moving_average"] == pytest.approx(
        (normal["accuracy"] * normal["labelled"] + shifted["accuracy"] * shifted["labelled"]
         + again["accuracy"] * again["labelled"]) / labelled, abs=1e-5)
    assert result.status == "ok"  # the newest window
    live = json.loads((tmp_path / "monitor" / LIVE_METRICS_FILE).read_text())
    assert live["accuracy"] == again["accuracy"] and live["status"] == "ok"
    html = (tmp_path / "monitor" / "monitor.html").read_text()
    assert "drift in image_brightness" in html and "monitor_accuracy.png" in html
    assert all((tmp_path / "monitor" / name).stat().st_size > 5000
               for name in MONITOR_PLOTS)
    exported = sorted(p.relative_to(tmp_path / "labelled").parts[0] for p in (tmp_path / "labelled").rglob("*.*"))
    assert len(exported) == labelled and set(exported) == {"blue", "green", "red"}


def test_the_live_metric_of_the_shifted_window_makes_the_policy_retrain(evaluated, served_traffic, tmp_path):
    shifted_logs = tmp_path / "until-shift"
    shifted_logs.mkdir()
    # The monitor as a cron job would have run it just after the shifted window: only its records so far.
    from components import prediction_logs
    from tensorflow_serving.apis import prediction_log_pb2

    records = [r for f in prediction_logs.log_files([str(served_traffic["logs"])])
               for r in prediction_logs.read_records(f)]
    times = sorted({prediction_log_pb2.PredictionLog.FromString(r).log_metadata.timestamp_secs // WINDOW_SECONDS
                    for r in records})
    kept = [r for r in records
            if prediction_log_pb2.PredictionLog.FromString(r).log_metadata.timestamp_secs // WINDOW_SECONDS <= times[1]]
    (shifted_logs / "tiny-until-shift.tfrecord").write_bytes(b"".join(prediction_logs.frame(r) for r in kept))
    output = tmp_path / "monitor"
    code = monitor_main(["--logs", str(shifted_logs), "--labels", str(served_traffic["labels"]), "--baseline",
                         evaluated, "--output", str(output), "--fail-on-alert", "--set", "tracking.experiment=monitor",
                         *[a for s in MONITOR for a in ("--set", s)]])
    assert code == ALERT_EXIT_CODE
    # Tracked in MLflow (the session's throwaway store): the newest window's numbers, every window a step.
    import mlflow

    [run] = mlflow.search_runs(experiment_names=["monitor"], output_format="list")
    assert run.data.metrics["live.accuracy"] < 0.5 and run.data.metrics["alerted_windows"] == 1
    steps = mlflow.MlflowClient().get_metric_history(run.info.run_id, "accuracy")
    assert [m.step for m in steps] == [0, 1] and steps[1].value < 0.5
    source = str(output / LIVE_METRICS_FILE)
    value = read_live_metric("accuracy", source)
    assert value < 0.5
    now = datetime.now(timezone.utc)
    data = SourceFingerprint("images", 90, "abc")
    history = [PipelineRunRecord("r1", "FINISHED", now - timedelta(days=1), "abc", 90)]
    policy = RetrainPolicy(max_model_age_days=0, min_new_fraction=0, live_metric="accuracy", live_metric_min=0.9,
                           live_metric_source=source)
    decision = decide(policy, now=now, current=data, history=history, champion_created=now - timedelta(days=1),
                      live_value=value)
    assert decision.retrain and any("Live metric accuracy" in t for t in decision.triggers)
