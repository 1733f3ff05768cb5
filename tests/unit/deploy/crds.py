"""Schemas for the custom resources deploy/k8s uses, which kubernetes-validate
(built-in kinds only) cannot check: KEDA's ScaledObject and
TriggerAuthentication (keda.sh/v1alpha1, KEDA >= 2.13) and the Prometheus
Operator's PodMonitor (monitoring.coreos.com/v1).

They are not the projects' CRDs (those are not in any package on the
registries this project installs from): they are written here from the
fields the KEDA and Prometheus Operator documentation gives, and cover only
the fields these manifests use, strictly (an unknown or misspelt field
fails), with the required ones required. A field the real CRD accepts but
these schemas do not is a failure to fix here, not in the manifest.
"""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}
_HPA_POLICY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "value", "periodSeconds"],
    "properties": {
        "type": {"enum": ["Pods", "Percent"]},
        "value": {"type": "integer", "minimum": 1},
        "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800},
    },
}
_HPA_RULES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {"type": "array", "items": _HPA_POLICY},
    },
}


def _object(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


# keda.sh/docs/2.13+ "Scaling Deployments" (ScaledObject spec) and the
# aws-sqs-queue scaler's parameters; metadata values are strings.
_SQS_TRIGGER_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["queueLength", "awsRegion"],
    "oneOf": [{"required": ["queueURL"]}, {"required": ["queueURLFromEnv"]}],
    "properties": {
        "queueURL": {"type": "string", "pattern": r"^https://sqs\.[a-z0-9-]+\.amazonaws\.com/"},
        "queueURLFromEnv": {"type": "string", "pattern": r"^[A-Z_][A-Z0-9_]*$"},
        "queueLength": {"type": "string", "pattern": r"^[1-9][0-9]*$"},
        "activationQueueLength": {"type": "string", "pattern": r"^[0-9]+$"},
        "awsRegion": {"type": "string", "pattern": r"^[a-z]{2}(-[a-z]+)+-[0-9]$"},
        "scaleOnInFlight": {"enum": ["true", "false"]},
        "scaleOnDelayed": {"enum": ["true", "false"]},
    },
}
SCALED_OBJECT = _object(
    "keda.sh/v1alpha1",
    "ScaledObject",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": _NAME,
                    "envSourceContainerName": {"type": "string"},
                },
            },
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "initialCooldownPeriod": {"type": "integer", "minimum": 0},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "fallback": {
                "type": "object",
                "additionalProperties": False,
                "required": ["failureThreshold", "replicas"],
                "properties": {
                    "failureThreshold": {"type": "integer", "minimum": 1},
                    "replicas": {"type": "integer", "minimum": 0},
                },
            },
            "advanced": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "name": _NAME,
                            "behavior": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"scaleUp": _HPA_RULES, "scaleDown": _HPA_RULES},
                            },
                        },
                    },
                },
            },
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "metadata"],
                    "properties": {
                        # The only scaler these manifests use; another one
                        # needs its parameters described here first.
                        "type": {"const": "aws-sqs-queue"},
                        "name": {"type": "string"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                        "authenticationRef": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name"],
                            "properties": {
                                "name": _NAME,
                                "kind": {
                                    "enum": [
                                        "TriggerAuthentication",
                                        "ClusterTriggerAuthentication",
                                    ]
                                },
                            },
                        },
                        "metadata": _SQS_TRIGGER_METADATA,
                    },
                },
            },
        },
    },
)

# keda.sh/docs/2.13+ "Authentication" and the "AWS (IRSA) Pod Identity
# Webhook" provider: podIdentity.provider aws, with roleArn or identityOwner
# (mutually exclusive).
TRIGGER_AUTHENTICATION = _object(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["podIdentity"],
        "properties": {
            "podIdentity": {
                "type": "object",
                "additionalProperties": False,
                "required": ["provider"],
                "not": {"required": ["roleArn", "identityOwner"]},
                "properties": {
                    "provider": {"const": "aws"},
                    "roleArn": {"type": "string", "pattern": r"^arn:aws:iam::\d{12}:role/"},
                    "identityOwner": {"enum": ["keda", "workload"]},
                },
            }
        },
    },
)

# prometheus-operator API reference, PodMonitorSpec and PodMetricsEndpoint.
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _LABELS,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"}
POD_MONITOR = _object(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
            },
            "jobLabel": {"type": "string"},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "podMetricsEndpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["port"],
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"},
                    },
                },
            },
        },
    },
)

# (apiVersion, kind) -> its schema here.
CUSTOM_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
}
