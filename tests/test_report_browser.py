"""The evaluation report as a user meets it: a real evaluate output against a registered champion,
rendered by headless Chromium from the file alone and checked for what a user looks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser import open_page, screenshot_path
from components.evaluate.champion import registered_champion
from components.evaluate.run import EvaluateResult, run_evaluate
from components.register import run_register
from conftest import make_config



@pytest.fixture(scope="module")
def report(tiny_run, tiny_export, worse_export, tmp_path_factory) -> EvaluateResult:
    """The worse model evaluated against the tiny model, registered as the champion in the session's
    SQLite store (as `make run` does it: evaluate, register, then the next candidate)."""
    root = tmp_path_factory.mktemp("report")
    config = make_config("tracking.registered_model=report-check", "evaluate.min_accuracy=0.5",
                         "evaluate.min_class_recall=0")
    first = run_evaluate(tiny_export, tiny_run.ingest, str(root / "champion"), config)
    run_register(tiny_export, first.output, config)
    champion = registered_champion(config, str(root / "download"))
    return run_evaluate(worse_export, tiny_run.ingest, str(root / "evaluate"), config, champion=champion)


def test_the_report_renders_its_key_elements(report, browser, tmp_path):
    page = open_page(browser, Path(report.output, "evaluation.html").as_uri(),
                     screenshot=screenshot_path("report.png", tmp_path))
    assert page.errors == []
    evaluation = json.loads(Path(report.output, "evaluation.json").read_text())

    assert page.locator(".banner").inner_text() == "NOT BLESSED"
    accuracy = f"{evaluation['splits']['test']['accuracy']:.4f}"
    headline = page.locator("h2:has-text('Split: test') + table tbody tr").first
    assert headline.locator("td").all_inner_texts()[:2] == ["accuracy", accuracy]

    sizes = page.locator('table[data-slice="size"]').first.locator("tbody tr td:first-child").all_inner_texts()
    assert sizes == ["<64", "64-127"]  # numeric order (as text, 64-127 would come first)

    figures = page.locator(".figures img")
    assert figures.count() == 4  # confusion matrix and calibration of test and valid
    for image in figures.all():
        assert image.evaluate("img => img.complete && img.naturalWidth > 0"), image.get_attribute("alt")
    assert page.locator("figcaption", has_text="Calibration (test)").count() == 1

    champion = page.locator(".champion").inner_text()
    run_id = evaluation["champion"]["run_id"]
    assert evaluation["champion"]["version"] == 1 and run_id
    assert f"models:/report-check@champion, version 1, MLflow run {run_id}" in champion
    assert f"start it with {evaluation['champion']['ui_command']}, then open " in champion  # a SQLite store
    assert evaluation["champion"]["run_url"].endswith(f"/runs/{run_id}?workflowType=machine_learning")
    assert page.locator(".champion a").get_attribute("href") == evaluation["champion"]["run_url"]
    assert page.locator(".tuning").inner_text() == "Hyperparameters: as configured (no search)."

    mistakes = evaluation["misclassified"]["examples"]
    assert mistakes and len(mistakes) == evaluation["misclassified"]["total"]  # fewer than the 16 shown at most
    gallery = page.locator("figure.mistake")
    assert gallery.count() == len(mistakes)
    for figure, mistake in zip(gallery.all(), mistakes):
        assert figure.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
        assert figure.locator(".true-label").inner_text() == mistake["label"]
        assert figure.locator(".predicted-label").inner_text() == mistake["predicted"]
        assert f"({mistake['confidence']:.4f})" in figure.inner_text()
        assert figure.locator(".uri").inner_text() == mistake["uri"]
