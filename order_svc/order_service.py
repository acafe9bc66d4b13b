"""OrderService: placement, the state-machine verbs, handoff, problems, ratings, notifications."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
from redis.asyncio import Redis

from delivery.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc
from mesh.auth import Principal, Role, current_principal
from mesh.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Validator,
)
from mesh.geo import haversine_m, validate_location
from mesh.ids import canonical_uuid
from order_svc.changes import announce, drafts
from order_svc.convert_orders import (
    STATUS_FROM_PROTO,
    decode_token,
    duration,
    encode_token,
    enum_name,
    notification_to_proto,
    order_event,
    order_to_proto,
    problem_to_proto,
    rating_to_proto,
)
from order_svc.domain.menus import HandoffPolicy, MenuItem, Merchant
from order_svc.domain.notifications import drafts_for
from order_svc.domain.orders import (
    Action,
    Order,
    OrderStatus,
    Party,
    party_of,
    plan,
    settle_cancellation,
)
from order_svc.domain.pricing import (
    MAX_REQUEST_ID,
    FeeSchedule,
    LineInput,
    OrderInput,
    price_order,
    validate_order_input,
)
from order_svc.store.feedback import RATE_ORDER, FeedbackStore
from order_svc.store.menu_cache import MenuCache
from order_svc.store.merchants import MerchantStore
from order_svc.store.orders import (
    CREATE_ORDER,
    Event,
    OrderStore,
    Placement,
    PriceVersion,
    RequestKey,
)

_PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/heic"})
_DEFAULT_PAGE = 20
_MAX_PAGE = 100
# ListStuckOrders pages by its own contract: 0 means 50, at most 500.
_DEFAULT_STUCK_PAGE = 50
_MAX_STUCK_PAGE = 500
_MAX_STUCK_S = 365 * 86400


@dataclass(frozen=True)
class OrderPolicy:
    """Tunable rules of order handling."""

    #: How the delivery fee is computed.
    fees: FeeSchedule = dataclasses.field(default_factory=FeeSchedule)
    #: How long a request id is remembered, in seconds (AIP-155: at least a day).
    idempotency_ttl_s: int = 24 * 3600
    #: Largest proof-of-delivery photo, in bytes.
    max_photo_bytes: int = 5 * 1024 * 1024
    #: Wrong PINs tolerated per order before the courier must use a photo or call support.
    max_pin_attempts: int = 5
    #: Assumed courier speed for the first delivery estimate, in metres per second.
    courier_speed_mps: float = 5.0
    #: How far from the delivery location a proof-of-delivery photo may be taken, in metres
    #: (the contract: near it), allowing for GPS error and a large building.
    max_photo_distance_m: float = 500.0


def _now() -> datetime:
    return datetime.now(UTC)


def _check_id(value: str, field: str) -> str:
    # Only the canonical form: uuid.UUID also takes braces and urn: prefixes PostgreSQL refuses.
    canonical = canonical_uuid(value)
    if canonical is None or canonical != value.lower():
        raise InvalidArgument(FieldViolation(field, "must be an id this API issued"))
    return canonical


def _cursor_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(
            FieldViolation("page_token", "is not a token this API issued")
        ) from None


_NUMERIC_ID = re.compile(r"[0-9]{1,18}")
#: MarkNotificationsRead's documented maximum of ids per call.
_MAX_MARK_IDS = 500
#: How many bad elements of a repeated field a refusal names one by one.
_NAMED_VIOLATIONS = 5


def _bounded_violations(field: str, bad: list[int], description: str) -> list[FieldViolation]:
    """The violations for the bad elements ``bad`` (indexes) of the repeated ``field``: the
    first few by index, then one for the field with the count, so the answer stays small."""
    named = [FieldViolation(f"{field}[{i}]", description) for i in bad[:_NAMED_VIOLATIONS]]
    if len(bad) > len(named):
        named.append(
            FieldViolation(field, f"{len(bad)} elements are bad; the first {len(named)} are named")
        )
    return named


def _check_request_id(v: Validator, request_id: str) -> None:
    # Remembered idempotency keys are bounded (and the table refuses longer ones).
    v.check(
        len(request_id) <= MAX_REQUEST_ID,
        "request_id",
        f"must be at most {MAX_REQUEST_ID} characters",
    )


def _enum_field(enum: Any, value: int, field: str) -> None:
    if value == 0 or value not in enum.values():
        raise InvalidArgument(FieldViolation(field, "must be set to a known value"))


def _caller_uuid(principal: Principal) -> str:
    """A uuid for any caller: users have one, services get a fixed one from their name."""
    if principal.is_service:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"delivery-service:{principal.subject}"))
    return principal.subject


def _request_hash(request: Any) -> bytes:
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


def _page_size(requested: int, *, default: int = _DEFAULT_PAGE, most: int = _MAX_PAGE) -> int:
    if requested < 0:
        raise InvalidArgument(FieldViolation("page_size", "must not be negative"))
    return min(requested or default, most)


def _actor_role(principal: Principal) -> str:
    return "system" if principal.is_service else principal.role.value


class OrderService(order_service_pb2_grpc.OrderServiceServicer):
    """The system of record's order API."""

    def __init__(
        self,
        orders: OrderStore,
        merchants: MerchantStore,
        feedback: FeedbackStore,
        redis: Redis,
        policy: OrderPolicy | None = None,
    ) -> None:
        self._orders = orders
        self._menus = MenuCache(merchants)
        self._feedback = feedback
        self._redis = redis
        self._policy = policy or OrderPolicy()

    # --- reading -------------------------------------------------------------------------

    async def _load(self, order_id: str, principal: Principal) -> Order:
        order = await self._orders.get(_check_id(order_id, "order_id"))
        if order is None or party_of(order.ref, principal) is Party.NONE:
            # Someone else's order is reported as missing, so ids cannot be probed.
            raise NotFound(f"order {order_id} not found", reason="ORDER_NOT_FOUND")
        return order

    async def _view(self, order: Order, principal: Principal) -> order_pb2.Order:
        return (await self._views([order], principal))[0]

    async def _views(self, orders: list[Order], principal: Principal) -> list[order_pb2.Order]:
        """The API views of ``orders``, their lines read in one query for the whole page."""
        lines = await self._orders.lines_of([o.id for o in orders]) if orders else {}
        return [
            order_to_proto(
                o,
                lines.get(o.id, []),
                show_pin=principal.role is Role.CUSTOMER and principal.subject == o.customer_id,
            )
            for o in orders
        ]

    async def GetOrder(
        self, request: order_service_pb2.GetOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.GetOrderResponse:
        principal = current_principal()
        # Its parties only: a courier who is merely offered the order decides from the Offer,
        # which shows no address and no customer until they accept.
        order = await self._load(request.order_id, principal)
        return order_service_pb2.GetOrderResponse(order=await self._view(order, principal))

    async def ListOrders(
        self, request: order_service_pb2.ListOrdersRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.ListOrdersResponse:
        principal = current_principal()
        limit = _page_size(request.page_size)
        statuses = []
        for i, status in enumerate(request.statuses):
            if status not in STATUS_FROM_PROTO:
                raise InvalidArgument(FieldViolation(f"statuses[{i}]", "is not an order status"))
            statuses.append(STATUS_FROM_PROTO[status].value)
        cursor = decode_token(request.page_token, 2)
        before = None
        if cursor:
            before = (_cursor_time(cursor[0]), _check_id(cursor[1], "page_token"))
        column = {
            Role.CUSTOMER: "customer_id",
            Role.MERCHANT: "merchant_owner",
            Role.DRIVER: "driver_id",
        }.get(principal.role)
        orders = await self._orders.list_for(
            column=column,
            party_id=principal.subject if column else None,
            statuses=statuses,
            limit=limit + 1,
            before=before,
        )
        page, more = orders[:limit], len(orders) > limit
        return order_service_pb2.ListOrdersResponse(
            orders=await self._views(page, principal),
            next_page_token=encode_token(page[-1].created_at, page[-1].id) if more else "",
        )

    # --- placing -------------------------------------------------------------------------

    async def CreateOrder(
        self, request: order_service_pb2.CreateOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.CreateOrderResponse:
        principal = current_principal()
        principal.require(Role.CUSTOMER)
        wanted = OrderInput(
            request_id=request.request_id,
            merchant_id=request.merchant_id,
            lines=tuple(
                LineInput(
                    menu_item_id=item.menu_item_id,
                    quantity=item.quantity,
                    options=tuple((o.option_group_id, o.option_id) for o in item.options),
                    note=item.note,
                )
                for item in request.items
            ),
            delivery_address=request.delivery_address,
            delivery_lat=request.delivery_location.latitude,
            delivery_lng=request.delivery_location.longitude,
            tip_minor=request.tip.amount_minor,
            tip_currency=request.tip.currency_code,
            note=request.note,
        )
        if not request.HasField("delivery_location"):
            raise InvalidArgument(FieldViolation("delivery_location", "is required"))
        validate_order_input(wanted)
        request_hash = hashlib.sha256(request.SerializeToString(deterministic=True)).digest()

        item_ids = sorted({line.menu_item_id for line in wanted.lines})
        # First from the cache; if the cache was stale (the statement says so) or made the
        # order look impossible, once more from a fresh read.
        for fresh in (False, True):
            merchant, menu = await self._menus.lookup(wanted.merchant_id, item_ids, fresh=fresh)
            try:
                if merchant is None:
                    raise NotFound(
                        f"merchant {wanted.merchant_id} not found", reason="MERCHANT_NOT_FOUND"
                    )
                response, outcome = await self._place(
                    principal, wanted, request_hash, merchant, menu
                )
            except DomainError:
                if fresh:
                    # A retry of an order placed before the shop changed gets that order.
                    key = RequestKey(principal.subject, CREATE_ORDER, wanted.request_id, b"")
                    if await self._orders.seen(key) is not None:
                        return await self._replay_order(principal, wanted.request_id, request_hash)
                    raise
                continue
            if outcome is Placement.PLACED:
                return response
            if outcome is Placement.DUPLICATE:
                break
        else:
            raise Aborted(
                "the menu changed while the order was placed; retry", reason="MENU_CHANGED"
            )
        return await self._replay_order(principal, wanted.request_id, request_hash)

    async def _replay_order(
        self, principal: Principal, request_id: str, request_hash: bytes
    ) -> order_service_pb2.CreateOrderResponse:
        replay = await self._orders.replay(principal.subject, CREATE_ORDER, request_id)
        if not hmac.compare_digest(replay.request_hash, request_hash):
            raise InvalidArgument(
                FieldViolation("request_id", "was already used for a different order"),
                reason="IDEMPOTENCY_KEY_REUSED",
            )
        return order_service_pb2.CreateOrderResponse.FromString(replay.response)

    async def _place(
        self,
        principal: Principal,
        wanted: OrderInput,
        request_hash: bytes,
        merchant: Merchant,
        menu: dict[str, MenuItem],
    ) -> tuple[order_service_pb2.CreateOrderResponse, Placement]:
        priced = price_order(wanted, merchant, menu, self._policy.fees)

        now = _now()
        travel_s = priced.distance_m / self._policy.courier_speed_mps
        order = Order(
            id=str(uuid.uuid4()),
            customer_id=principal.subject,
            merchant_id=merchant.id,
            merchant_owner_id=merchant.owner_user_id,
            driver_id=None,
            status=OrderStatus.PENDING,
            version=1,
            delivery_address=wanted.delivery_address.strip(),
            delivery_lat=wanted.delivery_lat,
            delivery_lng=wanted.delivery_lng,
            merchant_lat=merchant.lat,
            merchant_lng=merchant.lng,
            currency_code=priced.currency_code,
            subtotal_minor=priced.subtotal_minor,
            delivery_fee_minor=priced.delivery_fee_minor,
            tip_minor=priced.tip_minor,
            total_minor=priced.total_minor,
            delivery_pin=f"{secrets.randbelow(10_000):04d}",
            handoff_policy=merchant.handoff_policy.value,
            estimated_prep_seconds=merchant.avg_prep_seconds,
            estimated_delivery_at=now + timedelta(seconds=merchant.avg_prep_seconds + travel_s),
            created_at=now,
            updated_at=now,
            confirmed_at=None,
            ready_at=None,
            picked_up_at=None,
            delivered_at=None,
            cancelled_at=None,
            cancel_reason=None,
            cancelled_by_role=None,
            refund_minor=0,
            cancellation_fee_minor=0,
            note=wanted.note,
        )
        response = order_service_pb2.CreateOrderResponse(
            order=order_to_proto(order, priced.lines, show_pin=True)
        )
        payload = response.SerializeToString()
        outcome = await self._orders.create(
            order_id=order.id,
            customer_id=principal.subject,
            merchant_id=merchant.id,
            request_id=wanted.request_id,
            request_hash=request_hash,
            response=payload,
            priced=priced,
            delivery_address=order.delivery_address,
            delivery_lat=order.delivery_lat,
            delivery_lng=order.delivery_lng,
            delivery_pin=order.delivery_pin,
            handoff_policy=order.handoff_policy,
            estimated_prep_seconds=merchant.avg_prep_seconds,
            estimated_delivery_at=order.estimated_delivery_at or now,
            note=order.note,
            now=now,
            event=Event("order.created", order_event("placed", order, uuid.uuid4().hex, now)),
            notifications=drafts(drafts_for("placed", order)),
            key_ttl_s=self._policy.idempotency_ttl_s,
            priced_from=PriceVersion(
                merchant.menu_version,
                tuple((i.id, i.updated_at) for i in menu.values() if i.updated_at is not None),
            ),
        )
        return response, outcome

    # --- the state machine -----------------------------------------------------------------

    async def _transition(
        self,
        request: Any,
        action: Action,
        *,
        expected_version: int = 0,
        driver_id: str | None = None,
        reason: str | None = None,
        cancel_reason: str | None = None,
        estimated_prep_seconds: int | None = None,
        proof: tuple[str, bytes | None, str | None, float | None, float | None, datetime | None]
        | None = None,
        check: object = None,
        already_done: Any = None,
    ) -> tuple[Order, Principal]:
        principal = current_principal()
        v = Validator()
        _check_request_id(v, request.request_id)
        v.raise_if_any()
        order = await self._load(request.order_id, principal)
        key = None
        if request.request_id:
            key = RequestKey(
                _caller_uuid(principal),
                f"order.{action.value}",
                request.request_id,
                _request_hash(request),
            )
            if await self._replayed(key, order):
                return order, principal
        if callable(already_done) and already_done(order):
            return order, principal
        try:
            change = plan(
                order.ref,
                action,
                principal,
                expected_version=expected_version,
                driver_id=driver_id,
            )
        except DomainError:
            # A retry of a call that already succeeded finds the order moved on: answer it.
            if key is not None and await self._replayed(key, order):
                return await self._load(order.id, principal), principal
            raise
        if callable(check):
            await check(order)
        now = _now()
        party = party_of(order.ref, principal)
        cancel = None
        after = dataclasses.replace(
            order,
            status=change.to_status,
            version=order.version + 1,
            driver_id=change.driver_id,
            updated_at=now,
        )
        if change.to_status is OrderStatus.CANCELLED:
            settlement = settle_cancellation(
                status=order.status,
                party=party,
                subtotal_minor=order.subtotal_minor,
                delivery_fee_minor=order.delivery_fee_minor,
                tip_minor=order.tip_minor,
            )
            cancel = (
                cancel_reason or "other",
                _actor_role(principal),
                settlement.refund_minor,
                settlement.cancellation_fee_minor,
            )
            after = dataclasses.replace(
                after,
                cancelled_at=now,
                cancel_reason=cancel[0],
                cancelled_by_role=cancel[1],
                refund_minor=cancel[2],
                cancellation_fee_minor=cancel[3],
            )
        stamped: str | None = {
            "confirmed_at": "confirmed_at",
            "ready_at": "ready_at",
            "picked_up_at": "picked_up_at",
            "delivered_at": "delivered_at",
        }.get(change.stamps or "")
        if stamped:
            stamp_now: dict[str, Any] = {stamped: now}
            after = dataclasses.replace(after, **stamp_now)
        if estimated_prep_seconds:
            after = dataclasses.replace(after, estimated_prep_seconds=estimated_prep_seconds)
        event, notifications = announce(action, change, order, after, now)
        version = await self._orders.apply(
            order.id,
            change,
            actor_id=None if principal.is_service else principal.subject,
            actor_role=_actor_role(principal),
            now=now,
            event=event,
            notifications=notifications,
            reason=reason,
            cancel=cancel,
            estimated_prep_seconds=estimated_prep_seconds,
            proof=proof,
            key=key,
            previous_driver_id=order.driver_id,
        )
        if version is None:
            if key is not None and await self._replayed(key, order):
                return await self._load(order.id, principal), principal
            current = await self._orders.get(order.id)
            raise _lost_race(order, current, action)
        return after, principal

    async def _replayed(self, key: RequestKey, order: Order) -> bool:
        """Whether ``key`` already did its work on ``order``; refuses a reused key."""
        seen = await self._orders.seen(key)
        if seen is None:
            return False
        request_hash, resource_id = seen
        if resource_id != order.id or not hmac.compare_digest(request_hash, key.request_hash):
            raise InvalidArgument(
                FieldViolation("request_id", "was already used for a different request"),
                reason="IDEMPOTENCY_KEY_REUSED",
            )
        return True

    async def _respond(self, order: Order, principal: Principal) -> order_pb2.Order:
        return await self._view(order, principal)

    async def ConfirmOrder(
        self, request: order_service_pb2.ConfirmOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.ConfirmOrderResponse:
        prep = None
        if request.HasField("estimated_prep_duration"):
            prep = request.estimated_prep_duration.seconds
            if not 60 <= prep <= 3 * 3600:
                raise InvalidArgument(
                    FieldViolation("estimated_prep_duration", "must be 1 minute to 3 hours")
                )
        order, who = await self._transition(
            request,
            Action.CONFIRM,
            expected_version=request.expected_version,
            estimated_prep_seconds=prep,
        )
        return order_service_pb2.ConfirmOrderResponse(order=await self._respond(order, who))

    async def RejectOrder(
        self, request: order_service_pb2.RejectOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.RejectOrderResponse:
        reason = _cancel_reason(request.reason)
        order, who = await self._transition(
            request,
            Action.REJECT,
            expected_version=request.expected_version,
            cancel_reason=reason,
            reason=request.note or None,
        )
        return order_service_pb2.RejectOrderResponse(order=await self._respond(order, who))

    async def StartPreparing(
        self, request: order_service_pb2.StartPreparingRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.StartPreparingResponse:
        order, who = await self._transition(
            request, Action.START_PREPARING, expected_version=request.expected_version
        )
        return order_service_pb2.StartPreparingResponse(order=await self._respond(order, who))

    async def MarkOrderReady(
        self, request: order_service_pb2.MarkOrderReadyRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.MarkOrderReadyResponse:
        order, who = await self._transition(
            request, Action.MARK_READY, expected_version=request.expected_version
        )
        return order_service_pb2.MarkOrderReadyResponse(order=await self._respond(order, who))

    async def AssignCourier(
        self, request: order_service_pb2.AssignCourierRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.AssignCourierResponse:
        current_principal().require_service("matching")
        driver_id = _check_id(request.driver_id, "driver_id")
        try:
            order, who = await self._transition(
                request,
                Action.ASSIGN_COURIER,
                driver_id=driver_id,
                # The same courier again (a retried accept) changes nothing.
                already_done=lambda order: order.driver_id == driver_id,
                reason=f"offer {request.offer_id}" if request.offer_id else None,
            )
        except asyncpg.ForeignKeyViolationError:
            raise InvalidArgument(FieldViolation("driver_id", "is not a courier")) from None
        return order_service_pb2.AssignCourierResponse(order=await self._respond(order, who))

    async def PickUpOrder(
        self, request: order_service_pb2.PickUpOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.PickUpOrderResponse:
        order, who = await self._transition(
            request, Action.PICK_UP, expected_version=request.expected_version
        )
        return order_service_pb2.PickUpOrderResponse(order=await self._respond(order, who))

    async def CompleteDelivery(
        self,
        request: order_service_pb2.CompleteDeliveryRequest,
        context: grpc.aio.ServicerContext,
    ) -> order_service_pb2.CompleteDeliveryResponse:
        kind = request.WhichOneof("proof")
        if kind is None:
            raise InvalidArgument(FieldViolation("proof", "a PIN or a proof of delivery is needed"))
        proof_row: tuple[str, bytes | None, str | None, float | None, float | None, datetime | None]
        if kind == "pin":
            proof_row = ("pin", None, None, None, None, None)
        else:
            pod = request.proof_of_delivery
            v = Validator()
            v.check(bool(pod.photo), "proof_of_delivery.photo", "is required")
            v.check(
                len(pod.photo) <= self._policy.max_photo_bytes,
                "proof_of_delivery.photo",
                f"must be at most {self._policy.max_photo_bytes} bytes",
            )
            v.check(
                pod.content_type in _PHOTO_TYPES,
                "proof_of_delivery.content_type",
                "must be one of " + ", ".join(sorted(_PHOTO_TYPES)),
            )
            if v.check(pod.HasField("location"), "proof_of_delivery.location", "is required"):
                validate_location(
                    v, "proof_of_delivery.location", pod.location.latitude, pod.location.longitude
                )
            v.raise_if_any()
            captured = None
            if pod.HasField("capture_time"):
                # Timestamp's own range (years 1-9999), checked before conversion.
                if not 0 <= pod.capture_time.seconds <= 253402300799:
                    raise InvalidArgument(
                        FieldViolation("proof_of_delivery.capture_time", "is out of range")
                    )
                captured = pod.capture_time.ToDatetime(UTC)
            proof_row = (
                "photo",
                pod.photo,
                pod.content_type,
                pod.location.latitude,
                pod.location.longitude,
                captured,
            )

        async def check(order: Order) -> None:
            policy = HandoffPolicy(order.handoff_policy)
            if kind == "pin":
                if policy is HandoffPolicy.PHOTO:
                    raise InvalidArgument(
                        FieldViolation("pin", "this order needs a proof-of-delivery photo"),
                        reason="PHOTO_REQUIRED",
                    )
                await self._check_pin(order, request.pin)
            elif policy is HandoffPolicy.PIN:
                raise InvalidArgument(
                    FieldViolation("proof_of_delivery", "this order needs the customer's PIN"),
                    reason="PIN_REQUIRED",
                )
            else:
                where = request.proof_of_delivery.location
                away = haversine_m(
                    order.delivery_lat, order.delivery_lng, where.latitude, where.longitude
                )
                if away > self._policy.max_photo_distance_m:
                    raise InvalidArgument(
                        FieldViolation(
                            "proof_of_delivery.location",
                            f"is {away:.0f} m from the delivery location; a photo must be taken"
                            f" within {self._policy.max_photo_distance_m:.0f} m of it",
                        ),
                        reason="PHOTO_TOO_FAR",
                    )

        order, who = await self._transition(
            request,
            Action.DELIVER,
            expected_version=request.expected_version,
            proof=proof_row,
            check=check,
        )
        return order_service_pb2.CompleteDeliveryResponse(order=await self._respond(order, who))

    async def _check_pin(self, order: Order, pin: str) -> None:
        # Four digits are guessable: every attempt is counted first, atomically, and
        # attempts beyond the limit are refused without even comparing.
        key = f"pin-attempts:{order.id}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 24 * 3600)
        attempts, _ = await pipe.execute()
        if int(attempts) > self._policy.max_pin_attempts:
            raise ResourceExhausted(
                "too many PIN attempts for this order: deliver with a photo where the shop"
                " allows it, or ask support to complete the delivery",
                reason="PIN_ATTEMPTS_EXCEEDED",
            )
        if not hmac.compare_digest(pin.encode(), order.delivery_pin.encode()):
            raise InvalidArgument(
                FieldViolation("pin", "does not match the order's PIN"), reason="PIN_MISMATCH"
            )

    async def CancelOrder(
        self, request: order_service_pb2.CancelOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.CancelOrderResponse:
        reason = _cancel_reason(request.reason)
        order, who = await self._transition(
            request,
            Action.CANCEL,
            expected_version=request.expected_version,
            cancel_reason=reason,
            reason=request.note or None,
        )
        return order_service_pb2.CancelOrderResponse(order=await self._respond(order, who))

    # --- feedback --------------------------------------------------------------------------

    async def ReportProblem(
        self, request: order_service_pb2.ReportProblemRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.ReportProblemResponse:
        principal = current_principal()
        _enum_field(order_pb2.ProblemReason, request.reason, "reason")
        v = Validator()
        _check_request_id(v, request.request_id)
        v.check(len(request.description) <= 2000, "description", "must be at most 2000 characters")
        v.check(
            request.reason != order_pb2.PROBLEM_REASON_OTHER or bool(request.description.strip()),
            "description",
            "is required when the reason is PROBLEM_REASON_OTHER",
        )
        v.raise_if_any()
        order = await self._load(request.order_id, principal)
        now = _now()
        reason = enum_name(order_pb2.ProblemReason, request.reason, "PROBLEM_REASON_")
        request_hash = _request_hash(request)
        caller = _caller_uuid(principal)
        report = await self._feedback.report_problem(
            order_id=order.id,
            reporter_id=None if principal.is_service else principal.subject,
            reporter_role=_actor_role(principal),
            reason=reason,
            description=request.description,
            event_type="order.problem_reported",
            payload=order_event("problem", order, uuid.uuid4().hex, now),
            key=(caller, request.request_id, request_hash) if request.request_id else None,
        )
        if report is None:
            # A retry: answer with the report the first call appended.
            first_hash, report = await self._feedback.problem_for_key(caller, request.request_id)
            if not hmac.compare_digest(first_hash, request_hash):
                raise InvalidArgument(
                    FieldViolation("request_id", "was already used for a different report"),
                    reason="IDEMPOTENCY_KEY_REUSED",
                )
        return order_service_pb2.ReportProblemResponse(report=problem_to_proto(report))

    async def RateOrder(
        self, request: order_service_pb2.RateOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.RateOrderResponse:
        principal = current_principal()
        v = Validator()
        v.check(1 <= request.score <= 5, "score", "must be 1 to 5")
        v.check(
            request.target in order_pb2.RatingTarget.values() and request.target != 0,
            "target",
            "must be set to a known value",
        )
        v.check(len(request.comment) <= 1000, "comment", "must be at most 1000 characters")
        _check_request_id(v, request.request_id)
        v.raise_if_any()
        order = await self._load(request.order_id, principal)
        target = enum_name(order_pb2.RatingTarget, request.target, "RATING_TARGET_")
        party = party_of(order.ref, principal)
        if target not in _RATES.get(party, frozenset()):
            raise InvalidArgument(
                FieldViolation("target", f"{party.value}s cannot rate the {target} of an order"),
                reason="RATING_NOT_ALLOWED",
            )
        if order.status is not OrderStatus.DELIVERED:
            raise FailedPrecondition("only a delivered order can be rated", reason="NOT_DELIVERED")
        target_id = {
            "driver": order.driver_id,
            "merchant": order.merchant_id,
            "customer": order.customer_id,
        }[target]
        if target_id is None:
            raise FailedPrecondition(f"the order's {target} is gone", reason="TARGET_GONE")
        key = None
        if request.request_id:
            key = RequestKey(
                _caller_uuid(principal), RATE_ORDER, request.request_id, _request_hash(request)
            )
            # A retry of a rating that was stored is answered with it.
            replay = await self._rating_replay(key, order, party, target)
            if replay is not None:
                return replay
        try:
            rating = await self._feedback.rate(
                order_id=order.id,
                rater_id=principal.subject,
                rater_role=party.value,
                target=target,
                target_id=target_id,
                score=request.score,
                comment=request.comment,
                key=(key.caller_id, key.request_id, key.request_hash) if key else None,
            )
        except AlreadyExists:
            # A concurrent retry of this very request stored it first; anything else is a
            # second rating of the same target.
            replay = await self._rating_replay(key, order, party, target) if key else None
            if replay is None:
                raise
            return replay
        return order_service_pb2.RateOrderResponse(rating=rating_to_proto(rating))

    async def _rating_replay(
        self, key: RequestKey, order: Order, party: Party, target: str
    ) -> order_service_pb2.RateOrderResponse | None:
        """The answer to a retry of the rating request ``key``, or ``None`` if it is new;
        refuses the key reused for another request."""
        seen = await self._orders.seen(key)
        if seen is None:
            return None
        request_hash, rating_id = seen
        rating = await self._feedback.rating_of(order.id, party.value, target)
        if (
            not hmac.compare_digest(request_hash, key.request_hash)
            or rating is None
            or rating.id != rating_id
        ):
            raise InvalidArgument(
                FieldViolation("request_id", "was already used for a different request"),
                reason="IDEMPOTENCY_KEY_REUSED",
            )
        return order_service_pb2.RateOrderResponse(rating=rating_to_proto(rating))

    async def ListNotifications(
        self,
        request: order_service_pb2.ListNotificationsRequest,
        context: grpc.aio.ServicerContext,
    ) -> order_service_pb2.ListNotificationsResponse:
        principal = current_principal()
        principal.require(Role.CUSTOMER, Role.DRIVER, Role.MERCHANT, Role.ADMIN)
        limit = _page_size(request.page_size)
        cursor = decode_token(request.page_token, 1)
        before = None
        if cursor:
            if not _NUMERIC_ID.fullmatch(cursor[0]):
                raise InvalidArgument(
                    FieldViolation("page_token", "is not a token this API issued")
                )
            before = int(cursor[0])
        items = await self._feedback.notifications(
            principal.subject, unread_only=request.unread_only, limit=limit + 1, before_id=before
        )
        page, more = items[:limit], len(items) > limit
        return order_service_pb2.ListNotificationsResponse(
            notifications=[notification_to_proto(n) for n in page],
            next_page_token=encode_token(page[-1].id) if more else "",
        )

    async def MarkNotificationsRead(
        self,
        request: order_service_pb2.MarkNotificationsReadRequest,
        context: grpc.aio.ServicerContext,
    ) -> order_service_pb2.MarkNotificationsReadResponse:
        # The size first: a refusal must not cost (or answer) in proportion to a huge list.
        if len(request.notification_ids) > _MAX_MARK_IDS:
            raise InvalidArgument(
                FieldViolation(
                    "notification_ids",
                    f"must hold at most {_MAX_MARK_IDS} ids, got {len(request.notification_ids)}",
                )
            )
        principal = current_principal()
        principal.require(Role.CUSTOMER, Role.DRIVER, Role.MERCHANT, Role.ADMIN)
        ids = None
        if request.notification_ids:
            bad = [
                i for i, n in enumerate(request.notification_ids) if not _NUMERIC_ID.fullmatch(n)
            ]
            if bad:
                raise InvalidArgument(
                    _bounded_violations("notification_ids", bad, "is not a notification id")
                )
            ids = [int(n) for n in request.notification_ids]
        count = await self._feedback.mark_read(principal.subject, ids)
        return order_service_pb2.MarkNotificationsReadResponse(marked_count=count)

    # --- operators -------------------------------------------------------------------------

    async def ListStuckOrders(
        self,
        request: order_service_pb2.ListStuckOrdersRequest,
        context: grpc.aio.ServicerContext,
    ) -> order_service_pb2.ListStuckOrdersResponse:
        principal = current_principal()
        principal.require(Role.ADMIN, Role.SERVICE)
        threshold = request.stuck_duration
        # Duration's own range is checked before conversion (seconds and nanos share a sign).
        if not (
            0 <= threshold.seconds <= _MAX_STUCK_S
            and 0 <= threshold.nanos < 1_000_000_000
            and (threshold.seconds or threshold.nanos)
        ):
            raise InvalidArgument(
                FieldViolation("stuck_duration", "must be positive and at most 365 days")
            )
        stuck_for = timedelta(seconds=threshold.seconds, microseconds=threshold.nanos // 1000)
        limit = _page_size(request.page_size, default=_DEFAULT_STUCK_PAGE, most=_MAX_STUCK_PAGE)
        cursor = decode_token(request.page_token, 2)
        after = None
        if cursor:
            after = (_cursor_time(cursor[0]), _check_id(cursor[1], "page_token"))
        now = _now()
        orders = await self._orders.stuck(older_than=now - stuck_for, limit=limit + 1, after=after)
        page, more = orders[:limit], len(orders) > limit
        views = await self._views(page, principal)
        return order_service_pb2.ListStuckOrdersResponse(
            stuck_orders=[
                order_pb2.StuckOrder(
                    order=view, state_duration=duration((now - o.updated_at).total_seconds())
                )
                for o, view in zip(page, views, strict=True)
            ],
            next_page_token=encode_token(page[-1].updated_at, page[-1].id) if more else "",
        )

    async def ReassignOrder(
        self, request: order_service_pb2.ReassignOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.ReassignOrderResponse:
        current_principal().require(Role.ADMIN)
        new_driver = (
            _check_id(request.new_driver_id, "new_driver_id") if request.new_driver_id else None
        )
        try:
            order, who = await self._transition(
                request,
                Action.REASSIGN_COURIER,
                driver_id=new_driver,
                reason=request.reason or None,
            )
        except asyncpg.ForeignKeyViolationError:
            raise InvalidArgument(FieldViolation("new_driver_id", "is not a courier")) from None
        return order_service_pb2.ReassignOrderResponse(order=await self._respond(order, who))

    async def RunRetention(
        self, request: order_service_pb2.RunRetentionRequest, context: grpc.aio.ServicerContext
    ) -> order_service_pb2.RunRetentionResponse:
        current_principal().require(Role.ADMIN)
        results = await self._feedback.run_retention(dry_run=request.dry_run)
        return order_service_pb2.RunRetentionResponse(
            results=[
                order_pb2.RetentionResult(table_name=table, rows_deleted=count)
                for table, count in results
            ]
        )


#: Who may rate whom on a delivered order (OrderService.RateOrder): each direction once.
_RATES: dict[Party, frozenset[str]] = {
    Party.CUSTOMER: frozenset({"driver", "merchant"}),
    Party.DRIVER: frozenset({"customer", "merchant"}),
    Party.MERCHANT: frozenset({"driver"}),
}


def _cancel_reason(value: int) -> str:
    if value == 0 or value not in order_pb2.CancelReason.values():
        raise InvalidArgument(FieldViolation("reason", "must be a cancel reason"))
    return enum_name(order_pb2.CancelReason, value, "CANCEL_REASON_")


def _lost_race(planned: Order, current: Order | None, action: Action) -> Exception:
    """The error for a conditional update that matched nothing: someone else changed the order."""
    now_status = current.status.value if current else "gone"
    return Aborted(
        f"order {planned.id} changed while this {action.value.replace('_', ' ')} was in flight;"
        f" it is now {now_status}",
        reason="CONCURRENT_CHANGE",
        metadata={
            "planned_from": planned.status.value,
            "status": now_status,
            "version": str(current.version if current else 0),
        },
    )
