"""The geo index of available drivers: H3-sharded Redis GEO sets, presence by last fix time.

Layout (``loc`` is the default prefix; ``{...}`` is the Redis Cluster hash tag, so every key of
one shard lives in one slot, on one node, and one Lua script may touch them all):

- ``loc:{<shard>}:<vehicle>``: GEO set of the available drivers of that vehicle in the shard.
- ``loc:{<shard>}:polar:<vehicle>``: HASH driver -> ``"lat,lng"`` for drivers beyond the
  latitudes Redis GEO accepts (|lat| > 85.05112878); only shards that reach that far have one.
- ``loc:{<shard>}:seen``: ZSET driver -> time of the last fix in ms: presence is a TTL.
- ``loc:shards``: SET of every shard ever written, so the sweeper never scans drivers.
- ``drv:{<driver_id>}``: the driver's metadata HASH, written by the ingest side.

A shard is an H3 cell of resolution :data:`SHARD_RES`. Searches are exact: Redis narrows the
candidates with a small radius margin, then distances are recomputed here with
:func:`mesh.geo.haversine_m` from the coordinates Redis stored (a 52-bit geohash, within about
0.6 m of what was written).
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

# mesh.geo is the project's one door to h3, but it exposes no cell centre, boundary or ring; these
# few calls belong there (see the cell geometry section below) and are kept to this section.
import h3
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from mesh.geo import EARTH_RADIUS_M, cell, haversine_m, valid_lat_lng

#: H3 resolution of a shard (cells of about 250 km², edges of about 9.9 km).
SHARD_RES = 5
#: The vehicle types a driver can have; every shard has one GEO set per vehicle.
VEHICLES = ("bicycle", "motorcycle", "car", "van")
#: The default first part of every key this index writes.
KEY_PREFIX = "loc"
#: The largest |latitude| Redis GEO commands accept (the Web Mercator limit).
GEO_LAT_MAX = 85.05112878

# Redis measures with its own earth radius; a point within r of ours is within r * this of its.
_REDIS_EARTH_RADIUS_M = 6_372_797.560856
_REDIS_RADIUS_FACTOR = _REDIS_EARTH_RADIUS_M / EARTH_RADIUS_M + 1e-6
# Added to every radius sent to Redis: float rounding and the metre-or-so of geohash rounding
# cost a few results at the rim otherwise; extra candidates are filtered out here.
_REDIS_RADIUS_SLACK_M = 1.0
# Shard selection works on the written coordinates, distances on the stored (rounded) ones.
_SHARD_SLACK_M = 5.0
# Re-announce a shard in the shard set this often, so a failed pipeline or a Redis that lost its
# data does not hide a shard from the sweeper for ever.
_ANNOUNCE_EVERY_S = 60.0
# Drivers removed per sweep script call; keeps each call short and under Lua's unpack limit.
_SWEEP_BATCH = 1000
# Shards per sweep pipeline.
_SWEEP_PIPELINE = 256
_VEHICLE_INDEX = {v: i for i, v in enumerate(VEHICLES)}
_ALL_VEHICLES = tuple(range(len(VEHICLES)))


def shard_of(lat: float, lng: float) -> str:
    """The shard (H3 cell of resolution :data:`SHARD_RES`) a position is filed under."""
    return cell(lat, lng, SHARD_RES)


def geo_key(shard: str, vehicle: str, prefix: str = KEY_PREFIX) -> str:
    """The GEO set of available drivers with ``vehicle`` in ``shard``."""
    return f"{prefix}:{{{shard}}}:{vehicle}"


def polar_key(shard: str, vehicle: str, prefix: str = KEY_PREFIX) -> str:
    """The HASH of available drivers with ``vehicle`` in ``shard`` beyond Redis GEO's latitudes."""
    return f"{prefix}:{{{shard}}}:polar:{vehicle}"


def seen_key(shard: str, prefix: str = KEY_PREFIX) -> str:
    """The ZSET of the last fix time (ms) of each driver indexed in ``shard``."""
    return f"{prefix}:{{{shard}}}:seen"


def shards_key(prefix: str = KEY_PREFIX) -> str:
    """The SET of every shard the index has written to."""
    return f"{prefix}:shards"


def driver_key(driver_id: str) -> str:
    """The metadata HASH of a driver (its own hash tag: drivers spread over the cluster)."""
    return f"drv:{{{driver_id}}}"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """An available driver's latest position, as the ingest side files it."""

    driver_id: str
    lat: float
    lng: float
    vehicle: str
    #: When the fix was taken, ms since the epoch; also the driver's presence score.
    fix_time_ms: int


@dataclass(frozen=True, slots=True)
class Nearby:
    """One search result: a driver, where Redis has it and how far that is from the centre."""

    driver_id: str
    lat: float
    lng: float
    distance_m: float
    vehicle: str
    fix_time_ms: int


# --- cell geometry ------------------------------------------------------------------------------


class CellGeometry(NamedTuple):
    """What shard selection needs to know about one H3 cell."""

    cell: str
    lat: float
    lng: float
    #: No point of the cell is farther than this from (lat, lng), in metres (generous).
    circumradius_m: float
    #: Every point this close to (lat, lng) is inside the cell, in metres (cautious).
    inradius_m: float
    #: Some of the cell lies beyond GEO_LAT_MAX: it may hold polar drivers.
    polar: bool
    #: All of the cell lies beyond GEO_LAT_MAX: it holds no driver in a GEO set.
    all_polar: bool


Vec = tuple[float, float, float]


def _unit(lat: float, lng: float) -> Vec:
    phi, lmb = math.radians(lat), math.radians(lng)
    return (math.cos(phi) * math.cos(lmb), math.cos(phi) * math.sin(lmb), math.sin(phi))


def _cross(a: Vec, b: Vec) -> Vec:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _dot(a: Vec, b: Vec) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _angle(a: Vec, b: Vec) -> float:
    # atan2 of |a x b| and a.b stays accurate for tiny angles, unlike acos.
    c = _cross(a, b)
    return math.atan2(math.sqrt(_dot(c, c)), _dot(a, b))


def _arc_distance_m(p: Vec, a: Vec, b: Vec) -> float:
    """The distance from ``p`` to the great-circle arc from ``a`` to ``b`` (all unit vectors)."""
    n = _cross(a, b)
    norm = math.sqrt(_dot(n, n))
    if norm < 1e-15:
        return _angle(p, a) * EARTH_RADIUS_M
    n = (n[0] / norm, n[1] / norm, n[2] / norm)
    # The foot of the perpendicular lies on the arc iff it is on the inner side of both ends.
    if _dot(_cross(a, p), n) >= 0 and _dot(_cross(p, b), n) >= 0:
        return abs(math.asin(max(-1.0, min(1.0, _dot(p, n))))) * EARTH_RADIUS_M
    return min(_angle(p, a), _angle(p, b)) * EARTH_RADIUS_M


@functools.lru_cache(maxsize=1 << 16)
def cell_geometry(shard: str) -> CellGeometry:
    """Centre and conservative radii of an H3 cell (cached: cells never change).

    H3 cell edges are great-circle arcs (straight lines of a gnomonic projection, with extra
    vertices where a cell crosses an icosahedron face), so the farthest point of a cell from its
    centre is a vertex and the nearest boundary point is on an edge arc. Both radii get a margin
    anyway: a shard wrongly left out loses results, one wrongly added costs one lookup.
    """
    lat, lng = h3.cell_to_latlng(shard)
    boundary = h3.cell_to_boundary(shard)
    centre = _unit(lat, lng)
    vertices = [_unit(vlat, vlng) for vlat, vlng in boundary]
    circumradius = max(_angle(centre, v) for v in vertices) * EARTH_RADIUS_M
    inradius = min(
        _arc_distance_m(centre, vertices[i - 1], vertices[i]) for i in range(len(vertices))
    )
    circumradius = circumradius * 1.02 + 50.0
    inradius = max(0.0, inradius * 0.98 - 50.0)
    reach_deg = math.degrees(circumradius / EARTH_RADIUS_M)
    return CellGeometry(
        cell=shard,
        lat=lat,
        lng=lng,
        circumradius_m=circumradius,
        inradius_m=inradius,
        polar=abs(lat) + reach_deg > GEO_LAT_MAX,
        all_polar=abs(lat) - reach_deg > GEO_LAT_MAX,
    )


@functools.lru_cache(maxsize=1 << 14)
def _disk(origin: str, k: int) -> tuple[tuple[CellGeometry, ...], frozenset[str]]:
    """The cells within grid distance ``k`` of ``origin``, and those exactly ``k`` away."""
    inner = set(h3.grid_disk(origin, k - 1)) if k > 0 else set()
    cells = h3.grid_disk(origin, k)
    return (
        tuple(cell_geometry(str(c)) for c in cells),
        frozenset(str(c) for c in cells if c not in inner),
    )


@functools.lru_cache(maxsize=1 << 16)
def _edge_m(origin: str) -> float:
    """The shortest edge of a cell: the yardstick for how many rings a radius spans."""
    return float(min(h3.edge_length(e, "m") for e in h3.origin_to_directed_edges(origin)))


def shards_for_circle(lat: float, lng: float, radius_m: float) -> list[str]:
    """Every shard with a point within ``radius_m`` of ``(lat, lng)`` (and maybe a few more).

    Shard C is kept when its centre is within ``radius_m`` plus its circumradius. Candidates come
    from grid disks around the centre's shard; the kept cells form a connected patch around the
    origin, so if none of them lies on the disk's outer ring no cell beyond it can be touched,
    and otherwise the disk grows a ring. That makes the answer independent of how much H3 cells
    shrink or bend (near pentagons and poles) and of the first guess of ``k``.
    """
    origin = shard_of(lat, lng)
    geometry = cell_geometry(origin)
    reach = radius_m + _SHARD_SLACK_M
    if haversine_m(lat, lng, geometry.lat, geometry.lng) + reach <= geometry.inradius_m:
        return [origin]
    # Ring k's centres are at least ~1.5 edges * k from the origin's in a regular hex grid.
    k = max(1, math.ceil(reach / (1.5 * _edge_m(origin))))
    while True:
        cells, ring = _disk(origin, k)
        kept = [
            c.cell for c in cells if haversine_m(lat, lng, c.lat, c.lng) <= reach + c.circumradius_m
        ]
        if ring.isdisjoint(kept):
            return kept
        k += 1


# --- keys of one shard -------------------------------------------------------------------------


class _ShardKeys(NamedTuple):
    """The encoded keys of one shard, precomputed: the hot paths only look them up."""

    shard: str
    seen: bytes
    geo: tuple[bytes, ...]
    polar: tuple[bytes, ...]
    #: Whether the shard reaches beyond GEO_LAT_MAX (its polar hashes are in use).
    is_polar: bool
    #: Whether the shard lies wholly beyond GEO_LAT_MAX (its GEO sets are never used).
    all_polar: bool


@functools.lru_cache(maxsize=1 << 17)
def _shard_keys(prefix: str, shard: str) -> _ShardKeys:
    geometry = cell_geometry(shard)
    return _ShardKeys(
        shard=shard,
        seen=seen_key(shard, prefix).encode(),
        geo=tuple(geo_key(shard, v, prefix).encode() for v in VEHICLES),
        polar=tuple(polar_key(shard, v, prefix).encode() for v in VEHICLES),
        is_polar=geometry.polar,
        all_polar=geometry.all_polar,
    )


# --- Lua: each runs on one shard's keys, which share a hash slot --------------------------------

# One search step on one shard. For each GEO set: the `count` nearest drivers within the radius
# whose presence is fresh (or all of them with count 0), with a flag saying whether more may lie
# beyond the last; for each polar hash: its fresh drivers. Filtering presence here saves a round
# trip, and stale drivers crowding the COUNT make it look further instead of returning fewer.
#   KEYS: seen, geo sets..., polar hashes...
#   ARGV: lng, lat, radius_m, count, cutoff_ms, number of geo sets
#   reply, per geo set: n, truncated (0/1), then n x (driver, lng, lat, fix_ms);
#          per polar hash: n, then n x (driver, "lat,lng", fix_ms)
_SEARCH_LUA = """
local seen = KEYS[1]
local lng, lat, radius = ARGV[1], ARGV[2], ARGV[3]
local count = tonumber(ARGV[4])
local cutoff = tonumber(ARGV[5])
local ngeo = tonumber(ARGV[6])
local out = {}

local function scores_of(ids)
  local scores = {}
  for first = 1, #ids, 500 do
    local last = math.min(first + 499, #ids)
    local part = redis.call('ZMSCORE', seen, unpack(ids, first, last))
    for j = 1, #part do scores[first + j - 1] = part[j] end
  end
  return scores
end

for i = 2, ngeo + 1 do
  local ask = count
  local fresh, truncated
  while true do
    local found
    if count == 0 then
      found = redis.call('GEOSEARCH', KEYS[i], 'FROMLONLAT', lng, lat,
                         'BYRADIUS', radius, 'm', 'WITHCOORD')
    else
      found = redis.call('GEOSEARCH', KEYS[i], 'FROMLONLAT', lng, lat,
                         'BYRADIUS', radius, 'm', 'ASC', 'COUNT', ask, 'WITHCOORD')
    end
    fresh = {}
    truncated = 0
    if #found > 0 then
      local ids = {}
      for j = 1, #found do ids[j] = found[j][1] end
      local scores = scores_of(ids)
      for j = 1, #found do
        local s = scores[j]
        if s and tonumber(s) >= cutoff then
          fresh[#fresh + 1] = j
          fresh[#fresh + 1] = s
          if count > 0 and #fresh == 2 * count then
            truncated = 1
            break
          end
        end
      end
    end
    if count == 0 or truncated == 1 or #found < ask then
      out[#out + 1] = #fresh / 2
      out[#out + 1] = truncated
      for f = 1, #fresh, 2 do
        local hit = found[fresh[f]]
        out[#out + 1] = hit[1]
        out[#out + 1] = hit[2][1]
        out[#out + 1] = hit[2][2]
        out[#out + 1] = fresh[f + 1]
      end
      break
    end
    -- Stale drivers took some of the first places: look further.
    ask = ask * 4
  end
end

for i = ngeo + 2, #KEYS do
  local flat = redis.call('HGETALL', KEYS[i])
  local ids, positions = {}, {}
  for j = 1, #flat, 2 do
    ids[#ids + 1] = flat[j]
    positions[#positions + 1] = flat[j + 1]
  end
  local scores = {}
  if #ids > 0 then scores = scores_of(ids) end
  local at = #out + 1
  out[at] = 0
  for j = 1, #ids do
    local s = scores[j]
    if s and tonumber(s) >= cutoff then
      out[at] = out[at] + 1
      out[#out + 1] = ids[j]
      out[#out + 1] = positions[j]
      out[#out + 1] = s
    end
  end
end
return out
"""

# Removes up to `batch` drivers whose last fix is older than the cutoff from one shard, from
# presence and every vehicle's set at once: atomic, so a fix arriving meanwhile is never lost.
#   KEYS: seen, geo sets..., polar hashes...   ARGV: cutoff_ms, batch, number of geo sets
_SWEEP_LUA = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
if #ids == 0 then return 0 end
local ngeo = tonumber(ARGV[3])
for i = 2, ngeo + 1 do redis.call('ZREM', KEYS[i], unpack(ids)) end
for i = ngeo + 2, #KEYS do redis.call('HDEL', KEYS[i], unpack(ids)) end
redis.call('ZREM', KEYS[1], unpack(ids))
return #ids
"""


class _Script:
    """A Lua script run by EVALSHA, falling back to EVAL where the server lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()

    def args(self, keys: Sequence[bytes], argv: Iterable[Any], *, load: bool) -> list[Any]:
        """The EVALSHA (or, with ``load``, EVAL) command line for ``keys`` and ``argv``."""
        # Command names as str: the cluster client routes EVAL/EVALSHA by matching them.
        head = ["EVAL", self.source] if load else ["EVALSHA", self.sha]
        return [*head, len(keys), *keys, *argv]


_SEARCH = _Script(_SEARCH_LUA)
_SWEEP = _Script(_SWEEP_LUA)


async def _run_scripts(
    redis: Redis, calls: list[tuple[_Script, list[bytes], list[Any]]]
) -> list[Any]:
    """Runs script calls, one round trip when the servers know the scripts (almost always).

    After a restart or failover a server lacks them: then the calls are repeated with EVAL,
    which also caches them there. Each call is read-only or idempotent, so a repeat is safe.
    """
    for load in (False, True):
        try:
            if len(calls) == 1:
                script, keys, argv = calls[0]
                return [await redis.execute_command(*script.args(keys, argv, load=load))]
            # A cluster client groups the calls by node; each one's keys share a slot.
            pipe = redis.pipeline(transaction=False)
            for script, keys, argv in calls:
                pipe.execute_command(*script.args(keys, argv, load=load))
            return list(await pipe.execute())
        except NoScriptError:
            if load:
                raise
        except Exception as exc:
            # A cluster pipeline may wrap the server's reply in its own exception.
            if load or "NOSCRIPT" not in str(exc):
                raise
    raise AssertionError("unreachable")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the index ---------------------------------------------------------------------------------


# One candidate while merging: distance first, so tuples sort nearest first (then by driver id).
_Hit = tuple[float, bytes, float, float, int, int]


class GeoIndex:
    """Available drivers by position, sharded by H3 cell; works on Redis and Redis Cluster.

    Writes are queued on a caller's pipeline (the ingest side batches a tick's fixes into one);
    reads and the sweep are round trips of their own.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        presence_ttl_s: float = 30.0,
        steps_m: tuple[float, ...] = (500, 1000, 2000, 5000, 10000, 20000, 50000),
        prefix: str = KEY_PREFIX,
    ) -> None:
        """``prefix`` starts every key (tests and benchmarks use their own); no braces in it."""
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces (they are the hash tag)")
        if presence_ttl_s <= 0:
            raise ValueError("presence_ttl_s must be positive")
        self._redis = redis
        self._ttl_ms = int(presence_ttl_s * 1000)
        self._steps = tuple(sorted(float(s) for s in steps_m if s > 0))
        self._prefix = prefix
        self._shards_key = shards_key(prefix).encode()
        # When this process last told the shard set about a shard (monotonic seconds).
        self._announced: dict[str, float] = {}

    @property
    def presence_ttl_s(self) -> float:
        """How long a driver stays findable after its last fix, in seconds."""
        return self._ttl_ms / 1000

    # --- writes (queued, no awaits) ----------------------------------------------------------

    def queue_upsert(
        self,
        pipe: Any,
        entry: IndexEntry,
        previous_shard: str | None,
        *,
        previous_vehicle: str | None = None,
    ) -> str:
        """Queues filing an available driver at ``entry``'s position; returns its shard.

        ``previous_shard`` is where the driver was filed before (``None`` if nowhere): when it
        differs, the old shard's copies are removed in the same pipeline. Pass
        ``previous_vehicle`` when the vehicle changed, so the old vehicle's set lets go of it.
        """
        vehicle = _VEHICLE_INDEX.get(entry.vehicle)
        if vehicle is None:
            raise ValueError(f"unknown vehicle {entry.vehicle!r}")
        lat, lng, driver = entry.lat, entry.lng, entry.driver_id
        shard = shard_of(lat, lng)
        keys = _shard_keys(self._prefix, shard)
        if previous_shard and previous_shard != shard:
            self.queue_remove(pipe, driver, previous_shard)
        elif previous_vehicle is not None and previous_vehicle != entry.vehicle:
            old = _VEHICLE_INDEX.get(previous_vehicle)
            if old is not None:
                pipe.execute_command("ZREM", keys.geo[old], driver)
                if keys.is_polar:
                    pipe.execute_command("HDEL", keys.polar[old], driver)
        # Presence first: a reader between the two commands sees the driver fresh or not at all.
        pipe.execute_command("ZADD", keys.seen, entry.fix_time_ms, driver)
        if not keys.is_polar:
            pipe.execute_command("GEOADD", keys.geo[vehicle], lng, lat, driver)
        elif -GEO_LAT_MAX <= lat <= GEO_LAT_MAX:
            # A shard straddling the limit: a driver crossing it must leave the other structure.
            pipe.execute_command("GEOADD", keys.geo[vehicle], lng, lat, driver)
            pipe.execute_command("HDEL", keys.polar[vehicle], driver)
        else:
            pipe.execute_command("HSET", keys.polar[vehicle], driver, f"{lat!r},{lng!r}")
            if not keys.all_polar:
                pipe.execute_command("ZREM", keys.geo[vehicle], driver)
        now = time.monotonic()
        if now - self._announced.get(shard, -_ANNOUNCE_EVERY_S) >= _ANNOUNCE_EVERY_S:
            pipe.execute_command("SADD", self._shards_key, shard)
            self._announced[shard] = now
        return shard

    def queue_remove(self, pipe: Any, driver_id: str, shard: str) -> None:
        """Queues taking a driver (gone busy or offline, or moved away) out of ``shard``."""
        keys = _shard_keys(self._prefix, shard)
        # One ZREM per vehicle: the caller need not know which set holds the driver.
        if not keys.all_polar:
            for key in keys.geo:
                pipe.execute_command("ZREM", key, driver_id)
        if keys.is_polar:
            for key in keys.polar:
                pipe.execute_command("HDEL", key, driver_id)
        pipe.execute_command("ZREM", keys.seen, driver_id)

    # --- search -------------------------------------------------------------------------------

    async def find_nearby(
        self,
        lat: float,
        lng: float,
        radius_m: float,
        limit: int,
        vehicle: str | None = None,
        *,
        now_ms: int | None = None,
    ) -> list[Nearby]:
        """The ``limit`` nearest available, fresh drivers within ``radius_m``, nearest first.

        Exact: the same answer as measuring every indexed driver (at its stored position)
        with :func:`mesh.geo.haversine_m`; equal distances are ordered by driver id. The
        radius grows through ``steps_m`` and stops at the first step that holds ``limit``
        drivers, so a dense city is answered from a few hundred metres around the centre.
        """
        if not valid_lat_lng(lat, lng):
            raise ValueError(f"not a position: {lat}, {lng}")
        if vehicle is None:
            vehicles = _ALL_VEHICLES
        elif vehicle in _VEHICLE_INDEX:
            vehicles = (_VEHICLE_INDEX[vehicle],)
        else:
            raise ValueError(f"unknown vehicle {vehicle!r}")
        if limit <= 0 or radius_m < 0 or math.isnan(radius_m):
            return []
        cutoff = (_now_ms() if now_ms is None else now_ms) - self._ttl_ms
        count = limit
        hits: list[_Hit] = []
        for step in (*(s for s in self._steps if s < radius_m), radius_m):
            while True:
                hits, horizon = await self._search(lat, lng, step, count, vehicles, cutoff)
                # Everything up to `exact` is known; past it a truncated set may hide nearer ones.
                exact = min(step, horizon)
                known = [h for h in hits if h[0] <= exact]
                if len(known) >= limit:
                    known.sort()
                    return [self._nearby(h) for h in known[:limit]]
                if horizon >= step:
                    break
                # Only duplicates (a driver caught mid-move in two shards) get here: ask for more.
                count *= 4
        hits.sort()
        return [self._nearby(h) for h in hits[:limit]]

    @staticmethod
    def _nearby(hit: _Hit) -> Nearby:
        distance, driver, lat, lng, fix_ms, vehicle = hit
        return Nearby(driver.decode(), lat, lng, distance, VEHICLES[vehicle], fix_ms)

    async def _search(
        self,
        lat: float,
        lng: float,
        radius_m: float,
        count: int,
        vehicles: tuple[int, ...],
        cutoff_ms: int,
    ) -> tuple[list[_Hit], float]:
        """One step: fresh drivers within ``radius_m`` and the distance up to which they are all.

        Returns the hits (deduplicated by driver) and the horizon: the smallest distance of the
        last hit of a set that may hold more beyond it (``inf`` when none was truncated).
        """
        # Redis refuses GEO centres beyond GEO_LAT_MAX: search those sets from the nearest
        # centre it accepts, with the radius grown by the gap, and without COUNT: the order
        # would not be ours, and nobody drives there, so "all" is a handful.
        geo_count = count
        geo_lat = lat
        geo_radius = radius_m
        if lat > GEO_LAT_MAX or lat < -GEO_LAT_MAX:
            geo_lat = math.copysign(GEO_LAT_MAX, lat)
            gap = haversine_m(lat, lng, geo_lat, lng)
            geo_radius = radius_m + gap if gap <= radius_m else -1.0
            geo_count = 0
        redis_radius = geo_radius * _REDIS_RADIUS_FACTOR + _REDIS_RADIUS_SLACK_M
        argv_tail = (lng, geo_lat, redis_radius, geo_count, cutoff_ms)
        calls: list[tuple[_Script, list[bytes], list[Any]]] = []
        layouts: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        for shard in shards_for_circle(lat, lng, radius_m):
            keys = _shard_keys(self._prefix, shard)
            geo = () if keys.all_polar or geo_radius < 0 else vehicles
            polar = vehicles if keys.is_polar else ()
            if not geo and not polar:
                continue
            script_keys = [
                keys.seen,
                *(keys.geo[v] for v in geo),
                *(keys.polar[v] for v in polar),
            ]
            calls.append((_SEARCH, script_keys, [*argv_tail, len(geo)]))
            layouts.append((geo, polar))
        if not calls:
            return [], math.inf
        replies = await _run_scripts(self._redis, calls)

        best: dict[bytes, _Hit] = {}
        horizon = math.inf
        for (geo, polar), reply in zip(layouts, replies, strict=True):
            at = 0
            for v in geo:
                n, truncated = reply[at], reply[at + 1]
                at += 2
                farthest = 0.0
                for _ in range(n):
                    driver = reply[at]
                    hit_lng, hit_lat = float(reply[at + 1]), float(reply[at + 2])
                    distance = haversine_m(lat, lng, hit_lat, hit_lng)
                    fix_ms = int(reply[at + 3])
                    at += 4
                    farthest = max(farthest, distance)
                    if distance <= radius_m:
                        _keep(best, (distance, driver, hit_lat, hit_lng, fix_ms, v))
                # Redis ranked the set by its own distance, which orders as ours does up to
                # float rounding: the farthest hit (not merely the last) bounds the unseen ones.
                if truncated and farthest < horizon:
                    horizon = farthest
            for v in polar:
                n = reply[at]
                at += 1
                for _ in range(n):
                    driver = reply[at]
                    raw_lat, _sep, raw_lng = reply[at + 1].partition(b",")
                    hit_lat, hit_lng = float(raw_lat), float(raw_lng)
                    fix_ms = int(reply[at + 2])
                    at += 3
                    distance = haversine_m(lat, lng, hit_lat, hit_lng)
                    if distance <= radius_m:
                        _keep(best, (distance, driver, hit_lat, hit_lng, fix_ms, v))
        return list(best.values()), horizon

    # --- presence ----------------------------------------------------------------------------

    async def sweep(self, now_ms: int | None = None) -> int:
        """Takes drivers silent for longer than the presence TTL out of every shard.

        Reads only the stale end of each shard's presence set, never every driver. Returns how
        many drivers it removed.
        """
        cutoff = (_now_ms() if now_ms is None else now_ms) - self._ttl_ms
        members = await self._redis.smembers(self._shards_key)  # type: ignore[misc]
        pending = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
        removed = 0
        while pending:
            batch, pending = pending[:_SWEEP_PIPELINE], pending[_SWEEP_PIPELINE:]
            calls: list[tuple[_Script, list[bytes], list[Any]]] = []
            for shard in batch:
                keys = _shard_keys(self._prefix, shard)
                geo = () if keys.all_polar else keys.geo
                polar = keys.polar if keys.is_polar else ()
                calls.append((_SWEEP, [keys.seen, *geo, *polar], [cutoff, _SWEEP_BATCH, len(geo)]))
            replies = await _run_scripts(self._redis, calls)
            for shard, n in zip(batch, replies, strict=True):
                removed += int(n)
                if int(n) >= _SWEEP_BATCH:
                    # More stale drivers than one call takes: that shard goes round again.
                    pending.append(shard)
        return removed


def _keep(best: dict[bytes, _Hit], hit: _Hit) -> None:
    """Adds a hit, keeping a driver's most recent fix if it shows up twice (mid shard move)."""
    seen = best.get(hit[1])
    if seen is None or hit[4] > seen[4] or (hit[4] == seen[4] and hit[0] < seen[0]):
        best[hit[1]] = hit
