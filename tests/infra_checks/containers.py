"""The project image's Dockerfiles read as Docker would (instructions, stages, ARG expansion, pip
installs), .dockerignore's matching, the lock files, hadolint, and what makes a Dockerfile unpinned, root,
unreproducible or unbuildable from this context."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


from infra_checks.images import image_problem
from infra_checks.layout import ROOT


CONTAINERS = ROOT / "containers"
DOCKERFILE, DOCKERFILE_GPU = CONTAINERS / "Dockerfile", CONTAINERS / "Dockerfile.gpu"
GPU_LOCK = CONTAINERS / "requirements-gpu.lock"
DOCKERIGNORE = ROOT / ".dockerignore"
BEAM_BOOT = "/opt/apache/beam/boot"


def locked_versions(path: Path) -> dict[str, str]:
    """name (canonical: lower case, `-` for `_`/`.`) -> version of a `name==version` lock file."""
    versions = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path}: {line!r} is not pinned with =="
            versions[re.sub(r"[-_.]+", "-", name).lower()] = version
    return versions


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments and blank lines dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        keyword, _, rest = (current + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends in a line continuation"
    return instructions


def expand(value: str, variables: dict[str, str]) -> str:
    """${NAME} and $NAME from `variables` (unknown names are left as they are)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[dict]]:
    """(global ARG defaults, stages): each stage {image, alias, instructions, args (its ARG defaults)}."""
    global_args, stages = {}, []
    for keyword, rest in dockerfile_instructions(text):
        if keyword == "FROM":
            parts = rest.split()
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append({"image": expand(parts[0], global_args), "alias": alias, "instructions": [], "args": {}})
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1]["instructions"].append((keyword, rest))
            if keyword == "ARG":
                name, _, default = rest.partition("=")
                stages[-1]["args"][name] = global_args.get(name, "") if not default and name in global_args else default
    return global_args, stages


def key_values(rest: str) -> dict[str, str]:
    """ENV/LABEL `k=v k2="v 2"` pairs."""
    return dict(item.split("=", 1) for item in shlex.split(rest) if "=" in item)


def pip_installs(stage: dict) -> list[list[str]]:
    """The argument lists of every `pip install` in the stage's RUN instructions."""
    installs = []
    for keyword, rest in stage["instructions"]:
        if keyword == "RUN":
            for command in re.split(r"&&|\|\||;", rest):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                    installs.append(words[words.index("install") + 1:])
    return installs


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    """(exception, regex) per .dockerignore line, in Docker's syntax: `*` and `?` within a path element,
    `**` across any number of them, `!` re-includes; a pattern also covers everything below a match."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((exception, re.compile(f"^{regex}(?:/.*)?$")))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether .dockerignore keeps `path` (relative to the context) out of the build context."""
    result = False
    for exception, regex in rules:
        if regex.match(path):
            result = not exception
    return result


def dockerfile_problems(text: str, lock: Path, rules: list[tuple[bool, re.Pattern]]) -> list[str]:
    """What makes a project Dockerfile unpinned, root, unreproducible or unbuildable from this context."""
    problems = []
    global_args, stages = parse_dockerfile(text)
    if not stages:
        return ["no FROM"]
    aliases = set()
    for stage in stages:
        if stage["image"] not in aliases and image_problem(stage["image"]):
            problems.append(f"FROM {image_problem(stage['image'])}")
        if stage["alias"]:
            aliases.add(stage["alias"])
    final = stages[-1]
    instructions = final["instructions"]
    versions = locked_versions(lock)

    # The Python and Beam SDK images: the project's Python, the locked apache-beam.
    python = re.fullmatch(r"python:(\d+)\.(\d+)\.\d+-slim-\w+", final["image"])
    requires = re.search(r'requires-python = ">=(\d+)\.(\d+)', (ROOT / "pyproject.toml").read_text()).groups()
    if not python or python.groups() != requires:
        problems.append(f"FROM {final['image']}: not a pinned python:{'.'.join(requires)}.x-slim image")
    beam = global_args.get("BEAM_SDK_IMAGE", "")
    expected_beam = f"apache/beam_python{'.'.join(requires)}_sdk:{versions['apache-beam']}"
    if beam != expected_beam:
        problems.append(f"BEAM_SDK_IMAGE {beam!r} is not {expected_beam} (apache-beam in {lock.name})")
    beam_stage = next((s["alias"] for s in stages[:-1] if s["image"] == beam), None)
    copies = [rest for keyword, rest in instructions if keyword == "COPY"]
    if not beam_stage or f"--from={beam_stage} /opt/apache/beam /opt/apache/beam" not in copies:
        problems.append("the Beam boot program is not copied from the Beam SDK image")
    entrypoints = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    if not entrypoints or json.loads(entrypoints[-1]) != [BEAM_BOOT]:
        problems.append(f"ENTRYPOINT is not the Beam boot program {BEAM_BOOT} (exec form)")

    # A numeric non-root user at the end (runAsNonRoot can only verify a numeric one).
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    if not users:
        problems.append("no USER: the image runs as root")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit():
            problems.append(f"USER {users[-1]} is not numeric: Kubernetes' runAsNonRoot cannot verify it")
        elif int(uid) == 0:
            problems.append(f"USER {users[-1]} is root")

    # COPY sources exist in the context and survive .dockerignore; files are copied before use.
    copied = set()
    for keyword, rest in instructions:
        if keyword == "COPY" and not rest.startswith("--from="):
            *sources, _ = rest.split()
            for source in sources:
                if not (ROOT / source).exists():
                    problems.append(f"COPY {source}: not in the build context")
                elif ignored(source, rules):
                    problems.append(f"COPY {source}: excluded by .dockerignore")
                copied.add(Path(source).name)
        if keyword == "RUN":
            for words in pip_installs({"instructions": [(keyword, rest)]}):
                for flag, file in zip(words, words[1:]):
                    if flag in ("-r", "-c") and file not in copied:
                        problems.append(f"pip install {flag} {file}: not copied before")

    # Dependencies only from the lock: every requirement named on a pip command line is pinned.
    installs = pip_installs(final)
    if not any(words[i:i + 2] == ["-r", lock.name] for words in installs for i in range(len(words))):
        problems.append(f"nothing is installed from -r {lock.name}")
    for words in installs:
        skip = False
        for word in words:
            if skip:
                skip = False
            elif word in ("-r", "-c"):
                skip = True
            elif not word.startswith("-") and word != "." and not re.fullmatch(r"[\w.-]+(\[[\w,-]+\])?==[\w.+-]+", word):
                problems.append(f"pip install {word}: not pinned (==)")
        if "." in words and not {"--no-deps", "--no-build-isolation"} <= set(words):
            problems.append("the project is installed with its dependencies resolved anew (needs --no-deps)")
        if "--no-cache-dir" not in words and "PIP_NO_CACHE_DIR=1" not in " ".join(r for k, r in instructions if k == "ENV"):
            problems.append("pip keeps its cache in the image")

    # Provenance: the commit as CVPIPE_CODE_VERSION (components/manifest.py), OCI labels.
    env = {k: v for keyword, rest in instructions if keyword == "ENV" for k, v in key_values(rest).items()}
    if env.get("CVPIPE_CODE_VERSION") != "${CVPIPE_CODE_VERSION}" or "CVPIPE_CODE_VERSION" not in final["args"]:
        problems.append("ENV CVPIPE_CODE_VERSION is not set from the build arg CVPIPE_CODE_VERSION")
    labels = {k: v for keyword, rest in instructions if keyword == "LABEL" for k, v in key_values(rest).items()}
    version = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    oci = "org.opencontainers.image."
    if expand(labels.get(oci + "version", ""), final["args"]) != version:
        problems.append(f"label {oci}version is not the project version {version}")
    if labels.get(oci + "revision") != "${CVPIPE_CODE_VERSION}":
        problems.append(f"label {oci}revision is not the commit (CVPIPE_CODE_VERSION)")
    if not expand(labels.get(oci + "source", ""), final["args"]).startswith("https://"):
        problems.append(f"label {oci}source is not a URL")
    return problems


def find_hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def hadolint(path: Path) -> list[str]:
    result = subprocess.run([find_hadolint(), "--no-color", "--format", "json", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1), result.stderr
    return [f"{path.name}:{i['line']} {i['code']} {i['level']}: {i['message']}" for i in json.loads(result.stdout)]
