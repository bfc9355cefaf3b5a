"""The container and cluster files, checked without running them (no Docker engine or cloud here):
hadolint on every docker/Dockerfile.*, the Python pins in those Dockerfiles against constraints.txt
and the Makefile's torch pin, docker/compose.yaml, launch/cluster.yaml, and the accelerate configs
in launch/accelerate/ loaded and resolved by accelerate's own launcher code."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

pytestmark = pytest.mark.e2e

DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))
ACCELERATE_CONFIGS = sorted((ROOT / "launch" / "accelerate").glob("*.yaml"))
# Written separately from the training image: compose may name it before it exists.
SERVE_DOCKERFILE = "docker/Dockerfile.serve"
# Installer tooling may be pinned in a Dockerfile without being part of the stack's constraints.
TOOLING = {"pip", "setuptools", "wheel", "uv"}
# pip options that take a value (so the value is not a requirement).
PIP_VALUE_OPTIONS = {
    "-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
    "-f", "--find-links", "-t", "--target", "--prefix", "--root", "--platform",
    "--python-version", "--only-binary", "--no-binary", "--progress-bar", "--timeout",
    "--retries", "--cache-dir", "--src", "--upgrade-strategy", "-C", "--config-settings",
}
REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[(?P<extras>[^\]]*)\])?"
    r"(?:(?P<op>===|==|>=|<=|~=|!=|<|>)(?P<version>\S+))?$"
)


def normalize(name: str) -> str:
    """PEP 503 name normalization: `PyYAML`, `pyyaml` and `py_yaml` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalize(name)] = version.strip()
    return pins


def makefile_torch_pin() -> str:
    found = set(re.findall(r"torch==([0-9][^\s\"']*)", (ROOT / "Makefile").read_text()))
    assert len(found) == 1, f"expected one torch pin in the Makefile, found {sorted(found)}"
    return found.pop()


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, comments dropped and continuation lines joined."""
    result, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        keyword, _, args = current.strip().partition(" ")
        result.append((keyword.upper(), args.strip()))
        current = ""
    return result


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """The argument lists (after `install`) of every `pip install` in the Dockerfile's RUN lines."""
    found = []
    for keyword, args in instructions(dockerfile):
        if keyword != "RUN" or args.startswith("["):
            continue
        lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in {"&&", "||", ";", "|", "&"}:
                for i, word in enumerate(command[:-1]):
                    if Path(word).name in {"pip", "pip3"} and command[i + 1] == "install":
                        found.append(command[i + 2:])
                        break
                command = []
            else:
                command.append(token)
    return found


def requirements(args: list[str]) -> tuple[list[str], list[str]]:
    """Split a pip install argument list into (requirements, constraint files)."""
    reqs, constraint_files, take = [], [], None
    for arg in args:
        if take is not None:
            if take in {"-c", "--constraint"}:
                constraint_files.append(arg)
            take = None
        elif arg in PIP_VALUE_OPTIONS:
            take = arg
        elif arg.startswith("--constraint="):
            constraint_files.append(arg.split("=", 1)[1])
        elif not arg.startswith("-"):
            reqs.append(arg)
    return reqs, constraint_files


def is_local_path(requirement: str) -> bool:
    return requirement.startswith((".", "/"))


# -- hadolint -------------------------------------------------------------------------------------


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    binary = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert binary, "hadolint is missing: pip install -e '.[dev]' -c constraints.txt"
    return binary


def test_there_is_a_training_dockerfile():
    assert ROOT / "docker" / "Dockerfile.train" in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run(
        [hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(dockerfile)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


def test_hadolint_config_still_fails_on_warnings():
    """Guards the lint above: with our .hadolint.yaml a warning (untagged base) still fails."""
    result = subprocess.run(
        [hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", "-"],
        input="FROM ubuntu\nRUN echo hello\n", capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "DL3006" in result.stdout, result.stdout + result.stderr


# -- pins -----------------------------------------------------------------------------------------


def test_makefile_torch_pin_matches_constraints():
    assert constraints()["torch"] == makefile_torch_pin()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_match_constraints(dockerfile):
    pins, torch_pin = constraints(), makefile_torch_pin()
    installs = pip_installs(dockerfile)
    for args in installs:
        reqs, constraint_files = requirements(args)
        assert any(Path(c).name == "constraints.txt" for c in constraint_files), (
            f"{dockerfile.name}: `pip install {' '.join(args)}` does not use -c constraints.txt"
        )
        for req in reqs:
            if is_local_path(req):
                continue
            match = REQUIREMENT.match(req)
            assert match, f"{dockerfile.name}: cannot read requirement {req!r}"
            name = normalize(match["name"])
            if name in TOOLING:
                continue
            where = f"{dockerfile.name}: {req}"
            assert name in pins, f"{where}: {name} is not pinned in constraints.txt"
            if match["op"] is not None:
                assert match["op"] == "==", f"{where}: pin with ==, as constraints.txt does"
                assert match["version"] == pins[name], f"{where}: constraints.txt has {pins[name]}"
            if name == "torch":
                assert match["version"] == torch_pin, (
                    f"{dockerfile.name} pins torch=={match['version']}, the Makefile {torch_pin}"
                )


def test_training_image_installs_the_pinned_stack():
    dockerfile = ROOT / "docker" / "Dockerfile.train"
    reqs = [req for args in pip_installs(dockerfile) for req in requirements(args)[0]]
    local = [req for req in reqs if is_local_path(req)]
    named = {normalize(m["name"]): m for m in map(REQUIREMENT.match, set(reqs) - set(local)) if m}
    for package in ("torch", "ray", "deepspeed"):
        assert package in named and named[package]["op"] == "==", f"Dockerfile.train: pin {package}"
    assert "train" in (named["ray"]["extras"] or ""), "Dockerfile.train must install ray[train]"
    extras = {
        extra.strip()
        for req in local
        for group in re.findall(r"\[([^\]]*)\]", req)
        for extra in group.split(",")
    }
    assert {"train", "export"} <= extras, f"Dockerfile.train: install bigan[train,export], {local}"
    keywords = dict(instructions(dockerfile))
    assert keywords.get("ENTRYPOINT") == '["bigan"]'
    user = keywords.get("USER", "root").split(":")[0]
    assert user not in {"root", "0"}, "the training image must not run as root"
    base = next(args for keyword, args in instructions(dockerfile) if keyword == "FROM")
    assert base.startswith("nvidia/cuda:"), base


# -- compose --------------------------------------------------------------------------------------


def test_compose_file_names_existing_dockerfiles_and_reserves_gpus():
    compose_file = ROOT / "docker" / "compose.yaml"
    services = yaml.safe_load(compose_file.read_text())["services"]
    assert {"train", "serve"} <= set(services)
    for name, service in services.items():
        build = service["build"]
        dockerfile = (compose_file.parent / build["context"] / build["dockerfile"]).resolve()
        relative = dockerfile.relative_to(ROOT).as_posix()
        assert dockerfile.exists() or relative == SERVE_DOCKERFILE, f"{name}: no {relative}"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
    assert services["train"]["build"]["dockerfile"] == "docker/Dockerfile.train"
    assert services["serve"]["build"]["dockerfile"] == SERVE_DOCKERFILE


# -- Ray cluster ----------------------------------------------------------------------------------


def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "launch" / "cluster.yaml").read_text())


def test_cluster_config_has_a_head_and_gpu_workers():
    config = cluster_config()
    node_types = config["available_node_types"]
    head = config["head_node_type"]
    assert head in node_types
    workers = {name: node for name, node in node_types.items() if name != head}
    gpu_workers = [
        node for node in workers.values()
        if node["resources"].get("GPU", 0) > 0 and node["max_workers"] > 0
    ]
    assert gpu_workers, "launch/cluster.yaml needs a worker node type with GPU resources"
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address" in c for c in config["worker_start_ray_commands"])
    # The training image's entrypoint is `bigan`; the launcher runs `docker run IMAGE bash`.
    assert any(o.startswith("--entrypoint") for o in config["docker"]["run_options"])
    assert "bigan-train" in config["docker"]["image"]


def test_cluster_config_passes_rays_schema():
    pytest.importorskip("ray", reason="ray is not installed (it comes with the distributed stack)")
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster_config()))


# -- accelerate -----------------------------------------------------------------------------------


def resolve_launch(config_file: Path):
    """What `accelerate launch --config_file FILE script.py` decides, without starting anything."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_accelerate_configs_exist():
    names = {p.name for p in ACCELERATE_CONFIGS}
    assert names >= {"cpu_2proc.yaml", "gpu_1node.yaml", "gpu_multinode.yaml"}


@pytest.mark.parametrize("config_file", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads_and_starts_several_processes(config_file):
    args, defaults = resolve_launch(config_file)
    # MULTI_GPU is the only type for which `accelerate launch` starts the processes (torchrun);
    # the CPU config uses it too (see its header), and bigan's Accelerator(cpu=True) picks gloo.
    assert args.multi_gpu and not args.cpu and not args.use_deepspeed
    assert defaults.num_processes >= 2 and defaults.num_processes % defaults.num_machines == 0
    # Precision belongs to bigan's `train.precision`; accelerate's must not stack on it.
    assert args.mixed_precision == "no"
    assert defaults.use_cpu == config_file.name.startswith("cpu")
