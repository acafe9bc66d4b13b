"""Builds and runs tracking_svc."""

from __future__ import annotations

from delivery.tracking.v1 import tracking_service_pb2, tracking_service_pb2_grpc
from mesh.server import MeshServer, ServiceBinding, build_mesh_server, run_service
from mesh.settings import Settings
from mesh.stores import Stores

SERVICE_NAME = tracking_service_pb2.DESCRIPTOR.services_by_name["TrackingService"].full_name


async def build_server(settings: Settings, stores: Stores) -> MeshServer:
    """Binds tracking_svc on ``settings.server.listen``; the handlers land with the tracking issue,
    until then the generated base class answers every RPC with UNIMPLEMENTED."""
    binding = ServiceBinding(
        SERVICE_NAME,
        tracking_service_pb2_grpc.TrackingServiceServicer(),
        tracking_service_pb2_grpc.add_TrackingServiceServicer_to_server,
    )
    return build_mesh_server(settings, stores, [binding])


async def main() -> None:
    """Runs tracking_svc until SIGTERM."""
    await run_service(Settings.from_env("tracking"), build_server, postgres=False)
