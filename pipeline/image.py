"""The project image every pipeline step runs in: one reference, pinned to the project's version.

`containers/Dockerfile` builds it (`containers/Dockerfile.gpu` the `-gpu` variant) from the same
requirements.lock as `make install`; the tag is the version in pyproject.toml, so a new release
is a new image and KFP's cache (keyed on the image, among others) never mixes code versions.
"""

from __future__ import annotations

import re
from importlib import metadata

REPOSITORY = "ghcr.io/cvpipe/cvpipe"
VERSION = metadata.version("cvpipe")
PROJECT_IMAGE = f"{REPOSITORY}:{VERSION}"
GPU_IMAGE = f"{PROJECT_IMAGE}-gpu"

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


def check_pinned(reference: str) -> str:
    """Returns `reference` if it names a version tag or a digest; `latest` and bare names are refused."""
    name = _DIGEST.sub("", reference)
    last = name.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    digest = name != reference
    if any(c.isspace() for c in reference) or "@" in name or (not digest and not _TAG.match(tag)) or tag == "latest":
        raise ValueError(f"image {reference!r} is not pinned: give a version tag (repo:1.2.3) or a digest "
                         "(repo@sha256:...), never latest")
    return reference
