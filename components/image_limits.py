"""What the served model refuses before it decodes an image, in the words it refuses it with.

The templates are formatted inside the serving graph (components.image_header) and read back by
whoever gets them as an error message: batch scoring turns them into error rows
(components.batch_predict.results) whether they come from the SavedModel in process or from a
server's 400. One text, two readers; TensorFlow-free.

`{input}` is the signature's input name, `{index}` the position of the refused instance in the request.
"""

from __future__ import annotations

import re
import string

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")
LIMIT_SOURCE = "ingest.max_pixels at export"

_ACCEPTED = "a " + ", ".join(ACCEPTED_FORMATS[:-1]) + " or " + ACCEPTED_FORMATS[-1] + " image"

EMPTY = "{input}[{index}] is empty: send the bytes of " + _ACCEPTED
NOT_AN_IMAGE = "{input}[{index}] is not " + _ACCEPTED + " (it starts with 0x{head})"
TRUNCATED = "{input}[{index}]: the {format} data ends inside its header"
BAD_HEADER = "{input}[{index}]: the {format} header does not parse"
TOO_LONG = "{input}[{index}]: the {format} header is longer than the {blocks} blocks this model reads before decoding"
TOO_MANY_PIXELS = ("{input}[{index}]: the {format} header declares {width}x{height} = {pixels} pixels, "
                   "more than the {limit} this model decodes ({source})")
TOO_MANY_FRAME_PIXELS = ("{input}[{index}]: the GIF frames declare {pixels} pixels in all, "
                         "more than the {limit} this model decodes ({source})")
PIXELS_OVER_LIMIT = ("{input}: images of {height}x{width} = {pixels} pixels, "
                     "more than the {limit} this model takes ({source})")
NOT_FINITE = "{input}[{index}] holds NaN or infinite values: send values in [0, 1]"


def pieces(template: str) -> list[tuple[str, str | None]]:
    """The template as (literal text, field name or None) pairs, in order."""
    return [(literal, field) for literal, field, _, _ in string.Formatter().parse(template)]


def matches(template: str, message: str) -> bool:
    """Whether `message` holds a text formatted from `template` (TensorFlow's wrapping around it allowed)."""
    pattern = "".join(re.escape(literal) + (".*?" if field is not None else "") for literal, field in pieces(template))
    return re.search(pattern, message) is not None
