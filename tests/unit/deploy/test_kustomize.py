"""The structure of deploy/'s YAML and of the kustomizations (deploy/k8s/base,
overlays/local and aws, components/*): every file parses, every
kustomization's resources, components and patches exist and cover its
folder, and the local overlay patches and merges into what the base
defines and points the services at an endpoint it defines itself. What
the objects say is in test_configmaps.py, test_deployments.py and
test_components.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .manifests import (
    AWS,
    BASE,
    COMPONENTS,
    DEPLOY,
    K8S,
    LOCAL,
    LOCAL_AWS_DOCKERFILE,
    LOCAL_AWS_DOCKERIGNORE,
    REPO,
    base_object,
    dockerfile_stages,
    dockerignore_admits,
    generated_config,
    k8s_docs,
    kustomization,
    load_docs,
)


class TestFiles:
    def test_every_yaml_under_deploy_parses(self) -> None:
        """Each YAML file in deploy/ is valid YAML whose documents are mappings,
        and each Kubernetes object has apiVersion, kind and a name."""
        paths = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
        assert len(paths) >= 10
        for path in paths:
            for doc in load_docs(path):
                if path.is_relative_to(K8S) and path.name != "kustomization.yaml":
                    assert {"apiVersion", "kind", "metadata"} <= set(doc), path
                    assert doc["metadata"].get("name"), path

    @pytest.mark.parametrize(
        "root",
        [BASE, LOCAL, AWS, *sorted(COMPONENTS.glob("*/"))],
        ids=lambda root: str(root.relative_to(K8S)),
    )
    def test_kustomization_references_exist(self, root: Path) -> None:
        """Every resource, component and patch file a kustomization names is
        there, and every manifest in its folder is listed (none silently left
        out)."""
        spec = kustomization(root)
        listed = set()
        for entry in [*spec.get("resources", []), *spec.get("components", [])]:
            target = (root / entry).resolve()
            assert target.exists(), entry
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), entry
            listed.add(target)
        for patch in spec.get("patches", []):
            if "path" not in patch:
                continue  # an inline patch
            target = (root / patch["path"]).resolve()
            assert target.exists(), patch
            listed.add(target)
        on_disk = {p.resolve() for p in root.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert on_disk <= listed, on_disk - listed


class TestLocalOverlay:
    def test_overlay_patches_existing_containers(self) -> None:
        """The local overlay's patches name base Deployments and, where they
        change a container, one the base defines."""
        for patch in kustomization(LOCAL).get("patches", []):
            for doc in load_docs(LOCAL / patch["path"]):
                base = base_object(doc["kind"], doc["metadata"]["name"])
                base_names = {c["name"] for c in base["spec"]["template"]["spec"]["containers"]}
                for container in doc["spec"]["template"]["spec"].get("containers", []):
                    assert container["name"] in base_names, container["name"]

    def test_overlay_merges_into_existing_configmaps_in_the_base_namespace(self) -> None:
        """Each `behavior: merge` generator of the overlay names a base
        ConfigMap and the base's namespace, where kustomize looks for it."""
        namespace = kustomization(BASE)["namespace"]
        assert kustomization(LOCAL)["namespace"] == namespace
        base_maps = generated_config(BASE)
        merges = [
            g for g in kustomization(LOCAL)["configMapGenerator"] if g.get("behavior") == "merge"
        ]
        assert merges
        for generator in merges:
            assert generator["name"] in base_maps, generator["name"]
            assert generator.get("namespace") == namespace, generator["name"]

    def test_local_overlay_points_at_an_in_namespace_endpoint(self) -> None:
        """The local overlay's AWS_ENDPOINT_URL names a Service (and port) the
        overlay itself defines."""
        common = generated_config(BASE, LOCAL)["offpath-common"]
        match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", common["AWS_ENDPOINT_URL"])
        assert match, common["AWS_ENDPOINT_URL"]
        services = [
            doc
            for _, doc in k8s_docs(LOCAL)
            if doc["kind"] == "Service" and doc["metadata"]["name"] == match[1]
        ]
        assert services, f"no Service {match[1]} in the local overlay"
        assert int(match[2]) in {port["port"] for port in services[0]["spec"]["ports"]}
        assert "AWS_ENDPOINT_URL" not in generated_config(BASE)["offpath-common"]

    def test_local_endpoint_sets_itself_up_from_its_own_image(self) -> None:
        """The local overlay's endpoint runs the development image built by
        Dockerfile.local-aws, which runs offpath.dev.localaws (it creates the
        queues and table at every start, so no service pod needs an init
        container), admits tools/ into its build context, and reads the same
        names as the services (the offpath-common ConfigMap)."""
        (deployment,) = [
            doc
            for _, doc in k8s_docs(LOCAL)
            if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "local-aws"
        ]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "offpath-local-aws"
        assert "command" not in container
        assert {"configMapRef": {"name": "offpath-common"}} in container["envFrom"]
        (stage,) = [
            stage
            for stage in dockerfile_stages(LOCAL_AWS_DOCKERFILE).values()
            if stage.all("ENTRYPOINT")
        ]
        assert stage.one("ENTRYPOINT") == '["/opt/venv/bin/python", "-m", "offpath.dev.localaws"]'
        module = REPO / "tools" / "offpath" / "dev" / "localaws.py"
        assert module.is_file()
        assert dockerignore_admits("tools/offpath/dev/localaws.py", LOCAL_AWS_DOCKERIGNORE)
        assert dockerignore_admits("tools/pyproject.toml", LOCAL_AWS_DOCKERIGNORE)
        images = {image["name"] for image in kustomization(LOCAL)["images"]}
        assert "offpath-local-aws" in images
        for _, doc in k8s_docs(LOCAL):
            if doc["kind"] == "Deployment":
                assert "initContainers" not in doc["spec"]["template"]["spec"], doc["metadata"]
