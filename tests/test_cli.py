"""The command lines as a user meets them: `--help` of every entry point answers without loading TensorFlow
(nor kfp, MLflow or Beam) and says what each command and option is; usage errors are one line with exit
status 2; `--verbose` adds the traceback; TensorFlow's start-up lines never reach the terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components.config import TrainConfig, meaning_of
from image_files import write_plain

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("tensorflow", "kfp", "mlflow", "apache_beam")

# Runs `python -m MODULE ARGS...` in this process, then reports the heavy modules it imported.
_PROBE = """
import runpy, sys
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
print("imported:", ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""

# Every entry point (and subcommand) with the names its help must list.
HELPS = {
    ("components.ingest",): ["--input", "PATH/<label>/<image>", "--runner"],
    ("components.transform",): ["--image-size", "--resize-method"],
    ("components.train",): ["--epochs", "--model", "--tuning"],
    ("components.tune",): ["--max-trials", "--algorithm", "--max-minutes"],
    ("components.tune.katib",): ["--parallel-trials", "--trials-dir", "--algorithm"],
    ("components.monitor",): ["--logs", "--labels", "--baseline", "--window", "--fail-on-alert", "--webhook",
                              "--export-labelled"],
    ("components.evaluate",): ["--champion", "--no-champion"],
    ("components.export",): ["--transform", "--version"],
    ("components.deploy",): ["push", "promote", "rollback"],
    ("components.deploy", "push"): ["--model", "--if-blessed", "--model-base-path"],
    ("components.deploy", "promote"): ["--model-base-path", "--name"],
    ("components.deploy", "rollback"): ["--model-base-path", "--name"],
    ("components.batch_predict",): ["--model", "--format"],
    ("components.register",): ["--model", "--evaluation"],
    ("components.tracking",): ["start", "finish"],
    ("components.tracking", "start"): ["--run-name", "--tag"],
    ("components.tracking", "finish"): ["run_id", "--status"],
    ("components.demo_data",): ["--output", "--per-class"],
    ("serving.server",): ["--model_base_path", "--rest_api_port"],
    ("serving.client",): ["--grpc", "--label"],
    ("pipeline",): ["compile", "run", "submit", "schedule", "retrain"],
    ("pipeline", "compile"): ["--output", "--gpus"],
    ("pipeline", "run"): ["--data", "--workdir", "--no-cache"],
    ("pipeline", "submit"): ["--host", "--data"],
    ("pipeline", "schedule"): ["--cron", "--host"],
    ("pipeline", "retrain"): ["--min-new-images", "--dry-run"],
    ("bench",): ["--only", "--images"],
}


def run_module(*argv: str) -> subprocess.CompletedProcess:
    """`python -m argv[0] argv[1:]`, reporting on stderr which heavy modules it imported."""
    return subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def imported(done: subprocess.CompletedProcess) -> list[str]:
    [line] = [line for line in done.stderr.splitlines() if line.startswith("imported:")]
    return [name for name in line.removeprefix("imported:").strip().split(",") if name]


def errors(done: subprocess.CompletedProcess) -> list[str]:
    """What the command wrote to stderr, without the probe's report."""
    return [line for line in done.stderr.splitlines() if not line.startswith("imported:")]


@pytest.mark.parametrize("command", list(HELPS), ids=" ".join)
def test_help_describes_every_command_and_option_without_heavy_imports(command):
    done = run_module(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert imported(done) == [] and errors(done) == []
    usage, description, *_ = done.stdout.split("\n\n")
    assert usage.startswith("usage: ") and description.strip() and not description.startswith(("options:",
                                                                                                 "positional"))
    for name in [*HELPS[command], "--verbose"]:
        assert name in done.stdout


def test_train_help_gives_each_hyperparameter_its_meaning_and_default():
    done = run_module("components.train", "--help")
    text = " ".join(done.stdout.split())  # help lines are wrapped
    assert f"{meaning_of(TrainConfig, 'epochs')} (train.epochs, default: {TrainConfig().epochs})" in text
    assert f"(train.learning_rate, default: {TrainConfig().learning_rate})" in text
    assert "(train.augment.crop_ratio, default: 1.0)" in text


def test_deploy_still_pushes_without_a_command_name(tmp_path):
    done = run_module("components.deploy", "--model", str(tmp_path / "missing"), "--model-base-path",
                      str(tmp_path / "base"), "--name", "m")
    assert done.returncode == 2
    assert errors(done) == [f"python -m components.deploy: error: --model {tmp_path / 'missing'} does not exist; "
                            "expected an exported SavedModel (BASE/NAME/<version> or BASE/NAME)"]


@pytest.mark.parametrize("command", [
    ("components.ingest", "--input", "{missing}", "--output", "{tmp}/out"),
    ("components.transform", "--input", "{missing}", "--output", "{tmp}/out"),
    ("components.train", "--transformed", "{missing}", "--output", "{tmp}/out"),
    ("components.tune", "--transformed", "{missing}", "--output", "{tmp}/out"),
    ("components.export", "--model", "{missing}", "--transform", "{tmp}", "--output", "{tmp}/out"),
    ("components.evaluate", "--model", "{missing}", "--data", "{tmp}", "--output", "{tmp}/out"),
    ("components.batch_predict", "--model", "{tmp}", "--input", "{missing}", "--output", "{tmp}/out"),
    ("components.register", "--model", "{missing}", "--evaluation", "{tmp}"),
    ("components.monitor", "--logs", "{tmp}", "--baseline", "{missing}", "--output", "{tmp}/out"),
    ("pipeline", "run", "--data", "{missing}", "--workdir", "{tmp}/work"),
    ("pipeline", "retrain", "--data", "{missing}", "--dry-run"),
], ids=lambda command: " ".join(command[:2]))
def test_a_missing_local_path_is_one_line_naming_it_with_exit_status_2(command, tmp_path):
    missing = tmp_path / "nowhere"
    done = run_module(*(part.format(missing=missing, tmp=tmp_path) for part in command))
    assert done.returncode == 2
    [line] = errors(done)
    assert f"{missing} does not exist; expected" in line and "Traceback" not in done.stderr
    assert imported(done) == []  # refused before anything heavy loads
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_pipeline_run_on_images_without_class_folders_shows_the_expected_layout(tmp_path):
    write_plain(tmp_path / "flat" / "a.jpg", seed=1)
    done = run_module("pipeline", "run", "--data", str(tmp_path / "flat"), "--workdir", str(tmp_path / "work"))
    assert done.returncode == 2
    assert errors(done) == [f"python -m pipeline: error: --data {tmp_path / 'flat'} holds 1 file(s) but no class "
                            "folder; expected class folders PATH/<label>/<image> (e.g. PATH/cat/0001.jpg), or a CSV "
                            "file of uri,label (or split,uri,label) rows"]


def test_remote_paths_are_not_checked_on_this_machine():
    done = run_module("components.ingest", "--input", "gs://bucket/images", "--output", "gs://bucket/out",
                      "--set", "ingest.threads=-1")  # refused by the config check after the path check
    assert done.returncode == 2 and "ingest.threads must be >= 0" in done.stderr and "does not exist" not in done.stderr


def test_a_bad_config_value_is_one_line_with_exit_status_2(tmp_path):
    done = run_module("components.train", "--transformed", str(tmp_path), "--output", str(tmp_path / "out"),
                      "--set", "train.epochs=zero")
    assert done.returncode == 2
    [line] = errors(done)
    assert line.startswith("python -m components.train: error: defaults: train.epochs must be int")


def test_verbose_shows_the_traceback_of_an_error_tensorflow_start_stays_quiet(tmp_path):
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "a" / "x.jpg").write_bytes(b"not an image")
    done = run_module("components.ingest", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                      "--set", "beam.direct_running_mode=in_memory", "--verbose")
    assert done.returncode == 1
    assert "no image was accepted out of 1 inputs" in done.stderr and "Traceback" in done.stderr
    assert "IngestError" in done.stderr
    for noise in ("absl::InitializeLog", "cudart_stub", "cuInit", "Unable to register"):
        assert noise not in done.stderr
