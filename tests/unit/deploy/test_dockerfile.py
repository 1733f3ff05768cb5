"""The Dockerfile (deploy/docker/Dockerfile) and its build context's allow-list
(Dockerfile.dockerignore) against pyproject.toml, requirements.lock and the
services' settings: the runtime venv holds the project and its declared
dependencies only, code generation tools stay in the builder, each target
runs its service on the settings' default ports as a non-root user, the
lambda target adds exactly the lambda extra beside that venv and runs the
Lambda handler through the runtime interface client, and the build context
admits what is copied and nothing else, no development tool (tools/) in
particular.
"""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from offpath.ingest import settings as ingest_settings
from offpath.ingest.settings import IngestSettings
from offpath.query import settings as query_settings
from offpath.query.settings import QuerySettings

from .manifests import (
    REPO,
    Stage,
    dockerfile_stages,
    dockerignore_admits,
    dockerignore_rules,
    image_has_module,
    pyproject,
)

RUNTIME_VENV = "/opt/venv"
CODEGEN_VENV = "/opt/codegen"
# The lambda target's runtime interface client and its dependencies.
LAMBDA_DIR = "/opt/lambda"
LAMBDA_HANDLER = "offpath.ingest.lambda_handler.handler"
# The folders of development tools' packages, wherever they would be put.
DEV_PACKAGE = re.compile(r"(^|/)offpath/(dev|bench|testing|faults)(/|$)")


def env_pairs(stage: Stage) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in args.split():
            key, _, value = item.partition("=")
            pairs[key] = value
    return pairs


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    """The normalized distribution name of a PEP 508 requirement."""
    return normalize(re.split(r"[<>=!~\[; ]", spec.strip(), maxsplit=1)[0])


def lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "requirements.lock").read_text("utf-8").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[normalize(name)] = version
    return pins


def pip_installs(stage: Stage, venv: str) -> list[str]:
    """Package names installed into ``venv`` by ``pip install --constraint``."""
    for args in stage.all("RUN"):
        match = re.search(
            rf"{re.escape(venv)}/bin/pip install --constraint requirements\.lock ((?:[\w.-]+ ?)+)",
            args,
        )
        if match:
            return match[1].split()
    raise AssertionError(f"no `{venv}/bin/pip install --constraint requirements.lock` found")


def pip_commands(stage: Stage) -> Iterator[tuple[str, list[str]]]:
    """Every ``pip install`` the stage runs, as the program (``<path>/pip`` or
    ``<python> -m pip``) and the arguments after ``install``."""
    for run in stage.all("RUN"):
        for command in re.split(r"&&|\|\||;", run):
            match = re.search(r"(?:^|\s)(\S*pip3?|\S*python[\d.]* -m pip) install\b(.*)$", command)
            if match:
                yield match[1], match[2].split()


def service_requirements() -> set[str]:
    """What the services run with: the root distribution's dependencies (the
    client's) and its services extra."""
    project = pyproject()["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["services"]]
    return {requirement_name(spec) for spec in specs}


def lambda_requirements() -> set[str]:
    """What the lambda image adds to the services' venv: the lambda extra."""
    specs = pyproject()["project"]["optional-dependencies"]["lambda"]
    return {requirement_name(spec) for spec in specs}


def development_requirements() -> set[str]:
    """Every distribution only development needs: the root's dev extra and the
    tools distribution's dependencies (offpath itself aside)."""
    tools = tomllib.loads((REPO / "tools" / "pyproject.toml").read_text("utf-8"))
    specs = [
        *pyproject()["project"]["optional-dependencies"]["dev"],
        *tools["project"]["dependencies"],
    ]
    return {requirement_name(spec) for spec in specs} - {"offpath"}


def context_candidates() -> list[str]:
    """Every file under a path the allow-list names (``!path``), relative to
    the repository: all that could enter the build context."""
    files: list[str] = []
    for rule in dockerignore_rules():
        if rule.startswith("!"):
            for root in sorted(REPO.glob(rule[1:].strip("/"))):
                paths = [root] if root.is_file() else sorted(root.rglob("*"))
                files.extend(p.relative_to(REPO).as_posix() for p in paths if p.is_file())
    return files


@dataclass(frozen=True)
class Target:
    stage: str
    module: str
    env_host: str
    env_port: str
    default_port: int
    env_metrics_port: str
    default_metrics_port: int


TARGETS = [
    Target(
        "query",
        "offpath.query",
        query_settings.ENV_HOST,
        query_settings.ENV_PORT,
        QuerySettings.from_env({}).server.port,
        query_settings.ENV_METRICS_PORT,
        QuerySettings.from_env({}).server.metrics_port,
    ),
    Target(
        "ingest",
        "offpath.ingest",
        ingest_settings.ENV_HOST,
        ingest_settings.ENV_PORT,
        IngestSettings.from_env({}).server.port,
        ingest_settings.ENV_METRICS_PORT,
        IngestSettings.from_env({}).server.metrics_port,
    ),
]


class TestDependencies:
    def test_runtime_dependencies_are_pyprojects(self) -> None:
        """The builder installs exactly pyproject.toml's dependencies and its
        services extra into the runtime venv, each pinned by requirements.lock."""
        declared = service_requirements()
        installed = {
            normalize(name) for name in pip_installs(dockerfile_stages()["builder"], RUNTIME_VENV)
        }
        assert installed == declared
        assert installed <= set(lock_pins()), installed - set(lock_pins())

    def test_runtime_venv_gets_no_development_tool(self) -> None:
        """pip runs in the builder only, into the runtime or the codegen venv,
        and the runtime venv gets exactly [project].dependencies plus the
        project itself without dependencies: nothing of the dev extra or of
        tools/ (moto among them)."""
        stages = dockerfile_stages()
        elsewhere = {
            name: commands
            for name, stage in stages.items()
            if name not in ("builder", "lambda-builder") and (commands := list(pip_commands(stage)))
        }
        assert not elsewhere, elsewhere
        commands = list(pip_commands(stages["builder"]))
        runtime_pip, codegen_pip = f"{RUNTIME_VENV}/bin/pip", f"{CODEGEN_VENV}/bin/pip"
        assert {program for program, _ in commands} == {runtime_pip, codegen_pip}, commands
        runtime = [args for program, args in commands if program == runtime_pip]
        project = ["--no-deps", "."]
        assert project in runtime, runtime
        others = [args for args in runtime if args != project]
        assert len(others) == 1, f"one dependency install into {RUNTIME_VENV}, found {others}"
        (dependencies,) = others
        assert dependencies[:2] == ["--constraint", "requirements.lock"], dependencies
        installed = {normalize(name) for name in dependencies[2:]}
        assert installed == service_requirements()
        development = development_requirements()
        assert "moto" in development
        assert not installed & development, installed & development
        # `pip install .` installs the root distribution, whose packages come
        # from these folders: none of them is (or is inside) tools/.
        where = pyproject()["tool"]["setuptools"]["packages"]["find"]["where"]
        assert not [w for w in where if w.strip("/").split("/")[0] == "tools"], where

    def test_codegen_tools_are_locked_and_stay_in_the_builder(self) -> None:
        """grpcio-tools and mypy-protobuf come from the lock, gen_protos.sh runs
        with them, and the runtime stage copies only the runtime venv."""
        builder = dockerfile_stages()["builder"]
        tools = {normalize(name) for name in pip_installs(builder, CODEGEN_VENV)}
        assert tools == {"grpcio-tools", "mypy-protobuf"}
        assert tools <= set(lock_pins())
        assert any(
            "PYTHON=/opt/codegen/bin/python" in run and "gen_protos.sh" in run
            for run in builder.all("RUN")
        )
        assert any(
            re.search(r"/opt/venv/bin/pip install --no-deps \.$", run) for run in builder.all("RUN")
        )
        assert dockerfile_stages()["runtime"].all("COPY") == ["--from=builder /opt/venv /opt/venv"]


class TestLambdaTarget:
    def test_lambda_builder_installs_exactly_the_lambda_extra(self) -> None:
        """The lambda builder's one pip install puts pyproject.toml's lambda extra,
        pinned by requirements.lock, into its own folder (never the runtime venv),
        and nothing of development."""
        stage = dockerfile_stages()["lambda-builder"]
        assert stage.base == "builder"
        ((program, args),) = list(pip_commands(stage))
        assert program == f"{RUNTIME_VENV}/bin/pip"
        assert args[:4] == ["--constraint", "requirements.lock", "--target", LAMBDA_DIR], args
        installed = {normalize(name) for name in args[4:]}
        assert installed == lambda_requirements() == {"awslambdaric"}
        assert installed <= set(lock_pins()), installed - set(lock_pins())
        assert not installed & service_requirements()

    def test_lambda_image_is_the_runtime_plus_the_client(self) -> None:
        """The lambda target is the runtime image (same venv, same non-root user)
        with the client's folder copied in and on PYTHONPATH, and nothing else."""
        stage = dockerfile_stages()["lambda"]
        assert stage.base == "runtime"
        assert stage.all("COPY") == [f"--from=lambda-builder {LAMBDA_DIR} {LAMBDA_DIR}"]
        assert env_pairs(stage) == {"PYTHONPATH": LAMBDA_DIR}
        assert stage.all("EXPOSE") == []
        assert stage.all("USER") == []

    def test_lambda_entry_point_runs_the_handler(self) -> None:
        """The entry point is awslambdaric in exec form, and CMD names the
        handler, a function of a module the image holds."""
        stage = dockerfile_stages()["lambda"]
        assert json.loads(stage.one("ENTRYPOINT")) == ["/opt/venv/bin/python", "-m", "awslambdaric"]
        assert json.loads(stage.one("CMD")) == [LAMBDA_HANDLER]
        module, _, function = LAMBDA_HANDLER.rpartition(".")
        assert image_has_module(module), module
        assert callable(getattr(importlib.import_module(module), function))


class TestTargets:
    def test_runtime_user_is_numeric_and_not_root(self) -> None:
        """The image runs as a numeric non-root uid:gid, so Kubernetes can check
        runAsNonRoot."""
        user = dockerfile_stages()["runtime"].one("USER")
        assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user

    @pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.stage)
    def test_target_serves_its_module_on_its_port(self, target: Target) -> None:
        """Each target runs its service's module (one the image holds) in exec
        form, binds all interfaces on the settings' default gRPC and metrics
        ports, exposes them, and stops on SIGTERM."""
        stage = dockerfile_stages()[target.stage]
        assert stage.base == "runtime"
        assert json.loads(stage.one("ENTRYPOINT")) == [
            "/opt/venv/bin/python",
            "-m",
            target.module,
        ]
        assert image_has_module(target.module), target.module
        env = env_pairs(stage)
        assert env == {
            target.env_host: "0.0.0.0",
            target.env_port: str(target.default_port),
            target.env_metrics_port: str(target.default_metrics_port),
        }
        assert stage.one("EXPOSE") == f"{target.default_port} {target.default_metrics_port}"
        assert stage.one("STOPSIGNAL") == "SIGTERM"


class TestBuildContext:
    def test_build_context_admits_exactly_what_is_copied(self) -> None:
        """Every path the builder COPYs exists and passes the dockerignore, while
        the local venv, generated code and caches stay out of the context."""
        sources = [
            source
            for args in dockerfile_stages()["builder"].all("COPY")
            if not args.startswith("--from")
            for source in args.split()[:-1]
        ]
        assert sources
        for source in sources:
            assert (REPO / source).exists(), source
            assert dockerignore_admits(source), source
        for private in (
            ".venv/bin/python",
            "gen/python/offpath/v1/query_pb2.py",
            ".git/config",
            "build/lib/x.py",
            "offpath.egg-info/PKG-INFO",
            "services/query/offpath/query/__pycache__",
            "services/query/offpath/query/engine.pyc",
        ):
            assert not dockerignore_admits(private), private

    def test_build_context_admits_no_development_tool(self) -> None:
        """The allow-list admits no file under tools/, and no offpath.dev,
        offpath.bench or offpath.testing package anywhere it does admit, so no
        development tool can enter an image."""
        tools = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "tools").rglob("*.py"))
        assert "tools/offpath/dev/bootstrap.py" in tools
        assert not dockerignore_admits("tools")
        assert not dockerignore_admits("tools/pyproject.toml")
        assert not [path for path in tools if dockerignore_admits(path)]
        admitted = [path for path in context_candidates() if dockerignore_admits(path)]
        assert "services/query/offpath/query/__main__.py" in admitted
        assert not [path for path in admitted if DEV_PACKAGE.search(path)]
