"""The deploy stage: atomic versions, models.config labels, blessing gate, servability check, and
promote/rollback, against the project's TF Serving-compatible server on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from components.deploy import run as deploy
from components.deploy.__main__ import main as deploy_main
from components.deploy.servability import NotServableError, check_servable
from components.evaluate.run import run_evaluate
from conftest import make_config

LENIENT = make_config("evaluate.min_accuracy=0", "evaluate.min_class_recall=0")


@pytest.fixture(scope="module")
def blessed(tiny_run, tiny_export, tmp_path_factory) -> str:
    return run_evaluate(tiny_export, tiny_run.ingest, str(tmp_path_factory.mktemp("eval") / "out"), LENIENT).output


def model_config(base: Path) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse((base / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())


def entry(base: Path, name: str):
    return next(e for e in model_config(base).model_config_list.config if e.name == name)


def test_push_canary_promote_and_rollback(tiny_export, blessed, tmp_path):
    base = tmp_path / "serving"
    first = deploy.push(tiny_export, str(base), "cvpipe", LENIENT, evaluation=blessed)
    assert (first.version, first.labels) == (1, {"stable": 1})
    assert (base / "cvpipe" / "1" / "saved_model.pb").exists() and not list((base / "cvpipe").glob("*.tmp-*"))
    stable = entry(base, "cvpipe")
    assert stable.base_path == str(base / "cvpipe") and list(stable.model_version_policy.specific.versions) == [1]

    canary = deploy.push(tiny_export, str(base), "cvpipe", LENIENT, evaluation=blessed, canary=True)
    assert (canary.version, canary.labels) == (2, {"stable": 1, "canary": 2})
    assert list(entry(base, "cvpipe").model_version_policy.specific.versions) == [1, 2]
    assert deploy.promote(str(base), "cvpipe").labels == {"stable": 2}
    assert deploy.rollback(str(base), "cvpipe").labels == {"stable": 1}
    history = json.loads((base / "cvpipe" / "deployments.json").read_text())
    assert [h["action"] for h in history] == ["push", "push", "promote", "rollback"]
    assert history[0]["blessed"] and not history[0]["forced"] and history[0]["source"] == tiny_export
    with pytest.raises(deploy.DeployError, match="no canary"):
        deploy.promote(str(base), "cvpipe")


def test_an_unblessed_model_needs_force_and_is_recorded(tiny_run, worse_export, tmp_path):
    refused = run_evaluate(worse_export, tiny_run.ingest, str(tmp_path / "eval"), make_config("evaluate.min_accuracy=1"))
    base = tmp_path / "serving"
    with pytest.raises(deploy.DeployError, match="not blessed .*--force"):
        deploy.push(worse_export, str(base), "cvpipe", LENIENT, evaluation=refused.output)
    with pytest.raises(deploy.DeployError, match="not blessed"):
        deploy.push(worse_export, str(base), "cvpipe", LENIENT)  # no evaluation at all
    assert not (base / "cvpipe" / "1").exists()
    forced = deploy.push(worse_export, str(base), "cvpipe", LENIENT, evaluation=refused.output, force=True)
    assert forced.version == 1
    (record,) = json.loads((base / "cvpipe" / "deployments.json").read_text())
    assert record["forced"] and not record["blessed"]


def test_a_broken_version_fails_the_servability_check_and_never_appears(tiny_export, blessed, tmp_path):
    check_servable(tiny_export, "cvpipe")  # the real export passes
    broken = tmp_path / "broken" / "1"
    shutil.copytree(tiny_export, broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(NotServableError, match="not servable"):
        check_servable(str(broken), "cvpipe")
    no_warmup = tmp_path / "no-warmup" / "1"
    shutil.copytree(tiny_export, no_warmup)
    (no_warmup / "assets.extra" / "tf_serving_warmup_requests").unlink()
    with pytest.raises(NotServableError, match="no warm-up requests"):
        check_servable(str(no_warmup), "cvpipe")

    base = tmp_path / "serving"
    with pytest.raises(NotServableError):
        deploy.push(str(broken), str(base), "cvpipe", LENIENT, force=True)
    assert not (base / "cvpipe").exists() or not [p for p in (base / "cvpipe").iterdir() if p.name.isdigit()]


def test_labels_move_only_after_the_server_loaded_the_version(tiny_export, blessed, tmp_path):
    """With --server, a label move waits for TF Serving to report the version AVAILABLE."""
    from serving.options import ServerOptions
    from serving.model_server import ModelServer

    base = tmp_path / "serving"
    deploy.push(tiny_export, str(base), "cvpipe", LENIENT, evaluation=blessed)
    options = ServerOptions(port=0, rest_api_port=0, model_config_file=str(base / "models.config"),
                            model_config_file_poll_wait_seconds=1, file_system_poll_wait_seconds=1,
                            allow_version_labels_for_unavailable_models=True)
    with ModelServer(options) as server:
        url = f"http://127.0.0.1:{server.ports.rest}"
        started = time.monotonic()
        result = deploy.push(tiny_export, str(base), "cvpipe", LENIENT, evaluation=blessed, server=url)
        assert result.labels == {"stable": 2}
        deploy.wait_until_available(url, "cvpipe", 2, timeout=30)
        assert time.monotonic() - started < 60


def test_cli_push(tiny_export, blessed, tmp_path):
    base = tmp_path / "serving"
    done = subprocess.run([sys.executable, "-m", "components.deploy", "--model", str(Path(tiny_export).parent),
                           "--evaluation", blessed, "--model-base-path", str(base), "--name", "cvpipe"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert entry(base, "cvpipe").version_labels["stable"] == 1


def cli_push(tiny_export: str, blessed: str, base: Path) -> list[str]:
    return [sys.executable, "-m", "components.deploy", "push", "--model", tiny_export, "--evaluation", blessed,
            "--model-base-path", str(base), "--name", "cvpipe"]


def killed_when(command: list[str], moment, timeout: float = 300) -> None:
    """Runs `command` and kills it with SIGKILL as soon as `moment()` is true."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not moment() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert process.poll() is None, "the push ended before the moment to kill it"
    process.kill()
    process.wait()


def test_a_killed_push_leaves_state_that_the_next_push_repairs(tiny_export, blessed, tmp_path):
    base = tmp_path / "serving"
    model_dir = base / "cvpipe"
    assert subprocess.run(cli_push(tiny_export, blessed, base), capture_output=True).returncode == 0
    killed_when(cli_push(tiny_export, blessed, base), lambda: bool(list(model_dir.glob("2.tmp-*"))))  # copying
    killed_when(cli_push(tiny_export, blessed, base), (model_dir / "2").exists)  # in place: the state writes follow
    assert not list(model_dir.glob("2.tmp-*"))  # the second killed push removed the first one's
    assert model_config(base).model_config_list.config[0].version_labels["stable"] in (1, 2)
    assert [h["version"] for h in json.loads((model_dir / "deployments.json").read_text())] in ([1], [1, 2])

    done = subprocess.run(cli_push(tiny_export, blessed, base), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((model_dir / "deployments.json").read_text())
    assert [h["version"] for h in history] in ([1, 3], [1, 2, 3])  # 2 was recorded if its push got that far
    assert entry(base, "cvpipe").version_labels["stable"] == 3 and history[-1]["labels"] == {"stable": 3}
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "3", "deployments.json", "deployments.json.bak"]


def test_a_damaged_state_file_stops_deploy_until_its_backup_is_restored(tiny_export, blessed, tmp_path, caplog):
    base = tmp_path / "serving"
    deploy.push(tiny_export, str(base), "cvpipe", LENIENT, evaluation=blessed)
    deploy.push(tiny_export, str(base), "cvpipe", LENIENT, evaluation=blessed, canary=True)
    arguments = ["--model-base-path", str(base), "--name", "cvpipe"]
    history = base / "cvpipe" / "deployments.json"
    history.write_text(history.read_text()[:150])  # cut short
    assert deploy_main(["promote", *arguments]) == 1
    assert f"{history} is damaged: not valid JSON (" in caplog.text and "cut short" in caplog.text
    assert f"restore it with: mv {history}.bak {history} (the last change is then lost" in caplog.text
    assert dict(entry(base, "cvpipe").version_labels) == {"stable": 1, "canary": 2}  # nothing changed
    os.replace(f"{history}.bak", history)  # the command the error gives
    assert deploy_main(["promote", *arguments]) == 0
    assert [h["action"] for h in json.loads(history.read_text())] == ["push", "promote"]  # the canary push is lost

    caplog.clear()
    config = base / "models.config"
    config.write_text(config.read_text()[:-20])
    assert deploy_main(["rollback", *arguments]) == 1
    assert f"{config} is damaged: not a valid TF Serving model config" in caplog.text
    assert f"restore it with: mv {config}.bak {config}" in caplog.text
    os.replace(f"{config}.bak", config)  # the config before the promotion
    assert deploy_main(["rollback", *arguments]) == 0
    assert dict(entry(base, "cvpipe").version_labels) == {"stable": 1}


def test_a_push_takes_the_version_it_is_given_if_it_is_free(tiny_export, blessed, tmp_path):
    base = tmp_path / "serving"
    assert deploy.push(tiny_export, str(base), "cvpipe", LENIENT, evaluation=blessed, version=3).version == 3
    assert sorted(p.name for p in (base / "cvpipe").iterdir() if p.is_dir()) == ["3"]
    for taken, why in ((3, r"already holds versions \[3\]"), (0, "versions start at 1")):
        with pytest.raises(deploy.DeployError, match=why):
            deploy.push(tiny_export, str(base), "cvpipe", LENIENT, evaluation=blessed, version=taken)
    assert deploy.push(tiny_export, str(base), "cvpipe", LENIENT, evaluation=blessed).version == 4  # the next free
    assert model_config(base).model_config_list.config[0].model_version_policy.specific.versions == [4]


def test_the_next_model_version_is_free_in_the_registry_and_the_serving_base(tiny_export, blessed, tmp_path):
    from components.model_versions import next_model_version
    from components.tracking.registry import register_model
    from components.tracking.runs import start_run

    base = tmp_path / "serving"
    name = f"versions-{tmp_path.name}"
    tracked = make_config(f"tracking.registered_model={name}")
    assert next_model_version(tracked) == next_model_version(tracked, str(base)) == 1
    assert next_model_version(make_config("tracking.enabled=false"), str(base)) == 1
    deploy.push(tiny_export, str(base), name, LENIENT, evaluation=blessed, version=2)
    assert next_model_version(tracked, str(base)) == 3 and next_model_version(tracked) == 1
    register_model(tiny_export, tracked, run_id=start_run(tracked, run_name="register"), blessed=False)
    register_model(tiny_export, tracked, run_id=start_run(tracked, run_name="register"), blessed=False)
    register_model(tiny_export, tracked, run_id=start_run(tracked, run_name="register"), blessed=False)
    assert next_model_version(tracked, str(base)) == 4  # three registered, two deployed
    assert next_model_version(make_config(f"tracking.registered_model={name}", "tracking.enabled=false"),
                              str(base)) == 3
