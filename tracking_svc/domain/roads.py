"""Central Helsinki's road network and the travel times over it that the ETA and the planner use.

The network is OpenStreetMap data (© OpenStreetMap contributors, ODbL), extracted by
`scripts/build_road_network.py` into `tracking_svc/data/helsinki_roads.json.gz`. Every OSM edge is
a straight segment between two nodes; a two-way street is two directed edges.

How a trip is costed, for a vehicle at an hour of the day:

* Each end is snapped to the nearest point on a road segment (only segments on which every node
  can reach every other, so no trip is stranded behind a one-way street at the extract's edge).
  Getting from the point to the road costs its straight distance at the vehicle's default speed.
* From the snapped point the vehicle may leave along either direction its segment allows, and
  reaches the destination's segment along either direction it allows (the rest of the segment
  is costed pro rata). Between segment ends the time is a shortest path from an all-pairs table.
* An edge's speed is the fleet's learned speed for (edge, hour) if there is one, else the posted
  limit, else a city default for its highway class; never above the vehicle's top speed.
* All-pairs tables (seconds and meters of the fastest path, float32, about 8 MB each for 1,437
  nodes) are computed on first use per vehicle, and per hour only for hours that have learned
  speeds; every other hour shares one table. At most `max_tables` are kept (least recently used).

Outside the network's area `RoadTravelTimes` falls back to the great-circle distance times a
circuity factor at the vehicle's default speed.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
import math
import statistics
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from mesh.geo import EARTH_RADIUS_M, haversine_m
from tracking_svc.domain.travel import Leg, Point, Vehicle

#: (from OSM node id, to OSM node id, hour of day UTC 0-23): what a learned speed belongs to.
SpeedKey = tuple[int, int, int]
#: A GPS fix: latitude, longitude (degrees) and time (epoch seconds).
Fix = tuple[float, float, float]

_FloatArray = npt.NDArray[np.float64]
_IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class VehicleProfile:
    """How fast a vehicle goes in the city, in meters per second."""

    #: The cap on any edge speed: posted limits and learned speeds above it are cut to it.
    top_speed_mps: float
    #: Average speed where nothing better is known: off the network, and reaching the road.
    default_speed_mps: float
    #: Average speed on an edge of this highway class that has no posted limit.
    class_speed_mps: Mapping[str, float]


# City averages for a car with stops at junctions and lights, on edges that carry no limit (nearly
# every edge in the extract does; these are for the rest). Vans and motorcycles scale from these.
_CAR_CLASS_SPEED = {
    "motorway": 22.0,
    "motorway_link": 14.0,
    "trunk": 15.0,
    "trunk_link": 10.0,
    "primary": 10.0,
    "primary_link": 8.0,
    "secondary": 9.0,
    "secondary_link": 7.5,
    "tertiary": 8.5,
    "tertiary_link": 7.0,
    "unclassified": 7.5,
    "residential": 7.0,
    "living_street": 3.0,
    "service": 4.0,
}


def _scaled(factor: float) -> dict[str, float]:
    return {highway: speed * factor for highway, speed in _CAR_CLASS_SPEED.items()}


#: Bicycles ride about 16 km/h on any street and never above 20 km/h (a loaded courier bike);
#: motorcycles (mostly scooters) go at a car's pace in town up to 60 km/h; cars up to 90 km/h;
#: vans a little slower than cars.
PROFILES: Mapping[Vehicle, VehicleProfile] = {
    Vehicle.BICYCLE: VehicleProfile(5.5, 4.5, dict.fromkeys(_CAR_CLASS_SPEED, 4.5)),
    Vehicle.MOTORCYCLE: VehicleProfile(16.7, 8.0, _scaled(0.95)),
    Vehicle.CAR: VehicleProfile(25.0, 8.5, _scaled(1.0)),
    Vehicle.VAN: VehicleProfile(22.0, 8.0, _scaled(0.95)),
}
#: The class speed of a highway class none of the profiles names, as a share of the default speed.
_UNKNOWN_CLASS_SHARE = 0.85

#: How far outside the nodes' bounding box, and how far from the nearest node, a point may be and
#: still count as inside the network's area.
AREA_PAD_M = 100.0
AREA_NODE_RADIUS_M = 150.0
#: Road samples for snapping are placed at most this far apart along each segment.
_SAMPLE_SPACING_M = 20.0
#: Snapping looks at the segments of this many nearest samples.
_SNAP_CANDIDATES = 8


def _default_data_file() -> Path:
    return Path(str(importlib.resources.files("tracking_svc") / "data" / "helsinki_roads.json.gz"))


@dataclass(frozen=True, slots=True)
class Snap:
    """Where a point meets the road: a place on one undirected segment."""

    #: Index of the segment in the network.
    segment: int
    #: Position along the segment from its first node (0) to its second (1).
    fraction: float
    #: Straight distance in meters from the point to that place.
    offset_m: float


@dataclass(frozen=True, slots=True)
class _Table:
    seconds: npt.NDArray[np.float32]
    meters: npt.NDArray[np.float32]
    #: Seconds and meters to traverse each directed edge.
    edge_seconds: _FloatArray


class _Geometry:
    """The static, shared part of a network: nodes, edges, segments and the snapping index."""

    def __init__(self, nodes: Sequence[Sequence[Any]], edges: Sequence[Sequence[Any]]) -> None:
        self.node_ids: _IntArray = np.array([row[0] for row in nodes], dtype=np.int64)
        self.lat: _FloatArray = np.array([row[1] for row in nodes], dtype=np.float64)
        self.lng: _FloatArray = np.array([row[2] for row in nodes], dtype=np.float64)
        self.index_of: dict[int, int] = {int(n): i for i, n in enumerate(self.node_ids)}
        self.lat0 = float(self.lat.mean())
        self.lng0 = float(self.lng.mean())
        self._kx = EARTH_RADIUS_M * math.cos(math.radians(self.lat0)) * math.pi / 180.0
        self._ky = EARTH_RADIUS_M * math.pi / 180.0
        self.xy: _FloatArray = np.column_stack(self.project(self.lat, self.lng))

        self.edge_from: _IntArray = np.array([self.index_of[r[0]] for r in edges], dtype=np.int64)
        self.edge_to: _IntArray = np.array([self.index_of[r[1]] for r in edges], dtype=np.int64)
        self.edge_length: _FloatArray = np.array(
            [max(float(r[2]), 0.1) for r in edges], dtype=np.float64
        )
        self.edge_limit_mps: _FloatArray = np.array(
            [math.nan if r[3] is None else float(r[3]) / 3.6 for r in edges], dtype=np.float64
        )
        self.edge_highway: list[str] = [str(r[4]) for r in edges]
        self.edge_name: list[str | None] = [r[5] for r in edges]
        self.edge_way: _IntArray = np.array([r[6] for r in edges], dtype=np.int64)
        self.edge_of: dict[tuple[int, int], int] = {}
        for e, row in enumerate(edges):
            key = (int(row[0]), int(row[1]))
            if key not in self.edge_of or self.edge_length[e] < self.edge_length[self.edge_of[key]]:
                self.edge_of[key] = e

        # Undirected segments: the directed edges over the same node pair share one.
        segment_of_pair: dict[tuple[int, int], int] = {}
        seg_a: list[int] = []
        seg_b: list[int] = []
        seg_edges: list[list[int]] = []
        self.edge_segment: _IntArray = np.zeros(len(edges), dtype=np.int64)
        for e in range(len(edges)):
            u, v = int(self.edge_from[e]), int(self.edge_to[e])
            pair = (min(u, v), max(u, v))
            s = segment_of_pair.get(pair)
            if s is None:
                s = segment_of_pair[pair] = len(seg_a)
                seg_a.append(pair[0])
                seg_b.append(pair[1])
                seg_edges.append([])
            seg_edges[s].append(e)
            self.edge_segment[e] = s
        self.seg_a: _IntArray = np.array(seg_a, dtype=np.int64)
        self.seg_b: _IntArray = np.array(seg_b, dtype=np.int64)
        self.seg_edges: list[tuple[int, ...]] = [tuple(es) for es in seg_edges]
        self.node_edges_out: list[list[int]] = [[] for _ in range(len(self.node_ids))]
        self.node_edges_in: list[list[int]] = [[] for _ in range(len(self.node_ids))]
        for e in range(len(edges)):
            self.node_edges_out[int(self.edge_from[e])].append(e)
            self.node_edges_in[int(self.edge_to[e])].append(e)

        # Snap only onto the largest strongly connected component: from there every node reaches
        # every other, where the extract's cut-off one-way ends would otherwise strand a trip.
        n = len(self.node_ids)
        adjacency = sparse.csr_matrix(
            (np.ones(len(edges)), (self.edge_from, self.edge_to)), shape=(n, n)
        )
        _, labels = csgraph.connected_components(adjacency, directed=True, connection="strong")
        main = np.bincount(labels).argmax()
        self.node_in_main: npt.NDArray[np.bool_] = labels == main
        snappable = self.node_in_main[self.seg_a] & self.node_in_main[self.seg_b]

        samples: list[tuple[float, float]] = []
        sample_segment: list[int] = []
        for seg in np.flatnonzero(snappable).tolist():
            a, b = self.xy[self.seg_a[seg]], self.xy[self.seg_b[seg]]
            count = max(1, math.ceil(float(np.hypot(*(b - a))) / _SAMPLE_SPACING_M))
            for k in range(count + 1):
                p = a + (b - a) * (k / count)
                samples.append((float(p[0]), float(p[1])))
                sample_segment.append(seg)
        self.sample_tree = cKDTree(np.array(samples))
        self.sample_segment: _IntArray = np.array(sample_segment, dtype=np.int64)
        self.node_tree = cKDTree(self.xy[self.node_in_main])
        self.x_min, self.y_min = (float(v) - AREA_PAD_M for v in self.xy.min(axis=0))
        self.x_max, self.y_max = (float(v) + AREA_PAD_M for v in self.xy.max(axis=0))

    def project(self, lat: Any, lng: Any) -> tuple[Any, Any]:
        """Project degrees to local meters (equirectangular about the network's centre)."""
        return (np.asarray(lng) - self.lng0) * self._kx, (np.asarray(lat) - self.lat0) * self._ky

    def snap_xy(self, x: float, y: float) -> Snap:
        k = min(_SNAP_CANDIDATES, len(self.sample_segment))
        _, found = self.sample_tree.query((x, y), k=k)
        best: Snap | None = None
        for s in dict.fromkeys(int(self.sample_segment[i]) for i in np.atleast_1d(found)):
            ax, ay = self.xy[self.seg_a[s]]
            bx, by = self.xy[self.seg_b[s]]
            dx, dy = bx - ax, by - ay
            span = dx * dx + dy * dy
            t = 0.0 if span == 0 else min(1.0, max(0.0, ((x - ax) * dx + (y - ay) * dy) / span))
            offset = math.hypot(x - (ax + t * dx), y - (ay + t * dy))
            if best is None or offset < best.offset_m:
                best = Snap(s, float(t), float(offset))
        assert best is not None
        return best

    def along(self, edge: int, snap: Snap) -> float:
        """Return the snapped place's position along a directed edge of its segment (0 to 1)."""
        starts_at_a = int(self.edge_from[edge]) == int(self.seg_a[snap.segment])
        return snap.fraction if starts_at_a else 1.0 - snap.fraction


@functools.cache
def _load_geometry(path: Path) -> _Geometry:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        payload = json.load(f)
    if payload["node_fields"][:3] != ["id", "lat", "lng"] or payload["edge_fields"][:7] != [
        "from",
        "to",
        "length_m",
        "maxspeed_kmh",
        "highway",
        "name",
        "way_id",
    ]:
        raise ValueError(f"{path}: unexpected field layout")
    return _Geometry(payload["nodes"], payload["edges"])


class RoadNetwork:
    """A directed road graph with lazily computed all-pairs travel times per vehicle.

    Instances are immutable in what they answer; `with_speeds` makes a new one that shares the
    geometry. Computing a table takes a fraction of a second and happens on first use for a
    vehicle (and hour, where learned speeds exist), so a server may call `prepare` at start.
    """

    def __init__(
        self,
        geometry: _Geometry,
        learned: Mapping[SpeedKey, float] | None = None,
        *,
        max_tables: int = 8,
    ) -> None:
        self._geo = geometry
        by_hour: defaultdict[int, dict[int, float]] = defaultdict(dict)
        for (u, v, hour), speed in (learned or {}).items():
            edge = geometry.edge_of.get((int(u), int(v)))
            # A key for an edge this extract lacks (older data) is ignored, not an error.
            if edge is not None and speed > 0 and 0 <= hour <= 23:
                by_hour[int(hour)][edge] = float(speed)
        self._learned: dict[int, dict[int, float]] = dict(by_hour)
        self._max_tables = max(1, max_tables)
        self._tables: OrderedDict[tuple[Vehicle, int | None], _Table] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path | None = None) -> RoadNetwork:
        """Return the network in `path` (default: the packaged Helsinki file), read once."""
        resolved = Path(path).resolve() if path is not None else _default_data_file()
        return _load_network(resolved)

    def with_speeds(self, table: Mapping[SpeedKey, float]) -> RoadNetwork:
        """Return a network over the same roads that uses these learned speeds (m/s)."""
        return RoadNetwork(self._geo, table, max_tables=self._max_tables)

    @property
    def node_count(self) -> int:
        return len(self._geo.node_ids)

    @property
    def edge_count(self) -> int:
        return len(self._geo.edge_from)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """The nodes' box: south, west, north, east in degrees."""
        g = self._geo
        return (float(g.lat.min()), float(g.lng.min()), float(g.lat.max()), float(g.lng.max()))

    @property
    def learned_hours(self) -> frozenset[int]:
        """The hours of the day that have learned speeds (each has its own tables)."""
        return frozenset(self._learned)

    def node(self, osm_id: int) -> Point:
        """Return the position of a node by its OSM id."""
        i = self._geo.index_of[osm_id]
        return Point(float(self._geo.lat[i]), float(self._geo.lng[i]))

    def edges(self) -> Iterable[tuple[int, int, float, float | None, str, str | None, int]]:
        """Yield each directed edge as (from, to, length_m, limit_kmh, highway, name, way_id)."""
        g = self._geo
        for e in range(len(g.edge_from)):
            limit = g.edge_limit_mps[e]
            yield (
                int(g.node_ids[g.edge_from[e]]),
                int(g.node_ids[g.edge_to[e]]),
                float(g.edge_length[e]),
                None if math.isnan(limit) else round(float(limit) * 3.6),
                g.edge_highway[e],
                g.edge_name[e],
                int(g.edge_way[e]),
            )

    def contains(self, point: Point) -> bool:
        """Whether a point is in the network's area: near the nodes' box and near some node."""
        g = self._geo
        x, y = g.project(point.lat, point.lng)
        if not (g.x_min <= x <= g.x_max and g.y_min <= y <= g.y_max):
            return False
        distance, _ = g.node_tree.query(
            (float(x), float(y)), distance_upper_bound=AREA_NODE_RADIUS_M
        )
        return bool(math.isfinite(distance))

    def snap(self, point: Point) -> Snap:
        """Return the nearest place on a road segment (of the strongly connected core)."""
        x, y = self._geo.project(point.lat, point.lng)
        return self._geo.snap_xy(float(x), float(y))

    def snapped_point(self, snap: Snap) -> Point:
        """Return the WGS84 position of a snapped place."""
        g = self._geo
        a, b, t = int(g.seg_a[snap.segment]), int(g.seg_b[snap.segment]), snap.fraction
        return Point(
            float(g.lat[a] + (g.lat[b] - g.lat[a]) * t), float(g.lng[a] + (g.lng[b] - g.lng[a]) * t)
        )

    def segment_edges(self, snap: Snap) -> list[tuple[int, int]]:
        """Return the directed edges (from, to OSM ids) that run along a snapped segment."""
        g = self._geo
        return [
            (int(g.node_ids[g.edge_from[e]]), int(g.node_ids[g.edge_to[e]]))
            for e in g.seg_edges[snap.segment]
        ]

    def edge_speed(self, edge: tuple[int, int], vehicle: Vehicle, hour: int) -> float:
        """Return the speed (m/s) this network uses for a directed edge (from, to OSM ids)."""
        e = self._geo.edge_of[edge]
        return float(self._edge_speeds(vehicle, self._bucket(hour))[e])

    def prepare(self, vehicle: Vehicle, hour: int | None = None) -> None:
        """Compute the table a trip for this vehicle at this hour will use, if not yet done."""
        self._table(vehicle, self._bucket(hour))

    def leg(self, origin: Point, destination: Point, vehicle: Vehicle, hour: int) -> Leg:
        """Return the fastest trip over the network between two points, access legs included."""
        return self.leg_between(self.snap(origin), self.snap(destination), vehicle, hour)

    def leg_between(self, origin: Snap, destination: Snap, vehicle: Vehicle, hour: int) -> Leg:
        """Return the fastest trip between two snapped places, access legs included."""
        g = self._geo
        table = self._table(vehicle, self._bucket(hour))
        edge_s = table.edge_seconds
        best_s, best_m = math.inf, math.inf
        for e_out in g.seg_edges[origin.segment]:
            f_out = g.along(e_out, origin)
            exit_node = int(g.edge_to[e_out])
            exit_s = (1.0 - f_out) * edge_s[e_out]
            exit_m = (1.0 - f_out) * g.edge_length[e_out]
            for e_in in g.seg_edges[destination.segment]:
                f_in = g.along(e_in, destination)
                if e_in == e_out and f_in >= f_out:
                    s = (f_in - f_out) * edge_s[e_in]
                    m = (f_in - f_out) * g.edge_length[e_in]
                else:
                    entry_node = int(g.edge_from[e_in])
                    s = exit_s + float(table.seconds[exit_node, entry_node]) + f_in * edge_s[e_in]
                    m = exit_m + float(table.meters[exit_node, entry_node])
                    m += f_in * g.edge_length[e_in]
                if s < best_s or (s == best_s and m < best_m):
                    best_s, best_m = s, m
        access_m = origin.offset_m + destination.offset_m
        access_s = access_m / PROFILES[vehicle].default_speed_mps
        return Leg(seconds=float(best_s + access_s), meters=float(best_m + access_m))

    def _bucket(self, hour: int | None) -> int | None:
        return hour if hour is not None and hour in self._learned else None

    def _edge_speeds(self, vehicle: Vehicle, bucket: int | None) -> _FloatArray:
        g = self._geo
        profile = PROFILES[vehicle]
        unknown = profile.default_speed_mps * _UNKNOWN_CLASS_SHARE
        by_class = np.array(
            [profile.class_speed_mps.get(h, unknown) for h in g.edge_highway], dtype=np.float64
        )
        speeds = np.where(np.isnan(g.edge_limit_mps), by_class, g.edge_limit_mps)
        if bucket is not None:
            for e, learned in self._learned[bucket].items():
                speeds[e] = learned
        return np.minimum(speeds, profile.top_speed_mps)

    def _table(self, vehicle: Vehicle, bucket: int | None) -> _Table:
        key = (vehicle, bucket)
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
        table = self._compute(vehicle, bucket)
        with self._lock:
            self._tables[key] = table
            while len(self._tables) > self._max_tables:
                self._tables.popitem(last=False)
        return table

    def _compute(self, vehicle: Vehicle, bucket: int | None) -> _Table:
        g = self._geo
        n = len(g.node_ids)
        edge_seconds = g.edge_length / self._edge_speeds(vehicle, bucket)
        # Keep the fastest of parallel edges: a sparse matrix would add them up.
        order = np.lexsort((edge_seconds, g.edge_to, g.edge_from))
        pairs = g.edge_from[order] * n + g.edge_to[order]
        first = order[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
        weights = sparse.csr_matrix(
            (edge_seconds[first], (g.edge_from[first], g.edge_to[first])), shape=(n, n)
        )
        lengths = sparse.csr_matrix(
            (g.edge_length[first], (g.edge_from[first], g.edge_to[first])), shape=(n, n)
        )
        seconds, predecessors = csgraph.shortest_path(
            weights, method="D", directed=True, return_predecessors=True
        )
        meters = _path_lengths(predecessors, lengths)
        return _Table(seconds.astype(np.float32), meters.astype(np.float32), edge_seconds)


def _path_lengths(
    predecessors: npt.NDArray[np.int32], lengths: sparse.csr_matrix
) -> npt.NDArray[np.float64]:
    """Sum edge lengths along each shortest-path tree, by pointer doubling over all rows at once."""
    n = predecessors.shape[0]
    rows = np.arange(n)[:, None]
    parent = predecessors.astype(np.int64)
    unreachable = parent < 0
    parent[unreachable] = np.broadcast_to(rows, (n, n))[unreachable]
    dense = lengths.toarray()
    cols = np.broadcast_to(np.arange(n)[None, :], (n, n))
    meters = dense[parent, cols]
    meters[unreachable] = 0.0
    while True:
        grand = np.take_along_axis(parent, parent, axis=1)
        if np.array_equal(grand, parent):
            break
        meters += np.take_along_axis(meters, parent, axis=1)
        parent = grand
    no_path = unreachable & (rows != np.arange(n)[None, :])
    meters[no_path] = np.inf
    return meters


@functools.cache
def _load_network(path: Path) -> RoadNetwork:
    return RoadNetwork(_load_geometry(path))


class RoadTravelTimes:
    """TravelTimes over the road network, with a great-circle fallback outside its area."""

    def __init__(
        self,
        network: RoadNetwork | None = None,
        *,
        circuity: float = 1.35,
        snap_cache_size: int = 65_536,
    ) -> None:
        self.network = network if network is not None else RoadNetwork.load()
        self.circuity = circuity
        self._snap = functools.lru_cache(maxsize=snap_cache_size)(self._snap_uncached)

    def leg(self, origin: Point, destination: Point, vehicle: Vehicle, hour: int) -> Leg:
        a = self._snap(origin)
        b = self._snap(destination)
        if a is None or b is None:
            return self.fallback(origin, destination, vehicle)
        return self.network.leg_between(a, b, vehicle, hour)

    def fallback(self, origin: Point, destination: Point, vehicle: Vehicle) -> Leg:
        """The off-network estimate: great-circle distance times circuity at the default speed."""
        meters = haversine_m(origin.lat, origin.lng, destination.lat, destination.lng)
        meters *= self.circuity
        return Leg(seconds=meters / PROFILES[vehicle].default_speed_mps, meters=meters)

    def _snap_uncached(self, point: Point) -> Snap | None:
        return self.network.snap(point) if self.network.contains(point) else None


def speeds_from_tracks(
    network: RoadNetwork,
    tracks: Iterable[Sequence[Fix]],
    *,
    min_samples: int = 3,
    max_snap_m: float = 30.0,
    min_speed_mps: float = 0.5,
    max_speed_mps: float = 40.0,
) -> dict[SpeedKey, float]:
    """Learn edge speeds from couriers' GPS tracks: the fleet is the traffic feed.

    Each track is one courier's fixes in time order. A pair of consecutive fixes counts when both
    snap (within `max_snap_m`) onto the same segment or onto two segments that share a node, the
    way between them is drivable in that direction, and the speed over it is plausible. The speed
    counts for every directed edge the pair covered, at the hour (UTC) of the first fix. Returns
    the median per (edge, hour) that has at least `min_samples` observations.
    """
    g = network._geo
    samples: dict[SpeedKey, list[float]] = defaultdict(list)
    for track in tracks:
        previous: tuple[Snap, float] | None = None
        for lat, lng, t in track:
            point = Point(lat, lng)
            snap = network.snap(point) if network.contains(point) else None
            current = (snap, t) if snap is not None and snap.offset_m <= max_snap_m else None
            if previous is not None and current is not None and current[1] > previous[1]:
                travelled = _travelled(g, previous[0], current[0])
                if travelled is not None:
                    meters, edges = travelled
                    speed = meters / (current[1] - previous[1])
                    if min_speed_mps <= speed <= max_speed_mps:
                        hour = int(previous[1] // 3600) % 24
                        for e in edges:
                            u, v = int(g.node_ids[g.edge_from[e]]), int(g.node_ids[g.edge_to[e]])
                            samples[(u, v, hour)].append(speed)
            previous = current
    return {
        key: float(statistics.median(values))
        for key, values in samples.items()
        if len(values) >= min_samples
    }


def _travelled(g: _Geometry, a: Snap, b: Snap) -> tuple[float, list[int]] | None:
    """Return the distance and directed edges between two snaps on one or two adjacent segments."""
    if a.segment == b.segment:
        for e in g.seg_edges[a.segment]:
            fa, fb = g.along(e, a), g.along(e, b)
            if fb > fa:
                return (fb - fa) * float(g.edge_length[e]), [e]
        return None
    best: tuple[float, list[int]] | None = None
    for e_a in g.seg_edges[a.segment]:
        for e_b in g.seg_edges[b.segment]:
            if g.edge_to[e_a] != g.edge_from[e_b]:
                continue
            meters = (1.0 - g.along(e_a, a)) * float(g.edge_length[e_a])
            meters += g.along(e_b, b) * float(g.edge_length[e_b])
            if best is None or meters < best[0]:
                best = (meters, [e_a, e_b])
    return best
