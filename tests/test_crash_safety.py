"""Stages after kill -9: what a killed run left behind is removed by the next run (never what a live
run is writing), and a stage output finished but never tracked is tracked by the rerun. Real
processes, killed for real; the MLflow store is the tests' SQLite one (conftest)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from components import staging
from components.ingest.__main__ import main as ingest_main
from conftest import write_class_tree

# Stages `sys.argv[1]`, writes a part and waits to be killed.
HOLDER = """
import sys, time
from components.staging import staged_output
with staged_output(sys.argv[1], overwrite=False) as work_dir:
    open(work_dir + "/part", "w").write("written so far")
    print(work_dir, flush=True)
    time.sleep(600)
"""


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def write_output(output: Path, content: str, overwrite: bool = False) -> None:
    with staging.staged_output(str(output), overwrite) as work_dir:
        Path(work_dir, "data").write_text(content)


def test_a_killed_run_s_work_directory_goes_with_the_next_run_and_a_live_one_stays(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="components.staging")
    output = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        live = Path(holder.stdout.readline().strip())
        assert (live / "part").exists()
        write_output(output, "first")  # another run of the same output, meanwhile
        assert live.exists() and f"{live} is being written by a running process (pid {holder.pid}" in caplog.text
    finally:
        holder.kill()
        holder.wait()
    assert names(tmp_path) == sorted(["out", live.name, live.name.replace(".tmp-", ".owner-")])

    write_output(output, "second", overwrite=True)
    assert names(tmp_path) == ["out"] and (output / "data").read_text() == "second"
    assert f"Removed {live}, left by a run that was killed or crashed (pid {holder.pid}" in caplog.text


def dead_owner(**record) -> dict:
    """An owner record of this machine whose process has ended."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return {"host": socket.gethostname(), "machine": staging._machine(), "pid": ended.pid, "started": "1",
            "created": "earlier", "heartbeat": time.time(), **record}


def test_a_run_killed_while_replacing_its_output_gives_the_previous_one_back(tmp_path, caplog):
    output = tmp_path / "out"
    (tmp_path / "out.old-0000dead").mkdir()  # the previous output, renamed away
    (tmp_path / "out.old-0000dead" / "data").write_text("previous")
    (tmp_path / "out.tmp-0000dead").mkdir()  # the new one, not yet renamed into place
    (tmp_path / "out.owner-0000dead").write_text(json.dumps(dead_owner(replacing=True)))
    with pytest.raises(staging.OutputExistsError, match="out already exists; pass --overwrite"):
        write_output(output, "new")
    assert names(tmp_path) == ["out"] and (output / "data").read_text() == "previous"
    assert f"Restored {output} from {output}.old-0000dead" in caplog.text


def test_what_may_still_be_in_use_is_left_alone(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="components.staging")
    output = tmp_path / "out"
    elsewhere = {"host": "worker-7", "machine": "worker-7 another-boot", "pid": 1, "created": "earlier"}
    for run, record in {"00f7e500": {**elsewhere, "heartbeat": time.time()},  # alive elsewhere
                        "0005a1e0": {**elsewhere, "heartbeat": time.time() - staging.STALE_SECONDS - 1}}.items():
        (tmp_path / f"out.tmp-{run}").mkdir()
        (tmp_path / f"out.owner-{run}").write_text(json.dumps(record))
    (tmp_path / "out.tmp-0000beef").mkdir()  # an older cvpipe's: no owner record

    class Refused(Exception):
        pass

    with pytest.raises(Refused):  # kept for inspection
        with staging.staged_output(str(output), False, keep_on=(Refused,)) as kept:
            raise Refused()
    assert Path(kept).is_dir() and f"kept for inspection in {kept}" in caplog.text
    write_output(output, "done")
    assert names(tmp_path) == sorted(["out", "out.tmp-00f7e500", "out.owner-00f7e500", "out.tmp-0000beef",
                                      Path(kept).name, Path(kept).name.replace(".tmp-", ".owner-")])
    assert "out.tmp-00f7e500 is being written by a running process (pid 1 on worker-7" in caplog.text
    assert "Removed " + str(tmp_path / "out.tmp-0005a1e0") in caplog.text
    assert "out.tmp-0000beef has no readable owner record" in caplog.text
    assert f"{kept} is kept for inspection since a failed run" in caplog.text

    Path(kept).rmdir()  # inspected and removed by hand: its record goes with the next run
    write_output(output, "again", overwrite=True)
    assert names(tmp_path) == sorted(["out", "out.owner-00f7e500", "out.tmp-00f7e500", "out.tmp-0000beef"])


def test_an_ingest_killed_before_its_tracking_is_tracked_by_the_rerun(tmp_path, caplog):
    write_class_tree(tmp_path / "images", per_class=8)
    output = tmp_path / "ingest"
    flags = ["--input", str(tmp_path / "images"), "--output", str(output),
             "--set", "beam.direct_running_mode=in_memory", "--set", "beam.direct_num_workers=1"]
    # An MLflow server that accepts connections and never answers: the ingest writes its output,
    # then waits in its tracking, where it is killed.
    with socket.create_server(("127.0.0.1", 0)) as black_hole, open(tmp_path / "killed.log", "w") as log:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{black_hole.getsockname()[1]}"}
        killed = subprocess.Popen([sys.executable, "-m", "components.ingest", *flags], env=env, stderr=log)
        deadline = time.monotonic() + 300
        while not (output / "manifest.json").exists() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        killed.kill()
        killed.wait()
    client = mlflow.MlflowClient()  # the tests' store (conftest)

    def tracked() -> list:
        return client.search_runs([client.get_experiment_by_name("cvpipe").experiment_id],
                                  f"tags.`cvpipe.output` = '{output}'")

    assert ingest_main(flags) == 0
    assert f"{output} is finished and made from the same inputs and config, but was never tracked" in caplog.text
    assert names(tmp_path) == ["images", "ingest", "killed.log"]  # an owner record the kill left is gone too
    (run,) = tracked()
    assert run.info.status == "FINISHED" and run.data.tags["cvpipe.stage"] == "ingest"
    assert run.data.metrics["accepted"] == json.loads((output / "stats.json").read_text())["accepted"]

    caplog.clear()
    assert ingest_main(flags) == 1  # tracked now: the error of any existing output
    assert f"output {output} already exists; pass --overwrite to replace it (it is tracked already: MLflow run " \
           f"{run.info.run_id})" in caplog.text
    assert ingest_main([*flags, "--set", "ingest.min_side=40"]) == 1
    assert "already exists; pass --overwrite to replace it (it was made from other inputs or config: " \
           "config.ingest.min_side is 32 there, 40 now)" in caplog.text
    assert len(tracked()) == 1


def test_a_push_of_the_next_version_removes_what_a_killed_push_of_another_left(tmp_path, caplog):
    model = tmp_path / "serving" / "cvpipe"
    (model / "2.tmp-0000dead").mkdir(parents=True)  # a push of version 2, killed while copying
    (model / "2.owner-0000dead").write_text(json.dumps(dead_owner()))
    (model / "2").mkdir()  # one killed after the rename leaves only its record
    (model / "2.owner-0000abcd").write_text(json.dumps(dead_owner()))
    write_output(model / "3", "version 3")
    assert names(model) == ["2", "3"]
    assert f"Removed {model / '2.tmp-0000dead'}" in caplog.text
