"""Hostile images (issue 13): the exported model reads every header in its graph and refuses image
bombs, unknown formats, broken headers and non-finite pixels before it decodes or encodes a pixel.

Bombs are small files whose header declares a huge image; `png_of_size(..., decodable=True)` is a
real one (50 kB of zlib that decodes to 1.2 GB).
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from PIL import Image

from components import image_header, image_limits
from components.export.run import ExportError, run_export
from components.manifest import read_manifest
from conftest import make_config
from hostile_corpus import read_status_kb, reset_peak
from image_files import pattern

SMALL_LIMIT = 4096  # pixels: the small model refuses a 100x100 image and takes 64x64
LIMIT = 40_000_000  # the default ingest.max_pixels


def refusal(index: int, fmt: str, width: int, height: int, limit: int = LIMIT, name: str = "image_bytes") -> str:
    return (f"{name}[{index}]: the {fmt} header declares {width}x{height} = {width * height} pixels, more than the "
            f"{limit} this model decodes (ingest.max_pixels at export)")


# ---- small files with the headers we need -----------------------------------------------------------


def encoded(image: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of_size(width: int, height: int, decodable: bool = False) -> bytes:
    """A 1-bit grey PNG declaring `width` x `height`: with every (zero) row when `decodable`, else one empty row."""
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height if decodable else 1)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def jpeg_of_size(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is patched to declare `width` x `height`."""
    data = bytearray(encoded(pattern(16, 16, 1), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_of_frames(screen: tuple[int, int], frames: list[tuple[int, int]], extensions: int = 0) -> bytes:
    """A GIF: a logical screen, `extensions` comment extensions, then image descriptors of the given
    sizes, each with a token LZW block (the header walk reads no pixel)."""
    data = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    data += b"\x21\xfe\x01c\x00" * extensions
    for width, height in frames:
        data += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00"
    return data + b"\x3b"


def bmp_header(width: int, height: int) -> bytes:
    """A BITMAPINFOHEADER BMP declaring `width` x `height` (negative: top-down), without pixels."""
    return struct.pack("<2sIHHIIiiHHIIiiII", b"BM", 54, 0, 0, 54, 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)


def webp_vp8x(width: int, height: int) -> bytes:
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\x00" * 4 + canvas + b"\x00" * 4


def webp_vp8l(width: int, height: int) -> bytes:
    bits = (width - 1) | (height - 1) << 14
    return b"RIFF" + struct.pack("<I", 26) + b"WEBPVP8L" + struct.pack("<I", 9) + b"\x2f" + struct.pack("<I", bits) \
        + b"\x00" * 8


def jpeg_segments(data: bytes, *segments: bytes, at: int = 20) -> bytes:
    """A JPEG with bytes inserted at `at` (20: after libjpeg's APP0)."""
    return data[:at] + b"".join(segments) + data[at:]


def comment(payload: bytes) -> bytes:
    return b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload


# ---- header parsing, no model ----------------------------------------------------------------------


def accepted_images() -> dict[str, bytes]:
    """Decodable images of every format and layout the graph reads, 40 wide and 30 high unless named."""
    rgb = pattern(30, 40, 3)
    jpeg = encoded(rgb, "JPEG")
    exif = Image.Exif()
    exif[0x010E] = "x" * 3000  # a big APP1
    big_noise = np.random.default_rng(0).integers(0, 256, (200, 220), np.uint8)
    animation = io.BytesIO()
    frames = [Image.fromarray(pattern(30, 40, seed)).convert("P") for seed in range(4)]
    frames[0].save(animation, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    bottom_up = encoded(rgb, "BMP")
    return {
        "jpeg": jpeg,
        "jpeg_progressive": encoded(rgb, "JPEG", progressive=True),
        "jpeg_grey": encoded(rgb[..., 0], "JPEG"),
        "jpeg_cmyk": encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "jpeg_exif": encoded(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg_fill_bytes": jpeg_segments(jpeg, b"\xff\xff\xff"),
        "jpeg_extraneous_bytes": jpeg_segments(jpeg, b"\x00\x01\x02"),
        "jpeg_fake_sof_in_a_comment": jpeg_segments(jpeg, comment(b"\xff\xc0\x00\x11\x08\xfd\xe8\xfd\xe8\x03")),
        "jpeg_many_segments": jpeg_segments(jpeg, *[comment(b"note %d" % i) for i in range(20)]),
        "png": encoded(rgb, "PNG"),
        "png_palette": encoded(Image.fromarray(rgb).convert("P"), "PNG"),
        "png_16_bit": encoded((rgb[..., 0].astype(np.uint16) * 257), "PNG"),
        "gif": encoded(Image.fromarray(rgb).convert("P"), "GIF"),
        "gif_animated": animation.getvalue(),
        "gif_220x200_with_long_data": encoded(big_noise, "GIF"),
        "bmp": bottom_up,
        "bmp_top_down": bottom_up[:22] + struct.pack("<i", -30) + bottom_up[26:],
        "webp_lossy": encoded(rgb, "WEBP", quality=80),
        "webp_lossless": encoded(rgb, "WEBP", lossless=True),
        "webp_extended": encoded(rgb, "WEBP", lossless=True, exif=exif.tobytes()),
    }


def decoded_shape(data: bytes) -> tuple[int, int]:
    """(height, width) as the serving graph's decoder decodes `data`."""
    if tf.io.is_jpeg(data):
        return tuple(tf.io.decode_jpeg(data, channels=3).shape[:2])
    return tuple(tf.io.decode_image(data, channels=3, expand_animations=False).shape[:2])


def test_declared_sizes_are_what_the_decoders_decode():
    images = accepted_images()
    declared = image_header.declared_sizes(tf.constant(list(images.values())))
    for i, (name, data) in enumerate(images.items()):
        assert int(declared.status[i]) == image_header.OK, name
        expected = decoded_shape(data)
        assert (int(declared.height[i]), int(declared.width[i])) == expected, name
        if tf.io.is_jpeg(data):
            assert tuple(tf.image.extract_jpeg_shape(data).numpy()[:2]) == expected, name
    # GIF frames count in all: four 40x30 frames
    assert int(declared.frame_pixels[list(images).index("gif_animated")]) == 4 * 40 * 30


def test_an_alpha_webp_is_read_though_the_decoder_refuses_it():
    """Known limitation of the serving graph (decode_image with channels=3), not of the header check."""
    data = encoded(np.zeros((30, 40, 4), np.uint8), "WEBP", lossless=True)
    declared = image_header.declared_sizes(tf.constant([data]))
    assert (int(declared.width[0]), int(declared.height[0]), int(declared.status[0])) == (40, 30, image_header.OK)
    with pytest.raises(tf.errors.InvalidArgumentError, match="channels"):
        tf.io.decode_image(data, channels=3, expand_animations=False)


HOSTILE = {
    # name: (bytes, the refusal of it as the second image of a request)
    "png_bomb": (png_of_size(20000, 20000), refusal(1, "PNG", 20000, 20000)),
    "jpeg_bomb": (jpeg_of_size(65000, 65000), refusal(1, "JPEG", 65000, 65000)),
    "jpeg_bomb_behind_segments": (jpeg_segments(jpeg_of_size(65000, 65000), *[comment(b"x")] * 8),
                                  refusal(1, "JPEG", 65000, 65000)),
    "gif_frame_larger_than_its_screen": (gif_of_frames((10, 10), [(30000, 30000)]),
                                         refusal(1, "GIF", 30000, 30000)),
    "gif_bomb_in_a_later_frame": (gif_of_frames((10, 10), [(10, 10), (10, 10), (20000, 9000)]),
                                  refusal(1, "GIF", 20000, 9000)),
    "gif_frames_widest_by_tallest": (gif_of_frames((10, 10), [(40000, 1), (1, 40000)]),
                                     refusal(1, "GIF", 40000, 40000)),
    "gif_frames_in_all": (gif_of_frames((6000, 6000), [(6000, 6000), (6000, 6000)]),
                          "image_bytes[1]: the GIF frames declare 72000000 pixels in all, more than the 40000000 "
                          "this model decodes (ingest.max_pixels at export)"),
    "bmp_bomb_top_down": (bmp_header(30000, -30000), refusal(1, "BMP", 30000, 30000)),
    "webp_extended_bomb": (webp_vp8x(16384, 16384), refusal(1, "WebP", 16384, 16384)),
    "webp_lossless_bomb": (webp_vp8l(16384, 16384), refusal(1, "WebP", 16384, 16384)),
    "empty": (b"", "image_bytes[1] is empty: send the bytes of a JPEG, PNG, GIF, BMP or WebP image"),
    "text": (b"<html>hello</html>", "image_bytes[1] is not a JPEG, PNG, GIF, BMP or WebP image "
                                    "(it starts with 0x3c68746d6c3e6865)"),
    "random_bytes": (bytes(np.random.default_rng(1).integers(0, 256, 64, np.uint8)) + b"x",
                     "image_bytes[1] is not a JPEG, PNG, GIF, BMP or WebP image (it starts with 0x"),
    "jpeg_xl": (b"\xff\x0a\xfa\x7f\x00" + b"\x00" * 20, "image_bytes[1] is not a JPEG, PNG, GIF, BMP or WebP image"),
    "tiff": (encoded(pattern(8, 8, 1), "TIFF"), "image_bytes[1] is not a JPEG, PNG, GIF, BMP or WebP image"),
    "png_truncated": (png_of_size(10, 10)[:20], "image_bytes[1]: the PNG data ends inside its header"),
    "png_without_ihdr": (b"\x89PNG\r\n\x1a\n" + _chunk(b"tEXt", b"a" * 20), "image_bytes[1]: the PNG header does "
                                                                           "not parse"),
    "jpeg_truncated": (encoded(pattern(8, 8, 1), "JPEG")[:30], "image_bytes[1]: the JPEG data ends inside its header"),
    "jpeg_soi_only": (b"\xff\xd8\xff", "image_bytes[1]: the JPEG data ends inside its header"),
    "jpeg_scan_before_frame": (b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 40, "image_bytes[1]: the JPEG header does "
                                                                            "not parse"),
    "jpeg_without_marker_after_soi": (b"\xff\xd8" + b"\x01" * 100, "image_bytes[1] is not a JPEG, PNG, GIF, BMP or "
                                                                     "WebP image (it starts with 0xffd8010101010101)"),
    "jpeg_garbage_after_a_marker": (b"\xff\xd8\xff\xe0\x00\x04\x00\x00" + b"\x01" * 100,
                                    "image_bytes[1]: the JPEG header does not parse"),
    "jpeg_too_many_segments": (jpeg_segments(jpeg_of_size(8, 8), *[comment(b"")] * 200),
                               "image_bytes[1]: the JPEG header is longer than the 128 blocks this model reads"),
    "gif_truncated": (b"GIF89a\x0a\x00", "image_bytes[1]: the GIF data ends inside its header"),
    "gif_without_image": (gif_of_frames((10, 10), [])[:-1] + b"\x99", "image_bytes[1]: the GIF header does not "
                                                                      "parse"),
    "gif_too_many_blocks": (gif_of_frames((10, 10), [(10, 10)], extensions=4000),
                            "image_bytes[1]: the GIF header is longer than the 10000 blocks this model reads"),
    "bmp_truncated": (bmp_header(10, 10)[:20], "image_bytes[1]: the BMP data ends inside its header"),
    "webp_truncated": (webp_vp8x(10, 10)[:20], "image_bytes[1]: the WebP data ends inside its header"),
    "webp_unknown_chunk": (b"RIFF" + struct.pack("<I", 30) + b"WEBPALPH" + b"\x00" * 30,
                           "image_bytes[1]: the WebP header does not parse"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_bytes_are_refused_in_the_graph_before_decoding(name):
    data, message = HOSTILE[name]
    check = tf.function(lambda images: image_header.check_image_bytes(images, LIMIT))
    good = encoded(pattern(30, 40, 2), "PNG")
    with pytest.raises(tf.errors.InvalidArgumentError) as refused:
        check(tf.constant([good, data, good]))
    assert message in refused.value.message
    assert f"assertion failed: [{message}" in refused.value.message  # the text itself, short and whole
    assert check(tf.constant([good])).shape == (1,)


def test_refusal_texts_are_recognised_from_their_templates():
    for template, text in ((image_limits.TOO_MANY_PIXELS, HOSTILE["png_bomb"][1]),
                           (image_limits.TOO_MANY_FRAME_PIXELS, HOSTILE["gif_frames_in_all"][1]),
                           (image_limits.EMPTY, HOSTILE["empty"][1]), (image_limits.NOT_AN_IMAGE, HOSTILE["text"][1]),
                           (image_limits.TRUNCATED, HOSTILE["png_truncated"][1])):
        assert image_limits.matches(template, f"Graph execution error:\nassertion failed: [{text}]")
    assert not image_limits.matches(image_limits.TOO_MANY_PIXELS, HOSTILE["empty"][1])


# ---- the exported model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_export(tiny_run, tmp_path_factory) -> str:
    """The tiny model exported with ingest.max_pixels=4096, reading files under a folder of its own."""
    files = tmp_path_factory.mktemp("served-files")
    return run_export(tiny_run.train, tiny_run.transform, str(tmp_path_factory.mktemp("small") / "small"),
                      make_config(f"ingest.max_pixels={SMALL_LIMIT}", "export.tflite=[]", "export.warmup_requests=2",
                                  f"export.filename_prefix={files}/")).output


def test_the_limit_is_recorded_in_the_export(tiny_export, small_export):
    for export, limit in ((tiny_export, LIMIT), (small_export, SMALL_LIMIT)):
        manifest = read_manifest(export, "export")
        assert manifest.outputs["max_pixels"] == limit and manifest.config["ingest"] == {"max_pixels": limit}
    assert read_manifest(tiny_export, "export").fingerprint != read_manifest(small_export, "export").fingerprint


def test_an_export_limit_below_the_model_input_is_refused(tiny_run, tmp_path):
    with pytest.raises(ExportError, match="ingest.max_pixels=100 is below the model's own input size 32x32"):
        run_export(tiny_run.train, tiny_run.transform, str(tmp_path / "m"), make_config("ingest.max_pixels=100"))
    assert not (tmp_path / "m").exists()


def test_a_bomb_is_refused_fast_and_without_memory(tiny_export):
    serve = tf.saved_model.load(tiny_export).signatures["serving_default"]
    good = encoded(pattern(30, 40, 2), "JPEG")
    bombs = [png_of_size(20000, 20000, decodable=True), jpeg_of_size(65000, 65000),
             gif_of_frames((10, 10), [(30000, 30000)])]
    assert max(len(bomb) for bomb in bombs) < 100_000
    serve(image_bytes=tf.constant([good]))
    reset_peak(os.getpid())
    before = read_status_kb(os.getpid(), "VmHWM") * 1024
    for bomb in bombs:
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[1\]: the (PNG|JPEG|GIF) header "
                                                                 r"declares \d+x\d+ = \d+ pixels, more than the 40000000"):
            serve(image_bytes=tf.constant([good, bomb]))
    # the peak since the reset: decoding the PNG alone would take 400 MB at one byte per pixel, 1.2 GB as RGB
    assert read_status_kb(os.getpid(), "VmHWM") * 1024 - before < 100 * 2**20


def test_every_format_classifies_as_the_transform_graph_does(tiny_run, tiny_export):
    images = accepted_images()
    served = tf.saved_model.load(tiny_export).signatures["serving_default"](image_bytes=tf.constant(list(images.values())))
    layer = tft.TFTransformOutput(tiny_run.transform).transform_features_layer()
    trained = keras.models.load_model(str(Path(tiny_run.train) / "model"), compile=False)
    expected = trained(layer({"image/encoded": tf.constant(list(images.values()))})["image"], training=False)
    np.testing.assert_allclose(served["probabilities"].numpy(), expected.numpy(), atol=1e-6)


def test_every_bytes_signature_takes_the_limit_of_its_export(small_export):
    model = tf.saved_model.load(small_export)
    at_limit, over = encoded(pattern(64, 64, 1), "PNG"), encoded(pattern(100, 100, 1), "JPEG")
    for name, call in (("serving_default", lambda images: {"image_bytes": images}),
                       ("predict_with_key", lambda images: {"image_bytes": images, "key": tf.constant(["a", "b"])})):
        signature = model.signatures[name]
        assert signature(**call(tf.constant([at_limit, at_limit])))["label"].shape == (2,)
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(refusal(1, "JPEG", 100, 100, SMALL_LIMIT))):
            signature(**call(tf.constant([at_limit, over])))


def test_the_filename_signature_checks_the_files_it_reads(small_export):
    read = tf.saved_model.load(small_export).signatures["predict_filenames"]
    folder = Path(read_manifest(small_export, "export").config["export"]["filename_prefix"])
    (folder / "ok.png").write_bytes(encoded(pattern(64, 64, 1), "PNG"))
    (folder / "bomb.png").write_bytes(png_of_size(20000, 20000))
    assert read(filenames=tf.constant([str(folder / "ok.png")]))["label"].shape == (1,)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=re.escape(refusal(1, "PNG", 20000, 20000, SMALL_LIMIT, name="filenames"))):
        read(filenames=tf.constant([str(folder / "ok.png"), str(folder / "bomb.png")]))


def test_pixel_signatures_refuse_too_many_pixels_and_non_finite_values(tiny_export, small_export):
    small = tf.saved_model.load(small_export).signatures
    at_limit = np.zeros((2, 64, 64, 3), np.uint8)
    over = np.zeros((2, 100, 100, 3), np.uint8)
    over_text = ("images: images of 100x100 = 10000 pixels, more than the 4096 this model takes "
                 "(ingest.max_pixels at export)")
    assert small["predict_images"](images=tf.constant(at_limit))["label"].shape == (2,)
    assert small["predict_images_float"](images=tf.constant(at_limit / 255, tf.float32))["label"].shape == (2,)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(over_text)):
        small["predict_images"](images=tf.constant(over))
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(over_text)):
        small["predict_images_float"](images=tf.constant(over, tf.float32))

    float_images = tf.saved_model.load(tiny_export).signatures["predict_images_float"]
    for bad in (np.nan, np.inf, -np.inf):
        pixels = np.full((3, 8, 8, 3), 0.5, np.float32)
        pixels[2, 3, 4, 1] = bad
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=re.escape("images[2] holds NaN or infinite values: send values in [0, 1]")):
            float_images(images=tf.constant(pixels))
    assert float_images(images=tf.constant(np.full((3, 8, 8, 3), 2.0, np.float32)))["label"].shape == (3,)  # clipped
