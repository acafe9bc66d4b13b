"""Route planning: plan_route over Helsinki's roads for 10 and 20 stops, against a travel matrix.

Each run draws a courier and N/2 orders (a shop and a door each, half the shops not ready for
up to 15 minutes) at random points of the road network's area, and times `plan_route` with a
fresh RoadTravelTimes (the all-pairs tables are computed once beforehand, as a server would at
start; snapping is cold, as it is for new stops). The baseline is the same points' full travel
matrix, one `leg` per ordered pair, with another fresh RoadTravelTimes: the least any planner
that looks at every pair must do. Prints median and p95 of each and their ratio; no thresholds.

    .venv/bin/python bench/plan_route.py [--runs 20] [--stops 10 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracking_svc.domain.roads import RoadNetwork, RoadTravelTimes
from tracking_svc.domain.routing import Stop, StopKind, plan_route
from tracking_svc.domain.travel import Point, Vehicle

START_TIME = 1_700_049_600.0  # 12:00 UTC
VEHICLE = Vehicle.CAR


def random_point(rng: random.Random, network: RoadNetwork, box: tuple[float, ...]) -> Point:
    while True:
        p = Point(rng.uniform(box[0], box[1]), rng.uniform(box[2], box[3]))
        if network.contains(p):
            return p


def instance(
    rng: random.Random, network: RoadNetwork, box: tuple[float, ...], stops: int
) -> tuple[Point, list[Stop]]:
    out: list[Stop] = []
    for k in range(stops // 2):
        ready = START_TIME + rng.uniform(0, 900) if rng.random() < 0.5 else None
        shop, door = random_point(rng, network, box), random_point(rng, network, box)
        out.append(Stop(f"p{k}", f"o{k}", StopKind.PICKUP, shop, ready, 60.0))
        out.append(Stop(f"d{k}", f"o{k}", StopKind.DROPOFF, door, None, 90.0))
    rng.shuffle(out)
    return random_point(rng, network, box), out


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--stops", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    network = RoadNetwork.load()
    began = time.perf_counter()
    network.prepare(VEHICLE, int(START_TIME // 3600) % 24)
    print(f"all-pairs table for {VEHICLE.value}: {time.perf_counter() - began:.2f} s (once)")
    lats = [network.node(e[0]).lat for e in network.edges()]
    lngs = [network.node(e[0]).lng for e in network.edges()]
    box = (min(lats), max(lats), min(lngs), max(lngs))
    hour = int(START_TIME // 3600) % 24
    # Warm the imports and code paths once so the first run is not an outlier.
    warm_start, warm_stops = instance(random.Random(0), network, box, max(args.stops))
    plan_route(warm_start, START_TIME, VEHICLE, warm_stops, RoadTravelTimes(network))

    rng = random.Random(args.seed)
    for n in args.stops:
        solve: list[float] = []
        matrix: list[float] = []
        methods: Counter[str] = Counter()
        for _ in range(args.runs):
            start, stops = instance(rng, network, box, n)
            points = [start, *(s.point for s in stops)]
            travel = RoadTravelTimes(network)
            began = time.perf_counter()
            for a in points:
                for b in points:
                    travel.leg(a, b, VEHICLE, hour)
            matrix.append(time.perf_counter() - began)
            travel = RoadTravelTimes(network)
            began = time.perf_counter()
            plan = plan_route(start, START_TIME, VEHICLE, stops, travel)
            solve.append(time.perf_counter() - began)
            methods[plan.method] += 1
        ms = 1000.0
        print(
            f"{n} stops, {args.runs} runs: plan_route median {statistics.median(solve) * ms:.1f} ms"
            f" p95 {p95(solve) * ms:.1f} ms; travel matrix ({(n + 1) ** 2} legs) median"
            f" {statistics.median(matrix) * ms:.2f} ms p95 {p95(matrix) * ms:.2f} ms;"
            f" ratio of medians {statistics.median(solve) / statistics.median(matrix):.1f}x;"
            f" best seed {dict(methods)}"
        )


if __name__ == "__main__":
    main()
