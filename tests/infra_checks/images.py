"""Container images: whether a reference is pinned, every image the manifests, builds and compose file
run, and the project image's reference for this version."""

from __future__ import annotations

import re


from infra_checks.compose import compose
from infra_checks.kustomize import build
from infra_checks.layout import BUILD_DIRS, INFRA, ROOT
from infra_checks.manifests import containers, load_docs, manifest_files, pod_specs


def image_problem(image: str) -> str | None:
    """None when `image` is pinned: a digest, or a version tag (not latest)."""
    name, _, digest = image.partition("@")
    if digest:
        return None if re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else f"{image}: malformed digest"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{image}: no tag (means latest)"
    tag = last.split(":", 1)[1]
    if tag == "latest" or tag.startswith("latest-") or not re.search(r"\d", tag):
        return f"{image}: tag {tag!r} is not a pinned version"
    return None


def all_images() -> list[tuple[str, str]]:
    images = []
    for path in manifest_files():
        for doc in load_docs(path):
            images += [(str(path.relative_to(INFRA)), c["image"])
                       for spec in pod_specs(doc) for c in containers(spec) if "image" in c]
    for name, directory in BUILD_DIRS.items():
        for doc in build(directory):
            images += [(f"build {name}", c["image"]) for spec in pod_specs(doc) for c in containers(spec)]
    images += [(f"compose {name}", s["image"]) for name, s in compose()["services"].items()]
    return images


def project_image(variant: str = "") -> str:
    version = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    return f"ghcr.io/cvpipe/cvpipe:{version}{variant}"
