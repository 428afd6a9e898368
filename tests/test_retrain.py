"""The retrain policy: `decide` on generated histories, the facts it reads (MLflow, a live metric
file or URL, argparse flags) and `evaluate_policy` end to end on a real SQLite store and real images."""

from __future__ import annotations

import argparse
import http.server
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import pytest

from components.ingest.fingerprint import SourceFingerprint, fingerprint_source
from components.tracking.client import tracking_uri
from components.tracking.registry import CHAMPION_ALIAS
from components.tracking.runs import (DATA_FINGERPRINT_TAG, DATA_INPUTS_TAG, DATA_SOURCE_TAG, KFP_RUN_ID_TAG,
                                      finish_run, start_pipeline_run)
from conftest import make_config
from image_files import write_plain
from pipeline.retrain import (
    Decision,
    LiveMetricError,
    PipelineRunRecord,
    RetrainPolicy,
    add_policy_arguments,
    decide,
    evaluate_policy,
    policy_from_args,
    read_history,
    read_live_metric,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
SOURCE = "gs://bucket/images"
OLD_DATA = "a" * 64
NEW_DATA = "b" * 64
# Only the rule under test is on.
DATA_ONLY = RetrainPolicy(min_new_images=0, min_new_fraction=0.1, max_model_age_days=0)


def run(hours_ago: float, status: str = "FINISHED", inputs: int | None = 2500, fingerprint: str | None = OLD_DATA,
        run_id: str = "") -> PipelineRunRecord:
    """One pipeline run of the generated history, started `hours_ago` before NOW."""
    return PipelineRunRecord(run_id or f"{status.lower()}-{hours_ago:g}h", status, NOW - timedelta(hours=hours_ago),
                             fingerprint, inputs)


def current(inputs: int = 2500, fingerprint: str = OLD_DATA) -> SourceFingerprint:
    return SourceFingerprint(SOURCE, inputs, fingerprint)


def check(policy: RetrainPolicy = DATA_ONLY, *, history=(), data: SourceFingerprint | None = None,
          champion_days: float | None = None, live: float | None = None, live_error: str = "") -> Decision:
    """decide() at NOW; `champion_days`: the champion's age (None: no champion)."""
    champion = None if champion_days is None else NOW - timedelta(days=champion_days)
    decision = decide(policy, now=NOW, current=data or current(), history=list(history), champion_created=champion,
                      live_value=live, live_error=live_error)
    assert decision.retrain == (bool(decision.triggers) and not decision.holds)
    assert decision.reasons == [*decision.triggers, *decision.holds, *decision.notes]
    return decision


def test_no_history_retrains():
    decision = check()
    assert decision.retrain
    assert decision.triggers == (f"No pipeline run of {SOURCE} has finished yet.",)
    assert not decision.holds


def test_only_failed_runs_retrain_once_per_cool_down():
    failed = [run(5, "FAILED"), run(30, "FAILED"), run(50, "KILLED")]
    decision = check(history=failed)
    assert decision.retrain
    assert decision.triggers == (f"No pipeline run of {SOURCE} has finished yet (runs: 2 FAILED, 1 KILLED).",)
    assert "The newest run failed-5h (FAILED) started 5.0 h ago, past the cool-down of 1 h." in decision.notes

    decision = check(history=[run(0.5, "FAILED"), *failed])
    assert not decision.retrain and decision.triggers
    assert decision.holds == ("The newest run failed-0.5h (FAILED) started 30 min ago, within the cool-down of 1 h.",)
    assert str(decision).startswith("Retrain now: no, on hold.\n  [trigger] No pipeline run")


def test_unchanged_data_does_not_retrain():
    decision = check(history=[run(3), run(100, "FAILED")])
    assert not decision.retrain and not decision.triggers and not decision.holds
    assert f"The data is unchanged since run finished-3h (2500 inputs, fingerprint {OLD_DATA[:12]})." in decision.notes
    assert str(decision).startswith("Retrain now: no, nothing calls for it.\n  [-] The data is unchanged")


@pytest.mark.parametrize("new, retrain", [(299, False), (300, True), (312, True)])
def test_new_images_by_count(new, retrain):
    policy = RetrainPolicy(min_new_images=300, min_new_fraction=0, max_model_age_days=0)
    decision = check(policy, history=[run(3)], data=current(2500 + new, NEW_DATA))
    assert decision.retrain == retrain
    sign = ">=" if retrain else "<"
    reason = f"{new} new inputs since run finished-3h (2500 -> {2500 + new}, {new} {sign} 300 new inputs)."
    assert reason in (decision.triggers if retrain else decision.notes)


@pytest.mark.parametrize("base, new, fraction, retrain, text", [
    (2500, 312, 0.1, True, "+12.48 % >= 10 %"),
    (2500, 250, 0.1, True, "+10 % >= 10 %"),  # exactly at the threshold
    (2500, 249, 0.1, False, "+9.96 % < 10 %"),
    (3000, 210, 0.07, True, "+7 % >= 7 %"),
    (3000, 209, 0.07, False, "+6.97 % < 7 %"),
    (0, 5, 0.1, True, "+inf % >= 10 %"),  # the last run listed nothing
])
def test_new_images_by_fraction(base, new, fraction, retrain, text):
    policy = RetrainPolicy(min_new_fraction=fraction, max_model_age_days=0)
    decision = check(policy, history=[run(3, inputs=base)], data=current(base + new, NEW_DATA))
    assert decision.retrain == retrain
    reason = f"{new} new inputs since run finished-3h ({base} -> {base + new}, {text})."
    assert reason in (decision.triggers if retrain else decision.notes)


def test_either_new_data_threshold_triggers():
    policy = RetrainPolicy(min_new_images=100, min_new_fraction=0.5, max_model_age_days=0)
    decision = check(policy, history=[run(3)], data=current(2600, NEW_DATA))
    assert decision.retrain
    assert decision.triggers == ("100 new inputs since run finished-3h (2500 -> 2600, 100 >= 100 new inputs).",)
    assert "100 new inputs since run finished-3h (2500 -> 2600, +4 % < 50 %)." in decision.notes


def test_new_data_with_both_thresholds_off_is_reported():
    decision = check(RetrainPolicy(min_new_fraction=0, max_model_age_days=0), history=[run(3)],
                     data=current(2600, NEW_DATA))
    assert not decision.retrain
    assert "100 new inputs since run finished-3h (2500 -> 2600); the new-data rules are off." in decision.notes
    assert "Rules switched off: new-image count, new-image fraction, model age, live metric." in decision.notes


@pytest.mark.parametrize("inputs, what", [(2500, "the same number of inputs"), (2400, "100 fewer inputs")])
def test_changed_data_without_growth_retrains(inputs, what):
    decision = check(history=[run(3)], data=current(inputs, NEW_DATA))
    assert decision.retrain
    assert decision.triggers == (f"The data changed since run finished-3h: {what} (2500 -> {inputs}) with another "
                                 f"fingerprint ({OLD_DATA[:12]} -> {NEW_DATA[:12]}), so images were replaced, "
                                 "relabelled or removed.",)


def test_the_baseline_is_the_newest_finished_run():
    # A newer failed run on the new data does not count as trained on it; an older finished run
    # on other data is not the baseline.
    history = [run(5, "FAILED", inputs=2812, fingerprint=NEW_DATA), run(30, inputs=2500),
               run(60, inputs=2812, fingerprint=NEW_DATA)]
    decision = check(history=history, data=current(2812, NEW_DATA))
    assert decision.retrain
    assert decision.triggers == ("312 new inputs since run finished-30h (2500 -> 2812, +12.48 % >= 10 %).",)


def test_a_finished_run_without_data_tags_retrains():
    decision = check(history=[run(3, inputs=None, fingerprint=None)])
    assert decision.retrain
    assert decision.triggers == ("The newest finished run finished-3h recorded no data fingerprint or input count: "
                                 "what it trained on is unknown.",)


@pytest.mark.parametrize("status", ["RUNNING", "SCHEDULED"])
def test_a_run_in_progress_holds(status):
    history = [run(2, status), run(48)]
    decision = check(history=history, data=current(2812, NEW_DATA))
    assert not decision.retrain
    assert decision.triggers == ("312 new inputs since run finished-48h (2500 -> 2812, +12.48 % >= 10 %).",)
    assert f"Run {status.lower()}-2h has been {status} for 2.0 h: not starting another." in decision.holds
    assert str(decision).startswith("Retrain now: no, on hold.")


def test_an_abandoned_running_run_is_ignored():
    decision = check(history=[run(30, "RUNNING"), run(48)], data=current(2812, NEW_DATA))
    assert decision.retrain and not decision.holds
    assert "Run running-30h has been RUNNING for 30.0 h (> 24 h): ignored as abandoned." in decision.notes
    # A longer timeout keeps it in progress.
    decision = check(RetrainPolicy(max_model_age_days=0, running_timeout_hours=36),
                     history=[run(30, "RUNNING"), run(48)], data=current(2812, NEW_DATA))
    assert not decision.retrain


@pytest.mark.parametrize("hours_ago, held", [(0.25, True), (1.99, True), (2.0, False), (2.5, False)])
def test_cool_down(hours_ago, held):
    policy = RetrainPolicy(max_model_age_days=0, min_hours_between_runs=2)
    history = [run(hours_ago, "FAILED", inputs=2812, fingerprint=NEW_DATA), run(72)]
    decision = check(policy, history=history, data=current(2812, NEW_DATA))
    assert decision.retrain == (not held)
    assert len(decision.holds) == held


@pytest.mark.parametrize("days, retrain", [(29.9, False), (30, True), (45, True)])
def test_model_age(days, retrain):
    policy = RetrainPolicy(max_model_age_days=30)
    decision = check(policy, history=[run(days * 24 + 1)], champion_days=days)
    assert decision.retrain == retrain
    reason = f"The champion model is {days:.1f} days old ({'>=' if retrain else '<'} 30 days)."
    assert reason in (decision.triggers if retrain else decision.notes)


def test_an_unblessed_retrain_resets_the_model_age():
    """The champion is 45 days old, but the retrain it triggered 2 days ago was not blessed: no
    retrain at every tick, but again 30 days after that attempt."""
    policy = RetrainPolicy(max_model_age_days=30)
    decision = check(policy, history=[run(48), run(45 * 24 + 1)], champion_days=45)
    assert not decision.retrain
    assert ("The champion model is 45.0 days old, but run finished-48h retrained 2.0 days ago without a blessed "
            "model: the model age counts from that run, 2.0 days (< 30 days).") in decision.notes
    decision = check(policy, history=[run(31 * 24)], champion_days=45)
    assert decision.retrain
    assert decision.triggers[0].endswith("the model age counts from that run, 31.0 days (>= 30 days).")


@pytest.mark.parametrize("hours_ago, retrain", [(48, False), (31 * 24, True)])
def test_no_champion_after_a_finished_run_follows_the_age_rule(hours_ago, retrain):
    decision = check(RetrainPolicy(max_model_age_days=30), history=[run(hours_ago)], champion_days=None)
    assert decision.retrain == retrain
    reason = f"No champion model exists, but run finished-{hours_ago:g}h retrained {hours_ago / 24:.1f} days ago"
    assert any(text.startswith(reason) for text in (decision.triggers if retrain else decision.notes))


def test_no_champion_and_no_run_retrains_once():
    decision = check(RetrainPolicy(max_model_age_days=30), champion_days=None)
    assert decision.triggers == (f"No pipeline run of {SOURCE} has finished yet.",)


LIVE = RetrainPolicy(max_model_age_days=0, live_metric="accuracy", live_metric_min=0.85,
                     live_metric_source="http://monitor/live.json")


@pytest.mark.parametrize("value, retrain, text", [
    (0.8, True, "Live metric accuracy = 0.8 < 0.85 (from http://monitor/live.json)."),
    (0.85, False, "Live metric accuracy = 0.85 >= 0.85 (from http://monitor/live.json)."),
    (0.93, False, "Live metric accuracy = 0.93 >= 0.85 (from http://monitor/live.json)."),
    (None, False, "Live metric accuracy unavailable (HTTP Error 503): it triggers nothing."),
])
def test_live_metric(value, retrain, text):
    decision = check(LIVE, history=[run(3)], live=value, live_error="HTTP Error 503" if value is None else "")
    assert decision.retrain == retrain
    assert text in (decision.triggers if retrain else decision.notes)


def test_several_reasons_at_once_are_all_named():
    policy = RetrainPolicy(min_new_images=200, min_new_fraction=0.1, max_model_age_days=30, live_metric="accuracy",
                           live_metric_min=0.9, live_metric_source="/monitor/live.json")
    history = [run(3, "KILLED"), run(40 * 24), run(40 * 24 + 5, "FAILED")]
    decision = check(policy, history=history, data=current(2812, NEW_DATA), champion_days=40, live=0.875)
    assert decision.retrain
    assert decision.triggers == (
        "312 new inputs since run finished-960h (2500 -> 2812, 312 >= 200 new inputs).",
        "312 new inputs since run finished-960h (2500 -> 2812, +12.48 % >= 10 %).",
        "The champion model is 40.0 days old (>= 30 days).",
        "Live metric accuracy = 0.875 < 0.9 (from /monitor/live.json).",
    )
    assert decision.notes == ("The newest run killed-3h (KILLED) started 3.0 h ago, past the cool-down of 1 h.",)
    assert str(decision) == "\n".join(["Retrain now: yes.", *(f"  [trigger] {t}" for t in decision.triggers),
                                       f"  [-] {decision.notes[0]}"])


def test_decide_is_deterministic_and_wants_an_aware_now():
    history = [run(3, "FAILED"), run(50)]
    assert check(history=history, data=current(2812, NEW_DATA)) == check(history=history[::-1],
                                                                         data=current(2812, NEW_DATA))
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(DATA_ONLY, now=NOW.replace(tzinfo=None), current=current(), history=[], champion_created=None,
               live_value=None)


def test_flags_build_the_policy():
    parser = argparse.ArgumentParser()
    add_policy_arguments(parser)
    assert policy_from_args(parser.parse_args([])) == RetrainPolicy()
    args = parser.parse_args(["--min-new-images", "500", "--min-new-fraction", "0.25", "--max-model-age-days", "0",
                              "--live-metric", "accuracy", "--live-metric-min", "0.9", "--live-metric-source",
                              "gs://b/live.json", "--min-hours-between-runs", "6", "--running-timeout-hours", "48"])
    assert policy_from_args(args) == RetrainPolicy(500, 0.25, 0.0, "accuracy", 0.9, "gs://b/live.json", 6.0, 48.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["--min-new-fraction", "-0.1"])
    with pytest.raises(ValueError, match="needs a minimum and a source"):
        policy_from_args(parser.parse_args(["--live-metric", "accuracy"]))
    with pytest.raises(ValueError, match="min_new_images must be"):
        RetrainPolicy(min_new_images=-1)


@pytest.fixture(scope="module")
def http_json():
    """A real HTTP server on 127.0.0.1: set `documents[path] = bytes` to serve them; the rest is 404."""
    documents: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = documents.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", documents
    server.shutdown()
    server.server_close()


def test_read_live_metric_from_a_file_and_a_url(tmp_path, http_json):
    url, documents = http_json
    documents["/live.json"] = json.dumps({"accuracy": 0.91, "latency_ms": 12}).encode()
    assert read_live_metric("accuracy", f"{url}/live.json") == 0.91
    (tmp_path / "live.json").write_text(json.dumps({"accuracy": 1}))
    assert read_live_metric("accuracy", str(tmp_path / "live.json")) == 1.0


@pytest.mark.parametrize("body, error", [
    (None, "HTTP Error 404"),
    (b"{not json", "cannot read"),
    (b"[0.9]", "is not a JSON object"),
    (b'{"f1": 0.9}', "has no 'accuracy' \\(it has \\['f1'\\]\\)"),
    (b'{"accuracy": "high"}', "not a finite number: 'high'"),
    (b'{"accuracy": NaN}', "not a finite number: nan"),
    (b'{"accuracy": true}', "not a finite number: True"),
])
def test_an_unusable_live_metric_is_an_error(http_json, body, error):
    url, documents = http_json
    path = f"/{uuid.uuid4().hex}.json"
    if body is not None:
        documents[path] = body
    with pytest.raises(LiveMetricError, match=error):
        read_live_metric("accuracy", url + path)


def test_a_missing_live_metric_file_is_an_error(tmp_path):
    with pytest.raises(LiveMetricError, match="cannot read .*missing.json"):
        read_live_metric("accuracy", str(tmp_path / "missing.json"))


def write_images(root: Path, names: range) -> None:
    for i in names:
        write_plain(root / ("cat" if i % 2 else "dog") / f"{i:03d}.jpg", seed=i, size=(40, 40))


def pipeline_run(config, fingerprint: SourceFingerprint, status: str | None = "FINISHED") -> str:
    """A pipeline's MLflow parent run tagged as the pipeline tags it; left RUNNING when `status` is None."""
    run_id = start_pipeline_run(config, tags={
        KFP_RUN_ID_TAG: uuid.uuid4().hex,
        DATA_SOURCE_TAG: fingerprint.source,
        DATA_FINGERPRINT_TAG: fingerprint.sha256,
        DATA_INPUTS_TAG: str(fingerprint.inputs),
    })
    if status:
        finish_run(run_id, config, status=status)
    return run_id


def test_evaluate_policy_end_to_end(tmp_path, http_json):
    """Real pipeline runs in the session's SQLite store (an experiment and model of its own), real
    images, a champion, and the live metric from a file and a URL."""
    name = f"retrain-{uuid.uuid4().hex[:8]}"
    config = make_config(f"tracking.experiment={name}", f"tracking.registered_model={name}")
    images = tmp_path / "images"
    write_images(images, range(10))
    source = str(images)
    later = lambda: datetime.now(timezone.utc) + timedelta(hours=2)  # noqa: E731 (past the cool-down)
    policy = RetrainPolicy(max_model_age_days=30, live_metric="accuracy", live_metric_min=0.9,
                           live_metric_source=str(tmp_path / "live.json"))

    first = evaluate_policy(policy, config, source, now=later())
    assert first.retrain and first.triggers[0] == f"No pipeline run of {source} has finished yet."
    assert f"Live metric accuracy unavailable (cannot read {tmp_path / 'live.json'}" in first.notes[0]

    finished = pipeline_run(config, fingerprint_source(source))
    pipeline_run(config, SourceFingerprint(str(tmp_path / "other"), 1, "0" * 64))  # another source: not counted
    assert [r.run_id for r in read_history(config, source)] == [finished]
    (tmp_path / "live.json").write_text(json.dumps({"accuracy": 0.95}))
    steady = evaluate_policy(policy, config, source, now=later())
    assert not steady.retrain, steady
    assert steady.notes[0].startswith(f"The data is unchanged since run {finished} (10 inputs")
    assert "Live metric accuracy = 0.95 >= 0.9" in steady.notes[2]
    assert steady.notes[1].startswith("No champion model exists, but run")
    # Within the cool-down of the finished run: held, whatever else holds.
    write_images(images, range(10, 12))  # +20 %
    assert evaluate_policy(policy, config, source).holds[0].startswith(f"The newest run {finished} (FINISHED)")

    client = mlflow.MlflowClient(tracking_uri(config.tracking))
    client.create_registered_model(name)
    (tmp_path / "model").mkdir()
    version = client.create_model_version(name, str(tmp_path / "model"), run_id=finished)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
    url, documents = http_json
    documents["/retrain-live.json"] = json.dumps({"accuracy": 0.5}).encode()
    policy = RetrainPolicy(max_model_age_days=30, live_metric="accuracy", live_metric_min=0.9,
                           live_metric_source=f"{url}/retrain-live.json")
    grown = evaluate_policy(policy, config, source, now=later())
    assert grown.retrain
    assert grown.triggers == (f"2 new inputs since run {finished} (10 -> 12, +20 % >= 10 %).",
                              f"Live metric accuracy = 0.5 < 0.9 (from {url}/retrain-live.json).")
    assert "The champion model is 0.1 days old (< 30 days)." in grown.notes

    running = pipeline_run(config, fingerprint_source(source), status=None)
    held = evaluate_policy(policy, config, source, now=later())
    assert not held.retrain and held.triggers == grown.triggers
    assert held.holds[0] == f"Run {running} has been RUNNING for 2.0 h: not starting another."
    finish_run(running, config)
    done = evaluate_policy(policy, config, source, now=later())
    assert done.triggers == (f"Live metric accuracy = 0.5 < 0.9 (from {url}/retrain-live.json).",)
    assert done.retrain


def test_evaluate_policy_needs_tracking(tmp_path):
    with pytest.raises(ValueError, match="tracking.enabled is false"):
        evaluate_policy(RetrainPolicy(), make_config("tracking.enabled=false"), str(tmp_path))
