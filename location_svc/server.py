"""Builds and runs location_svc."""

from __future__ import annotations

from delivery.location.v1 import location_service_pb2, location_service_pb2_grpc
from mesh.server import MeshServer, ServiceBinding, build_mesh_server, run_service
from mesh.settings import Settings
from mesh.stores import Stores

SERVICE_NAME = location_service_pb2.DESCRIPTOR.services_by_name["LocationService"].full_name


async def build_server(settings: Settings, stores: Stores) -> MeshServer:
    """Binds location_svc on ``settings.server.listen``; the handlers land with the location issue,
    until then the generated base class answers every RPC with UNIMPLEMENTED."""
    binding = ServiceBinding(
        SERVICE_NAME,
        location_service_pb2_grpc.LocationServiceServicer(),
        location_service_pb2_grpc.add_LocationServiceServicer_to_server,
    )
    return build_mesh_server(settings, stores, [binding])


async def main() -> None:
    """Runs location_svc until SIGTERM."""
    await run_service(Settings.from_env("location"), build_server)
