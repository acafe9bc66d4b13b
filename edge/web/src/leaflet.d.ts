// The part of Leaflet 1.9 the pages use, typed here: Leaflet ships no types and
// @types/leaflet is not a dependency of the build.
declare module "leaflet/dist/leaflet-src.esm.js" {
  export type LatLngTuple = [number, number];
  export type LatLngLike = LatLng | LatLngTuple;

  export interface LatLng {
    lat: number;
    lng: number;
  }
  export interface LatLngBounds {
    getNorth(): number;
    getSouth(): number;
    getEast(): number;
    getWest(): number;
    getCenter(): LatLng;
    pad(ratio: number): LatLngBounds;
    contains(p: LatLngLike): boolean;
  }
  export interface LeafletMouseEvent {
    latlng: LatLng;
  }
  export interface Evented {
    on(types: string, fn: (e: any) => void): this;
    off(types: string, fn?: (e: any) => void): this;
  }
  export interface Layer extends Evented {
    addTo(map: Map | LayerGroup): this;
    remove(): this;
    bindTooltip(content: string, options?: object): this;
    setTooltipContent(content: string): this;
  }
  export interface Marker extends Layer {
    setLatLng(p: LatLngLike): this;
    getLatLng(): LatLng;
    getElement(): HTMLElement | undefined;
    setIcon(icon: Icon): this;
  }
  export interface Polyline extends Layer {
    setLatLngs(points: LatLngLike[]): this;
  }
  export interface LayerGroup extends Layer {
    addLayer(layer: Layer): this;
    removeLayer(layer: Layer): this;
    clearLayers(): this;
  }
  export interface Icon {}
  export interface Map extends Evented {
    getBounds(): LatLngBounds;
    getCenter(): LatLng;
    getZoom(): number;
    getContainer(): HTMLElement;
    setView(center: LatLngLike, zoom?: number): this;
    panTo(center: LatLngLike): this;
    fitBounds(bounds: LatLngBounds, options?: object): this;
    invalidateSize(): this;
    whenReady(fn: () => void): this;
    attributionControl: { setPrefix(prefix: string): void };
  }
  export interface ControlInstance {
    addTo(map: Map): this;
  }

  export function map(el: HTMLElement, options?: object): Map;
  export function marker(at: LatLngLike, options?: object): Marker;
  export function polyline(points: LatLngLike[], options?: object): Polyline;
  export function layerGroup(layers?: Layer[]): LayerGroup;
  export function divIcon(options: object): Icon;
  export function geoJSON(data: unknown, options?: object): Layer;
  export function latLngBounds(points: LatLngLike[]): LatLngBounds;
  export const control: { scale(options?: object): ControlInstance };
  export const Control: { extend(props: { onAdd(map: Map): HTMLElement }): new (options?: object) => ControlInstance };
  export const DomUtil: { create(tag: string, className?: string): HTMLElement };
}

declare module "*.css";
