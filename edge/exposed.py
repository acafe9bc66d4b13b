"""The RPCs browsers may call through the edge, one by one; every other method is refused there."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Exposed:
    """One RPC the edge forwards, why a browser needs it, and what it refuses in its request."""

    #: The full method name, ``package.Service/Method``.
    method: str
    #: Who calls it from a browser, in one line (docs/edge.md lists these).
    reason: str
    #: Request fields a browser may not set; a request that sets one is refused at the edge.
    refused_fields: tuple[str, ...] = ()


_ORDER = "delivery.order.v1.OrderService/"
_ACCOUNT = "delivery.order.v1.AccountService/"
_MERCHANT = "delivery.order.v1.MerchantService/"
_LOCATION = "delivery.location.v1.LocationService/"
_MATCHING = "delivery.matching.v1.MatchingService/"
_TRACKING = "delivery.tracking.v1.TrackingService/"

# The services still check every caller's role: the list only keeps what browsers have no
# business with from ever reaching a service through the edge. Add an RPC with one line.
EXPOSED: tuple[Exposed, ...] = (
    Exposed(_ACCOUNT + "SignUp", "anyone opens an account from a page"),
    Exposed(_ACCOUNT + "Login", "anyone signs in from a page"),
    Exposed(_ACCOUNT + "Logout", "a signed-in user ends their session"),
    Exposed(_ACCOUNT + "GetMe", "a page shows who is signed in"),
    Exposed(_MERCHANT + "CreateMerchant", "a merchant owner registers a shop"),
    Exposed(_MERCHANT + "GetMerchant", "customers and owners read a shop"),
    Exposed(_MERCHANT + "ListMerchants", "a customer picks a shop near them"),
    Exposed(_MERCHANT + "SetMerchantOpen", "an owner opens or closes their shop"),
    Exposed(_MERCHANT + "UpsertMenuItem", "an owner edits the menu, marks items unavailable"),
    Exposed(_MERCHANT + "ListMenuItems", "a customer reads a shop's menu"),
    Exposed(_ORDER + "CreateOrder", "a customer places an order"),
    Exposed(_ORDER + "GetOrder", "the order's parties read it"),
    Exposed(_ORDER + "ListOrders", "each party lists the orders they take part in"),
    Exposed(_ORDER + "ConfirmOrder", "the merchant page accepts an order"),
    Exposed(_ORDER + "RejectOrder", "the merchant page refuses an order"),
    Exposed(_ORDER + "StartPreparing", "the merchant page starts preparation"),
    Exposed(_ORDER + "MarkOrderReady", "the merchant page marks an order ready"),
    Exposed(_ORDER + "PickUpOrder", "the assigned courier collects the order"),
    Exposed(_ORDER + "CompleteDelivery", "the assigned courier hands the order over"),
    Exposed(_ORDER + "CancelOrder", "a customer, owner or operator cancels"),
    Exposed(_ORDER + "ReportProblem", "an order's party tells operators of a problem"),
    Exposed(_ORDER + "RateOrder", "the parties rate each other after delivery"),
    Exposed(_ORDER + "ListNotifications", "a user reads their notifications"),
    Exposed(_ORDER + "MarkNotificationsRead", "a user marks notifications read"),
    Exposed(_ORDER + "ListStuckOrders", "the operations page lists stuck orders (admin only)"),
    Exposed(_ORDER + "ReassignOrder", "the operations page reassigns an order (admin only)"),
    Exposed(
        _LOCATION + "SetAvailability",
        "a courier goes on or off shift; never for another courier",
        refused_fields=("driver_id",),
    ),
    Exposed(_LOCATION + "GetDriverLocation", "a courier or an operator reads a position"),
    Exposed(_LOCATION + "WatchDriverLocation", "the operations page follows one courier"),
    Exposed(_LOCATION + "GetFleet", "the operations page maps the couriers in view (admin only)"),
    Exposed(_MATCHING + "StreamOffers", "a courier's web app receives its offers"),
    Exposed(_MATCHING + "AcceptOffer", "a courier accepts an offer made to them"),
    Exposed(_MATCHING + "DeclineOffer", "a courier declines an offer made to them"),
    Exposed(_TRACKING + "TrackOrder", "the customer and merchant pages watch an order live"),
    Exposed(_TRACKING + "StreamNotifications", "pages hear new notifications live"),
    Exposed(_TRACKING + "GetEta", "an order's parties read the current estimate"),
    Exposed(_TRACKING + "PlanRoute", "a courier orders their stops"),
)

#: Methods that must never be on the list: service-to-service work, GPS ingest (the native
#: driver app's; StreamLocation is a client stream, which gRPC-web cannot carry) and operator
#: commands kept to grpcurl. A unit test holds the list to it.
NEVER_EXPOSED: frozenset[str] = frozenset(
    {
        _LOCATION + "StreamLocation",
        _LOCATION + "ReportLocations",
        _LOCATION + "FindNearbyDrivers",
        _LOCATION + "FollowDrivers",
        _MATCHING + "DispatchOrder",
        _MATCHING + "GetDispatchStatus",
        _ORDER + "AssignCourier",
        _ORDER + "RunRetention",
    }
)

#: The allow-list by full method name.
BY_METHOD: Mapping[str, Exposed] = {rpc.method: rpc for rpc in EXPOSED}
