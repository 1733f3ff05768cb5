"""gRPC server reflection under both names clients ask for.

``grpc.reflection.v1`` is the current protocol (grpcurl >= 1.9 and
``buf curl --reflect-protocol grpc-v1`` try it first); ``v1alpha`` is the
deprecated original that older tools still speak. grpcio-reflection ships
only ``v1alpha``. The two protos are the same messages, field for field,
with only the package renamed (grpc-proto's ``grpc/reflection/v1`` was made
by copying ``v1alpha``; grpc-go and grpc-java serve both from one
implementation). So one library servicer answers both names: on the wire a
v1 request parses as a v1alpha one and a v1alpha reply is a valid v1 reply.
The v1 file descriptor, derived here from the library's v1alpha one by the
same renaming, goes into the default descriptor pool so that reflection can
describe the v1 service too (a client resolving
``grpc.reflection.v1.ServerReflection`` gets a real answer).

When grpcio-reflection ships a v1 module, use it instead of this one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
# Where grpc-proto keeps it, so a client fetching it by name finds it there.
V1_FILE_NAME = "grpc/reflection/v1/reflection.proto"
SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)


def v1_file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """The ``grpc.reflection.v1`` file: the library's v1alpha file with the
    package renamed (and its options as grpc-proto's v1 file sets them)."""
    v1alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1alpha)
    old, new = f".{v1alpha.package}.", f".{V1_PACKAGE}."
    v1 = descriptor_pb2.FileDescriptorProto()
    v1.CopyFrom(v1alpha)
    v1.name, v1.package = V1_FILE_NAME, V1_PACKAGE
    v1.options.Clear()  # v1alpha's are marked deprecated and name v1alpha packages
    v1.options.java_package = "io.grpc.reflection.v1"
    v1.options.java_outer_classname = "ServerReflectionProto"
    v1.options.java_multiple_files = True
    v1.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in v1.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in v1.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    return v1


@functools.cache
def _register_v1_descriptor() -> None:
    """Adds the v1 file to the default pool once per process (several servers
    in one process, as in tests, share the pool)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE_NAME)
    except KeyError:
        pool.AddSerializedFile(v1_file_descriptor_proto().SerializeToString())


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serves reflection on ``server`` as v1 and v1alpha, listing
    ``service_names`` and both reflection services."""
    _register_v1_descriptor()
    # grpc_reflection's type stubs omit its asyncio servicer (`reflection.aio`).
    servicer = reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
        [*service_names, *SERVICE_NAMES]
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    # Wire-identical messages (see the module docstring): v1alpha's classes
    # parse v1 requests and write v1 replies.
    v1_info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1_info}),)
    )
