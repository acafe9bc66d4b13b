"""Builds and runs order_svc."""

from __future__ import annotations

from delivery.order.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    merchant_service_pb2,
    merchant_service_pb2_grpc,
    order_service_pb2,
    order_service_pb2_grpc,
)
from mesh.auth import SessionStore
from mesh.server import MeshServer, ServiceBinding, build_mesh_server, run_service
from mesh.settings import Settings
from mesh.stores import Stores
from order_svc.domain.accounts import Passwords
from order_svc.service import AccountService
from order_svc.store.accounts import AccountStore


def _name(module: object, service: str) -> str:
    return module.DESCRIPTOR.services_by_name[service].full_name  # type: ignore[attr-defined]


ACCOUNT_SERVICE = _name(account_service_pb2, "AccountService")
MERCHANT_SERVICE = _name(merchant_service_pb2, "MerchantService")
ORDER_SERVICE = _name(order_service_pb2, "OrderService")

#: Methods callable without a session.
PUBLIC_METHODS = (f"/{ACCOUNT_SERVICE}/SignUp", f"/{ACCOUNT_SERVICE}/Login")


async def build_server(
    settings: Settings, stores: Stores, *, passwords: Passwords | None = None
) -> MeshServer:
    """Binds order_svc on ``settings.server.listen`` with every service mounted."""
    assert stores.pool is not None and stores.redis is not None
    sessions = SessionStore(
        stores.redis, ttl_s=settings.auth.session_ttl_s, service_secret=settings.auth.service_secret
    )
    accounts = AccountService(AccountStore(stores.pool), sessions, passwords or Passwords())
    bindings = [
        ServiceBinding(
            ACCOUNT_SERVICE, accounts, account_service_pb2_grpc.add_AccountServiceServicer_to_server
        ),
        # Merchants, menus and orders land with the marketplace issue; until then the
        # generated base classes answer UNIMPLEMENTED.
        ServiceBinding(
            MERCHANT_SERVICE,
            merchant_service_pb2_grpc.MerchantServiceServicer(),
            merchant_service_pb2_grpc.add_MerchantServiceServicer_to_server,
        ),
        ServiceBinding(
            ORDER_SERVICE,
            order_service_pb2_grpc.OrderServiceServicer(),
            order_service_pb2_grpc.add_OrderServiceServicer_to_server,
        ),
    ]
    return build_mesh_server(settings, stores, bindings, public_methods=PUBLIC_METHODS)


async def main() -> None:
    """Runs order_svc until SIGTERM."""
    await run_service(Settings.from_env("order"), build_server)
