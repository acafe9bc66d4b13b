"""The geo index of available drivers: H3-sharded Redis GEO sets, presence by last fix time.

Layout (``loc`` is the default prefix; ``{...}`` is the Redis Cluster hash tag, so every key of
one shard lives in one slot, on one node, and one Lua script may touch them all):

- ``loc:{<shard>}:<vehicle>``: GEO set of the available drivers of that vehicle in the shard.
- ``loc:{<shard>}:any``: GEO set of every available driver of the shard, whatever the vehicle:
  a search without a vehicle filter reads one set, not one per vehicle.
- ``loc:{<shard>}:polar:<vehicle>``: HASH driver -> ``"lat,lng"`` for drivers beyond the
  latitudes Redis GEO accepts (|lat| > 85.05112878); only shards that reach that far have one.
- ``loc:{<shard>}:seen``: ZSET driver -> time of the last fix in ms plus the vehicle's index in
  eighths (``fix_ms + vehicle / 8``): presence is a TTL, and comparing the score with a whole
  cutoff in ms compares the fix time alone; the fraction tells a search of the ``any`` set
  each winner's vehicle without a lookup.
- ``loc:shards``: SET of every shard ever written, so the sweeper never scans drivers.

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
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError

from mesh import clock
from mesh.geo import (
    EARTH_RADIUS_M,
    cell,
    cell_area_m2,
    cell_boundary,
    cell_center,
    cell_min_edge_m,
    grid_disk,
    haversine_m,
    valid_lat_lng,
)

#: H3 resolution of a shard (cells of about 250 km², edges of about 9.9 km).
SHARD_RES = 5
#: The vehicle types a driver can have; every shard has one GEO set per vehicle.
VEHICLES = ("bicycle", "motorcycle", "car", "van")
#: What a shard's GEO sets are named after: each vehicle, then ``any`` (every vehicle).
GEO_SETS = (*VEHICLES, "any")
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
# A search that stopped at a step knows every driver this much past it: Redis searched the step
# times _REDIS_RADIUS_FACTOR plus the slack by its own distance, which covers our step + 0.9 of
# the slack with room for float rounding at any radius. A driver just over the step's rim then
# counts, instead of costing another run.
_RIM_M = 0.9 * _REDIS_RADIUS_SLACK_M
# Shard selection works on the written coordinates, distances on the stored (rounded) ones.
_SHARD_SLACK_M = 5.0
# Re-announce a shard in the shard set this often, so a failed pipeline or a Redis that lost its
# data does not hide a shard from the sweeper for ever.
_ANNOUNCE_EVERY_S = 60.0
# Drivers removed per sweep script call; keeps each call short and under Lua's unpack limit.
_SWEEP_BATCH = 1000
# Shards per sweep pipeline.
_SWEEP_PIPELINE = 256
# Just under the radius at which Redis GEOSEARCH moves to geohash boxes four times as large
# (its box height at step 16 is 170.1 deg / 2^16, about 288.6 m).
_GEOHASH_STEP_M = 280.0
#: The radii a search tries by default: Redis's cost grows with the area it scans, which it
#: picks in geohash boxes that double in size at about 288 m x 2^j (mid latitudes), so each
#: step sits just under one of those. A step too small costs a GEOSEARCH of a few boxes inside
#: the same script run; a step too large scans up to four times the drivers it needed to.
DEFAULT_STEPS_M = tuple(_GEOHASH_STEP_M * 2.0**j for j in range(-1, 17))
# Steps one search script run takes at most when it spans several shards (the first four cover
# a city at a few dozen drivers per km²; a sparser place takes another run).
_STEPS_PER_RUN = 4
_VEHICLE_INDEX = {v: i for i, v in enumerate(VEHICLES)}
_ALL_VEHICLES = tuple(range(len(VEHICLES)))
_ONE_VEHICLE = tuple((i,) for i in range(len(VEHICLES)))
#: The index of a shard's ``any`` GEO set among its GEO sets (after one per vehicle).
_ANY = len(VEHICLES)
_ANY_VEHICLE = (_ANY,)
_ANY_BYTES = str(_ANY).encode()
#: Presence scores carry the vehicle index in this fraction of a millisecond (exact in a double
#: for fix times up to 2^49 ms, about the year 19800).
_VEHICLE_FRACTION = 0.125
# The fraction of each vehicle's presence score, as text.
_SCORE_FRACTIONS = tuple((b"%.3f" % (v * _VEHICLE_FRACTION))[1:] for v in range(len(VEHICLES)))


def shard_of(lat: float, lng: float) -> str:
    """The shard (H3 cell of resolution :data:`SHARD_RES`) a position is filed under."""
    return cell(lat, lng, SHARD_RES)


def geo_key(shard: str, vehicle: str, prefix: str = KEY_PREFIX) -> str:
    """The GEO set of available drivers with ``vehicle`` (or ``"any"``: all) in ``shard``."""
    return f"{prefix}:{{{shard}}}:{vehicle}"


def presence_score(fix_time_ms: int, vehicle: int) -> float:
    """A driver's score in its shard's presence set: the fix time, the vehicle in the fraction."""
    return fix_time_ms + vehicle * _VEHICLE_FRACTION


def parse_presence(raw: bytes | str | float) -> tuple[int, int]:
    """The fix time (ms) and vehicle index of a presence score."""
    score = float(raw)
    fix_ms = math.floor(score)
    return fix_ms, round((score - fix_ms) / _VEHICLE_FRACTION)


def polar_key(shard: str, vehicle: str, prefix: str = KEY_PREFIX) -> str:
    """The HASH of available drivers with ``vehicle`` in ``shard`` beyond Redis GEO's latitudes."""
    return f"{prefix}:{{{shard}}}:polar:{vehicle}"


def seen_key(shard: str, prefix: str = KEY_PREFIX) -> str:
    """The ZSET of the last fix time (ms) of each driver indexed in ``shard``."""
    return f"{prefix}:{{{shard}}}:seen"


def shards_key(prefix: str = KEY_PREFIX) -> str:
    """The SET of every shard the index has written to."""
    return f"{prefix}:shards"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """An available driver's latest position, as the ingest side files it."""

    driver_id: str
    lat: float
    lng: float
    vehicle: str
    #: When the fix was taken, ms since the epoch; also the driver's presence score.
    fix_time_ms: int


class Nearby(NamedTuple):
    """One search result: a driver, where Redis has it and how far that is from the centre.

    A named tuple: a search builds ten of them, at a third of a frozen dataclass's cost.
    """

    driver_id: str
    lat: float
    lng: float
    distance_m: float
    vehicle: str
    fix_time_ms: int
    #: Whether the driver is busy (carrying orders) rather than available.
    busy: bool = False


# --- cell geometry ------------------------------------------------------------------------------


Vec = tuple[float, float, float]


class _Edge(NamedTuple):
    """A cell edge (a great-circle arc from ``a`` to ``b``) prepared for distance tests."""

    a: Vec
    b: Vec
    #: Unit normal of the arc's great circle: |p . normal| is the sine of p's distance to it.
    normal: Vec
    #: p . start >= 0 and p . end >= 0 iff p's foot on the great circle lies on the arc.
    start: Vec
    end: Vec


class CellGeometry(NamedTuple):
    """What shard selection needs to know about one H3 cell."""

    cell: str
    lat: float
    lng: float
    #: Unit vector of (lat, lng).
    centre: Vec
    #: No point of the cell is farther than this from (lat, lng), in metres (generous).
    circumradius_m: float
    #: Every point this close to (lat, lng) is inside the cell, in metres (cautious).
    inradius_m: float
    #: The boundary, edge by edge.
    edges: tuple[_Edge, ...]
    #: Some of the cell lies beyond GEO_LAT_MAX: it may hold polar drivers.
    polar: bool
    #: All of the cell lies beyond GEO_LAT_MAX: it holds no driver in a GEO set.
    all_polar: bool
    #: The cell's area in square metres.
    area_m2: float


def _unit(lat: float, lng: float) -> Vec:
    phi, lmb = math.radians(lat), math.radians(lng)
    return (math.cos(phi) * math.cos(lmb), math.cos(phi) * math.sin(lmb), math.sin(phi))


def _cross(a: Vec, b: Vec) -> Vec:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _dot(a: Vec, b: Vec) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _normalized(v: Vec) -> Vec:
    norm = math.sqrt(_dot(v, v))
    return (v[0] / norm, v[1] / norm, v[2] / norm)


def _angle(a: Vec, b: Vec) -> float:
    # atan2 of |a x b| and a.b stays accurate for tiny angles, unlike acos.
    c = _cross(a, b)
    return math.atan2(math.sqrt(_dot(c, c)), _dot(a, b))


def _edge(a: Vec, b: Vec) -> _Edge:
    normal = _normalized(_cross(a, b))
    return _Edge(a, b, normal, _cross(normal, a), _cross(b, normal))


def _near_edge(p: Vec, edge: _Edge, sin_reach: float, cos_reach: float) -> bool:
    """Whether ``p`` is within the reach (given by its sine and cosine) of the arc."""
    if abs(_dot(p, edge.normal)) > sin_reach:
        return False  # farther from the whole great circle: the usual case, one dot product
    if _dot(p, edge.start) >= 0 and _dot(p, edge.end) >= 0:
        return True  # the nearest point is inside the arc
    return _dot(p, edge.a) >= cos_reach or _dot(p, edge.b) >= cos_reach


def _edge_distance_m(p: Vec, edge: _Edge) -> float:
    """The distance from ``p`` to the arc."""
    if _dot(p, edge.start) >= 0 and _dot(p, edge.end) >= 0:
        return abs(math.asin(max(-1.0, min(1.0, _dot(p, edge.normal))))) * EARTH_RADIUS_M
    return min(_angle(p, edge.a), _angle(p, edge.b)) * EARTH_RADIUS_M


@functools.lru_cache(maxsize=1 << 16)
def cell_geometry(shard: str) -> CellGeometry:
    """Centre, boundary and conservative radii of an H3 cell (cached: cells never change).

    H3 cell edges are great-circle arcs (straight lines of a gnomonic projection, with extra
    vertices where a cell crosses an icosahedron face), so the farthest point of a cell from
    its centre is a vertex and distances to the boundary are distances to arcs. The radii get
    a margin anyway: a shard wrongly left out loses results, one wrongly added costs a lookup.
    """
    lat, lng = cell_center(shard)
    centre = _unit(lat, lng)
    vertices = [_unit(vlat, vlng) for vlat, vlng in cell_boundary(shard)]
    edges = tuple(
        _edge(vertices[i - 1], vertices[i])
        for i in range(len(vertices))
        if _angle(vertices[i - 1], vertices[i]) > 1e-12
    )
    circumradius = max(_angle(centre, v) for v in vertices) * EARTH_RADIUS_M * 1.02 + 50.0
    inradius = min(_edge_distance_m(centre, e) for e in edges) * 0.98 - 50.0
    reach_deg = math.degrees(circumradius / EARTH_RADIUS_M)
    return CellGeometry(
        cell=shard,
        lat=lat,
        lng=lng,
        centre=centre,
        circumradius_m=circumradius,
        inradius_m=max(0.0, inradius),
        edges=edges,
        polar=abs(lat) + reach_deg > GEO_LAT_MAX,
        all_polar=abs(lat) - reach_deg > GEO_LAT_MAX,
        area_m2=cell_area_m2(shard),
    )


@functools.lru_cache(maxsize=1 << 14)
def _disk(origin: str, k: int) -> tuple[tuple[CellGeometry, ...], frozenset[str]]:
    """The cells within grid distance ``k`` of ``origin``, and those exactly ``k`` away."""
    inner = set(grid_disk(origin, k - 1)) if k > 0 else set()
    cells = grid_disk(origin, k)
    return (
        tuple(cell_geometry(str(c)) for c in cells),
        frozenset(str(c) for c in cells if c not in inner),
    )


@functools.lru_cache(maxsize=1 << 16)
def _edge_m(origin: str) -> float:
    """The shortest edge of a cell: the yardstick for how many rings a radius spans."""
    return cell_min_edge_m(origin)


def shards_for_circle(lat: float, lng: float, radius_m: float) -> list[str]:
    """Every shard with a point within ``radius_m`` of ``(lat, lng)`` (and rarely one more).

    The centre's shard always; another shard when one of its edges comes within the radius
    (exact spherical geometry, with a few metres of slack for the metre Redis rounds stored
    positions by). Candidates come from grid disks around the centre's shard: the kept cells
    form a connected patch around it, so if none lies on the disk's outer ring no cell beyond
    can be touched, and otherwise the disk grows a ring. That keeps the answer right however
    much H3 cells shrink or bend (near pentagons and poles), whatever the first guess of ``k``.
    """
    origin = shard_of(lat, lng)
    geometry = cell_geometry(origin)
    reach = radius_m + _SHARD_SLACK_M
    p = _unit(lat, lng)
    angle = reach / EARTH_RADIUS_M
    if angle >= math.pi / 2:
        raise ValueError(f"radius {radius_m} m is too large to search")
    sin_reach, cos_reach = math.sin(angle), math.cos(angle)
    # Cheapest first: well inside the cell (one dot product), then no edge within reach.
    inner = geometry.inradius_m - reach
    if inner > 0 and _dot(p, geometry.centre) >= math.cos(inner / EARTH_RADIUS_M):
        return [origin]
    if not any(_near_edge(p, e, sin_reach, cos_reach) for e in geometry.edges):
        return [origin]
    k = max(1, math.ceil(reach / (1.5 * _edge_m(origin))))
    while True:
        cells, ring = _disk(origin, k)
        kept = [origin]
        for c in cells:
            if c.cell == origin:
                continue
            # Too far by the circumradius (one dot product) before the edge by edge test.
            if _dot(p, c.centre) < math.cos(
                min(math.pi, (reach + c.circumradius_m) / EARTH_RADIUS_M)
            ):
                continue
            if any(_near_edge(p, e, sin_reach, cos_reach) for e in c.edges):
                kept.append(c.cell)
        if ring.isdisjoint(kept):
            return kept
        k += 1


def room_in_shard_m(lat: float, lng: float) -> tuple[str, float]:
    """The shard of ``(lat, lng)`` and how far, at least, the point is from its boundary (m).

    A circle of a smaller radius (less :data:`_SHARD_SLACK_M`) stays in that one shard. The
    distance is to the nearest of the great circles the cell's edges lie on: never more than
    the distance to the edges themselves (from inside a convex cell, usually the same).
    """
    shard = shard_of(lat, lng)
    p = _unit(lat, lng)
    nearest = min(abs(_dot(p, e.normal)) for e in cell_geometry(shard).edges)
    return shard, math.asin(min(1.0, nearest)) * EARTH_RADIUS_M


# --- keys of one shard -------------------------------------------------------------------------


class _ShardKeys(NamedTuple):
    """The encoded keys of one shard, precomputed: the hot paths only look them up."""

    shard: str
    seen: bytes
    #: One GEO set per vehicle, then the ``any`` set (index :data:`_ANY`).
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
        geo=tuple(geo_key(shard, v, prefix).encode() for v in GEO_SETS),
        polar=tuple(polar_key(shard, v, prefix).encode() for v in VEHICLES),
        is_polar=geometry.polar,
        all_polar=geometry.all_polar,
    )


# --- Lua: each runs on one shard's keys, which share a hash slot --------------------------------

# A search over one or more shards (one per call on a cluster, where a script's keys must share a
# slot; all of them in one call on a single Redis, saving a script run per extra shard), through
# growing radii: the first radius that holds `count` fresh drivers ends it, so a dense city is
# answered from a few hundred metres around the centre, and a radius too small costs one cheap
# GEOSEARCH here rather than a round trip. Returns the `count` nearest drivers within that
# radius whose presence is fresh, over the shards' GEO sets (every fresh one with count 0), and
# the fresh drivers of their polar hashes.
# Each set's COUNT nearest come back with Redis's distance (its earth radius ranks as ours does);
# a merge in distance order then checks presence only for as many as it needs. Each set's rows
# are at most `count` (COUNT), so their coordinates come with them (WITHCOORD): a GEOPOS for the
# winners would cost more than the few rows formatted in vain. Stale drivers crowding a set's
# COUNT make it look further instead of answering short. Hits come packed in one string per
# kind, as parsing each reply element costs the Python client microseconds.
#   KEYS: per shard: seen, geo sets..., polar hashes...
#   ARGV: lng, lat, count (0: all), cutoff_ms, number of radii, the radii (m, ascending),
#         number of shards, then per shard: number of geo sets, number of polar hashes, the
#         vehicle index of each
#   reply: {truncated, geo hits, polar hits, how many radii were searched}
#     truncated: 1 if drivers beyond the farthest geo hit may have been left out
#     geo hits: lines "lng lat presence vehicle driver", nearest first (presence: the score in
#       the seen set; vehicle: the index passed for the set, which for an any set says nothing)
#     polar hits: lines "lat,lng presence vehicle driver", every fresh one of the polar hashes
_SEARCH_LUA = """
local lng, lat = ARGV[1], ARGV[2]
local count = tonumber(ARGV[3])
local cutoff = tonumber(ARGV[4])
local nradii = tonumber(ARGV[5])
local nshards = tonumber(ARGV[6 + nradii])

-- sets[i] = {geo key, seen key of its shard, vehicle}; polars likewise
local sets, polars = {}, {}
local k, a = 1, 7 + nradii
for _ = 1, nshards do
  local ngeo, npolar = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local seen = KEYS[k]
  k = k + 1
  for _ = 1, ngeo do
    sets[#sets + 1] = {KEYS[k], seen, ARGV[a]}
    k, a = k + 1, a + 1
  end
  for _ = 1, npolar do
    polars[#polars + 1] = {KEYS[k], seen, ARGV[a]}
    k, a = k + 1, a + 1
  end
end
local nsets = #sets

-- Presence scores of ids, each looked up in its shard's seen key: a string, or false.
local function scores_of(ids, seens)
  local groups, order = {}, {}
  for j = 1, #ids do
    local group = groups[seens[j]]
    if group == nil then
      group = {}
      groups[seens[j]] = group
      order[#order + 1] = seens[j]
    end
    group[#group + 1] = j
  end
  local scores = {}
  for _, seen in ipairs(order) do
    local group = groups[seen]
    for first = 1, #group, 500 do
      local last = math.min(first + 499, #group)
      local part_ids = {}
      for j = first, last do part_ids[#part_ids + 1] = ids[group[j]] end
      local part = redis.call('ZMSCORE', seen, unpack(part_ids))
      for j = 1, #part do scores[group[first + j - 1]] = part[j] end
    end
  end
  return scores
end

local picked = {}
local truncated = 0
local searched = 0
while truncated == 0 and searched < nradii do
  searched = searched + 1
  local radius = ARGV[5 + searched]
  local ask, members, dists, coords, full = {}, {}, {}, {}, {}
  for i = 1, nsets do ask[i] = count end
  local search = true
  while search do
    local horizon = math.huge
    local rows_found = 0
    for i = 1, nsets do
      if members[i] == nil then
        local rows
        if count == 0 then
          rows = redis.call('GEOSEARCH', sets[i][1], 'FROMLONLAT', lng, lat,
                            'BYRADIUS', radius, 'm', 'WITHDIST', 'WITHCOORD')
        else
          rows = redis.call('GEOSEARCH', sets[i][1], 'FROMLONLAT', lng, lat,
                            'BYRADIUS', radius, 'm', 'ASC', 'COUNT', ask[i], 'WITHDIST',
                            'WITHCOORD')
        end
        local m, d, c = {}, {}, {}
        for j = 1, #rows do
          m[j] = rows[j][1]
          d[j] = tonumber(rows[j][2])
          c[j] = rows[j][3]
        end
        members[i], dists[i], coords[i] = m, d, c
        full[i] = count > 0 and #rows == ask[i]
      end
      -- A full set may hold more drivers past its last row: nothing beyond that is known.
      if full[i] and dists[i][#dists[i]] < horizon then horizon = dists[i][#dists[i]] end
      rows_found = rows_found + #dists[i]
    end
    if rows_found < count and searched < nradii then
      -- Too few drivers here even if all are fresh: straight on to the next radius.
      break
    end
    -- Merge the sets nearest first up to the horizon, keeping fresh drivers, until `count`.
    picked = {}
    local picked_at = {}
    local at = {}
    for i = 1, nsets do at[i] = 1 end
    local exhausted = false
    while not exhausted and (count == 0 or #picked < count) do
      local need = count == 0 and math.huge or count - #picked
      local chunk, seens, from, xys = {}, {}, {}, {}
      while #chunk < need do
        local best, nearest = 0, horizon
        for i = 1, nsets do
          local d = dists[i][at[i]]
          if d ~= nil and d <= nearest then best, nearest = i, d end
        end
        if best == 0 then
          exhausted = true
          break
        end
        chunk[#chunk + 1] = members[best][at[best]]
        seens[#seens + 1] = sets[best][2]
        from[#from + 1] = best
        xys[#xys + 1] = coords[best][at[best]]
        at[best] = at[best] + 1
      end
      if #chunk > 0 then
        local scores = scores_of(chunk, seens)
        for j = 1, #chunk do
          local s = scores[j]
          if s and tonumber(s) >= cutoff then
            -- A driver caught mid-move in two shards counts once, at its latest fix.
            local seen_at = picked_at[chunk[j]]
            if seen_at == nil then
              picked[#picked + 1] = {from[j], chunk[j], s, xys[j]}
              picked_at[chunk[j]] = #picked
            elseif tonumber(s) > tonumber(picked[seen_at][3]) then
              picked[seen_at] = {from[j], chunk[j], s, xys[j]}
            end
          end
        end
      end
    end
    search = false
    if count > 0 and #picked == count then
      truncated = 1
    elseif horizon < math.huge then
      -- Stale drivers used up the rows of a set that holds more: look further in those.
      for i = 1, nsets do
        if full[i] then
          ask[i] = ask[i] * 4
          members[i] = nil
        end
      end
      search = true
    end
  end
end

local lines = {}
for j = 1, #picked do
  local hit = picked[j]
  local xy = hit[4]
  lines[j] = xy[1] .. ' ' .. xy[2] .. ' ' .. hit[3] .. ' ' .. sets[hit[1]][3] .. ' ' .. hit[2]
end

local polar = {}
for _, p in ipairs(polars) do
  local flat = redis.call('HGETALL', p[1])
  local ids, positions, seens = {}, {}, {}
  for j = 1, #flat, 2 do
    ids[#ids + 1] = flat[j]
    positions[#positions + 1] = flat[j + 1]
    seens[#seens + 1] = p[2]
  end
  if #ids > 0 then
    local scores = scores_of(ids, seens)
    for j = 1, #ids do
      local s = scores[j]
      if s and tonumber(s) >= cutoff then
        polar[#polar + 1] = positions[j] .. ' ' .. s .. ' ' .. p[3] .. ' ' .. ids[j]
      end
    end
  end
end

return {truncated, table.concat(lines, '\\n'), table.concat(polar, '\\n'), searched}
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

# The fresh drivers of one shard's ``any`` set inside a box: a fleet map's read.
#   KEYS: seen, any   ARGV: lng, lat (the box's centre), width_m, height_m, count, cutoff_ms
#   reply: {full, hits}: full is 1 when `count` rows came back (the shard may hold more); hits
#     are lines "lng lat presence driver", nearest the centre first
_BOX_LUA = """
local rows = redis.call('GEOSEARCH', KEYS[2], 'FROMLONLAT', ARGV[1], ARGV[2],
                        'BYBOX', ARGV[3], ARGV[4], 'm', 'ASC', 'COUNT', ARGV[5], 'WITHCOORD')
local cutoff = tonumber(ARGV[6])
local lines = {}
for i = 1, #rows do
  local s = redis.call('ZSCORE', KEYS[1], rows[i][1])
  if s and tonumber(s) >= cutoff then
    local xy = rows[i][2]
    lines[#lines + 1] = xy[1] .. ' ' .. xy[2] .. ' ' .. s .. ' ' .. rows[i][1]
  end
end
return {#rows == tonumber(ARGV[5]) and 1 or 0, table.concat(lines, '\\n')}
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
_BOX = _Script(_BOX_LUA)


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


# --- the index ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Group:
    """The shards one search script call covers: its keys and their layout (see the script)."""

    keys: list[bytes] = field(default_factory=list)
    layout: list[int] = field(default_factory=list)
    shards: int = 0


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
        steps_m: tuple[float, ...] = DEFAULT_STEPS_M,
        prefix: str = KEY_PREFIX,
    ) -> None:
        """``prefix`` starts every key (tests and benchmarks use their own); no braces in it."""
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces (they are the hash tag)")
        if presence_ttl_s <= 0:
            raise ValueError("presence_ttl_s must be positive")
        self._redis = redis
        # A cluster runs one script per shard (its keys share a slot); a single Redis one in all.
        self._cluster = isinstance(redis, RedisCluster)
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
        if "\n" in driver:
            # Search replies pack one hit per line.
            raise ValueError("a driver id must not contain a line break")
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
        # Presence first: a reader between the commands sees the driver fresh or not at all.
        pipe.execute_command("ZADD", keys.seen, presence_score(entry.fix_time_ms, vehicle), driver)
        if not keys.is_polar or -GEO_LAT_MAX <= lat <= GEO_LAT_MAX:
            pipe.execute_command("GEOADD", keys.geo[vehicle], lng, lat, driver)
            pipe.execute_command("GEOADD", keys.geo[_ANY], lng, lat, driver)
            if keys.is_polar:
                # A shard straddling the limit: a driver crossing it leaves the other structure.
                pipe.execute_command("HDEL", keys.polar[vehicle], driver)
        else:
            pipe.execute_command("HSET", keys.polar[vehicle], driver, f"{lat!r},{lng!r}")
            if not keys.all_polar:
                pipe.execute_command("ZREM", keys.geo[vehicle], driver)
                pipe.execute_command("ZREM", keys.geo[_ANY], driver)
        now = time.monotonic()
        if now - self._announced.get(shard, -_ANNOUNCE_EVERY_S) >= _ANNOUNCE_EVERY_S:
            pipe.execute_command("SADD", self._shards_key, shard)
            self._announced[shard] = now
        return shard

    def queue_upserts(
        self,
        pipe: Any,
        batch: Sequence[tuple[IndexEntry, str | None]],
        shards: Sequence[str] | None = None,
    ) -> list[str]:
        """:meth:`queue_upsert` for many drivers at once; returns each one's shard.

        The GPS hot path: drivers that stay in their shard (nearly all of them, every tick)
        share one ZADD per shard and one GEOADD per shard and vehicle (and one for the shard's
        ``any`` set), instead of three commands each. Moves between shards, vehicle changes and
        polar positions take the one-by-one path. ``shards``, when given, holds each entry's
        :func:`shard_of`.
        """
        seen: dict[bytes, list[Any]] = {}
        geo: dict[bytes, list[Any]] = {}
        known = shards
        shards = []
        for i, (entry, previous_shard) in enumerate(batch):
            # The caller usually knows each entry's shard already (it filed the fix by it).
            shard = known[i] if known is not None else shard_of(entry.lat, entry.lng)
            keys = _shard_keys(self._prefix, shard)
            vehicle = _VEHICLE_INDEX.get(entry.vehicle)
            if (
                vehicle is None
                or keys.is_polar
                or (previous_shard and previous_shard != shard)
                or "\n" in entry.driver_id
            ):
                shards.append(self.queue_upsert(pipe, entry, previous_shard))
                continue
            # Numbers go out formatted here, once each: the generic float formatting on the
            # way to Redis costs more than the rest of a fix's filing.
            seen.setdefault(keys.seen, []).extend(
                (b"%d%s" % (entry.fix_time_ms, _SCORE_FRACTIONS[vehicle]), entry.driver_id)
            )
            # 1e-7 degrees (about a centimetre): finer than the geohash Redis stores.
            point = (b"%.7f" % entry.lng, b"%.7f" % entry.lat, entry.driver_id)
            geo.setdefault(keys.geo[vehicle], []).extend(point)
            geo.setdefault(keys.geo[_ANY], []).extend(point)
            shards.append(shard)
        # Presence first, as in queue_upsert: a reader sees a driver fresh or not at all.
        for key, args in seen.items():
            pipe.execute_command("ZADD", key, *args)
        for key, args in geo.items():
            pipe.execute_command("GEOADD", key, *args)
        now = time.monotonic()
        for shard in set(shards):
            if now - self._announced.get(shard, -_ANNOUNCE_EVERY_S) >= _ANNOUNCE_EVERY_S:
                pipe.execute_command("SADD", self._shards_key, shard)
                self._announced[shard] = now
        return shards

    def queue_remove(self, pipe: Any, driver_id: str, shard: str) -> None:
        """Queues taking a driver (gone busy or offline, or moved away) out of ``shard``."""
        keys = _shard_keys(self._prefix, shard)
        # One ZREM per GEO set: the caller need not know which vehicle's set holds the driver.
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

        Exact: the same answer as measuring every indexed driver (at its stored position) with
        :func:`mesh.geo.haversine_m`; equal distances are ordered by driver id. The radius
        grows step by step (in Redis, one script run for as long as the shards it spans stay
        the same) and stops at the first step that holds ``limit`` drivers.
        """
        if not valid_lat_lng(lat, lng):
            raise ValueError(f"not a position: {lat}, {lng}")
        if vehicle is None:
            vehicles = _ANY_VEHICLE
        else:
            index = _VEHICLE_INDEX.get(vehicle)
            if index is None:
                raise ValueError(f"unknown vehicle {vehicle!r}")
            vehicles = _ONE_VEHICLE[index]
        if limit <= 0 or not radius_m >= 0:
            return []
        cutoff = (clock.now_ms() if now_ms is None else now_ms) - self._ttl_ms
        polar_centre = lat > GEO_LAT_MAX or lat < -GEO_LAT_MAX
        # A centre beyond Redis's GEO limit is searched in one go (see _search).
        steps = [radius_m] if polar_centre else self._steps_for(radius_m)
        count = limit
        while True:
            # One script run covers several steps, over every shard the largest of them
            # touches (an extra shard costs a GEOSEARCH of a few boxes per step, a second run
            # a round trip). On a cluster each shard runs its own script, and one that grew
            # on its own would search far beyond what the others need: there a run spans
            # several shards only for one step.
            batch = min(len(steps), 1 if self._cluster else _STEPS_PER_RUN)
            origin, room = room_in_shard_m(lat, lng)
            if steps[batch - 1] + _SHARD_SLACK_M < room:
                # Deep inside one shard: every step that stays inside joins the run.
                shards = [origin]
                while batch < len(steps) and steps[batch] + _SHARD_SLACK_M < room:
                    batch += 1
            else:
                shards = shards_for_circle(lat, lng, steps[batch - 1])
            hits, horizon, reached = await self._search(
                lat, lng, steps[:batch], shards, count, vehicles, cutoff
            )
            # Everything up to `exact` is known; past it a truncated set may hide nearer ones.
            bound = radius_m if reached >= radius_m else reached + _RIM_M
            exact = min(bound, horizon)
            known = [h for h in hits if h[0] <= exact]
            if len(known) >= limit or exact >= radius_m:
                known.sort()
                return [_nearby(h) for h in known[:limit]]
            if horizon < bound:
                # Only duplicates (a driver caught mid-move in two shards) get here: ask for
                # more, from the step that came up short.
                count *= 4
                steps = [s for s in steps if s >= reached]
            else:
                steps = [s for s in steps if s > reached]

    def _steps_for(self, radius_m: float) -> list[float]:
        """The radii to try, ending with ``radius_m``: the configured steps below it."""
        return [*(s for s in self._steps if s < radius_m), radius_m]

    async def _search(
        self,
        lat: float,
        lng: float,
        steps: Sequence[float],
        shards: Sequence[str],
        count: int,
        vehicles: tuple[int, ...],
        cutoff_ms: int,
    ) -> tuple[list[_Hit], float, float]:
        """Fresh drivers within the first of ``steps`` that holds ``count`` (or the last one).

        Returns the hits (one per driver) within the radius the search reached (and its rim:
        :data:`_RIM_M`), the horizon
        (the smallest distance of the farthest hit of a shard that may hold more beyond it;
        ``inf`` when no shard was cut short) and the radius reached.
        """
        # Redis refuses GEO centres beyond GEO_LAT_MAX: search those sets from the nearest
        # centre it accepts, with the radius grown by the gap, and without COUNT: the order
        # would not be ours, and nobody drives there, so "all" is a handful.
        geo_count = count
        geo_lat = lat
        gap = 0.0
        if lat > GEO_LAT_MAX or lat < -GEO_LAT_MAX:
            geo_lat = math.copysign(GEO_LAT_MAX, lat)
            gap = haversine_m(lat, lng, geo_lat, lng)
            geo_count = 0
        search_geo = gap <= steps[-1]
        radii = [(s + gap) * _REDIS_RADIUS_FACTOR + _REDIS_RADIUS_SLACK_M for s in steps]
        groups: list[_Group] = []
        for shard in shards:
            keys = _shard_keys(self._prefix, shard)
            geo = () if keys.all_polar or not search_geo else vehicles
            # Polar drivers are kept per vehicle only.
            polar = (
                () if not keys.is_polar else _ALL_VEHICLES if vehicles == _ANY_VEHICLE else vehicles
            )
            if not geo and not polar:
                continue
            if self._cluster or not groups:
                groups.append(_Group())
            group = groups[-1]
            group.keys.append(keys.seen)
            group.keys.extend(keys.geo[v] for v in geo)
            group.keys.extend(keys.polar[v] for v in polar)
            group.layout.extend((len(geo), len(polar), *geo, *polar))
            group.shards += 1
        if not groups:
            return [], math.inf, steps[-1]
        argv = [lng, geo_lat, geo_count, cutoff_ms, len(radii), *radii]
        calls = [(_SEARCH, g.keys, [*argv, g.shards, *g.layout]) for g in groups]
        replies = await _run_scripts(self._redis, calls)
        # Groups run the same steps, and only one step when there are several (find_nearby).
        reached = steps[max(int(reply[3]) for reply in replies) - 1]
        within = reached + _RIM_M

        best: dict[bytes, _Hit] = {}
        horizon = math.inf
        for reply in replies:
            truncated, geo_hits, polar_hits = reply[0], reply[1], reply[2]
            farthest = 0.0
            if geo_hits:
                for line in geo_hits.split(b"\n"):
                    raw_lng, raw_lat, raw_score, raw_vehicle, driver = line.split(b" ", 4)
                    hit_lat, hit_lng = float(raw_lat), float(raw_lng)
                    distance = haversine_m(lat, lng, hit_lat, hit_lng)
                    if distance > farthest:
                        farthest = distance
                    if distance <= within:
                        fix_ms, vehicle = parse_presence(raw_score)
                        if raw_vehicle != _ANY_BYTES:
                            vehicle = int(raw_vehicle)
                        _keep(best, (distance, driver, hit_lat, hit_lng, fix_ms, vehicle))
            # Redis ranked by its own distance, which orders as ours does up to float
            # rounding: the farthest hit (not merely the last) bounds the ones left out.
            if truncated and farthest < horizon:
                horizon = farthest
            if polar_hits:
                for line in polar_hits.split(b"\n"):
                    position, raw_score, raw_vehicle, driver = line.split(b" ", 3)
                    raw_lat, _, raw_lng = position.partition(b",")
                    hit_lat, hit_lng = float(raw_lat), float(raw_lng)
                    distance = haversine_m(lat, lng, hit_lat, hit_lng)
                    if distance <= within:
                        fix_ms, _ = parse_presence(raw_score)
                        hit = (distance, driver, hit_lat, hit_lng, fix_ms, int(raw_vehicle))
                        _keep(best, hit)
        return list(best.values()), horizon, reached

    async def in_box(
        self,
        south: float,
        west: float,
        north: float,
        east: float,
        limit: int,
        *,
        now_ms: int | None = None,
    ) -> tuple[list[Nearby], bool]:
        """The fresh drivers inside a box (``south < north``, ``west < east``, within Redis's
        GEO latitudes), nearest its centre first, at most ``limit``; and whether the box may
        hold more than were returned.

        Each shard the box touches answers its ``limit + 1`` nearest in a Redis box that holds
        the asked one (a Redis box's width is measured at each driver's own latitude, so it is
        as wide as the asked box where that is widest); the rows are then cut to the asked box
        exactly. A shard that answers all ``limit + 1`` may hold more. Costs a script run per
        shard, one round trip: meant for an operator's map, not a hot path.
        """
        if limit <= 0:
            return [], False
        lat, lng = (south + north) / 2, (west + east) / 2
        reach = max(haversine_m(lat, lng, y, x) for y in (south, north) for x in (west, east))
        # Redis measures with its own earth radius; a metre of slack covers its geohash rounding.
        half_height = _REDIS_EARTH_RADIUS_M * math.radians(north - south) / 2
        widest = 0.0 if south <= 0.0 <= north else min(abs(south), abs(north))
        half_width = (
            2
            * _REDIS_EARTH_RADIUS_M
            * math.asin(
                min(1.0, math.cos(math.radians(widest)) * math.sin(math.radians(east - west) / 4))
            )
        )
        size = (2 * (half_width + _REDIS_RADIUS_SLACK_M), 2 * (half_height + _REDIS_RADIUS_SLACK_M))
        cutoff = (clock.now_ms() if now_ms is None else now_ms) - self._ttl_ms
        calls: list[tuple[_Script, list[bytes], list[Any]]] = []
        for shard in shards_for_circle(lat, lng, reach):
            keys = _shard_keys(self._prefix, shard)
            if not keys.all_polar:
                argv = [lng, lat, *size, limit + 1, cutoff]
                calls.append((_BOX, [keys.seen, keys.geo[_ANY]], argv))
        replies = await _run_scripts(self._redis, calls) if calls else []
        best: dict[bytes, _Hit] = {}
        full = False
        for reply in replies:
            full = full or bool(int(reply[0]))
            if not reply[1]:
                continue
            for line in reply[1].split(b"\n"):
                raw_lng, raw_lat, raw_score, driver = line.split(b" ", 3)
                hit_lat, hit_lng = float(raw_lat), float(raw_lng)
                if south <= hit_lat <= north and west <= hit_lng <= east:
                    fix_ms, vehicle = parse_presence(raw_score)
                    distance = haversine_m(lat, lng, hit_lat, hit_lng)
                    _keep(best, (distance, driver, hit_lat, hit_lng, fix_ms, vehicle))
        hits = sorted(best.values())
        return [_nearby(h) for h in hits[:limit]], full or len(hits) > limit

    # --- presence ----------------------------------------------------------------------------

    async def sweep(self, now_ms: int | None = None) -> int:
        """Takes drivers silent for longer than the presence TTL out of every shard.

        Reads only the stale end of each shard's presence set, never every driver. Returns how
        many drivers it removed.
        """
        cutoff = (clock.now_ms() if now_ms is None else now_ms) - self._ttl_ms
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


def _nearby(hit: _Hit) -> Nearby:
    distance, driver, lat, lng, fix_ms, vehicle = hit
    return Nearby(driver.decode(), lat, lng, distance, VEHICLES[vehicle], fix_ms)


def _keep(best: dict[bytes, _Hit], hit: _Hit) -> None:
    """Adds a hit, keeping a driver's most recent fix if it shows up twice (mid shard move)."""
    seen = best.get(hit[1])
    if seen is None or hit[4] > seen[4] or (hit[4] == seen[4] and hit[0] < seen[0]):
        best[hit[1]] = hit
