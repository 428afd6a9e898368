"""State files under kill -9: `files.write_file` leaves the old or the new content, keeps a backup,
and a damaged file names the way out. Real processes, killed at random moments, and real files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from components import files

# Writes ever-growing numbered contents until it is killed. Sizes vary (1 KB to 1.5 MB) so that a
# kill lands in the write, the fsync or the rename; `n` and `end` bracket the payload.
WRITER = """
import json, sys
from components.files import write_file
path, n = sys.argv[1], int(sys.argv[2])
while True:
    n += 1
    write_file(path, json.dumps({"n": n, "payload": "x" * (n % 7 * 250_000 + 1_000), "end": n}), backup=True)
    print(n, flush=True)
"""


def complete(text: str) -> int:
    """The `n` of a complete content written by WRITER (fails on a partial or mixed one)."""
    content = json.loads(text)
    assert content["n"] == content["end"] and len(content["payload"]) == content["n"] % 7 * 250_000 + 1_000
    return content["n"]


def test_a_writer_killed_at_random_moments_leaves_the_old_or_the_new_content(tmp_path):
    path = tmp_path / "deployments.json"
    files.write_file(str(path), json.dumps({"n": 0, "payload": "x" * 1_000, "end": 0}))
    reads, failures, stop = [], [], threading.Event()

    def read_while_writing() -> None:  # as a polling server reads: every read sees one whole content
        while not stop.is_set():
            text = path.read_text()
            try:
                reads.append(complete(text))
            except (ValueError, AssertionError) as e:
                failures.append(f"{e}: {text[:40]!r}...{text[-40:]!r}")

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    rng = random.Random(13)
    try:
        for _ in range(12):
            before = complete(path.read_text())
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(before)], stdout=subprocess.PIPE,
                                      text=True)
            assert int(writer.stdout.readline()) == before + 1  # it is writing
            time.sleep(rng.uniform(0, 0.3))
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            after, backup = complete(path.read_text()), complete(Path(f"{path}.bak").read_text())
            assert after > before and backup in (after - 1, after)  # killed between backup and file: equal
    finally:
        stop.set()
        reader.join()
    assert not failures and len(reads) > 100 and reads == sorted(reads)

    # Temporary files of killed writes are removed by a later write once they are stale.
    leftovers = list(tmp_path.glob("*.tmp-*"))
    for leftover in leftovers:
        os.utime(leftover, (time.time() - files.STALE_TEMPORARY_SECONDS - 60,) * 2)
    files.write_file(str(path), path.read_text(), backup=True)
    assert not list(tmp_path.glob("*.tmp-*")), leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deployments.json", "deployments.json.bak"]


def parse_list(text: str) -> list:
    content = files.parse_json(text)
    if not isinstance(content, list):
        raise ValueError("not a list")
    return content


@pytest.mark.parametrize("damage", [b"", b'[{"action": "push"}, {"act', b"\x00" * 64])
def test_a_damaged_state_file_says_how_to_restore_its_backup(tmp_path, damage):
    path = str(tmp_path / "deployments.json")
    files.write_file(path, json.dumps([{"action": "push"}]), backup=True)
    files.write_file(path, json.dumps([{"action": "push"}, {"action": "promote"}]), backup=True)
    assert files.read_state_file(path, parse_list) == [{"action": "push"}, {"action": "promote"}]
    Path(path).write_bytes(damage)  # what a disk or a hand edit can do
    with pytest.raises(files.DamagedFileError) as error:
        files.read_state_file(path, parse_list)
    message = str(error.value)
    assert message.startswith(f"{path} is damaged: ") and f"restore it with: mv {path}.bak {path}" in message
    subprocess.run(message.split("restore it with: ")[1].split(" (")[0], shell=True, check=True)
    assert files.read_state_file(path, parse_list) == [{"action": "push"}]
    assert files.read_state_file(str(tmp_path / "missing.json"), parse_list) is None


def test_without_a_good_backup_the_message_says_so(tmp_path):
    path = tmp_path / "deployments.json"
    path.write_text('[{"action": "push"}')
    with pytest.raises(files.DamagedFileError, match=r"cut short.*It has no backup .*: repair it by hand, or move it "
                       r"aside to start it afresh: mv .*deployments.json .*deployments.json.damaged"):
        files.read_state_file(str(path), parse_list)
    Path(f"{path}.bak").write_text("{}")
    with pytest.raises(files.DamagedFileError, match=r"Its backup .*deployments.json.bak is damaged too \(not a list\)"):
        files.read_state_file(str(path), parse_list)


def test_uris_are_written_through_tf_io_gfile(tmp_path):
    import tensorflow as tf

    path = f"ram://{tmp_path}/deployments.json"  # TensorFlow's in-memory file system stands in for gs://
    files.write_file(path, "[1]", backup=True)
    files.write_file(path, "[1, 2]", backup=True)
    assert files.read_bytes(path) == b"[1, 2]" and files.read_bytes(f"{path}.bak") == b"[1]"
    assert sorted(tf.io.gfile.listdir(f"ram://{tmp_path}")) == ["deployments.json", "deployments.json.bak"]
    files.write_file(path, "[1, 2", backup=True)  # damaged (as by hand)
    with pytest.raises(files.DamagedFileError, match=f"restore it with: move {path}.bak to {path}"):
        files.read_state_file(path, parse_list)
