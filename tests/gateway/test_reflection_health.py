"""Tools (grpcurl, ghz) can discover the API by reflection alone; health answers SERVING."""
from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def reflect(channel: grpc.Channel, **request: str) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=5)))


def test_reflection_lists_the_services(channel):
    names = {s.name for s in reflect(channel, list_services="").list_services_response.service}
    assert {"inferline.v1.InferenceService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names


@pytest.mark.parametrize("symbol", [
    "inferline.v1.InferenceService",
    "inferline.v1.InferenceService.Generate",  # a method symbol (grpc/grpc#34743)
    "inferline.v1.InferenceService.GenerateStream",
    "inferline.v1.GenerateRequest",
    "inferline.v1.GenerateResponse",
    "inferline.v1.GenerateStreamResponse",
])
def test_reflection_resolves_symbols_to_generate_proto(channel, symbol):
    response = reflect(channel, file_containing_symbol=symbol)
    assert not response.HasField("error_response"), response.error_response.error_message
    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in response.file_descriptor_response.file_descriptor_proto]
    main = files[0]
    assert main.name == "inferline/v1/generate.proto"
    assert "inferline.v1.InferenceService" == f"{main.package}.{main.service[0].name}"
    assert [m.name for m in main.service[0].method] == ["Generate", "GenerateStream", "ListModels"]


def test_reflection_resolves_the_shared_message_types(channel):
    response = reflect(channel, file_containing_symbol="inferline.v1.SamplingParameters")
    file = descriptor_pb2.FileDescriptorProto.FromString(response.file_descriptor_response.file_descriptor_proto[0])
    assert file.name == "inferline/v1/common.proto"


def test_reflection_reports_unknown_symbols(channel):
    response = reflect(channel, file_containing_symbol="inferline.v1.NoSuchThing")
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_reflection_reports_unknown_methods_of_a_known_service(channel):
    try:
        response = reflect(channel, file_containing_symbol="inferline.v1.InferenceService.NoSuchMethod")
    finally:  # whatever reflection answers, the gateway goes on serving
        assert reflect(channel, list_services="").list_services_response.service
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.parametrize("service", ["", "inferline.v1.InferenceService"])
def test_health_is_serving(channel, service):
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
