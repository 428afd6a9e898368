"""The evaluate stage on a real exported model: metrics from raw predictions, blessing, champion, report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.evaluate.champion import Champion
from components.evaluate.run import run_evaluate
from conftest import make_config

LENIENT = ("evaluate.min_accuracy=0", "evaluate.min_class_recall=0")


@pytest.fixture(scope="module")
def evaluated(tiny_run, tiny_export, tmp_path_factory):
    return run_evaluate(tiny_export, tiny_run.ingest, str(tmp_path_factory.mktemp("eval") / "out"),
                        make_config(*LENIENT))


def _predictions(output: str, split: str) -> tuple[list[dict], np.ndarray, np.ndarray, list[str]]:
    rows = [json.loads(line) for line in Path(output, "predictions.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == split]
    labels = json.loads(Path(output, "evaluation.json").read_text())["labels"]
    return rows, np.array([labels.index(r["label"]) for r in rows]), np.array([r["probabilities"] for r in rows]), labels


def test_metrics_equal_a_numpy_recomputation_from_the_raw_predictions(evaluated, tiny_run):
    evaluation = json.loads(Path(evaluated.output, "evaluation.json").read_text())
    stats = json.loads(Path(tiny_run.ingest, "stats.json").read_text())
    for split in ("test", "valid"):
        rows, truth, probabilities, labels = _predictions(evaluated.output, split)
        metrics = evaluation["splits"][split]
        assert len(rows) == metrics["examples"] == stats["splits"][split]["images"]
        predicted = probabilities.argmax(axis=1)
        assert metrics["accuracy"] == pytest.approx(np.mean(predicted == truth), abs=1e-6)
        matrix = np.zeros((len(labels), len(labels)), int)
        np.add.at(matrix, (truth, predicted), 1)
        assert metrics["confusion_matrix"]["matrix"] == matrix.tolist()
        for c, name in enumerate(labels):
            if matrix[c].sum():
                assert metrics["per_class"][name]["recall"] == pytest.approx(matrix[c, c] / matrix[c].sum(), abs=1e-6)
        top2 = np.argsort(-probabilities, axis=1)[:, :2]
        assert metrics["top_k_accuracy"]["value"] == pytest.approx(np.mean((top2 == truth[:, None]).any(1)), abs=1e-6)
        sizes = metrics["slices"]["size"]
        assert sum(v["examples"] for v in sizes.values()) == len(rows)


def test_predictions_are_the_served_models_own(evaluated, tiny_export):
    rows, _, probabilities, _ = _predictions(evaluated.output, "test")
    served = tf.saved_model.load(tiny_export).signatures["serving_default"](
        image_bytes=tf.constant([Path(r["uri"]).read_bytes() for r in rows]))
    np.testing.assert_allclose(probabilities, served["probabilities"].numpy(), atol=1e-6)


def test_outputs_report_and_blessing_without_a_champion(evaluated):
    out = Path(evaluated.output)
    for name in ("evaluation.json", "blessing.json", "evaluation.html", "manifest.json", "confusion_matrix_test.png",
                 "calibration_test.png", "confusion_matrix_valid.png"):
        assert (out / name).exists(), name
    blessing = json.loads((out / "blessing.json").read_text())
    assert blessing["blessed"] and blessing["champion"] is None
    assert json.loads((out / "evaluation.json").read_text())["splits"]["test"]["accuracy"] >= 0.8  # learnt
    assert {c["kind"] for c in blessing["checks"]} == {"absolute"}
    assert "no champion yet" in blessing["reasons"][0]
    html = (out / "evaluation.html").read_text()
    assert "BLESSED" in html and "data:image/png;base64," in html
    assert "Champion: none to compare with" in html


def test_the_report_lists_sizes_in_numeric_order_and_shows_the_mistakes(tiny_run, worse_export, tmp_path):
    # The worse model answers one class for every image: mistakes are certain, whatever training reached.
    evaluated = run_evaluate(worse_export, tiny_run.ingest, str(tmp_path / "out"),
                             make_config(*LENIENT, "evaluate.misclassified_examples=4"))
    evaluation = json.loads(Path(evaluated.output, "evaluation.json").read_text())
    sizes = re.search(r'<table data-slice="size">(.*?)</table>', Path(evaluated.output, "evaluation.html").read_text())
    assert re.findall(r"<tr><td>([^<]*)</td>", sizes.group(1)) == ["&lt;64", "64-127"]  # as text: 64-127 first
    misclassified = evaluation["misclassified"]
    rows, truth, probabilities, labels = _predictions(evaluated.output, "test")
    wrong = [i for i in np.argsort(-probabilities.max(axis=1), kind="stable") if probabilities[i].argmax() != truth[i]]
    assert misclassified["split"] == "test" and misclassified["total"] == len(wrong) > 4, "premise: many mistakes"
    assert [m["uri"] for m in misclassified["examples"]] == [rows[i]["uri"] for i in wrong[:4]]
    assert misclassified["examples"][0]["predicted"] == labels[probabilities[wrong[0]].argmax()]
    html = Path(evaluated.output, "evaluation.html").read_text()
    assert html.count("data:image/jpeg;base64,") == 4


def test_thresholds_refuse_with_reasons(tiny_run, worse_export, tmp_path):
    result = run_evaluate(worse_export, tiny_run.ingest, str(tmp_path / "strict"),
                          make_config("evaluate.min_accuracy=1.0", "evaluate.min_class_recall=0"))
    assert result.evaluation["splits"]["test"]["accuracy"] < 1.0, "premise: a constant answer on several classes"
    assert not result.blessing["blessed"]
    assert result.blessing["reasons"] == [
        f"failed: test accuracy >= 1.0 (got {result.evaluation['splits']['test']['accuracy']})"]
    assert "NOT BLESSED" in (tmp_path / "strict" / "evaluation.html").read_text()


def test_change_thresholds_against_the_champion(tiny_run, tiny_export, worse_export, tmp_path):
    # The same model as its own champion: no change, blessed.
    same = run_evaluate(tiny_export, tiny_run.ingest, str(tmp_path / "same"), make_config(*LENIENT),
                        champion=Champion(tiny_export))
    change = [c for c in same.blessing["checks"] if c["kind"] == "change"]
    assert len(change) == 2 and all(c["passed"] for c in change) and same.blessing["blessed"]
    assert same.evaluation["champion"]["splits"]["test"]["accuracy"] == same.evaluation["splits"]["test"]["accuracy"]

    # A deliberately worse candidate against it: refused.
    result = run_evaluate(worse_export, tiny_run.ingest, str(tmp_path / "worse"), make_config(*LENIENT),
                          champion=Champion(tiny_export, "the tiny champion"))
    assert result.blessing["champion"] == {key: value for key, value in result.evaluation["champion"].items()
                                           if key != "splits"}
    assert result.blessing["champion"]["model"] == "the tiny champion"
    assert result.evaluation["splits"]["test"]["accuracy"] < result.evaluation["champion"]["splits"]["test"]["accuracy"]
    assert not result.blessing["blessed"]
    assert any(r.startswith("failed: test accuracy >= champion's") for r in result.blessing["reasons"])


def test_cli_evaluates_the_latest_version_of_a_model_base_path(tiny_run, worse_export, tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "components.evaluate", "--model", str(Path(worse_export).parent),
                           "--data", tiny_run.ingest, "--output", str(out), "--no-champion",
                           "--set", "evaluate.splits=[test]", "--set", "evaluate.min_accuracy=1.0"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NOT BLESSED" in done.stderr and json.loads((out / "evaluation.json").read_text())["model"] == worse_export
