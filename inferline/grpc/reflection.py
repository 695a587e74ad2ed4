"""Server reflection that also answers *method* symbols.

Stock grpcio-reflection looks symbols up with DescriptorPool.FindFileContainingSymbol, which does
not know `pkg.Service.Method` (grpc/grpc#34743), so `ghz --call pkg.Service/Method` and
`grpcurl describe pkg.Service.Method` fail by reflection alone. A method's file is its service's
file, so a miss on a method name is answered with the service's file.
"""
from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer


class MethodAwareReflectionServicer(ReflectionServicer):
    def _file_containing_symbol(self, request, fully_qualified_name):
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if not response.HasField("error_response"):
            return response
        service_name, _, method = fully_qualified_name.rpartition(".")
        pool = self._pool
        try:
            pool.FindServiceByName(service_name).FindMethodByName(method)
        except KeyError:  # no such service, or no such method in it
            return response
        return super()._file_containing_symbol(request, service_name)


def enable_reflection(server: grpc.aio.Server, service_names: list[str]) -> None:
    names = [*service_names, reflection.SERVICE_NAME]
    servicer = MethodAwareReflectionServicer(names, pool=descriptor_pool.Default())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
