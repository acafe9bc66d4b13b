"""LocationService: the GPS stream, batch uploads, availability, search and live positions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
from redis.asyncio import Redis

from delivery.location.v1 import location_pb2, location_service_pb2, location_service_pb2_grpc
from location_svc.convert import (
    DROP_TO_PROTO,
    PRESENCE_TO_PROTO,
    STATUS_FROM_PROTO,
    STATUS_TO_PROTO,
    VEHICLE_FROM_PROTO,
    VEHICLE_TO_PROTO,
    fix_from_proto,
    now_timestamp,
    seconds,
    timestamp_ms,
)
from location_svc.domain.fixes import (
    DropReason,
    Fix,
    FixRules,
    Jumps,
    check,
    check_shape,
    check_track,
    motion_known,
)
from location_svc.domain.presence import DriverStatus, Pacing, presence
from location_svc.ingest import AckSink, Ingest, Update
from location_svc.store.driver_index import DriverIndex, slot_of
from location_svc.store.drivers import DriverRecord, DriverStore
from location_svc.store.geo_index import IndexEntry, shard_of
from location_svc.store.history import HistoryWriter, history_row
from location_svc.store.quotas import CallQuota
from location_svc.watch import Followed, PositionHub
from mesh import clock
from mesh.auth import Principal, Role, current_principal
from mesh.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    Validator,
)
from mesh.geo import haversine_m, validate_location
from mesh.pubsub import Listener

logger = logging.getLogger(__name__)

MAX_BATCH = 500
MAX_RADIUS_M = 50_000.0
MAX_LIMIT = 100
#: The longest corner-to-corner size of a GetFleet box, in metres.
MAX_FLEET_SPAN_M = 50_000.0
#: How far from the equator a GetFleet box may reach, in degrees (Redis GEO stops at 85.05).
MAX_FLEET_LATITUDE = 85.0
#: The couriers GetFleet returns when the request leaves max_couriers 0.
DEFAULT_FLEET_COURIERS = 500
#: The pub/sub channel of status changes, "<driver id> <status> <vehicle>": every instance's
#: open streams of that driver file their next fixes by the new status.
STATUS_CHANNEL = "loc:status"
#: How long a closing stream waits for its last fixes to be stored before it takes the courier
#: out of the index, in seconds (a stuck write must not keep the call open for ever).
_CLOSE_WAIT_S = 5.0


@dataclass(frozen=True)
class LocationPolicy:
    """Tunables of location_svc."""

    #: The sanity pipeline's thresholds.
    rules: FixRules = field(default_factory=FixRules)
    #: How often apps should report, by status.
    pacing: Pacing = field(default_factory=Pacing)
    #: A driver with no fix for this long leaves the index and shows as silent, in seconds.
    presence_ttl_s: float = 30.0
    #: How long a watch registration lasts without renewal, in seconds.
    watch_ttl_s: float = 30.0
    #: Position streams (WatchDriverLocation and FollowDrivers) one caller may hold open at
    #: once on one instance; the next is refused with RESOURCE_EXHAUSTED.
    watch_streams_per_caller: int = 200
    #: The least time between two acks on one stream, in seconds.
    ack_spacing_s: float = 0.5
    #: The most couriers one GetFleet call returns (its contract says 2000).
    fleet_max_couriers: int = 2000
    #: GetFleet calls one caller may make per minute, across every instance.
    fleet_calls_per_minute: int = 60


class StreamSession:
    """The per-stream state of one driver's GPS stream; small, since thousands are open."""

    __slots__ = (
        "accepted",
        "driver_id",
        "dropped",
        "jumps",
        "last_drop",
        "sink",
        "status",
        "tick",
        "token",
        "vehicle",
    )

    def __init__(self, record: DriverRecord) -> None:
        self.driver_id = record.driver_id
        self.status = record.status
        self.vehicle = record.vehicle
        self.accepted = 0
        self.dropped = 0
        self.last_drop: DropReason | None = None
        # The believed fix, and the stored fix and slots as Redis confirmed them.
        self.sink = AckSink(record.last, record.shard, record.pos_shard)
        self.jumps = record.jumps or Jumps()
        #: Names this stream in the driver's hash: only the newest stream's close counts.
        self.token = uuid.uuid4().hex
        #: The tick carrying the stream's newest believed fix.
        self.tick: asyncio.Future[None] | None = None


class LocationService(location_service_pb2_grpc.LocationServiceServicer):
    """Driver positions for the mesh."""

    def __init__(
        self,
        redis: Redis,
        drivers: DriverStore,
        index: DriverIndex,
        ingest: Ingest,
        history: HistoryWriter,
        hub: PositionHub,
        policy: LocationPolicy | None = None,
    ) -> None:
        self._redis = redis
        self._hub = hub
        self._drivers = drivers
        self._index = index
        self._ingest = ingest
        self._history = history
        self._policy = policy or LocationPolicy()
        # The interval each status asks for, built once: every ack carries one.
        self._intervals = {
            status: seconds(self._policy.pacing.interval(status)) for status in DriverStatus
        }
        #: Dropped fixes by reason, for operators.
        self.drops: Counter[DropReason] = Counter()
        #: The open streams of this process, by driver.
        self._sessions: dict[str, set[StreamSession]] = {}
        #: Open position streams by caller (role, subject).
        self._watch_streams: Counter[tuple[Role, str]] = Counter()
        self._fleet_quota = CallQuota(
            redis, "fleet", calls=self._policy.fleet_calls_per_minute, window_s=60.0
        )

    def apply_status(self, driver_id: str, status: DriverStatus, vehicle: str) -> None:
        """A status change reaches the driver's open streams here: their next fix is filed by
        it (and leaves the slot the stream filed the last one in)."""
        for session in self._sessions.get(driver_id, ()):
            session.status = status
            session.vehicle = vehicle

    async def reload_statuses(self) -> None:
        """Reads the status of every driver with an open stream here again (changes made while
        this instance was not listening never reached it)."""
        for driver_id in list(self._sessions):
            record = await self._drivers.load(driver_id)
            if record is not None:
                self.apply_status(driver_id, record.status, record.vehicle)

    async def _driver(self, principal: Principal) -> DriverRecord:
        principal.require(Role.DRIVER)
        record = await self._drivers.load(principal.subject)
        if record is None:
            raise NotFound("no courier profile for this account", reason="DRIVER_NOT_FOUND")
        return record

    # --- ingest ------------------------------------------------------------------------------

    def _take(self, session: StreamSession, fix: Fix, now_ms: int) -> None:
        """Believes or drops one streamed fix; believed ones go to the batcher (no await)."""
        sink = session.sink
        reason = check(fix, sink.last, now_ms, self._policy.rules, session.jumps)
        if reason is not None:
            session.dropped += 1
            session.last_drop = reason
            self.drops[reason] += 1
            sink.dropped(fix.sequence)
            return
        fix = motion_known(fix, self._policy.rules)
        session.accepted += 1
        pos_shard = shard_of(fix.lat, fix.lng)
        # Where the courier was filed before comes from what Redis confirmed, at the tick.
        session.tick = self._ingest.submit(
            Update(
                session.driver_id,
                fix,
                session.status,
                session.vehicle,
                "",
                slot_of(pos_shard, session.status),
                now_ms,
                sink,
                pos_shard,
            )
        )

    def _ack(self, session: StreamSession) -> location_service_pb2.StreamLocationResponse:
        return location_service_pb2.StreamLocationResponse(
            server_time=now_timestamp(),
            acked_sequence=session.sink.acked_sequence,
            next_interval_duration=self._intervals[session.status],
            accepted_count=session.sink.flushed,
            dropped_count=session.dropped,
            last_drop_reason=DROP_TO_PROTO[session.last_drop] if session.last_drop else None,
        )

    async def StreamLocation(
        self,
        request_iterator: AsyncIterator[location_service_pb2.StreamLocationRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        record = await self._driver(current_principal())
        session = StreamSession(record)
        await self._drivers.open_stream(session.driver_id, session.token)
        reading = True

        async def write_acks() -> None:
            # Acks follow storage: one per wake-up, covering every fix stored meanwhile.
            sent = (0, 0, 0)
            while True:
                await session.sink.event.wait()
                session.sink.event.clear()
                state = (session.sink.flushed, session.dropped, session.sink.acked_sequence)
                if state != sent:
                    sent = state
                    await context.write(self._ack(session))
                if not reading and session.sink.pending <= 0:
                    return
                if reading:
                    # A phone sends every few seconds and gets each ack at once; a stream that
                    # sends faster gets at most one ack per spacing, covering all its fixes.
                    await asyncio.sleep(self._policy.ack_spacing_s)

        sessions = self._sessions.setdefault(session.driver_id, set())
        sessions.add(session)
        writer = asyncio.create_task(write_acks())
        try:
            async for request in request_iterator:
                if self._ingest.full:
                    # Redis is behind: the phone waits (flow control) rather than the heap grow.
                    await self._ingest.room()
                self._take(session, fix_from_proto(request.fix), clock.now_ms())
            reading = False
            session.sink.event.set()
            # Half-closed: the last fixes still get their ack before the call ends.
            await writer
        finally:
            reading = False
            sessions.discard(session)
            if not sessions:
                self._sessions.pop(session.driver_id, None)
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
            try:
                await self._close_stream(session)
            except Exception as exc:
                # The courier stays filed until presence lapses, as before this stream.
                logger.warning("closing %s's stream: %s", session.driver_id, exc)

    async def _close_stream(self, session: StreamSession) -> None:
        """The courier's app hung up its stream: unless a newer stream of theirs opened, they
        leave the index at once, so no order waits an offer's time on an app that cannot show
        it; their next fix (a new stream, or a batch) files them again."""
        if session.tick is not None:
            # The stream's last fixes land first: stored after the removal, they would file
            # the courier again.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(session.tick), _CLOSE_WAIT_S)
        slot = await self._drivers.stream_slot(session.driver_id, session.token)
        if slot is None:
            return
        # Out of the index first, then marked closed: whoever sees it closed finds them out.
        pipe = self._redis.pipeline(transaction=False)
        for filed in {slot, session.sink.shard}:
            self._index.queue_remove(pipe, session.driver_id, filed)
        self._drivers.queue_close_stream(pipe, session.driver_id, session.token)
        await pipe.execute()

    async def ReportLocations(
        self,
        request: location_service_pb2.ReportLocationsRequest,
        context: grpc.aio.ServicerContext,
    ) -> location_service_pb2.ReportLocationsResponse:
        record = await self._driver(current_principal())
        if not request.fixes:
            raise InvalidArgument(FieldViolation("fixes", "must hold at least one fix"))
        if len(request.fixes) > MAX_BATCH:
            raise InvalidArgument(FieldViolation("fixes", f"must hold at most {MAX_BATCH} fixes"))
        now_ms = clock.now_ms()
        rules = self._policy.rules
        fixes = [fix_from_proto(f) for f in request.fixes]
        dropped: list[location_pb2.DroppedFix] = []
        live: list[Fix] = []
        backfill: list[Fix] = []
        newest = record.last
        # The run of consistent jumps carries over between batches: an app that sends one fix
        # per batch gets out of a wrong anchor too.
        jumps = record.jumps or Jumps()
        jumps_before = (jumps.first, jumps.last, jumps.count)
        seen_times: set[int] = set()
        for index in sorted(range(len(fixes)), key=lambda i: fixes[i].device_time_ms):
            fix = fixes[index]
            reason = check_shape(fix, now_ms, rules)
            if reason is None and fix.device_time_ms in seen_times:
                reason = DropReason.DUPLICATE
            if (
                reason is None
                and newest is not None
                and fix.device_time_ms <= newest.device_time_ms
            ):
                if fix.device_time_ms == newest.device_time_ms:
                    reason = DropReason.DUPLICATE
                else:
                    # Older than what was already seen: history only, no index move, no event.
                    backfill.append(motion_known(fix, rules))
                    seen_times.add(fix.device_time_ms)
                    continue
            if reason is None:
                reason = check_track(fix, newest, jumps, rules)
            if reason is not None:
                self.drops[reason] += 1
                dropped.append(location_pb2.DroppedFix(index=index, reason=DROP_TO_PROTO[reason]))
                continue
            seen_times.add(fix.device_time_ms)
            live.append(motion_known(fix, rules))
            newest = fix
        if live:
            # The newest fix moves the driver; the batch is answered once it is stored, and
            # nothing of it is kept if it cannot be (the app sends the batch again).
            fix = live[-1]
            pos_shard = shard_of(fix.lat, fix.lng)
            shard = slot_of(pos_shard, record.status)
            if self._ingest.full:
                await self._ingest.room()
            try:
                await self._ingest.submit(
                    Update(
                        record.driver_id,
                        fix,
                        record.status,
                        record.vehicle,
                        record.shard,
                        shard,
                        now_ms,
                        None,
                        pos_shard,
                        record.pos_shard,
                    )
                )
            except Exception as exc:
                logger.warning("a batch of %s was not stored: %s", record.driver_id, exc)
                raise Unavailable(
                    "the positions could not be stored; send the batch again",
                    reason="POSITIONS_NOT_STORED",
                ) from exc
        if (jumps.first, jumps.last, jumps.count) != jumps_before:
            try:
                await self._drivers.set_jumps(record.driver_id, jumps)
            except Exception as exc:
                # The positions are stored; the run only starts over with the next batch.
                logger.warning("could not keep %s's run of jumps: %s", record.driver_id, exc)
        received = datetime.now(UTC)
        for fix in backfill:
            self._history.add(history_row(record.driver_id, fix, received, backfilled=True))
        # Intermediate live fixes are history (the batcher writes the newest one's).
        for fix in live[:-1]:
            self._history.add(history_row(record.driver_id, fix, received, backfilled=False))
        return location_service_pb2.ReportLocationsResponse(
            accepted_count=len(live),
            backfilled_count=len(backfill),
            dropped=sorted(dropped, key=_index_of),  # type: ignore[arg-type]
            next_interval_duration=self._intervals[record.status],
        )

    # --- availability -------------------------------------------------------------------------

    async def SetAvailability(
        self,
        request: location_service_pb2.SetAvailabilityRequest,
        context: grpc.aio.ServicerContext,
    ) -> location_service_pb2.SetAvailabilityResponse:
        principal = current_principal()
        v = Validator()
        v.check(request.status in STATUS_FROM_PROTO, "status", "must be a driver status")
        v.check(
            request.vehicle_type == 0 or request.vehicle_type in VEHICLE_FROM_PROTO,
            "vehicle_type",
            "must be a vehicle type",
        )
        v.raise_if_any()
        status = STATUS_FROM_PROTO[request.status]
        if principal.role is Role.DRIVER:
            if request.driver_id and request.driver_id != principal.subject:
                raise PermissionDenied(
                    "a driver sets only their own availability", reason="NOT_YOUR_DRIVER"
                )
            driver_id = principal.subject
        elif principal.role in (Role.SERVICE, Role.ADMIN):
            if not request.driver_id:
                raise InvalidArgument(FieldViolation("driver_id", "is required for services"))
            driver_id = request.driver_id
        else:
            raise PermissionDenied("only drivers and dispatch set availability")
        vehicle = VEHICLE_FROM_PROTO.get(request.vehicle_type)
        record = await self._drivers.load(driver_id)
        if record is None:
            raise NotFound(f"driver {driver_id} not found", reason="DRIVER_NOT_FOUND")
        updated = await self._drivers.set_status(driver_id, status, vehicle)
        if updated is None:
            raise NotFound(f"driver {driver_id} not found", reason="DRIVER_NOT_FOUND")
        vehicle = vehicle or record.vehicle
        # Re-file the driver at once: out of the index unless available with a live position.
        # A courier whose app closed its stream stays out (filed nowhere since) until a fix
        # files them again: a status change (a delivery done) is no sign the app is there.
        fresh = (
            record.last is not None
            and clock.now_ms() - record.received_ms <= self._policy.presence_ttl_s * 1000
            and (record.stream_open is not False or bool(record.shard))
        )
        # Open streams file their next fixes by the new status: this process's at once, other
        # instances' when the message reaches them.
        self.apply_status(driver_id, status, vehicle)
        pipe = self._redis.pipeline(transaction=False)
        self._index.queue_remove(pipe, driver_id, record.shard)
        shard = ""
        if status is not DriverStatus.OFFLINE and fresh and record.last is not None:
            last = record.last
            shard = self._index.queue_upsert(
                pipe,
                IndexEntry(driver_id, last.lat, last.lng, vehicle, record.received_ms),
                None,
                busy=status is DriverStatus.BUSY,
            )
        await pipe.execute()
        await self._drivers.set_shard(driver_id, shard)
        # Apart from the pipeline: a cluster pipeline refuses PUBLISH.
        await self._redis.publish(STATUS_CHANNEL, f"{driver_id} {status.value} {vehicle}")
        return location_service_pb2.SetAvailabilityResponse(
            driver_state=location_pb2.DriverState(
                driver_id=driver_id,
                status=STATUS_TO_PROTO[status],
                vehicle_type=VEHICLE_TO_PROTO.get(vehicle, 0),
                update_time=now_timestamp(),
            )
        )

    # --- reading ------------------------------------------------------------------------------

    async def FindNearbyDrivers(
        self,
        request: location_service_pb2.FindNearbyDriversRequest,
        context: grpc.aio.ServicerContext,
    ) -> location_service_pb2.FindNearbyDriversResponse:
        current_principal().require(Role.SERVICE, Role.ADMIN)
        v = Validator()
        if v.check(request.HasField("center"), "center", "is required"):
            validate_location(v, "center", request.center.latitude, request.center.longitude)
        radius = request.radius_meters or 5000.0
        v.check(0 < radius <= MAX_RADIUS_M, "radius_meters", f"must be in (0, {MAX_RADIUS_M:.0f}]")
        limit = request.limit or 10
        v.check(0 < limit <= MAX_LIMIT, "limit", f"must be 1 to {MAX_LIMIT}")
        v.check(
            request.vehicle_type == 0 or request.vehicle_type in VEHICLE_FROM_PROTO,
            "vehicle_type",
            "must be a vehicle type",
        )
        v.raise_if_any()
        now_ms = clock.now_ms()
        found = await self._index.find_nearby(
            request.center.latitude,
            request.center.longitude,
            radius,
            limit,
            VEHICLE_FROM_PROTO.get(request.vehicle_type),
            include_busy=request.include_busy,
            now_ms=now_ms,
        )
        available = STATUS_TO_PROTO[DriverStatus.AVAILABLE]
        busy = STATUS_TO_PROTO[DriverStatus.BUSY]
        return location_service_pb2.FindNearbyDriversResponse(
            drivers=[
                location_pb2.NearbyDriver(
                    driver_id=d.driver_id,
                    position={"latitude": d.lat, "longitude": d.lng},
                    distance_meters=d.distance_m,
                    vehicle_type=VEHICLE_TO_PROTO.get(d.vehicle, 0),
                    fix_time=timestamp_ms(d.fix_time_ms),
                    position_age_duration=seconds(max(0, now_ms - d.fix_time_ms) / 1000),
                    status=busy if d.busy else available,
                )
                for d in found
            ]
        )

    async def GetFleet(
        self,
        request: location_service_pb2.GetFleetRequest,
        context: grpc.aio.ServicerContext,
    ) -> location_service_pb2.GetFleetResponse:
        principal = current_principal()
        principal.require(Role.ADMIN)
        south, west, north, east, limit = _fleet_query(request, self._policy.fleet_max_couriers)
        # Counted after the checks: a refused request costs the caller nothing but its answer.
        retry_ms = await self._fleet_quota.take(principal.subject)
        if retry_ms is not None:
            calls = self._fleet_quota.calls
            raise ResourceExhausted(
                f"at most {calls} fleet reads per caller per minute; ask again in "
                f"{retry_ms / 1000:.1f} s",
                reason="FLEET_RATE_LIMITED",
                metadata={"retry_after_ms": str(retry_ms), "limit": str(calls)},
            )
        now_ms = clock.now_ms()
        found, truncated = await self._index.in_box(south, west, north, east, limit, now_ms=now_ms)
        available = STATUS_TO_PROTO[DriverStatus.AVAILABLE]
        busy = STATUS_TO_PROTO[DriverStatus.BUSY]
        return location_service_pb2.GetFleetResponse(
            couriers=[
                location_pb2.FleetCourier(
                    driver_id=d.driver_id,
                    position={"latitude": d.lat, "longitude": d.lng},
                    status=busy if d.busy else available,
                    vehicle_type=VEHICLE_TO_PROTO.get(d.vehicle, 0),
                    fix_time=timestamp_ms(d.fix_time_ms),
                    position_age_duration=seconds(max(0, now_ms - d.fix_time_ms) / 1000),
                )
                for d in found
            ],
            truncated=truncated,
        )

    def _may_see(self, principal: Principal, driver_id: str) -> None:
        if principal.role in (Role.SERVICE, Role.ADMIN):
            return
        if principal.role is Role.DRIVER and principal.subject == driver_id:
            return
        # Customers follow their courier through tracking_svc, which checks the order.
        raise PermissionDenied(
            "driver positions are for the mesh's services, admins and the driver",
            reason="POSITION_PRIVATE",
        )

    def _location(self, record: DriverRecord, now_ms: int) -> location_pb2.DriverLocation:
        last = record.last
        age = None if last is None else max(0, now_ms - last.device_time_ms) / 1000
        where = presence(
            status=record.status,
            stream_open=record.stream_open,
            fix_age_s=age,
            ttl_s=self._policy.presence_ttl_s,
        )
        location = location_pb2.DriverLocation(
            driver_id=record.driver_id,
            presence=PRESENCE_TO_PROTO[where],
            status=STATUS_TO_PROTO[record.status],
        )
        if last is not None and age is not None:
            location.position.latitude = last.lat
            location.position.longitude = last.lng
            location.heading_degrees = last.heading_deg
            location.speed_mps = last.speed_mps
            location.accuracy_meters = last.accuracy_m
            location.fix_time.CopyFrom(timestamp_ms(last.device_time_ms))
            location.position_age_duration.CopyFrom(seconds(age))
        return location

    async def GetDriverLocation(
        self,
        request: location_service_pb2.GetDriverLocationRequest,
        context: grpc.aio.ServicerContext,
    ) -> location_service_pb2.GetDriverLocationResponse:
        self._may_see(current_principal(), request.driver_id)
        record = await self._drivers.load(request.driver_id)
        if record is None:
            raise NotFound(f"driver {request.driver_id} not found", reason="DRIVER_NOT_FOUND")
        return location_service_pb2.GetDriverLocationResponse(
            location=self._location(record, clock.now_ms())
        )

    @contextlib.contextmanager
    def _watch_slot(self, principal: Principal) -> Iterator[None]:
        """Holds one of the caller's position streams for as long as the block runs;
        RESOURCE_EXHAUSTED if the caller holds as many as allowed already."""
        caller = (principal.role, principal.subject)
        limit = self._policy.watch_streams_per_caller
        if self._watch_streams[caller] >= limit:
            raise ResourceExhausted(
                f"at most {limit} position streams per caller may be open at once; close one "
                "or follow many couriers on one FollowDrivers stream",
                reason="TOO_MANY_POSITION_STREAMS",
                metadata={"limit": str(limit)},
            )
        self._watch_streams[caller] += 1
        try:
            yield
        finally:
            self._watch_streams[caller] -= 1
            if self._watch_streams[caller] <= 0:
                del self._watch_streams[caller]

    def _check_hub(self) -> None:
        if self._hub.ended:
            raise Unavailable(
                "live positions are not being received on this instance; watch again",
                reason="POSITIONS_UNAVAILABLE",
            )

    async def WatchDriverLocation(
        self,
        request: location_service_pb2.WatchDriverLocationRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[location_service_pb2.WatchDriverLocationResponse]:
        principal = current_principal()
        self._may_see(principal, request.driver_id)
        min_interval = (
            request.min_interval_duration.ToTimedelta().total_seconds()
            if request.HasField("min_interval_duration")
            else 1.0
        )
        if min_interval < 0:
            raise InvalidArgument(FieldViolation("min_interval_duration", "must not be negative"))
        self._check_hub()
        with self._watch_slot(principal):
            record = await self._drivers.load(request.driver_id)
            if record is None:
                raise NotFound(f"driver {request.driver_id} not found", reason="DRIVER_NOT_FOUND")
            # Closed here, not whenever it is collected: the hub's mailbox goes with the call.
            async with contextlib.aclosing(self._watch(record, min_interval)) as responses:
                async for response in responses:
                    yield response

    async def _watch(
        self, record: DriverRecord, min_interval: float
    ) -> AsyncGenerator[location_service_pb2.WatchDriverLocationResponse]:
        """The messages of one WatchDriverLocation stream of ``record``'s driver."""
        with self._hub.watch(record.driver_id) as box:
            # The current position first, so a new watcher never starts blank.
            yield location_service_pb2.WatchDriverLocationResponse(
                location=self._location(record, clock.now_ms())
            )
            sent_at = time.monotonic()
            while True:
                await box.wait()
                self._check_hub()
                # At most one message per interval, sent the moment the interval is up, with
                # whatever is newest then.
                wait = min_interval - (time.monotonic() - sent_at)
                if wait > 0:
                    await asyncio.sleep(wait)
                if not _catch_up(record, *box.take()):
                    continue
                yield location_service_pb2.WatchDriverLocationResponse(
                    location=self._location(record, clock.now_ms())
                )
                sent_at = time.monotonic()

    async def FollowDrivers(
        self,
        request_iterator: AsyncIterator[location_service_pb2.FollowDriversRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[location_service_pb2.FollowDriversResponse]:
        principal = current_principal()
        if principal.role not in (Role.SERVICE, Role.ADMIN):
            raise PermissionDenied(
                "following couriers is for the mesh's services and admins",
                reason="POSITION_PRIVATE",
            )
        self._check_hub()
        with self._watch_slot(principal):
            async with contextlib.aclosing(self._follow(request_iterator)) as responses:
                async for response in responses:
                    yield response

    async def _follow(
        self, request_iterator: AsyncIterator[location_service_pb2.FollowDriversRequest]
    ) -> AsyncGenerator[location_service_pb2.FollowDriversResponse]:
        """The messages of one FollowDrivers stream."""
        followed = Followed(self._hub)
        records: dict[str, DriverRecord] = {}
        fresh: set[str] = set()
        unknown: list[str] = []
        failure: list[BaseException] = []

        async def read_requests() -> None:
            try:
                async for request in request_iterator:
                    await self._follow_changes(request, followed, records, fresh, unknown)
                    followed.wake()
            except BaseException as exc:
                failure.append(exc)
                followed.wake()
                raise

        reader = asyncio.create_task(read_requests())
        try:
            while True:
                await followed.wait()
                if failure:
                    raise failure[0]
                self._check_hub()
                pending = followed.take()
                now_ms = clock.now_ms()
                locations = []
                for driver_id, (position, reloaded) in pending.items():
                    record = records.get(driver_id)
                    if record is not None and _catch_up(record, position, reloaded):
                        fresh.discard(driver_id)
                        locations.append(self._location(record, now_ms))
                for driver_id in list(fresh):
                    record = records.get(driver_id)
                    if record is not None:
                        locations.append(self._location(record, now_ms))
                fresh.clear()
                if locations or unknown:
                    for start in range(0, max(len(locations), 1), _FOLLOW_BATCH):
                        yield location_service_pb2.FollowDriversResponse(
                            locations=locations[start : start + _FOLLOW_BATCH],
                            unknown_driver_ids=unknown if start == 0 else (),
                        )
                    unknown.clear()
        finally:
            reader.cancel()
            followed.close()

    async def _follow_changes(
        self,
        request: location_service_pb2.FollowDriversRequest,
        followed: Followed,
        records: dict[str, DriverRecord],
        fresh: set[str],
        unknown: list[str],
    ) -> None:
        """Applies one FollowDrivers request: drops, then follows (each new one sent first)."""
        check = Validator()
        for name in ("follow_driver_ids", "unfollow_driver_ids"):
            check.check(
                len(getattr(request, name)) <= _FOLLOW_BATCH * 2,
                name,
                f"at most {_FOLLOW_BATCH * 2} per message",
            )
        check.raise_if_any()
        for driver_id in request.unfollow_driver_ids:
            followed.unfollow(driver_id)
            records.pop(driver_id, None)
            fresh.discard(driver_id)
        new = [d for d in dict.fromkeys(request.follow_driver_ids) if d not in followed]
        for start in range(0, len(new), 32):
            batch = new[start : start + 32]
            # Subscribed before the state is read: a position published in between is heard.
            for driver_id in batch:
                followed.follow(driver_id)
            loaded = await asyncio.gather(*(self._drivers.load(d) for d in batch))
            for driver_id, record in zip(batch, loaded, strict=True):
                if record is None:
                    followed.unfollow(driver_id)
                    unknown.append(driver_id)
                else:
                    records[driver_id] = record
                    fresh.add(driver_id)


def _catch_up(
    record: DriverRecord, position: tuple[Fix, int] | None, reloaded: DriverRecord | None
) -> bool:
    """Brings a watch stream's ``record`` up to what its mailbox held; whether to send it.

    A position read from the store and one published may cross: the newer fix wins, so a
    stream never goes back to an older position.
    """
    changed = False
    if reloaded is not None:
        # Read again after a lost subscription: shown even if nothing moved (the age, the
        # presence and the status are news too).
        kept = (record.last, record.received_ms)
        record.status, record.vehicle = reloaded.status, reloaded.vehicle
        record.stream_open = reloaded.stream_open
        record.last, record.received_ms = reloaded.last, reloaded.received_ms
        if _newer(kept[0], record.last):
            record.last, record.received_ms = kept
        changed = True
    if position is not None and _newer(position[0], record.last):
        record.last, record.received_ms = position
        changed = True
    return changed


def _newer(fix: Fix | None, than: Fix | None) -> bool:
    return fix is not None and (than is None or fix.device_time_ms > than.device_time_ms)


def _fleet_query(
    request: location_service_pb2.GetFleetRequest, max_couriers: int
) -> tuple[float, float, float, float, int]:
    """The box (south, west, north, east) and the limit of a GetFleet request, or
    INVALID_ARGUMENT naming every bad field."""
    v = Validator()
    corners = []
    for name in ("south_west", "north_east"):
        if v.check(request.HasField(name), name, "is required"):
            corner = getattr(request, name)
            before = len(v.violations)
            validate_location(v, name, corner.latitude, corner.longitude)
            if len(v.violations) == before:
                corners.append((corner.latitude, corner.longitude))
    if len(corners) == 2:
        (south, west), (north, east) = corners
        v.check(south < north, "north_east.latitude", "must be greater than south_west.latitude")
        v.check(
            west < east,
            "north_east.longitude",
            "must be greater than south_west.longitude (ask for a view across the antimeridian "
            "as two boxes)",
        )
        for name, lat in (("south_west", south), ("north_east", north)):
            v.check(
                abs(lat) <= MAX_FLEET_LATITUDE,
                f"{name}.latitude",
                f"must be within {MAX_FLEET_LATITUDE:.0f} degrees of the equator",
            )
        v.check(
            haversine_m(south, west, north, east) <= MAX_FLEET_SPAN_M,
            "north_east",
            f"the box must measure at most {MAX_FLEET_SPAN_M / 1000:.0f} km from corner to corner",
        )
    v.check(
        0 <= request.max_couriers <= max_couriers,
        "max_couriers",
        f"must be 0 to {max_couriers}",
    )
    v.raise_if_any()
    (south, west), (north, east) = corners
    return (
        south,
        west,
        north,
        east,
        request.max_couriers or min(DEFAULT_FLEET_COURIERS, max_couriers),
    )


def _index_of(dropped: location_pb2.DroppedFix) -> int:
    return dropped.index


#: Locations per FollowDrivers message (and half the ids a request may name).
_FOLLOW_BATCH = 500


class StatusListener:
    """Hands status changes made through any instance to this instance's open streams (one
    subscription per process; after a lost one, the open streams' statuses are read again). A
    fix in flight during the change may still be filed by the old status; the stream's next
    fix moves the driver (it leaves the slot it last filed)."""

    def __init__(self, redis: Redis, service: LocationService) -> None:
        self._service = service
        self._listener = Listener(
            redis,
            self._heard,
            channels=[STATUS_CHANNEL],
            on_subscribed=self._subscribed,
            name="status subscription",
        )
        self.run = self._listener.run
        self.stop = self._listener.stop

    async def _subscribed(self, again: bool) -> None:
        if again:
            await self._service.reload_statuses()

    def _heard(self, channel: str, text: str) -> None:
        try:
            driver_id, status, vehicle = text.split(" ")
            self._service.apply_status(driver_id, DriverStatus(status), vehicle)
        except ValueError:
            logger.warning("unreadable status change %r", text)
