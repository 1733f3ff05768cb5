"""The kustomizations as kustomize renders them (deploy/k8s: the base, the
local and aws overlays, and the base with each component of
deploy/k8s/components alone): every object valid against the Kubernetes
schemas (kubernetes-validate --strict, at the minimum supported version and
the newest it knows) or, for custom resources, against tests/unit/deploy/
crds.py; and what each component promises: the HorizontalPodAutoscaler and
the ScaledObject scale Deployments that exist, from the settings the pods
use; the NetworkPolicies deny by default and let through what each service
needs; the PodMonitor scrapes ports that exist; the aws overlay talks to
real AWS under IRSA.
"""

from __future__ import annotations

import copy
import re
from typing import Any
from urllib.parse import urlparse

# kubernetes-validate and jsonschema ship no type information.
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from .crds import CUSTOM_SCHEMAS
from .manifests import (
    AWS,
    BASE,
    COMPONENTS,
    LOCAL,
    SERVICES,
    component_names,
    kustomization,
    load_docs,
    objects_of,
    one_object,
    render,
    render_base_with,
    rendered_env,
    renderings,
)

# The oldest Kubernetes the manifests support (deploy/k8s/base/kustomization.yaml:
# the preStop sleep action is on by default from 1.30), and the newest the
# validator knows, so that a removed API shows too.
MIN_KUBERNETES = "1.30.0"
KUBERNETES_VERSIONS = (MIN_KUBERNETES, kubernetes_validate.latest_version())

RENDERINGS = renderings()
Objects = tuple[dict[str, Any], ...]
# Components no overlay enables by default: they need something the
# operator makes first (tls: the certificates' Secrets).
OPT_IN_COMPONENTS = ("tls",)


def validation_errors(doc: dict[str, Any]) -> list[str]:
    """Why a rendered object is invalid (empty when it is valid)."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM_SCHEMAS:
        validator = jsonschema.Draft202012Validator(CUSTOM_SCHEMAS[key])
        return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{version}: {error.message}")
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{version}: {list(error.absolute_path)}: {error.message}")
    return errors


def pod_labels(objects: Objects, deployment: str) -> dict[str, str]:
    labels: dict[str, str] = one_object(objects, "Deployment", deployment)["spec"]["template"][
        "metadata"
    ]["labels"]
    return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) matches."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def container_ports(objects: Objects, deployment: str) -> dict[str, int]:
    pod = one_object(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    return {
        port["name"]: port["containerPort"]
        for container in pod["containers"]
        for port in container.get("ports", [])
    }


def policies_for(objects: Objects, deployment: str) -> list[dict[str, Any]]:
    labels = pod_labels(objects, deployment)
    return [
        policy
        for policy in objects_of(objects, "NetworkPolicy")
        if selects(policy["spec"]["podSelector"], labels)
    ]


def with_component(component: str) -> list[Objects]:
    """Every rendering that includes the component's objects: the base with it
    alone, and each overlay that lists it."""
    out = [render_base_with(component)]
    for root in (LOCAL, AWS):
        listed = {(root / entry).resolve() for entry in kustomization(root).get("components", [])}
        if (COMPONENTS / component).resolve() in listed:
            out.append(render(root))
    return out


class TestRenderings:
    @pytest.mark.parametrize("name", sorted(RENDERINGS))
    def test_every_object_is_valid(self, name: str) -> None:
        """Each rendered object passes kubernetes-validate --strict at the
        minimum and newest Kubernetes versions, or (a custom resource) the
        strict schema of crds.py; an unknown kind fails."""
        objects = RENDERINGS[name]
        assert objects, name
        errors = {
            f"{doc['kind']}/{doc['metadata']['name']}": problems
            for doc in objects
            if (problems := validation_errors(doc))
        }
        assert not errors, errors

    def test_validation_rejects_an_unknown_field(self) -> None:
        """The validation above can fail: a misspelt field in a Deployment, a
        ScaledObject and a PodMonitor is reported."""
        aws = render(AWS)
        for kind, name, path in [
            ("Deployment", "offpath-query", ("spec", "template", "spec")),
            ("ScaledObject", "offpath-ingest", ("spec",)),
            ("PodMonitor", "offpath", ("spec",)),
        ]:
            doc = copy.deepcopy(one_object(aws, kind, name))
            target = doc
            for key in path:
                target = target[key]
            target["terminationGracePeriod"] = 30
            assert validation_errors(doc), kind

    def test_every_component_is_a_component_and_rendered(self) -> None:
        """Each folder of deploy/k8s/components is a kustomize Component that
        changes the base's rendering, and the aws overlay enables every one
        but tls (which needs certificates the operator issues first)."""
        names = component_names()
        assert names == ["hpa", "keda", "network-policy", "pod-monitor", "tls"]
        base = render(BASE)
        for name in names:
            (doc,) = load_docs(COMPONENTS / name / "kustomization.yaml")
            assert doc["apiVersion"] == "kustomize.config.k8s.io/v1alpha1", name
            assert doc["kind"] == "Component", name
            assert render_base_with(name) != base, name
        enabled = sorted((AWS / entry).resolve().name for entry in kustomization(AWS)["components"])
        assert enabled == [name for name in names if name not in OPT_IN_COMPONENTS]


class TestPods:
    @pytest.mark.parametrize("name", sorted(RENDERINGS))
    def test_no_pod_gets_a_kubernetes_api_token(self, name: str) -> None:
        """Every Deployment's pods (the services and the local endpoint) have
        automountServiceAccountToken false: nothing here calls the API server."""
        deployments = objects_of(RENDERINGS[name], "Deployment")
        assert len(deployments) >= 2, name
        for deployment in deployments:
            pod = deployment["spec"]["template"]["spec"]
            assert pod.get("automountServiceAccountToken") is False, deployment["metadata"]

    @pytest.mark.parametrize("name", sorted(RENDERINGS))
    @pytest.mark.parametrize("service", sorted(SERVICES))
    def test_every_metrics_port_is_on_the_service(self, name: str, service: str) -> None:
        """The container port named `metrics` is a port of the Service that
        selects the pods, by name and number."""
        objects = RENDERINGS[name]
        deployment = SERVICES[service].name
        metrics = container_ports(objects, deployment)["metrics"]
        spec = one_object(objects, "Service", deployment)["spec"]
        assert selects({"matchLabels": spec["selector"]}, pod_labels(objects, deployment))
        ports = {port["name"]: port for port in spec["ports"]}
        assert ports["metrics"]["targetPort"] == "metrics"
        assert ports["metrics"]["port"] == metrics


class TestHpa:
    @pytest.mark.parametrize("objects", with_component("hpa"), ids=["base+hpa", "aws"])
    def test_hpa_scales_the_query_deployment(self, objects: Objects) -> None:
        """The HorizontalPodAutoscaler targets the QueryService Deployment of
        the same rendering, which no longer states replicas (apply would
        reset the autoscaler's choice), on CPU, from at least two pods."""
        (hpa,) = objects_of(objects, "HorizontalPodAutoscaler")
        target = hpa["spec"]["scaleTargetRef"]
        deployment = one_object(objects, target["kind"], target["name"])
        assert target["name"] == SERVICES["query"].name
        assert target["apiVersion"] == deployment["apiVersion"]
        assert "replicas" not in deployment["spec"]
        assert hpa["spec"]["minReplicas"] >= 2
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"

    def test_hpa_adds_fast_and_removes_slowly(self) -> None:
        """Scale-up has no stabilisation window; scale-down waits at least five
        minutes and removes one pod at a time."""
        behavior = one_object(render(AWS), "HorizontalPodAutoscaler", "offpath-query")["spec"][
            "behavior"
        ]
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
        assert all(
            policy == {"type": "Pods", "value": 1, "periodSeconds": 60}
            for policy in behavior["scaleDown"]["policies"]
        )


class TestKeda:
    @pytest.mark.parametrize("objects", with_component("keda"), ids=["base+keda", "aws"])
    def test_scaled_object_scales_the_ingest_deployment(self, objects: Objects) -> None:
        """The ScaledObject targets the AnalyticsIngest Deployment of the same
        rendering (which no longer states replicas), never below one pod (it
        also serves the read API), with an aws-sqs-queue trigger whose
        TriggerAuthentication is in the rendering."""
        (scaled,) = objects_of(objects, "ScaledObject")
        target = scaled["spec"]["scaleTargetRef"]
        deployment = one_object(objects, target["kind"], target["name"])
        assert target["name"] == SERVICES["ingest"].name
        assert "replicas" not in deployment["spec"]
        assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "aws-sqs-queue"
        auth = one_object(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert auth["spec"]["podIdentity"]["provider"] == "aws"
        # The operator's identity, never the ingest pod's: that role grants
        # exactly what AnalyticsIngest calls (test_iam.py).
        assert auth["spec"]["podIdentity"].get("identityOwner", "keda") == "keda"

    def test_aws_trigger_reads_the_queue_the_services_use(self) -> None:
        """In the aws overlay, the trigger's queue URL comes from the ingest
        container's environment, names the queue the services are configured
        with, in the region they use, which is the trigger's awsRegion."""
        objects = render(AWS)
        (trigger,) = one_object(objects, "ScaledObject", "offpath-ingest")["spec"]["triggers"]
        metadata = trigger["metadata"]
        env = rendered_env(objects, SERVICES["ingest"].name)
        url = urlparse(env[metadata["queueURLFromEnv"]])
        host = re.fullmatch(r"sqs\.([a-z0-9-]+)\.amazonaws\.com", url.hostname or "")
        assert url.scheme == "https", url
        assert host, url
        account, queue = url.path.strip("/").split("/")
        assert re.fullmatch(r"\d{12}", account), account
        assert queue == env["OFFPATH_SQS_QUEUE_NAME"]
        assert host[1] == env["AWS_REGION"] == metadata["awsRegion"]


class TestNetworkPolicy:
    @pytest.mark.parametrize(
        "objects", with_component("network-policy"), ids=["base+network-policy", "local", "aws"]
    )
    def test_namespace_denies_by_default_and_resolves_names(self, objects: Objects) -> None:
        """A policy selects every pod for both directions with no rule (deny
        all), and another lets every pod reach cluster DNS on port 53."""
        policies = objects_of(objects, "NetworkPolicy")
        deny = [
            p
            for p in policies
            if p["spec"]["podSelector"] == {}
            and sorted(p["spec"]["policyTypes"]) == ["Egress", "Ingress"]
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert deny, "no default-deny NetworkPolicy"
        dns = [
            rule
            for p in policies
            if p["spec"]["podSelector"] == {}
            for rule in p["spec"].get("egress", [])
            if {(port["protocol"], port["port"]) for port in rule["ports"]}
            == {("UDP", 53), ("TCP", 53)}
        ]
        assert dns, "no DNS egress for the namespace"

    @pytest.mark.parametrize(
        "objects", with_component("network-policy"), ids=["base+network-policy", "local", "aws"]
    )
    @pytest.mark.parametrize("service", sorted(SERVICES))
    def test_each_service_gets_its_ports_and_https_out(
        self, objects: Objects, service: str
    ) -> None:
        """Policies selecting the service's pods admit traffic to its grpc and
        metrics ports (named ports the pods have) and let it out to AWS on
        TCP 443; no other egress port but DNS and the local endpoint."""
        deployment = SERVICES[service].name
        ports = container_ports(objects, deployment)
        ingress_ports = set()
        egress_ports = set()
        for policy in policies_for(objects, deployment):
            for rule in policy["spec"].get("ingress", []):
                ingress_ports |= {port["port"] for port in rule.get("ports", [])}
            for rule in policy["spec"].get("egress", []):
                egress_ports |= {(port["protocol"], port["port"]) for port in rule["ports"]}
        assert {"grpc", "metrics"} <= ingress_ports
        assert all(port in ports for port in ingress_ports if isinstance(port, str))
        assert ("TCP", 443) in egress_ports
        assert egress_ports <= {("TCP", 443), ("UDP", 53), ("TCP", 53), ("TCP", 4566)}


class TestPodMonitor:
    @pytest.mark.parametrize(
        "objects", with_component("pod-monitor"), ids=["base+pod-monitor", "aws"]
    )
    def test_pod_monitor_scrapes_both_services_metrics_ports(self, objects: Objects) -> None:
        """The PodMonitor selects the pods of both services, and each has the
        container port it scrapes."""
        (monitor,) = objects_of(objects, "PodMonitor")
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        for service in SERVICES.values():
            assert selects(monitor["spec"]["selector"], pod_labels(objects, service.name))
            assert endpoint["port"] in container_ports(objects, service.name)
        assert endpoint["path"] == "/metrics"


class TestAwsOverlay:
    def test_talks_to_real_aws_under_irsa(self) -> None:
        """No endpoint override and no keys in any ConfigMap; each
        ServiceAccount names a role of the same name in a 12-digit account;
        both images come from a registry."""
        objects = render(AWS)
        for config in objects_of(objects, "ConfigMap"):
            data = config.get("data", {})
            assert not {k for k in data if k.startswith("AWS_ENDPOINT_URL")}, config["metadata"]
            assert "AWS_ACCESS_KEY_ID" not in data
            assert "AWS_SECRET_ACCESS_KEY" not in data
        for service in SERVICES.values():
            account = one_object(objects, "ServiceAccount", service.name)
            role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            assert re.fullmatch(rf"arn:aws:iam::\d{{12}}:role/{service.name}", role), role
            pod = one_object(objects, "Deployment", service.name)["spec"]["template"]["spec"]
            assert pod["serviceAccountName"] == service.name
            image = pod["containers"][0]["image"]
            assert re.fullmatch(rf"[a-z0-9.-]+\.[a-z]+(:\d+)?/{service.name}:[\w.-]+", image)

    def test_queue_urls_match_the_names_and_region(self) -> None:
        """The queue and DLQ URLs the overlay sets end in the configured names,
        in the configured region, in the same account."""
        env = rendered_env(render(AWS), SERVICES["ingest"].name)
        accounts = set()
        for url_key, name_key in [
            ("OFFPATH_SQS_QUEUE_URL", "OFFPATH_SQS_QUEUE_NAME"),
            ("OFFPATH_SQS_DLQ_URL", "OFFPATH_SQS_DLQ_NAME"),
        ]:
            match = re.fullmatch(
                r"https://sqs\.([a-z0-9-]+)\.amazonaws\.com/(\d{12})/([\w.-]+)", env[url_key]
            )
            assert match, env[url_key]
            assert match[1] == env["AWS_REGION"]
            assert match[3] == env[name_key]
            accounts.add(match[2])
        assert len(accounts) == 1


def _container(objects: Objects, deployment: str) -> dict[str, Any]:
    container: dict[str, Any] = one_object(objects, "Deployment", deployment)["spec"]["template"][
        "spec"
    ]["containers"][0]
    return container


class TestTls:
    @pytest.mark.parametrize("service", sorted(SERVICES))
    def test_each_service_reads_its_certificate_from_a_tls_secret(self, service: str) -> None:
        """With the tls component, each Deployment mounts a Secret of its own
        (kubernetes.io/tls keys: tls.crt, tls.key) read-only, and
        OFFPATH_TLS_CERT_FILE / OFFPATH_TLS_KEY_FILE name those files; no
        client CA (mutual TLS is an overlay's choice)."""
        objects = render_base_with("tls")
        deployment = SERVICES[service].name
        pod = one_object(objects, "Deployment", deployment)["spec"]["template"]["spec"]
        container = _container(objects, deployment)
        env = rendered_env(objects, deployment)
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == f"{deployment}-tls"
        assert volume["secret"].get("optional") is not True
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        assert env["OFFPATH_TLS_CERT_FILE"] == f"{mount['mountPath']}/tls.crt"
        assert env["OFFPATH_TLS_KEY_FILE"] == f"{mount['mountPath']}/tls.key"
        assert "OFFPATH_TLS_CLIENT_CA_FILE" not in env
        # The key is readable by the pod's group (fsGroup) and by no one else.
        assert volume["secret"]["defaultMode"] & 0o007 == 0
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]

    @pytest.mark.parametrize("service", sorted(SERVICES))
    def test_probes_do_not_speak_plaintext_grpc_to_a_tls_port(self, service: str) -> None:
        """The kubelet's grpc probe is plaintext: with TLS, liveness and readiness
        are tcpSocket probes of the grpc port instead, and the rest of the
        container (its other variables and mounts) is left as it was."""
        objects = render_base_with("tls")
        deployment = SERVICES[service].name
        container = _container(objects, deployment)
        for probe in ("livenessProbe", "readinessProbe"):
            assert "grpc" not in container[probe], probe
            assert container[probe]["tcpSocket"]["port"] in container_ports(objects, deployment)
        base = _container(render(BASE), deployment)
        assert {m["name"] for m in base["volumeMounts"]} < {
            m["name"] for m in container["volumeMounts"]
        }
        assert [v for v in base.get("env", []) if v not in container.get("env", [])] == []


class TestSecrets:
    @pytest.mark.parametrize("name", sorted(RENDERINGS))
    def test_no_rendering_holds_a_secret(self, name: str) -> None:
        """No key, certificate or token is committed: no rendering has a Secret
        object (the operator creates them with kubectl; the README says how)."""
        assert objects_of(RENDERINGS[name], "Secret") == []

    @pytest.mark.parametrize("name", sorted(RENDERINGS))
    def test_ingest_read_tokens_come_from_an_optional_secret(self, name: str) -> None:
        """AnalyticsIngest takes OFFPATH_INGEST_READ_TOKENS from the Secret
        offpath-ingest-read-tokens (optional: the pod starts without it, its
        read API then open); QueryService never gets the tokens."""
        objects = RENDERINGS[name]
        ingest = _container(objects, SERVICES["ingest"].name)
        (tokens,) = [v for v in ingest.get("env", []) if v["name"] == "OFFPATH_INGEST_READ_TOKENS"]
        reference = tokens["valueFrom"]["secretKeyRef"]
        assert reference == {
            "name": "offpath-ingest-read-tokens",
            "key": "tokens",
            "optional": True,
        }
        query = _container(objects, SERVICES["query"].name)
        assert not [v for v in query.get("env", []) if "READ_TOKENS" in v["name"]]
