"""The ConfigMaps kustomize generates (base, and base plus the local overlay)
against the services' settings: every OFFPATH_* key is a setting some
module reads, the environment each Deployment gets parses into its settings
object, the resource names are the stack's, and every envFrom names a
generated ConfigMap.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from offpath.emitter import settings as emitter_settings
from offpath.ingest import settings as ingest_settings
from offpath.ingest.settings import IngestSettings
from offpath.kit import settings as kit_settings
from offpath.kit import sqs as kit_sqs
from offpath.query import settings as query_settings
from offpath.query.settings import QuerySettings

from .manifests import (
    AWS,
    BASE,
    LOCAL,
    SERVICES,
    cfn_properties,
    deployment,
    env_of,
    generated_config,
    main_container,
    parameter_default,
)

# Modules whose ENV_* constants are the OFFPATH_* settings the services read.
SETTINGS_MODULES: tuple[ModuleType, ...] = (
    query_settings,
    ingest_settings,
    emitter_settings,
    kit_settings,
    kit_sqs,
)
# Standard AWS SDK variables a ConfigMap may set (DESIGN.md decision 8).
AWS_VARIABLES = frozenset(
    {"AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
)


def setting_names() -> set[str]:
    return {
        value
        for module in SETTINGS_MODULES
        for name, value in vars(module).items()
        if name.startswith("ENV_") and isinstance(value, str)
    }


class TestConfigMaps:
    def test_offpath_keys_are_real_settings(self) -> None:
        """Every OFFPATH_* key in a generated ConfigMap (base or overlay) is an
        ENV_* constant of a settings module; other keys are standard AWS variables."""
        known = setting_names()
        for root in (BASE, LOCAL, AWS):
            for name, values in generated_config(root).items():
                for key in values:
                    if key.startswith("OFFPATH_"):
                        assert key in known, f"{root.name}/{name}: {key} is not a setting"
                    else:
                        assert key in AWS_VARIABLES, f"{root.name}/{name}: unexpected {key}"

    @pytest.mark.parametrize(
        "overlay", [(BASE,), (BASE, LOCAL), (BASE, AWS)], ids=["base", "local", "aws"]
    )
    @pytest.mark.parametrize("service", sorted(SERVICES))
    def test_values_are_accepted_by_the_service(
        self, service: str, overlay: tuple[Path, ...]
    ) -> None:
        """The environment each Deployment gets parses into its settings object
        without error (a bad value would crash-loop the pod)."""
        env = env_of(deployment(service), *overlay)
        SERVICES[service].settings.from_env(env)
        assert env["AWS_REGION"]

    def test_resource_names_match_the_stack(self) -> None:
        """The queue, DLQ and table names the pods use (as their settings read
        them) are the stack's defaults."""
        queue = parameter_default(cfn_properties("Queue"), "QueueName")
        dlq = parameter_default(cfn_properties("DeadLetterQueue"), "QueueName")
        table = parameter_default(cfn_properties("Table"), "TableName")
        ingest = IngestSettings.from_env(env_of(deployment("ingest"), BASE))
        assert (ingest.queues.queue, ingest.queues.dlq, ingest.table) == (queue, dlq, table)
        query = QuerySettings.from_env(env_of(deployment("query"), BASE))
        assert query.emitter.queue_name == queue

    @pytest.mark.parametrize("service", sorted(SERVICES))
    def test_deployment_reads_existing_configmaps(self, service: str) -> None:
        """Each envFrom names a ConfigMap the kustomization generates."""
        maps = generated_config(BASE)
        for source in main_container(service)["envFrom"]:
            assert source["configMapRef"]["name"] in maps
