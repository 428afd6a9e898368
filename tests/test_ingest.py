"""Ingest end to end on real files with real Beam pipelines (in-process DirectRunner unless noted)."""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from components import dataset, records
from components.beam_runtime import beam_options, beam_pipeline
from components.ingest import run as ingest_run
from components.ingest.images import check_image, normalized_pixels
from components.ingest.pipeline import REJECTED, Accepted, Candidate, WriteShard, build_pipeline
from components.ingest.run import IngestError, _untracked_by_gc, run_ingest
from components.ingest.sources import InputImage
from conftest import CLASSES, make_config, write_class_tree
from image_files import write_plain

SHARD_NAME = re.compile(r"^(train|valid|test)-(\d{5})-of-(\d{5})\.tfrecord\.gz$")


def read_all(output: str | Path) -> dict[str, list[dict]]:
    """Every record of every split, as numpy values, in file order."""
    result = {}
    for split in records.SPLITS:
        result[split] = [
            {k: (v.numpy().decode() if v.dtype == tf.string and k != "image/encoded" else v.numpy()) for k, v in r.items()}
            for r in dataset.read_split(str(output), split)
        ]
    return result


def read_rejects(output: str | Path) -> dict[str, dict]:
    lines = Path(output, "rejects.jsonl").read_text().splitlines()
    return {json.loads(line)["uri"]: json.loads(line) for line in lines}


# --- the mixed folder tree: accounting, reasons, normalisation, layout -----------------------------------


def test_every_input_ends_in_a_split_or_in_rejects(mixed_tree, mixed_ingest):
    inputs = {str(p) for p in mixed_tree.root.rglob("*") if p.is_file()}
    stored = [r["image/source"] for split in read_all(mixed_ingest.output).values() for r in split]
    rejected = read_rejects(mixed_ingest.output)
    assert len(stored) == len(set(stored))
    assert set(stored).isdisjoint(rejected)
    assert set(stored) | set(rejected) == inputs

    stats = json.loads(Path(mixed_ingest.output, "stats.json").read_text())
    assert stats["inputs"] == len(inputs) == stats["accepted"] + stats["rejected"]
    assert stats["accepted"] == len(stored) == sum(s["images"] for s in stats["splits"].values())
    assert stats["rejects"] == {
        reason: sum(1 for r in rejected.values() if r["reason"] == reason) for reason in stats["rejects"]
    }
    for label in CLASSES:
        assert stats["classes"][label]["total"] == sum(
            r["label/text"] == label for split in read_all(mixed_ingest.output).values() for r in split
        )


def test_each_bad_file_is_rejected_with_its_reason(mixed_tree, mixed_ingest):
    rejected = read_rejects(mixed_ingest.output)
    assert {uri: r["reason"] for uri, r in rejected.items()} == {str(p): reason for p, reason in mixed_tree.rejects.items()}
    assert all(r["detail"] for r in rejected.values())
    duplicate = rejected[str(mixed_tree.root / "fox" / "fox_001_copy.jpg")]
    assert str(mixed_tree.root / "fox" / "fox_001.jpg") in duplicate["detail"]  # names the kept copy
    conflict = rejected[str(mixed_tree.root / "dog" / "conflict.jpg")]
    assert "'cat'" in conflict["detail"] and "'dog'" in conflict["detail"]


def test_records_decode_to_the_normalised_source_pixels(mixed_ingest):
    for split in read_all(mixed_ingest.output).values():
        for record in split:
            source = Path(record["image/source"]).read_bytes()
            expected = normalized_pixels(source)
            np.testing.assert_array_equal(record["image"], expected, err_msg=record["image/source"])
            assert (record["image/height"], record["image/width"]) == expected.shape[:2]


def test_special_modes_are_normalised_as_documented(mixed_tree, mixed_ingest):
    by_source = {r["image/source"]: r for split in read_all(mixed_ingest.output).values() for r in split}
    special = {name: by_source[str(path)] for name, path in mixed_tree.specials.items()}
    for name in ("gray_jpeg", "gray_png", "rgba_png", "palette_png"):  # TF decodes these as given
        assert special[name]["image/encoded"] == mixed_tree.specials[name].read_bytes(), name
    for name in ("gray16_png", "cmyk_jpeg", "bmp", "webp", "exif_rotated_jpeg"):  # re-encoded once, losslessly
        assert special[name]["image/format"] == "png", name
    assert special["bmp"]["image/original_format"] == "bmp"
    assert [special[n]["image/channels"] for n in ("gray_png", "rgba_png", "cmyk_jpeg", "gray16_png")] == [1, 4, 4, 1]

    rotated = special["exif_rotated_jpeg"]
    upright = np.asarray(tf.io.decode_jpeg(mixed_tree.specials["exif_rotated_jpeg"].read_bytes(), channels=3,
                                           dct_method="INTEGER_ACCURATE"))
    assert (rotated["image/height"], rotated["image/width"]) == (64, 48)  # stored 48x64, orientation 6
    np.testing.assert_array_equal(rotated["image"], np.rot90(upright, k=-1))

    sixteen = np.asarray(Image.open(mixed_tree.specials["gray16_png"]), dtype=np.int64)
    np.testing.assert_array_equal(special["gray16_png"]["image"][..., 0], sixteen >> 8)


def test_output_layout_labels_and_manifest(mixed_ingest):
    out = Path(mixed_ingest.output)
    shards = sorted(p.name for p in out.glob("*.tfrecord.gz"))
    assert shards and all(SHARD_NAME.match(name) for name in shards)
    assert (out / "labels.txt").read_text().splitlines() == sorted(CLASSES)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "ingest" and manifest["fingerprint"] == mixed_ingest.fingerprint
    assert sorted(s["file"] for s in manifest["outputs"]["shards"]) == shards
    assert not list(out.parent.glob("out.tmp-*")), "the work directory must be renamed away"
    for split, rows in read_all(out).items():
        assert [r["image/sha256"] for r in rows] == sorted(r["image/sha256"] for r in rows)  # one shard each here
        for r in rows:
            assert r["label/id"] == sorted(CLASSES).index(r["label/text"])


# --- CSV inputs ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def csv_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("csv")
    write_class_tree(root / "img", classes=("a", "b"), per_class=10, seed=50)
    return root


@pytest.mark.parametrize("layout", ["uri,label", "split,uri,label", "uri,label,split", "header"])
def test_csv_layouts_and_row_problems(csv_images, tmp_path, layout):
    images = sorted((csv_images / "img").rglob("*.*"))
    rows, expected_split = [], {}
    for i, path in enumerate(images):
        split = ("train", "valid", "test")[i % 3]
        relative = path.relative_to(csv_images).as_posix()  # resolved against the CSV's folder
        rows.append({"uri,label": f"{relative},{path.parent.name}",
                     "split,uri,label": f"{split.upper()},{relative},{path.parent.name}",
                     "uri,label,split": f"{path},{path.parent.name},{split}",
                     "header": f"{path.parent.name},{relative}"}[layout])
        expected_split[str(csv_images / relative)] = split
    bad = {
        "missing": f"{csv_images}/img/a/nope.jpg",
        "empty_label": f"{csv_images}/img/a/a_000.png",
        "too_many_fields": "x,y,z,w",
    }
    bad_rows = {
        "uri,label": [f"{bad['missing']},a", f"{bad['empty_label']},", bad["too_many_fields"]],
        "split,uri,label": [f"train,{bad['missing']},a", f"bogus,{bad['empty_label']},a", bad["too_many_fields"]],
        "uri,label,split": [f"{bad['missing']},a,train", f"{bad['empty_label']},,test", bad["too_many_fields"]],
        "header": [f"a,{bad['missing']}", f",{bad['empty_label']}", bad["too_many_fields"]],
    }[layout]
    header = "label,image_uri\n" if layout == "header" else ""
    csv_path = csv_images / f"{layout.replace(',', '_')}.csv"
    csv_path.write_text(header + "\n".join(rows + bad_rows) + "\n\n")

    result = run_ingest(str(csv_path), str(tmp_path / "out"), make_config())

    assert result.stats.inputs == len(rows) + len(bad_rows)
    reasons = sorted(r["reason"] for r in read_rejects(result.output).values())
    second = {"split,uri,label": "malformed_row"}.get(layout, "missing_label")
    assert reasons == sorted(["missing", second, "malformed_row"])
    # the empty-label row points at an image that is also listed with its label: it must still be stored
    stored = {r["image/source"]: split for split, rs in read_all(result.output).items() for r in rs}
    assert len(stored) == len(rows)
    if layout in ("split,uri,label", "uri,label,split"):
        assert stored == expected_split  # an explicit split column wins over the hash


def test_unknown_labels_are_rejected_when_the_vocabulary_is_fixed(csv_images, tmp_path):
    result = run_ingest(str(csv_images / "img"), str(tmp_path / "out"), make_config("ingest.labels=[b]"))
    assert result.stats.rejects == {"unknown_label": 10}
    assert Path(result.output, "labels.txt").read_text() == "b\n"


# --- splits: deterministic, stable as data grows, identical across runners ---------------------------------


def split_of_each_source(output: str) -> dict[str, str]:
    return {r["image/source"]: split for split, rs in read_all(output).items() for r in rs}


@pytest.mark.slow
def test_splits_are_stable_when_data_grows_and_output_is_identical_across_runners(tmp_path):
    root = tmp_path / "images"
    write_class_tree(root, classes=("a", "b"), per_class=40, seed=300)
    first = run_ingest(str(root), str(tmp_path / "first"), make_config())
    multi = run_ingest(str(root), str(tmp_path / "multi"), make_config(
        "beam.direct_running_mode=multi_processing", "beam.direct_num_workers=2"))
    for shard in Path(first.output).glob("*.tfrecord.gz"):
        assert shard.read_bytes() == Path(multi.output, shard.name).read_bytes(), shard.name
    assert first.fingerprint == multi.fingerprint

    write_class_tree(root, classes=("a", "b", "c"), per_class=60, seed=300)  # 20 more a/b, 60 new c
    grown = run_ingest(str(root), str(tmp_path / "grown"), make_config())
    before, after = split_of_each_source(first.output), split_of_each_source(grown.output)
    assert len(after) == 180
    assert {uri: after[uri] for uri in before} == before
    assert grown.fingerprint != first.fingerprint
    splits = [after[u] for u in after]
    assert splits.count("train") > 0.6 * len(splits) and splits.count("test") > 0


def test_shards_are_the_same_whatever_the_number_of_threads(tmp_path, csv_images):
    # Images are checked and shards written on threads; records are in content-hash order all the same.
    outputs = [
        run_ingest(str(csv_images / "img"), str(tmp_path / f"threads-{threads}"),
                   make_config("ingest.target_shard_bytes=40000", f"ingest.threads={threads}")).output
        for threads in (1, 3)
    ]
    shards = sorted(p.name for p in Path(outputs[0]).glob("*.tfrecord.gz"))
    assert len(shards) > 2 and shards == sorted(p.name for p in Path(outputs[1]).glob("*.tfrecord.gz"))
    for name in shards:
        assert Path(outputs[0], name).read_bytes() == Path(outputs[1], name).read_bytes(), name


def test_one_worker_checks_as_it_reads_with_older_objects_hidden_from_the_garbage_collector(
        tmp_path, csv_images, monkeypatch):
    # A full collection scans TensorFlow's and Beam's ~500,000 objects: 0.27 s in the middle of a job.
    built = {}

    def build_and_note(*args, **kwargs):
        built.update(frozen=gc.get_freeze_count(), spread_checks=kwargs["spread_checks"])
        return build_pipeline(*args, **kwargs)

    monkeypatch.setattr(ingest_run, "build_pipeline", build_and_note)
    assert gc.get_freeze_count() == 0
    run_ingest(str(csv_images / "img"), str(tmp_path / "one"), make_config())
    assert built["spread_checks"] is False and built["frozen"] > 100_000
    assert gc.get_freeze_count() == 0
    run_ingest(str(csv_images / "img"), str(tmp_path / "two"), make_config(
        "beam.direct_running_mode=multi_threading", "beam.direct_num_workers=2"))
    assert built["spread_checks"] is True


def test_a_process_that_froze_objects_itself_keeps_them_frozen():
    # Frozen objects can still be freed, so the freeze count may drop meanwhile: check what the block did instead.
    gc.freeze()  # before forking, say
    try:
        created_since = []
        with _untracked_by_gc():
            still_collectable = any(tracked is created_since for tracked in gc.get_objects())
        assert still_collectable, "the block froze objects again"
        assert gc.get_freeze_count() > 0, "the block unfroze the caller's objects"
    finally:
        gc.unfreeze()


def test_shards_follow_the_target_size(tmp_path, csv_images):
    result = run_ingest(str(csv_images / "img"), str(tmp_path / "out"), make_config("ingest.target_shard_bytes=40000"))
    names = sorted(p.name for p in Path(result.output).glob("*.tfrecord.gz"))
    train = [n for n in names if n.startswith("train-")]
    assert len(train) > 1 and train == [f"train-{i:05d}-of-{len(train):05d}.tfrecord.gz" for i in range(len(train))]
    assert result.stats.splits["train"].shards == len(train)
    assert sum(1 for _ in dataset.read_split(result.output, "train", decode=False)) == result.stats.splits["train"].images


# --- failures: clear errors, nothing that looks complete ----------------------------------------------------


def test_nothing_accepted_exits_non_zero_with_a_message(tmp_path):
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "a" / "x.jpg").write_bytes(b"not an image")
    proc = subprocess.run(
        [sys.executable, "-m", "components.ingest", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
         "--set", "beam.direct_running_mode=in_memory"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert "no image was accepted out of 1 inputs" in proc.stderr
    assert "Traceback" not in proc.stderr  # one line; --verbose adds it (test_cli)
    assert not (tmp_path / "out").exists()


def test_a_folder_without_class_folders_is_refused_with_the_expected_layout(tmp_path):
    write_plain(tmp_path / "flat" / "a.jpg", seed=1)  # gs:// inputs are not checked by the command line: here
    with pytest.raises(IngestError, match=re.escape("expected class folders PATH/<label>/<image>")):
        run_ingest(str(tmp_path / "flat"), str(tmp_path / "out"), make_config())


def test_one_class_and_a_rare_class_are_warned_about_and_recorded(tmp_path, caplog):
    write_class_tree(tmp_path / "one", classes=("cat",), per_class=6)
    result = run_ingest(str(tmp_path / "one"), str(tmp_path / "out1"), make_config())
    one_class, few = result.stats.warnings
    assert one_class.startswith("one class only (cat)")
    assert few.startswith("class(es) with fewer than 10 training images") and "cat " in few
    assert json.loads((tmp_path / "out1" / "stats.json").read_text())["warnings"] == result.stats.warnings
    assert "Suspicious data: one class only (cat)" in caplog.text


def test_heavy_class_imbalance_is_warned_about_with_both_classes(tmp_path):
    write_class_tree(tmp_path / "in", classes=("cat",), per_class=40)
    write_class_tree(tmp_path / "in", classes=("dog",), per_class=3, seed=500)
    config = make_config("ingest.min_class_train_images=0", "ingest.splits.train=1", "ingest.splits.valid=0",
                         "ingest.splits.test=0")
    [warning] = run_ingest(str(tmp_path / "in"), str(tmp_path / "out"), config).stats.warnings
    assert warning == ("class imbalance 13.3:1 above 10 (ingest.max_class_imbalance): largest cat 40, "
                       "smallest dog 3 training images")


def test_a_balanced_dataset_has_no_warning(mixed_ingest):
    assert mixed_ingest.stats.warnings == []


def test_a_class_without_training_images_fails(tmp_path):
    paths = [write_plain(tmp_path / "img" / f"{i}.jpg", seed=900 + i) for i in range(6)]
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("".join(f"{'test' if i == 5 else 'train'},{p},{'rare' if i == 5 else 'common'}\n"
                                for i, p in enumerate(paths)))
    with pytest.raises(IngestError, match=r"\['rare'\] have no training image"):
        run_ingest(str(csv_path), str(tmp_path / "out"), make_config())
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(csv_images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_ingest(str(csv_images / "img"), str(out), make_config())
    run_ingest(str(csv_images / "img"), str(out), make_config(), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()


def test_an_output_path_with_glob_characters_works(csv_images, tmp_path):
    result = run_ingest(str(csv_images / "img"), str(tmp_path / "out[1]*"), make_config())
    assert result.stats.accepted > 0 and Path(result.output, "manifest.json").exists()


def test_reader_refuses_an_unfinished_output(tmp_path):
    (tmp_path / "train-00000-of-00001.tfrecord.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="not a finished ingest"):
        dataset.read_split(str(tmp_path), "train")


def test_a_file_changed_after_its_check_is_rejected_not_written(tmp_path):
    # The shard writer reads each kept file again: a file rewritten in between must not be written.
    config = make_config().ingest
    stable, changed = write_plain(tmp_path / "stable.png", seed=1), write_plain(tmp_path / "changed.png", seed=2)
    accepted = [Accepted("train", Candidate(InputImage(str(path), "cat"), check_image(path.read_bytes(), config)))
                for path in (stable, changed)]
    write_plain(changed, seed=3)  # new content after the check
    (tmp_path / "out").mkdir()
    with beam_pipeline(beam_options(make_config(), None, [])) as pipeline:
        written = (
            pipeline
            | beam.Create([(("train", 0), accepted)])
            | beam.ParDo(WriteShard(str(tmp_path / "out"), config, {"cat": 0}), {"train": 1})
            .with_outputs(REJECTED, main="summaries")
        )
        assert_that(written.summaries | beam.Map(lambda s: (s.file, s.records)),
                    equal_to([("train-00000-of-00001.tfrecord.gz", 1)]), label="OneRecord")
        assert_that(written[REJECTED] | beam.Map(lambda r: (r.uri, r.reason.value)),
                    equal_to([(str(changed), "changed_during_ingest")]), label="ChangedRejected")
