"""Readers of deploy/ shared by the deploy tests: the CloudFormation template,
the kustomize base and overlay (objects, generated ConfigMaps, the
environment a Deployment gets), the kustomizations as kustomize renders them
(base, overlays, base plus each component), the Dockerfile's stages and its
build context's ignore rules, and which Deployment runs which service.

Nothing here asserts a property of deploy/ beyond "the file has the shape
this reader expects"; the tests say what must hold.

The test modules import this one relatively (``from .manifests import
...``): every folder under tests/ is a package, so pytest and mypy both name
it ``tests.unit.deploy.manifests``.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

# PyYAML ships no type information and types-PyYAML is not in the lock.
import yaml  # type: ignore[import-untyped]

from offpath.ingest.settings import IngestSettings
from offpath.query.settings import QuerySettings

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
TEMPLATE = DEPLOY / "aws" / "offpath.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
# The laptop cluster's local AWS endpoint: a development image, built apart.
LOCAL_AWS_DOCKERFILE = DEPLOY / "docker" / "Dockerfile.local-aws"
LOCAL_AWS_DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.local-aws.dockerignore"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
LOCAL = K8S / "overlays" / "local"
AWS = K8S / "overlays" / "aws"
OVERLAYS = {"local": LOCAL, "aws": AWS}
COMPONENTS = K8S / "components"


# -- YAML ----------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    """Every non-empty document of a YAML file, each a mapping."""
    with path.open(encoding="utf-8") as stream:
        docs = [doc for doc in yaml.safe_load_all(stream) if doc is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
    return cast("list[dict[str, Any]]", docs)


@cache
def pyproject() -> dict[str, Any]:
    """The root pyproject.toml: the distribution the images install."""
    return tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))


# -- CloudFormation ----------------------------------------------------------------


@cache
def template() -> dict[str, Any]:
    (doc,) = load_docs(TEMPLATE)
    return doc


def cfn_resource(logical_id: str) -> dict[str, Any]:
    resource: dict[str, Any] = template()["Resources"][logical_id]
    return resource


def cfn_properties(logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = cfn_resource(logical_id)["Properties"]
    return properties


def parameter_default(properties: Mapping[str, Any], key: str) -> str:
    """The value of a property written as ``Ref: <Parameter>``, at its default."""
    reference = properties[key]
    assert set(reference) == {"Ref"}, f"{key} should be a Ref to a parameter"
    default: str = template()["Parameters"][reference["Ref"]]["Default"]
    return default


# -- Kubernetes ----------------------------------------------------------------------


def k8s_docs(*roots: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every object of the manifests (and patches) in these kustomization folders."""
    for root in roots:
        for path in sorted(root.glob("*.yaml")):
            if path.name == "kustomization.yaml":
                continue
            for doc in load_docs(path):
                yield path, doc


def kustomization(root: Path) -> dict[str, Any]:
    (doc,) = load_docs(root / "kustomization.yaml")
    return doc


def base_object(kind: str, name: str) -> dict[str, Any]:
    """The one object of this kind and name in the base."""
    matches = [
        doc for _, doc in k8s_docs(BASE) if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(matches) == 1, f"expected one {kind} {name} in the base, found {len(matches)}"
    return matches[0]


def generated_config(*roots: Path) -> dict[str, dict[str, str]]:
    """ConfigMap name -> its literals, with later kustomizations merged over
    earlier ones (as ``behavior: merge`` does)."""
    maps: dict[str, dict[str, str]] = {}
    for root in roots:
        for generator in kustomization(root).get("configMapGenerator", []):
            values = maps.setdefault(generator["name"], {})
            for literal in generator.get("literals", []):
                key, sep, value = str(literal).partition("=")
                assert sep, f"{root}: literal {literal!r} is not KEY=VALUE"
                values[key] = value
    return maps


def env_of(deployment: Mapping[str, Any], *roots: Path) -> dict[str, str]:
    """The environment the Deployment's first container gets from its ConfigMaps."""
    maps = generated_config(*roots)
    env: dict[str, str] = {}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    return env


def containers_with_images() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Every complete container (one that names its image) in base and overlay
    manifests and patches, with a label saying where it is and its pod spec."""
    for path, doc in k8s_docs(BASE, LOCAL):
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if pod is None:
            continue
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            if "image" in container:
                label = f"{path.relative_to(K8S)}:{doc['metadata']['name']}/{container['name']}"
                yield label, container, pod


@dataclass(frozen=True)
class Service:
    """One offpath service as deploy/ ships it: its Deployment (and Service,
    ServiceAccount, image) name, its settings, and its Dockerfile target."""

    name: str
    settings: type[QuerySettings] | type[IngestSettings]
    target: str


SERVICES = {
    "query": Service("offpath-query", QuerySettings, "query"),
    "ingest": Service("offpath-ingest", IngestSettings, "ingest"),
}


def deployment(service: str) -> dict[str, Any]:
    return base_object("Deployment", SERVICES[service].name)


def main_container(service: str) -> dict[str, Any]:
    container: dict[str, Any] = deployment(service)["spec"]["template"]["spec"]["containers"][0]
    return container


# -- Rendered kustomizations ---------------------------------------------------------


def kustomize_command() -> list[str]:
    """The renderer: OFFPATH_KUSTOMIZE if set (a command line, e.g. ``kustomize
    build``), else a ``kustomize`` binary on PATH, else ``kubectl kustomize``
    (kubectl embeds kustomize; the project's machine image ships kubectl)."""
    configured = os.environ.get("OFFPATH_KUSTOMIZE")
    if configured:
        return configured.split()
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    raise AssertionError(
        "no kustomize renderer: install kubectl or kustomize, or set OFFPATH_KUSTOMIZE"
    )


@cache
def render(root: Path) -> tuple[dict[str, Any], ...]:
    """The objects kustomize builds from a kustomization folder."""
    result = subprocess.run(
        [*kustomize_command(), str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kustomize {root}: {result.stderr}"
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
    return tuple(cast("list[dict[str, Any]]", docs))


def component_names() -> list[str]:
    """The folders of deploy/k8s/components, each a kustomize Component."""
    return sorted(p.parent.name for p in COMPONENTS.glob("*/kustomization.yaml"))


@cache
def render_base_with(component: str) -> tuple[dict[str, Any], ...]:
    """The base with one component, as an overlay listing only it would build."""
    with tempfile.TemporaryDirectory(prefix="offpath-kustomize-") as folder:
        root = Path(folder)
        # kustomize refuses absolute paths to other kustomizations.
        relative = functools.partial(os.path.relpath, start=root)
        (root / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [relative(BASE)],
                    "components": [relative(COMPONENTS / component)],
                }
            ),
            "utf-8",
        )
        return render(root)


def renderings() -> dict[str, tuple[dict[str, Any], ...]]:
    """Every rendering the deploy tests check: the base, each overlay, and the
    base with each component alone."""
    out = {"base": render(BASE)}
    out.update({f"overlay:{name}": render(root) for name, root in OVERLAYS.items()})
    out.update({f"component:{name}": render_base_with(name) for name in component_names()})
    return out


def objects_of(
    objects: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str
) -> list[dict[str, Any]]:
    return [doc for doc in objects if doc["kind"] == kind]


def one_object(
    objects: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str, name: str
) -> dict[str, Any]:
    matches = [doc for doc in objects_of(objects, kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def rendered_env(
    objects: tuple[dict[str, Any], ...] | list[dict[str, Any]], deployment_name: str
) -> dict[str, str]:
    """The environment a rendered Deployment's first container gets from the
    rendered ConfigMaps its envFrom names (hash suffixes and all) and its
    literal ``env`` values (variables taken from a Secret are left out: their
    values are not in the manifests)."""
    maps = {
        doc["metadata"]["name"]: doc.get("data", {}) for doc in objects_of(objects, "ConfigMap")
    }
    container = one_object(objects, "Deployment", deployment_name)["spec"]["template"]["spec"][
        "containers"
    ][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
    return env


# -- Docker --------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        (args,) = self.all(keyword)
        return args


@cache
def dockerfile_stages(dockerfile: Path = DOCKERFILE) -> dict[str, Stage]:
    """Stages by name, each with its instructions (continuations joined,
    comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in dockerfile.read_text("utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", args, flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            current = stages[match[2]] = Stage(name=match[2], base=match[1])
        elif current is not None:
            current.instructions.append((keyword, args))
    return stages


def dockerignore_rules(ignore_file: Path = DOCKERIGNORE) -> list[str]:
    """The ignore file's patterns, in order (``!`` kept, comments dropped)."""
    rules = []
    for raw in ignore_file.read_text("utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rules.append(line)
    return rules


def dockerignore_admits(path: str, ignore_file: Path = DOCKERIGNORE) -> bool:
    """Whether Docker's ignore rules (last match wins, a pattern matching a
    parent matches its contents) let ``path`` into the build context."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    admitted = True
    for line in dockerignore_rules(ignore_file):
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        if pattern.startswith("**/") and "/" not in pattern[3:]:
            hit = any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)
        if hit:
            admitted = negate
    return admitted


def image_has_module(module: str) -> bool:
    """Whether ``python -m <module>`` can run in an offpath image: the module,
    or a package with a ``__main__``, lies in a folder the root pyproject.toml
    takes packages from, and the build context admits the file."""
    where: list[str] = pyproject()["tool"]["setuptools"]["packages"]["find"]["where"]
    relative = module.replace(".", "/")
    for root in where:
        for candidate in (f"{root}/{relative}.py", f"{root}/{relative}/__main__.py"):
            if (REPO / candidate).is_file() and dockerignore_admits(candidate):
                return True
    return False
