"""Unit tests for offpath.kit.reflection: the v1 descriptor derived from v1alpha's, and
reflection answering under both names over a real grpc.aio server on 127.0.0.1:<free port>."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

from offpath.kit.reflection import (
    V1_FILE_NAME,
    V1_SERVICE_NAME,
    V1ALPHA_SERVICE_NAME,
    enable_reflection,
    v1_file_descriptor_proto,
)

TIMEOUT_S = 10.0
BUSINESS = "offpath.test.Business"


def _shape(file: descriptor_pb2.FileDescriptorProto) -> list[tuple[object, ...]]:
    """What decides the wire format: each message's fields by number, with their type and
    label, and type references with the package left out."""
    prefix = f".{file.package}."
    return [
        (
            message.name,
            *sorted(
                (
                    field.number,
                    field.name,
                    field.type,
                    field.label,
                    field.type_name.removeprefix(prefix),
                    field.HasField("oneof_index"),
                )
                for field in message.field
            ),
        )
        for message in file.message_type
    ]


def test_v1_file_is_v1alpha_with_the_package_renamed() -> None:
    """The derived v1 file has v1alpha's messages field for field (so the wire is the same)
    and no reference left to the v1alpha package."""
    v1alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1alpha)
    v1 = v1_file_descriptor_proto()
    assert (v1.name, v1.package) == (V1_FILE_NAME, "grpc.reflection.v1")
    assert _shape(v1) == _shape(v1alpha)
    assert "v1alpha" not in str(v1)
    assert not v1.options.deprecated


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a server with reflection enabled on it twice over (two servers in one
    process register the v1 file once), stopped afterwards."""
    servers = [grpc.aio.server(), grpc.aio.server()]
    for server in servers:
        enable_reflection([BUSINESS], server)
    port = servers[0].add_insecure_port("127.0.0.1:0")
    await servers[0].start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
        try:
            yield opened
        finally:
            await servers[0].stop(None)


async def _ask(
    channel: grpc.aio.Channel, service: str, request: object
) -> reflection_pb2.ServerReflectionResponse:
    info = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = [response async for response in info(iter([request]), timeout=TIMEOUT_S)]
    assert len(responses) == 1
    return responses[0]


@pytest.mark.parametrize("service", [V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME])
async def test_both_names_list_the_services_and_both_reflections(
    channel: grpc.aio.Channel, service: str
) -> None:
    """Reflection answers under each name and lists the business service and both names."""
    response = await _ask(
        channel, service, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    names = {entry.name for entry in response.list_services_response.service}
    assert names == {BUSINESS, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME}


async def test_v1_service_is_described_by_the_v1_file(channel: grpc.aio.Channel) -> None:
    """Asked over v1 for the file defining grpc.reflection.v1.ServerReflection, reflection
    returns the v1 file (a client can resolve the service it lists)."""
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=V1_SERVICE_NAME)
    response = await _ask(channel, V1_SERVICE_NAME, request)
    (serialized,) = response.file_descriptor_response.file_descriptor_proto
    file = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    assert file == v1_file_descriptor_proto()
    assert descriptor_pool.Default().FindServiceByName(V1_SERVICE_NAME).file.name == V1_FILE_NAME
