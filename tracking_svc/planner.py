"""PlanRoute: the request checked field by field, the stops planned, the plan as the contract's."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

from delivery.common.v1 import common_pb2
from delivery.tracking.v1 import tracking_pb2, tracking_service_pb2
from mesh import clock
from mesh.errors import Validator
from tracking_svc.domain.routing import RoutePlan, Stop, StopKind, plan_route
from tracking_svc.domain.travel import Point, TravelTimes, Vehicle
from tracking_svc.live import duration_s, timestamp_s

#: The most stops one request may hold (the contract's limit).
MAX_STOPS = 20
#: The longest stop or order id accepted, in characters.
MAX_ID_CHARS = 128
#: The longest service time of a stop, in seconds.
MAX_SERVICE_S = 4 * 3600.0
#: How far from now a start or ready time may lie, in seconds.
MAX_TIME_OFFSET_S = 7 * 24 * 3600.0

VEHICLES = {
    common_pb2.VEHICLE_TYPE_UNSPECIFIED: Vehicle.MOTORCYCLE,
    common_pb2.VEHICLE_TYPE_BICYCLE: Vehicle.BICYCLE,
    common_pb2.VEHICLE_TYPE_MOTORCYCLE: Vehicle.MOTORCYCLE,
    common_pb2.VEHICLE_TYPE_CAR: Vehicle.CAR,
    common_pb2.VEHICLE_TYPE_VAN: Vehicle.VAN,
}
KINDS = {
    tracking_pb2.STOP_KIND_PICKUP: StopKind.PICKUP,
    tracking_pb2.STOP_KIND_DROPOFF: StopKind.DROPOFF,
}


def _point(v: Validator, path: str, message: common_pb2.LatLng, present: bool) -> Point | None:
    if not v.check(present, path, "is required"):
        return None
    lat, lng = message.latitude, message.longitude
    ok = v.check(
        math.isfinite(lat) and -90 <= lat <= 90, f"{path}.latitude", "must be within [-90, 90]"
    )
    ok &= v.check(
        math.isfinite(lng) and -180 <= lng <= 180,
        f"{path}.longitude",
        "must be within [-180, 180]",
    )
    return Point(lat, lng) if ok else None


def _time(v: Validator, path: str, seconds: float, now: float) -> bool:
    return v.check(abs(seconds - now) <= MAX_TIME_OFFSET_S, path, "must be within a week of now")


def stops_from(
    request: tracking_service_pb2.PlanRouteRequest, now: float
) -> tuple[Point, float, Vehicle, list[Stop]]:
    """The request as the planner's input; INVALID_ARGUMENT naming every bad field."""
    v = Validator()
    start = _point(v, "start", request.start, request.HasField("start"))
    start_time = now
    if request.HasField("start_time"):
        start_time = request.start_time.ToNanoseconds() / 1e9
        _time(v, "start_time", start_time, now)
    vehicle = VEHICLES.get(request.vehicle_type)
    v.check(vehicle is not None, "vehicle_type", "is not a vehicle type")
    count = len(request.stops)
    v.check(count > 0, "stops", "must hold at least one stop")
    if not v.check(count <= MAX_STOPS, "stops", f"must hold at most {MAX_STOPS} stops"):
        v.raise_if_any()
    ids = Counter(s.stop_id for s in request.stops)
    kinds = Counter((s.order_id, s.kind) for s in request.stops)
    dropoffs = {s.order_id for s in request.stops if s.kind == tracking_pb2.STOP_KIND_DROPOFF}
    stops: list[Stop] = []
    for i, s in enumerate(request.stops):
        path = f"stops[{i}]"
        if v.check(
            0 < len(s.stop_id) <= MAX_ID_CHARS, f"{path}.stop_id", "must be 1 to 128 characters"
        ):
            v.check(ids[s.stop_id] == 1, f"{path}.stop_id", "is used by another stop")
        v.check(
            0 < len(s.order_id) <= MAX_ID_CHARS, f"{path}.order_id", "must be 1 to 128 characters"
        )
        kind = KINDS.get(s.kind)
        if v.check(
            kind is not None, f"{path}.kind", "must be STOP_KIND_PICKUP or STOP_KIND_DROPOFF"
        ):
            v.check(
                kinds[(s.order_id, s.kind)] == 1,
                f"{path}.order_id",
                f"the order has more than one {kind.value if kind else ''} stop",
            )
            if kind is StopKind.PICKUP:
                v.check(s.order_id in dropoffs, path, "is a pickup without its order's drop-off")
        where = _point(v, f"{path}.location", s.location, s.HasField("location"))
        ready = None
        if s.HasField("ready_time"):
            ready = s.ready_time.ToNanoseconds() / 1e9
            _time(v, f"{path}.ready_time", ready, now)
        service = (
            s.service_duration.ToNanoseconds() / 1e9 if s.HasField("service_duration") else 0.0
        )
        v.check(
            0 <= service <= MAX_SERVICE_S,
            f"{path}.service_duration",
            "must be between 0 and 4 hours",
        )
        if where is not None and kind is not None:
            stops.append(Stop(s.stop_id, s.order_id, kind, where, ready, service))
    v.raise_if_any()
    assert start is not None and vehicle is not None
    return start, start_time, vehicle, stops


def plan_response(
    plan: RoutePlan, request: tracking_service_pb2.PlanRouteRequest
) -> tracking_service_pb2.PlanRouteResponse:
    """The plan as the contract's response, each stop echoed as the caller sent it."""
    sent = {s.stop_id: s for s in request.stops}
    seconds = plan.seconds
    return tracking_service_pb2.PlanRouteResponse(
        stops=[
            tracking_pb2.PlannedStop(
                stop=sent[p.stop.stop_id],
                arrival_time=timestamp_s(p.arrival_time),
                departure_time=timestamp_s(p.departure_time),
                distance_from_previous_meters=p.meters_from_previous,
            )
            for p in plan.stops
        ],
        total_distance_meters=plan.meters,
        total_duration=duration_s(seconds),
    )


class Planner:
    """Plans routes off the event loop (a 20-stop search takes a noticeable fraction of a
    second), on the same travel times as the estimate."""

    def __init__(self, travel: TravelTimes) -> None:
        self._travel = travel

    async def plan(
        self, request: tracking_service_pb2.PlanRouteRequest
    ) -> tracking_service_pb2.PlanRouteResponse:
        start, start_time, vehicle, stops = stops_from(request, clock.now_ms() / 1000)
        plan = await asyncio.to_thread(plan_route, start, start_time, vehicle, stops, self._travel)
        return plan_response(plan, request)
