// The pages' maps: Leaflet with no tiles from the internet. The streets of central Helsinki
// come from the mesh's own road network (built into /roads.json with the pages); everywhere
// else a grid of plain coordinates shows where the map is.

import * as L from "leaflet/dist/leaflet-src.esm.js";
import "leaflet/dist/leaflet.css";
import type { LatLng as LatLngMessage } from "@gen/delivery/common/v1/common_pb";
import { HELSINKI } from "./places";

export { HELSINKI };

const ROAD_STYLE: Record<string, { color: string; weight: number }> = {
  primary: { color: "#c9a227", weight: 5 },
  secondary: { color: "#d8b95a", weight: 4 },
  tertiary: { color: "#b7b7b7", weight: 3.5 },
};
const MINOR_ROAD = { color: "#c8c8c8", weight: 2.5 };

/** Grid spacings in degrees, coarse to fine. */
const STEPS = [10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005];

export type MapPoint = [number, number];

/** A point of a proto message as Leaflet wants it. */
export function point(p: LatLngMessage | undefined): MapPoint | undefined {
  return p ? [p.latitude, p.longitude] : undefined;
}

/** A map in ``el`` with the streets, a coordinate grid, a scale and a pointer readout. */
export function createMap(el: HTMLElement, center: MapPoint = HELSINKI, zoom = 15): L.Map {
  const map = L.map(el, { center, zoom, minZoom: 3, maxZoom: 19, worldCopyJump: true });
  map.attributionControl.setPrefix("Leaflet");
  L.control.scale({ imperial: false }).addTo(map);
  addRoads(map);
  addGrid(map);
  addReadout(map);
  return map;
}

function addRoads(map: L.Map): void {
  fetch("/roads.json")
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`roads: HTTP ${r.status}`))))
    .then((data) => {
      L.geoJSON(data, {
        interactive: false,
        style: (feature: { properties?: { highway?: string } }) => ({
          ...(ROAD_STYLE[feature?.properties?.highway ?? ""] ?? MINOR_ROAD),
          opacity: 1,
          lineCap: "round",
        }),
        attribution: "Streets © OpenStreetMap contributors, ODbL",
      }).addTo(map);
    })
    .catch((err: unknown) => console.warn("the street layer did not load:", err));
}

function addGrid(map: L.Map): void {
  const grid = L.layerGroup().addTo(map);
  const draw = () => {
    grid.clearLayers();
    const b = map.getBounds();
    const span = Math.max(b.getNorth() - b.getSouth(), b.getEast() - b.getWest());
    const step = STEPS.find((s) => span / s >= 4 && span / s <= 12) ?? (span / STEPS[0] > 12 ? STEPS[0] : STEPS[STEPS.length - 1]);
    const digits = Math.max(0, Math.ceil(-Math.log10(step)));
    const line = { color: "#9aa7b5", weight: 1, opacity: 0.6, interactive: false, dashArray: "4 4" };
    const south = Math.max(-85, b.getSouth());
    const north = Math.min(85, b.getNorth());
    for (let lat = Math.ceil(south / step) * step; lat <= north; lat += step) {
      grid.addLayer(L.polyline([[lat, b.getWest()], [lat, b.getEast()]], line));
      grid.addLayer(label([lat, b.getEast()], `${lat.toFixed(digits)}°`, "grid-label grid-lat"));
    }
    for (let lng = Math.ceil(b.getWest() / step) * step; lng <= b.getEast(); lng += step) {
      grid.addLayer(L.polyline([[south, lng], [north, lng]], line));
      grid.addLayer(label([north, lng], `${lng.toFixed(digits)}°`, "grid-label grid-lng"));
    }
  };
  map.on("moveend zoomend resize", draw);
  map.whenReady(draw);
}

function label(at: MapPoint, text: string, className: string): L.Marker {
  return L.marker(at, {
    icon: L.divIcon({ className, html: text, iconSize: undefined }),
    interactive: false,
    keyboard: false,
  });
}

function addReadout(map: L.Map): void {
  const Readout = L.Control.extend({
    onAdd() {
      const el = L.DomUtil.create("div", "readout");
      el.setAttribute("aria-hidden", "true");
      const show = (p: L.LatLng) => {
        el.textContent = `${p.lat.toFixed(5)}, ${p.lng.toFixed(5)}`;
      };
      map.on("mousemove", (e: L.LeafletMouseEvent) => show(e.latlng));
      map.on("moveend", () => show(map.getCenter()));
      show(map.getCenter());
      return el;
    },
  });
  new Readout({ position: "bottomleft" }).addTo(map);
}

/** A round marker drawn with CSS: ``kind`` picks its look (see style.css ``.pin-*``). */
export function pin(at: MapPoint, kind: string, title: string, size = 16): L.Marker {
  return L.marker(at, {
    icon: L.divIcon({ className: `pin pin-${kind}`, iconSize: [size, size] }),
    title,
    alt: title,
    keyboard: false,
  });
}

export { L };
