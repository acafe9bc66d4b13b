// The operations page: an admin sees the couriers (LocationService.GetFleet, for the part of
// the map in view) and the open orders on a live map, lists stuck orders, and reassigns an
// order to another courier or back to dispatch.

import { AccountService } from "@gen/delivery/order/v1/account_service_pb";
import { OrderService } from "@gen/delivery/order/v1/order_service_pb";
import { LocationService } from "@gen/delivery/location/v1/location_service_pb";
import type { FleetCourier } from "@gen/delivery/location/v1/location_pb";
import { DriverStatus, OrderStatus, Role, VehicleType } from "@gen/delivery/common/v1/common_pb";
import type { Order } from "@gen/delivery/order/v1/order_pb";
import { ConnectError, Code } from "@connectrpc/connect";
import { mountAccount } from "../lib/account";
import { busy, byId, fill, h, say } from "../lib/dom";
import { createMap, L, pin, point } from "../lib/map";
import {
  clients,
  clockTime,
  describeError,
  OPEN_STATUSES,
  requestId,
  seconds,
  Session,
  shortId,
  span,
  statusLabel,
  when,
} from "../lib/rpc";

const session = new Session("delivery.ops.session");
const client = clients(session);
const accounts = client(AccountService);
const orders = client(OrderService);
const location = client(LocationService);

/** GetFleet's limits (see location_service.proto): the box's corner-to-corner size, in metres,
 * how far from the equator it may reach, and the most couriers one call returns. */
const MAX_BOX_M = 50_000;
const MAX_LATITUDE = 85;
const MAX_COURIERS = 2000;
const FLEET_EVERY_MS = 3000;
const ORDERS_EVERY_MS = 5000;
const EARTH_RADIUS_M = 6_371_008.8;

const map = createMap(byId("map"), undefined, 14);
const fleetLayer = L.layerGroup().addTo(map);
const orderLayer = L.layerGroup().addTo(map);
const couriers = new Map<string, L.Marker>();
const mapAlert = byId("map-alert");
const live = byId<HTMLInputElement>("live");
let fleetNote = "";
let ordersNote = "";
let stuckIds = new Set<string>();

// --- couriers -----------------------------------------------------------------------------

/** The map's view as a GetFleet box, shrunk around its centre to what one call may ask. */
function viewBox(): { box: { south: number; west: number; north: number; east: number }; clipped: boolean } {
  const b = map.getBounds();
  const c = map.getCenter();
  let south = Math.max(-MAX_LATITUDE, b.getSouth());
  let north = Math.min(MAX_LATITUDE, b.getNorth());
  let west = Math.max(-180, b.getWest());
  let east = Math.min(180, b.getEast());
  let clipped = south !== b.getSouth() || north !== b.getNorth() || west !== b.getWest() || east !== b.getEast();
  // Half the allowed diagonal, split evenly (a margin under the limit for rounding).
  const half = (MAX_BOX_M * 0.98) / 2 / Math.SQRT2;
  const dLat = (half / EARTH_RADIUS_M) * (180 / Math.PI);
  const dLng = dLat / Math.max(0.01, Math.cos((Math.min(Math.abs(c.lat), MAX_LATITUDE) * Math.PI) / 180));
  if (north - south > 2 * dLat) {
    const mid = Math.min(MAX_LATITUDE - dLat, Math.max(-MAX_LATITUDE + dLat, c.lat));
    [south, north] = [mid - dLat, mid + dLat];
    clipped = true;
  }
  if (east - west > 2 * dLng) {
    const mid = Math.min(180 - dLng, Math.max(-180 + dLng, c.lng));
    [west, east] = [mid - dLng, mid + dLng];
    clipped = true;
  }
  return { box: { south, west, north, east }, clipped };
}

async function loadFleet(): Promise<void> {
  const { box, clipped } = viewBox();
  try {
    const reply = await location.getFleet({
      southWest: { latitude: box.south, longitude: box.west },
      northEast: { latitude: box.north, longitude: box.east },
      maxCouriers: MAX_COURIERS,
    });
    showFleet(reply.couriers);
    const busyCount = reply.couriers.filter((c) => c.status === DriverStatus.BUSY).length;
    fleetNote =
      `${reply.couriers.length} courier${reply.couriers.length === 1 ? "" : "s"} in view (${busyCount} busy)` +
      (reply.truncated ? `; more are there than the ${MAX_COURIERS} shown: zoom in` : "") +
      (clipped ? "; zoomed out past the 50 km a read covers: showing the middle of the map" : "");
    say(mapAlert, "");
  } catch (err) {
    const e = ConnectError.from(err);
    // Over the per-operator quota (another tab, say): the next tick asks again.
    say(mapAlert, e.code === Code.ResourceExhausted ? `Couriers: ${e.rawMessage}` : `Couriers: ${describeError(err)}`);
  }
  renderMapStatus();
}

function showFleet(found: FleetCourier[]): void {
  const seen = new Set<string>();
  const list = byId("couriers");
  const options: HTMLOptionElement[] = [];
  for (const c of found) {
    const where = point(c.position);
    if (!where) continue;
    seen.add(c.driverId);
    const kind = c.status === DriverStatus.BUSY ? "busy" : "available";
    const title = `Courier ${shortId(c.driverId)} · ${kind} · ${VehicleType[c.vehicleType].toLowerCase()} · position ${span(seconds(c.positionAgeDuration))} old`;
    let marker = couriers.get(c.driverId);
    if (!marker) {
      marker = pin(where, kind, title, 14).bindTooltip(title).addTo(fleetLayer);
      couriers.set(c.driverId, marker);
    } else {
      marker.setLatLng(where).setTooltipContent(title);
    }
    const el = marker.getElement();
    if (el) {
      el.className = el.className.replace(/pin-(busy|available)/, `pin-${kind}`);
      el.dataset.driverId = c.driverId;
    }
    options.push(h("option", { value: c.driverId, label: `${shortId(c.driverId)} (${kind})` }));
  }
  for (const [id, marker] of couriers) {
    if (!seen.has(id)) {
      marker.remove();
      couriers.delete(id);
    }
  }
  fill(list, options);
}

// --- orders -------------------------------------------------------------------------------

let openOrders: Order[] = [];

async function loadOrders(): Promise<void> {
  try {
    const reply = await orders.listOrders({ pageSize: 100, statuses: OPEN_STATUSES });
    openOrders = reply.orders;
    showOrders(reply.orders);
    ordersNote = `${reply.orders.length}${reply.nextPageToken ? "+" : ""} open order${reply.orders.length === 1 ? "" : "s"} (the newest 100 on the map)`;
  } catch (err) {
    ordersNote = `Orders: ${describeError(err)}`;
  }
  renderMapStatus();
}

function showOrders(open: Order[]): void {
  orderLayer.clearLayers();
  for (const o of open) {
    const to = point(o.deliveryLocation);
    const from = point(o.merchantLocation);
    if (!to) continue;
    const stuck = stuckIds.has(o.orderId);
    const title = `Order ${shortId(o.orderId)} · ${statusLabel(o.status)}${o.driverId ? ` · courier ${shortId(o.driverId)}` : " · no courier"}${stuck ? " · stuck" : ""}`;
    if (from) {
      L.polyline([from, to], { color: stuck ? "#a4262c" : "#1f5fbf", weight: 2, opacity: 0.7, interactive: false }).addTo(orderLayer);
      pin(from, "shop", `Merchant of order ${shortId(o.orderId)}`, 9).addTo(orderLayer);
    }
    pin(to, stuck ? "order stuck" : "order", title, 12).bindTooltip(title).addTo(orderLayer);
  }
  fill(
    byId("open"),
    open.length === 0
      ? h("p", { class: "muted", text: "No open orders." })
      : h(
          "table",
          {},
          h("thead", {}, h("tr", {}, ["Order", "Status", "Placed", "Courier", "Deliver to", ""].map((t) => h("th", { scope: "col", text: t })))),
          h("tbody", {}, open.map((o) => orderRow(o, when(o.createTime) ? clockTime(when(o.createTime)) : ""))),
        ),
  );
}

function orderRow(o: Order, placed: string): HTMLTableRowElement {
  const canReassign = o.status !== OrderStatus.PICKED_UP;
  const button = h("button", { type: "button", class: "secondary", disabled: !canReassign }, "Reassign…");
  button.addEventListener("click", () => openReassign(o));
  return h(
    "tr",
    { "data-order-id": o.orderId },
    h("td", { title: o.orderId, text: shortId(o.orderId) }),
    h("td", { text: statusLabel(o.status) }),
    h("td", { text: placed }),
    h("td", { title: o.driverId, text: o.driverId ? shortId(o.driverId) : "none" }),
    h("td", { text: o.deliveryAddress }),
    h("td", {}, button),
  );
}

// --- stuck orders -------------------------------------------------------------------------

async function loadStuck(button: HTMLButtonElement | null = null): Promise<void> {
  const minutes = Math.max(0.1, Number(byId<HTMLInputElement>("stuck-minutes").value) || 10);
  await busy(button, byId("stuck-alert"), async () => {
    const reply = await orders.listStuckOrders({ stuckDuration: { seconds: BigInt(Math.round(minutes * 60)) }, pageSize: 100 });
    stuckIds = new Set(reply.stuckOrders.map((s) => s.order!.orderId));
    // The map marks stuck orders: drawn again with what is stuck now.
    showOrders(openOrders);
    fill(
      byId("stuck"),
      reply.stuckOrders.length === 0
        ? h("p", { class: "muted", text: `No order has been in the same state for more than ${minutes} minutes.` })
        : h(
            "table",
            {},
            h("thead", {}, h("tr", {}, ["Order", "Status", "In this state for", "Courier", "Deliver to", ""].map((t) => h("th", { scope: "col", text: t })))),
            h(
              "tbody",
              {},
              reply.stuckOrders.map((s) => orderRow(s.order!, "")).map((row, i) => {
                row.children[2].textContent = span(seconds(reply.stuckOrders[i].stateDuration));
                return row;
              }),
            ),
          ),
    );
  }, describeError);
}

byId<HTMLFormElement>("stuck-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  void loadStuck((ev as SubmitEvent).submitter as HTMLButtonElement);
});

// --- reassigning --------------------------------------------------------------------------

let reassigning: Order | undefined;

function openReassign(o: Order): void {
  reassigning = o;
  const section = byId("reassign");
  byId("reassign-order").textContent = shortId(o.orderId);
  byId("reassign-order").title = o.orderId;
  byId<HTMLInputElement>("reassign-driver").value = "";
  byId<HTMLInputElement>("reassign-reason").value = "";
  say(byId("reassign-alert"), "");
  section.hidden = false;
  section.scrollIntoView({ behavior: "smooth", block: "start" });
  byId("reassign-driver").focus();
}

byId("reassign-cancel").addEventListener("click", () => {
  reassigning = undefined;
  byId("reassign").hidden = true;
});

byId<HTMLFormElement>("reassign-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const o = reassigning;
  if (!o) return;
  const alert = byId("reassign-alert");
  void busy((ev as SubmitEvent).submitter as HTMLButtonElement, alert, async () => {
    const reply = await orders.reassignOrder({
      orderId: o.orderId,
      requestId: requestId(),
      reason: byId<HTMLInputElement>("reassign-reason").value,
      newDriverId: byId<HTMLInputElement>("reassign-driver").value.trim(),
    });
    const now = reply.order!;
    say(alert, `Order ${shortId(now.orderId)} is now ${now.driverId ? `with courier ${shortId(now.driverId)}` : "back with dispatch"}.`, "info");
    reassigning = undefined;
    await Promise.all([loadOrders(), loadStuck()]);
  }, describeError);
});

// --- the live loop ------------------------------------------------------------------------

function renderMapStatus(): void {
  byId("map-status").textContent = [fleetNote, ordersNote, `updated ${new Date().toLocaleTimeString()}`].filter(Boolean).join(" · ");
}

let timers: number[] = [];

function startLive(): void {
  stopLive();
  void loadFleet();
  void loadOrders();
  void loadStuck();
  timers = [
    window.setInterval(() => live.checked && void loadFleet(), FLEET_EVERY_MS),
    window.setInterval(() => live.checked && void loadOrders(), ORDERS_EVERY_MS),
    window.setInterval(() => live.checked && void loadStuck(), 30_000),
  ];
}

function stopLive(): void {
  for (const t of timers) window.clearInterval(t);
  timers = [];
}

// A new view is read soon rather than at the next tick; a pan of many steps is one read (the
// reads count against the operator's quota).
let moved: number | undefined;
map.on("moveend", () => {
  window.clearTimeout(moved);
  moved = window.setTimeout(() => session.token && live.checked && void loadFleet(), 700);
});

mountAccount(byId("account-box"), {
  session,
  accounts,
  role: Role.ADMIN,
  roleName: "an operator (admin)",
  signUp: false,
  onSignedIn() {
    byId("app").hidden = false;
    map.invalidateSize();
    startLive();
  },
  onSignedOut() {
    stopLive();
    byId("app").hidden = true;
  },
});
