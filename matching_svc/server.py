"""Builds and runs matching_svc."""

from __future__ import annotations

from delivery.matching.v1 import matching_service_pb2, matching_service_pb2_grpc
from mesh.server import MeshServer, ServiceBinding, build_mesh_server, run_service
from mesh.settings import Settings
from mesh.stores import Stores

SERVICE_NAME = matching_service_pb2.DESCRIPTOR.services_by_name["MatchingService"].full_name


async def build_server(settings: Settings, stores: Stores) -> MeshServer:
    """Binds matching_svc on ``settings.server.listen``; the handlers land with the dispatch issue,
    until then the generated base class answers every RPC with UNIMPLEMENTED."""
    binding = ServiceBinding(
        SERVICE_NAME,
        matching_service_pb2_grpc.MatchingServiceServicer(),
        matching_service_pb2_grpc.add_MatchingServiceServicer_to_server,
    )
    return build_mesh_server(settings, stores, [binding])


async def main() -> None:
    """Runs matching_svc until SIGTERM."""
    await run_service(Settings.from_env("matching"), build_server)
