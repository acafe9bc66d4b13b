"""Builds and runs order_svc."""

from __future__ import annotations

import os

from delivery.order.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    merchant_service_pb2,
    merchant_service_pb2_grpc,
    order_service_pb2,
    order_service_pb2_grpc,
)
from mesh.auth import SessionStore
from mesh.server import (
    MeshServer,
    ServiceBinding,
    build_mesh_server,
    consumer_name,
    run_service,
)
from mesh.settings import Settings, env_bool
from mesh.stores import Stores
from order_svc.arrival_notifications import build_arrival_notifier
from order_svc.domain.accounts import Passwords
from order_svc.merchant_service import MerchantService
from order_svc.order_service import OrderPolicy, OrderService
from order_svc.relay import OutboxRelay, RelaySettings
from order_svc.service import AccountService
from order_svc.store.accounts import AccountStore
from order_svc.store.feedback import FeedbackStore
from order_svc.store.merchants import MerchantStore
from order_svc.store.orders import OrderStore


def _name(module: object, service: str) -> str:
    return module.DESCRIPTOR.services_by_name[service].full_name  # type: ignore[attr-defined]


ACCOUNT_SERVICE = _name(account_service_pb2, "AccountService")
MERCHANT_SERVICE = _name(merchant_service_pb2, "MerchantService")
ORDER_SERVICE = _name(order_service_pb2, "OrderService")

#: Methods callable without a session.
PUBLIC_METHODS = (f"/{ACCOUNT_SERVICE}/SignUp", f"/{ACCOUNT_SERVICE}/Login")


async def build_server(
    settings: Settings,
    stores: Stores,
    *,
    passwords: Passwords | None = None,
    policy: OrderPolicy | None = None,
    relay: bool = True,
) -> MeshServer:
    """Binds order_svc on ``settings.server.listen`` with every service mounted."""
    assert stores.pool is not None and stores.redis is not None
    sessions = SessionStore(
        stores.redis, ttl_s=settings.auth.session_ttl_s, service_secret=settings.auth.service_secret
    )
    accounts = AccountService(AccountStore(stores.pool), sessions, passwords or Passwords())
    merchants = MerchantStore(stores.pool)
    bindings = [
        ServiceBinding(
            ACCOUNT_SERVICE, accounts, account_service_pb2_grpc.add_AccountServiceServicer_to_server
        ),
        ServiceBinding(
            MERCHANT_SERVICE,
            MerchantService(merchants),
            merchant_service_pb2_grpc.add_MerchantServiceServicer_to_server,
        ),
        ServiceBinding(
            ORDER_SERVICE,
            OrderService(
                OrderStore(stores.pool),
                merchants,
                FeedbackStore(stores.pool),
                stores.redis,
                policy or OrderPolicy(),
            ),
            order_service_pb2_grpc.add_OrderServiceServicer_to_server,
        ),
    ]
    server = build_mesh_server(settings, stores, bindings, public_methods=PUBLIC_METHODS)
    # Arrival events from location_svc become notifications for every party of the order.
    server.add_worker(*build_arrival_notifier(stores.pool, stores.redis, consumer_name()))
    if relay:
        # The outbox relay runs beside the API; `python -m order_svc.relay` runs more of them.
        worker = OutboxRelay.configured(
            stores.pool, stores.redis, RelaySettings.from_env(os.environ)
        )
        server.add_worker(worker.run, worker.stop)
    return server


async def main() -> None:
    """Runs order_svc until SIGTERM."""
    # DELIVERY_ORDER_RELAY=0 leaves publishing to standalone relays (`python -m order_svc.relay`).
    relay = env_bool(os.environ, "ORDER_RELAY", True)

    async def build(settings: Settings, stores: Stores) -> MeshServer:
        return await build_server(settings, stores, relay=relay)

    await run_service(Settings.from_env("order"), build)
