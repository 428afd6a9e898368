"""Image sizes read from the headers of encoded images inside a TensorFlow graph, and the checks a
serving graph runs on its inputs before it decodes or encodes a pixel.

A small file can declare a huge image: a 400 kB PNG of 20000x20000 zeros costs 16 s and 4 GB to
decode. `check_image_bytes` reads every header with string ops (tf.strings.substr,
tf.io.decode_raw), so the refusal is part of the SavedModel and protects whatever serves it.
Each format the graph decodes declares its size where the decoder TensorFlow links reads it:

  JPEG  the first SOFn segment, found by libjpeg's marker walk: segments skipped by their length,
        fill bytes and up to a few extraneous bytes between segments allowed
  PNG   IHDR: big-endian uint32 width and height at bytes 16 and 20
  GIF   every image descriptor, found by walking the blocks: the decoder allocates the widest x
        the tallest frame whatever the logical screen says, and giflib holds every frame
  BMP   little-endian int32 width and height at bytes 18 and 22 (a negative height: top-down)
  WebP  the VP8, VP8L or VP8X header of the first chunk (animations need 4 channels: TensorFlow
        refuses them without decoding)

A header the walk cannot follow is refused, not guessed. JPEG XL, which tf.io.decode_image also
reads, is refused with the other unknown formats: nothing upstream (ingest, batch scoring)
accepts it. The texts of the refusals: components.image_limits.

Cost: the check runs on every request, so it is built from few, vectorised ops (a typical batch
of JPEG and PNG runs no loop); the loops (GIF blocks, JPEG headers longer than libjpeg's own)
run only for a batch that needs them.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf

from components import image_limits as texts
from components.artifacts import IMAGE_INPUT

# Formats, in the order TensorFlow's decoder tells them apart by their first bytes.
UNKNOWN, JPEG, PNG, GIF, BMP, WEBP = range(6)
FORMAT_NAMES = ("unknown", *texts.ACCEPTED_FORMATS)

# Why an image is refused (OK: it is not). WALKING: its header is still being read.
OK, EMPTY, NOT_AN_IMAGE, TRUNCATED, BAD_HEADER, TOO_LONG, TOO_MANY_PIXELS, TOO_MANY_FRAME_PIXELS, WALKING = range(9)
_TEMPLATES = {EMPTY: texts.EMPTY, NOT_AN_IMAGE: texts.NOT_AN_IMAGE, TRUNCATED: texts.TRUNCATED,
              BAD_HEADER: texts.BAD_HEADER, TOO_LONG: texts.TOO_LONG, TOO_MANY_PIXELS: texts.TOO_MANY_PIXELS,
              TOO_MANY_FRAME_PIXELS: texts.TOO_MANY_FRAME_PIXELS}

# The walks stop (and refuse) after this many steps: a header no real encoder writes is not followed.
MAX_JPEG_SEGMENTS = 128  # segments before the frame header (a camera JPEG has about 10)
MAX_GIF_BLOCKS = 10_000  # records and short data blocks (runs of full 255-byte blocks are skipped 64 at a time)

_HEAD_BYTES = 32  # every fixed-offset field is in the first 30 bytes
_JPEG_STEPS = 4  # segments read without a loop (libjpeg writes APP0, two DQT, then the SOF)
_JPEG_SLACK = 32  # bytes searched for the next marker (fill bytes, extraneous bytes) when it is not right there
_GIF_RUN = 64  # full data blocks probed per step
_QUOTED_BYTES = 8  # of an unknown format, in its refusal


class _Field(NamedTuple):
    """An unsigned integer in a header, and how it becomes a side: (value // divisor) % modulus + plus;
    `signed`: an int32, of which the magnitude counts."""

    offset: int
    size: int
    order: str = "big"
    divisor: int = 1
    modulus: int = 2**32
    plus: int = 0
    signed: bool = False


class _Layout(NamedTuple):
    """How a header starts (b"?" matches any byte), what that says, and where it states the size
    (None: a walk finds it, or there is none)."""

    start: bytes
    format: int
    status: int  # OK, or BAD_HEADER for a signature not followed by what its decoder needs
    header_bytes: int  # shorter data is TRUNCATED
    width: _Field | None = None
    height: _Field | None = None


# The first layout an image's first bytes match is its own; the last matches anything.
_LAYOUTS = (
    _Layout(b"\xff\xd8\xff", JPEG, OK, 0),
    _Layout(b"\x89PNG\r\n\x1a\n????IHDR", PNG, OK, 24, _Field(16, 4), _Field(20, 4)),
    _Layout(b"\x89PNG\r\n\x1a\n", PNG, BAD_HEADER, 0),
    _Layout(b"GIF8", GIF, OK, 13),
    _Layout(b"BM", BMP, OK, 32, _Field(18, 4, "little", signed=True), _Field(22, 4, "little", signed=True)),
    _Layout(b"RIFF????WEBPVP8 ", WEBP, OK, 30,  # lossy: 14 bits of each side, then 2 bits of scale
            _Field(26, 2, "little", modulus=2**14), _Field(28, 2, "little", modulus=2**14)),
    _Layout(b"RIFF????WEBPVP8L", WEBP, OK, 30,  # lossless: 14 bits of width - 1, then of height - 1
            _Field(21, 4, "little", modulus=2**14, plus=1), _Field(21, 4, "little", 2**14, 2**14, plus=1)),
    _Layout(b"RIFF????WEBPVP8X", WEBP, OK, 30, _Field(24, 3, "little", plus=1), _Field(27, 3, "little", plus=1)),
    _Layout(b"RIFF????WEBP", WEBP, BAD_HEADER, 13),
    _Layout(b"", UNKNOWN, NOT_AN_IMAGE, 0),
)
_START_BYTES = 16


def _layout_tables() -> dict[str, tf.Tensor]:
    """The layouts as constant tensors indexed by layout."""
    starts = [layout.start.ljust(_START_BYTES, b"?") for layout in _LAYOUTS]
    weights = [[[0, 0] for _ in range(_HEAD_BYTES)] for _ in _LAYOUTS]
    sides = [[[1, 2**32, 0, 2**62] for _ in range(2)] for _ in _LAYOUTS]  # divisor, modulus, plus, signed above
    for index, layout in enumerate(_LAYOUTS):
        for side, field in enumerate((layout.width, layout.height)):
            if field is None:
                continue
            for k in range(field.size):
                weights[index][field.offset + k][side] = 256 ** (field.size - 1 - k if field.order == "big" else k)
            sides[index][side] = [field.divisor, field.modulus, field.plus, 2**31 if field.signed else 2**62]
    return {
        "start": tf.constant([list(start) for start in starts], tf.int64),
        "any": tf.constant([[byte == ord("?") for byte in start] for start in starts]),
        "format": tf.constant([layout.format for layout in _LAYOUTS]),
        "status": tf.constant([layout.status for layout in _LAYOUTS]),
        "header_bytes": tf.constant([layout.header_bytes for layout in _LAYOUTS], tf.int64),
        "weights": tf.constant(weights, tf.int64),
        "sides": tf.constant([list(zip(*pair)) for pair in sides], tf.int64),  # [layout, 4, 2]
    }


class Declared(NamedTuple):
    """What the headers of a batch of encoded images declare, per image."""

    format: tf.Tensor  # int32: UNKNOWN, JPEG, PNG, GIF, BMP or WEBP
    width: tf.Tensor  # int64; for GIF the widest frame
    height: tf.Tensor  # int64; for GIF the tallest frame
    frame_pixels: tf.Tensor  # int64: pixels the decoder holds in all frames (GIF); width * height otherwise
    status: tf.Tensor  # int32: OK, or why the header itself is refused (EMPTY ... TOO_LONG)


def declared_sizes(image_bytes: tf.Tensor) -> Declared:
    """The format and declared size of every image of a [N] string tensor, from its header only."""
    lengths, head, layout = _start(image_bytes)
    tables = _layout_tables()
    fmt = tf.gather(tables["format"], layout)
    status = tf.where(lengths < tf.gather(tables["header_bytes"], layout), TRUNCATED,
                      tf.where(lengths == 0, EMPTY, tf.gather(tables["status"], layout)))
    raw = tf.reduce_sum(head[:, :, None] * tf.gather(tables["weights"], layout), axis=1)  # [N, 2]: width, height
    divisor, modulus, plus, signed_above = tf.unstack(tf.gather(tables["sides"], layout), axis=1)
    sides = tf.minimum(tf.where(raw >= signed_above, 2**32 - raw, raw) // divisor % modulus + plus, 2**31)

    jpeg, gif = fmt == JPEG, fmt == GIF
    jpeg_state = _jpeg_fast(image_bytes, lengths, head)
    walked = tf.cond(tf.reduce_any(_jpeg_walking(jpeg, jpeg_state[1]) | gif),
                     lambda: _walk(image_bytes, tf.stack(jpeg_state, axis=1)),
                     lambda: tf.concat([tf.stack(jpeg_state, axis=1), tf.zeros_like(tf.stack(jpeg_state, axis=1))], 1))
    jpeg_pos, jpeg_kind, jpeg_height, jpeg_width, gif_width, gif_height, gif_pixels, gif_status = tf.unstack(
        walked, axis=1)
    width = tf.where(jpeg, jpeg_width, tf.where(gif, gif_width, sides[:, 0]))
    height = tf.where(jpeg, jpeg_height, tf.where(gif, gif_height, sides[:, 1]))
    status = tf.where(jpeg, _jpeg_status(lengths, jpeg_pos, jpeg_kind),
                      tf.where(gif & (status == OK), tf.cast(gif_status, tf.int32), status))
    return Declared(fmt, width, height, tf.where(gif, gif_pixels, width * height), status)


def check_image_bytes(image_bytes: tf.Tensor, max_pixels: int, *, input_name: str = IMAGE_INPUT,
                      source: str = texts.LIMIT_SOURCE) -> tf.Tensor:
    """`image_bytes` [N], once every image is known to be a JPEG, PNG, GIF, BMP or WebP whose header
    parses and declares at most `max_pixels` pixels; else an InvalidArgumentError naming the first
    refused image (`input_name[i]`), the limit and where it comes from (`source`)."""

    def refusals(declared: Declared) -> tf.Tensor:
        return tf.where(declared.status != OK, declared.status,
                        tf.where(declared.width * declared.height > max_pixels, TOO_MANY_PIXELS,
                                 tf.where(declared.frame_pixels > max_pixels, TOO_MANY_FRAME_PIXELS, OK)))

    def message(index: tf.Tensor) -> tf.Tensor:  # runs only on a refusal: works the headers out again
        declared = declared_sizes(image_bytes)
        fmt, width, height = declared.format[index], declared.width[index], declared.height[index]
        quoted = tf.io.decode_raw(tf.strings.substr(image_bytes[index], 0, _QUOTED_BYTES), tf.uint8)
        values = {
            "input": input_name, "index": index, "limit": max_pixels, "source": source,
            "format": tf.gather(FORMAT_NAMES, fmt), "width": width, "height": height,
            "head": tf.strings.reduce_join(tf.gather([f"{b:02x}" for b in range(256)], tf.cast(quoted, tf.int32))),
            "blocks": tf.where(fmt == JPEG, MAX_JPEG_SEGMENTS, MAX_GIF_BLOCKS),
        }
        texts_by_status = [_format(_TEMPLATES[code], {
            **values, "pixels": declared.frame_pixels[index] if code == TOO_MANY_FRAME_PIXELS else width * height})
            if code in _TEMPLATES else tf.constant("") for code in range(TOO_MANY_FRAME_PIXELS + 1)]
        return tf.gather(texts_by_status, refusals(declared)[index])

    return _refuse_first(image_bytes, refusals(declared_sizes(image_bytes)) != OK, message)


PNG_MAX_SIDE = 1_000_000


def check_pixel_size(images: tf.Tensor, max_pixels: int, *, input_name: str = "images",
                     source: str = texts.LIMIT_SOURCE) -> tf.Tensor:
    """`images` [N, H, W, C], once H * W is at most `max_pixels` and each side 1..PNG_MAX_SIDE; else an
    InvalidArgumentError."""
    shape = tf.shape(images, out_type=tf.int64)
    height, width = shape[1], shape[2]
    # An empty side or one beyond what PNG encodes (2^31 - 1; libpng stops at 1,000,000) crashes encode_png.
    unusable = (height < 1) | (width < 1) | (height > PNG_MAX_SIDE) | (width > PNG_MAX_SIDE)
    over = tf.fill(shape[:1], (height * width > max_pixels) | unusable)
    return _refuse_first(images, over, lambda index: _format(texts.PIXELS_OVER_LIMIT, {
        "input": input_name, "height": height, "width": width, "pixels": height * width, "limit": max_pixels,
        "source": source}))


def check_finite(images: tf.Tensor, *, input_name: str = "images") -> tf.Tensor:
    """Float `images` [N, ...], once none holds NaN or an infinity; else an InvalidArgumentError
    naming the first that does."""
    finite = tf.reduce_all(tf.math.is_finite(images), axis=tf.range(1, tf.rank(images)))
    return _refuse_first(images, tf.logical_not(finite),
                         lambda index: _format(texts.NOT_FINITE, {"input": input_name, "index": index}))


def _refuse_first(tensor: tf.Tensor, refused: tf.Tensor, message: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """`tensor` when no element of `refused` [N] is true; else fails with `message(first refused index)`.
    The message is built only on failure."""

    def fail() -> tf.Tensor:
        index = tf.argmax(tf.cast(refused, tf.int32), output_type=tf.int64)
        with tf.control_dependencies([tf.debugging.Assert(False, [message(index)])]):
            return tf.identity(tensor)

    return tf.cond(tf.reduce_any(refused), fail, lambda: tf.identity(tensor))


def _format(template: str, values: dict) -> tf.Tensor:
    """A scalar string: `template` with its fields replaced by `values` (Python values or scalar tensors)."""
    parts = []
    for literal, field in texts.pieces(template):
        parts.append(literal)
        if field is not None:
            value = values[field]
            if isinstance(value, tf.Tensor):
                parts.append(value if value.dtype == tf.string else tf.strings.as_string(value))
            else:
                parts.append(str(value))
    return tf.strings.join(parts)


def _start(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(length, first _HEAD_BYTES bytes as int64 [N, bytes], index of the first matching layout)."""
    lengths = tf.cast(tf.strings.length(image_bytes), tf.int64)
    head = _bytes(tf.strings.substr(image_bytes, 0, _HEAD_BYTES), _HEAD_BYTES)
    tables = _layout_tables()
    matches = tf.reduce_all((head[:, None, :_START_BYTES] == tables["start"]) | tables["any"], axis=2)
    return lengths, head, tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int64)


def _bytes(strings: tf.Tensor, count: int) -> tf.Tensor:
    """The first `count` bytes of every string of `strings` [N], as int64 [N, count] (0 past the end)."""
    return tf.cast(tf.io.decode_raw(strings, tf.uint8, fixed_length=count), tf.int64)


def _read(image_bytes: tf.Tensor, lengths: tf.Tensor, pos: tf.Tensor, count: int) -> tf.Tensor:
    """`count` bytes of every image from its own position `pos`, as int64 [N, count] (0 past the end)."""
    counts = tf.fill(tf.shape(lengths), tf.constant(count, tf.int64))
    return _bytes(tf.strings.substr(image_bytes, tf.minimum(pos, lengths), counts), count)


def _unpack(data: tf.Tensor, fields: tuple[_Field, ...]) -> list[tf.Tensor]:
    """The unsigned integer `fields` of every row of `data` [N, bytes], by one matrix product."""
    weights = [[0] * len(fields) for _ in range(data.shape[1])]
    for column, field in enumerate(fields):
        for k in range(field.size):
            weights[field.offset + k][column] = 256 ** (field.size - 1 - k if field.order == "big" else k)
    return tf.unstack(tf.linalg.matmul(data, tf.constant(weights, tf.int64)), axis=1)


def _walk(image_bytes: tf.Tensor, jpeg_state: tf.Tensor) -> tf.Tensor:
    """The loops, for a batch that needs one: the JPEG walk on from `jpeg_state` [N, 4] and the GIF
    walk; [N, 8]: the JPEG state, then (width, height, frame pixels, status) of the GIFs."""
    lengths, head, layout = _start(image_bytes)
    fmt = tf.gather(_layout_tables()["format"], layout)
    jpeg = _jpeg_walk(image_bytes, lengths, fmt == JPEG, tf.unstack(jpeg_state, axis=1))
    gif = _gif_sizes(image_bytes, lengths, head[:, 10], fmt == GIF)
    return tf.stack([*jpeg, *gif[:3], tf.cast(gif[3], tf.int64)], axis=1)


# JPEG markers, by what libjpeg does when it meets one before the frame header; _LOST: no marker
# within _JPEG_SLACK bytes (the walk gives up there).
_SOF, _PARAMETERLESS, _SEGMENT, _REFUSED, _NO_MARKER, _LOST = range(6)
_JPEG_MARKERS = [
    _NO_MARKER if m in (0x00, 0xFF)  # a stuffed zero, or more fill: the marker is further on
    else _SOF if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC)
    else _PARAMETERLESS if 0xD0 <= m <= 0xD7 or m == 0x01
    else _SEGMENT if m in (0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xFE) or 0xE0 <= m <= 0xEF
    else _REFUSED  # SOI again, EOI or SOS before a frame header, reserved markers: libjpeg fails
    for m in range(256)]
_JPEG_ADVANCE = [0, 2, 2, 0, 0, 0]  # bytes the walk moves on from a marker of each kind, besides a segment's length
_JPEG_WALKS = [False, True, True, False, True, False]  # kinds the walk goes on from
# The status where the walk stopped, by kind, (incomplete, complete): a SOFn needs its 9 bytes; a
# marker search that failed before the data ended is a header that does not parse; a walk still
# going when the steps run out is TOO_LONG.
_JPEG_STATUS = [TRUNCATED, OK, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, BAD_HEADER, BAD_HEADER, TOO_LONG, TOO_LONG,
                TRUNCATED, BAD_HEADER]
# From a JPEG marker's 0xFF: 0xFF, the marker, the segment length and, in a SOFn, the height and width.
_JPEG_FIELDS = (_Field(0, 1), _Field(1, 1), _Field(2, 2), _Field(5, 2), _Field(7, 2))
_JPEG_SEGMENT_BYTES = 9


def _jpeg_fast(image_bytes: tf.Tensor, lengths: tf.Tensor, head: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """(position, kind, height, width) after _JPEG_STEPS segments of every image read as a JPEG from
    byte 2, the first from `head`: the walk stops at a frame header, at a marker libjpeg refuses, or
    where no marker is right there."""
    pos, kind, height, width = _jpeg_segment(head[:, 2:2 + _JPEG_SEGMENT_BYTES], tf.zeros_like(lengths) + 2)
    for _ in range(_JPEG_STEPS - 1):
        pos, kind, height, width = _jpeg_segment(_read(image_bytes, lengths, pos, _JPEG_SEGMENT_BYTES), pos)
    return pos, kind, height, width


def _jpeg_walking(active: tf.Tensor, kind: tf.Tensor) -> tf.Tensor:
    return active & tf.gather(tf.constant(_JPEG_WALKS), kind)


def _jpeg_walk(image_bytes: tf.Tensor, lengths: tf.Tensor, active: tf.Tensor, state: list[tf.Tensor]
               ) -> tuple[tf.Tensor, ...]:
    """The walk of the `active` images on from `state` (position, kind, height, width), as far as
    MAX_JPEG_SEGMENTS segments, finding markers behind fill or extraneous bytes."""

    def step(count, pos, kind, height, width):
        resynced, found = _jpeg_resync(image_bytes, lengths, pos)
        searching = kind == _NO_MARKER
        at = tf.where(searching, resynced, pos)
        next_pos, next_kind, next_height, next_width = _jpeg_segment(
            _read(image_bytes, lengths, at, _JPEG_SEGMENT_BYTES), at)
        going = _jpeg_walking(active, kind)
        return (count + 1, tf.where(going, next_pos, pos),
                tf.where(searching & ~found, tf.constant(_LOST, tf.int64), tf.where(going, next_kind, kind)),
                tf.where(going, next_height, height), tf.where(going, next_width, width))

    return tf.while_loop(
        lambda count, pos, kind, *_: (count < MAX_JPEG_SEGMENTS) & tf.reduce_any(_jpeg_walking(active, kind)),
        step, (tf.constant(_JPEG_STEPS), *state))[1:]


def _jpeg_status(lengths: tf.Tensor, pos: tf.Tensor, kind: tf.Tensor) -> tf.Tensor:
    """The status of a walk that stopped at `pos` on a marker of `kind`."""
    complete = tf.where(kind == _LOST, pos + _JPEG_SLACK + 1, pos + _JPEG_SEGMENT_BYTES) <= lengths
    return tf.gather(_JPEG_STATUS, kind * 2 + tf.cast(complete, tf.int64))


def _jpeg_segment(data: tf.Tensor, pos: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """(where the walk goes next, marker kind, height, width) for the marker at `pos`, whose bytes
    are `data` [N, 9]: past a segment or a parameterless marker; `pos` itself at a frame header (then
    height and width are its), at a marker libjpeg refuses, or where no marker starts."""
    first, marker, length, height, width = _unpack(data, _JPEG_FIELDS)
    kind = tf.where(first == 0xFF, tf.gather(tf.constant(_JPEG_MARKERS, tf.int64), marker), _NO_MARKER)
    advance = tf.gather(tf.constant(_JPEG_ADVANCE, tf.int64), kind) + tf.where(kind == _SEGMENT, length, 0)
    return pos + advance, kind, height, width


def _jpeg_resync(image_bytes: tf.Tensor, lengths: tf.Tensor, pos: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(position, found) of the next marker from `pos` as libjpeg finds it: after any bytes that are
    not 0xFF, a 0xFF, more 0xFF, then a byte that is not 0 (0xFF 0x00 is skipped); within _JPEG_SLACK bytes."""
    data = _read(image_bytes, lengths, pos, _JPEG_SLACK + 1)
    marks = (data[:, :-1] == 0xFF) & (data[:, 1:] != 0) & (data[:, 1:] != 0xFF)
    return pos + tf.argmax(tf.cast(marks, tf.int32), axis=1, output_type=tf.int64), tf.reduce_any(marks, axis=1)


# From a GIF record: its first byte, and an image descriptor's width, height and flags.
_GIF_FIELDS = (_Field(0, 1), _Field(5, 2, "little"), _Field(7, 2, "little"), _Field(9, 1))
# Bytes of the colour table announced by a GIF screen or image descriptor's flags.
_COLOUR_TABLE_BYTES = [3 << (flags % 8 + 1) if flags >= 0x80 else 0 for flags in range(256)]


def _gif_sizes(image_bytes: tf.Tensor, lengths: tf.Tensor, screen_flags: tf.Tensor, active: tf.Tensor
               ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(widest frame, tallest frame, pixels of all frames, status) of the `active` images, walking the
    blocks as giflib does: extensions (0x21) and image descriptors (0x2C, then an optional colour
    table and the LZW code size) followed by data blocks, up to the trailer or anything else."""
    colour_tables = tf.constant(_COLOUR_TABLE_BYTES, tf.int64)

    def step(count, pos, in_blocks, status, width, height, pixels, frames):
        data = _read(image_bytes, lengths, pos, 256 * _GIF_RUN)
        record, frame_width, frame_height, flags = _unpack(data[:, :10], _GIF_FIELDS)
        full_run = tf.reduce_sum(tf.math.cumprod(tf.cast(data[:, ::256] == 255, tf.int64), axis=1), axis=1)
        image, extension = record == 0x2C, record == 0x21  # at a record; in data blocks `record` is a block size
        described = image & (pos + 10 <= lengths)
        walking = status == WALKING
        counted = walking & ~in_blocks & described
        ends = walking & ~in_blocks & ~described & ~extension
        end_status = tf.where(frames > 0, OK, tf.where((pos >= lengths) | image, TRUNCATED, BAD_HEADER))
        next_pos = tf.where(in_blocks, tf.where(full_run > 0, pos + 256 * full_run, pos + 1 + record),
                            tf.where(image, pos + 11 + tf.gather(colour_tables, flags), pos + 2))
        return (count + 1,
                tf.where(walking, next_pos, pos),
                tf.where(walking, ~in_blocks | (full_run > 0) | (record > 0), in_blocks),
                tf.where(ends, end_status, status),
                tf.where(counted, tf.maximum(width, frame_width), width),
                tf.where(counted, tf.maximum(height, frame_height), height),
                tf.where(counted, pixels + frame_width * frame_height, pixels),
                tf.where(counted, frames + 1, frames))

    zero = tf.zeros_like(lengths)
    start = 13 + tf.gather(colour_tables, screen_flags)  # after the signature, the screen and its table
    status = tf.where(active, WALKING, OK)
    _, _, _, status, width, height, pixels, _ = tf.while_loop(
        lambda count, pos, in_blocks, status, *_: (count < MAX_GIF_BLOCKS) & tf.reduce_any(status == WALKING),
        step, (tf.constant(0), start, tf.zeros_like(active), status, zero, zero, zero, zero))
    return width, height, pixels, tf.where(status == WALKING, TOO_LONG, status)
