"""components.image_inputs: what ingest and batch scoring read image inputs by, the same way."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from components.batch_predict import inputs as batch_inputs
from components.image_inputs import URI_COLUMNS, open_image, read_file
from components.ingest import sources
from components.rejections import ImageRejected, Reason
from image_files import pattern


@pytest.mark.parametrize("column", sorted(URI_COLUMNS))
def test_both_stages_read_a_csv_header_naming_the_uri_column(tmp_path, column):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(f"{column},label\nimg/a.png,cat\n")

    listed = sources.list_inputs(str(csv_path))
    scored = batch_inputs.list_inputs(str(csv_path))

    uri = str(tmp_path / "img" / "a.png")  # resolved against the CSV's folder
    assert [(image.uri, image.label) for image in listed.images] == [(uri, "cat")] and not listed.rejections
    assert scored.uris == [uri] and not scored.errors


def test_both_stages_list_every_file_below_a_directory(tmp_path):
    for name in ("b/2.png", "a/1.png", "a/deeper/3.png", "loose.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")

    listed = sources.list_inputs(str(tmp_path))

    assert batch_inputs.list_inputs(str(tmp_path)).uris == sorted(
        [image.uri for image in listed.images] + [r.uri for r in listed.rejections])
    assert [(r.uri, r.reason) for r in listed.rejections] == [(str(tmp_path / "loose.png"), Reason.MISSING_LABEL)]


@pytest.mark.parametrize("content, limit, reason, detail", [
    (None, 10, Reason.MISSING, "no such file"),
    (b"x" * 11, 10, Reason.TOO_LARGE, "more than stage.limit=10 bytes"),
])
def test_read_file_rejects_missing_and_oversized_files(tmp_path, content, limit, reason, detail):
    path = tmp_path / "image"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageRejected) as rejected:
        read_file(str(path), limit, "stage.limit")
    assert (rejected.value.reason, rejected.value.detail) == (reason, detail)


def test_read_file_reads_a_file_at_the_limit_whole(tmp_path):
    path = tmp_path / "image"
    data = bytes(range(256)) * 9000  # more than one read chunk
    path.write_bytes(data)
    assert read_file(str(path), len(data), "stage.limit") == data


@pytest.mark.parametrize("data, reason", [
    (b"\xff\xd8\xff\xe0 truncated", Reason.CORRUPT),  # a JPEG signature whose header does not parse
    (b"plain text, no image", Reason.NOT_IMAGE),
])
def test_open_image_tells_a_broken_image_from_no_image(data, reason):
    with pytest.raises(ImageRejected) as rejected:
        open_image(data)
    assert rejected.value.reason == reason


def test_open_image_reads_the_header():
    png = io.BytesIO()
    Image.fromarray(pattern(8, 12, seed=1)).save(png, format="PNG")
    with open_image(png.getvalue()) as image:
        assert (image.format, image.size) == ("PNG", (12, 8))
