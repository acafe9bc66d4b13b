// The customer page: sign up or in, pick a merchant near the delivery point, order from its
// menu, then watch the order live (TrackOrder) until it arrives, and rate it.

import { AccountService } from "@gen/delivery/order/v1/account_service_pb";
import { MerchantService } from "@gen/delivery/order/v1/merchant_service_pb";
import { OrderService } from "@gen/delivery/order/v1/order_service_pb";
import { TrackingService } from "@gen/delivery/tracking/v1/tracking_service_pb";
import type { TrackOrderResponse } from "@gen/delivery/tracking/v1/tracking_service_pb";
import { TrackingNoticeType, type Eta } from "@gen/delivery/tracking/v1/tracking_pb";
import { OrderStatus, Role } from "@gen/delivery/common/v1/common_pb";
import type { MenuItem, Merchant, NearbyMerchant } from "@gen/delivery/order/v1/merchant_pb";
import { CancelReason, RatingTarget, type Order } from "@gen/delivery/order/v1/order_pb";
import { mountAccount } from "../lib/account";
import { busy, byId, field, fill, h, say } from "../lib/dom";
import { createMap, HELSINKI, L, pin, point, type MapPoint } from "../lib/map";
import {
  clients,
  clockTime,
  coords,
  describeError,
  isCancelled,
  isUnauthenticated,
  money,
  requestId,
  Session,
  shortId,
  span,
  statusLabel,
  STATUS_STEPS,
  when,
} from "../lib/rpc";
import { Code, ConnectError } from "@connectrpc/connect";

const session = new Session("delivery.customer.session");
const client = clients(session);
const accounts = client(AccountService);
const merchants = client(MerchantService);
const orders = client(OrderService);
const tracking = client(TrackingService);

/** How far around the delivery point merchants are looked for, in metres. */
const SEARCH_RADIUS_M = 5000;
/** The key under which the order being watched survives a reload of the tab. */
const WATCHED_ORDER = "delivery.customer.order";

interface CartLine {
  item: MenuItem;
  quantity: number;
  options: { optionGroupId: string; optionId: string; name: string; deltaMinor: bigint }[];
}

const state = {
  where: [...HELSINKI] as MapPoint,
  merchant: undefined as Merchant | undefined,
  cart: [] as CartLine[],
  // One key per cart: placing it again after a lost answer returns the first order.
  cartKey: requestId(),
};

const map = createMap(byId("map"));
const home = pin(state.where, "home", "Delivery location", 18).addTo(map);
home.getElement()?.setAttribute("data-testid", "home-marker");
const shops = L.layerGroup().addTo(map);
const lat = byId<HTMLInputElement>("lat");
const lng = byId<HTMLInputElement>("lng");
const whereAlert = byId("where-alert");
const menuAlert = byId("menu-alert");

// --- where and which merchant -------------------------------------------------------------

function moveTo(p: MapPoint, search: boolean): void {
  state.where = p;
  home.setLatLng(p);
  lat.value = p[0].toFixed(5);
  lng.value = p[1].toFixed(5);
  if (search) void findMerchants();
}

map.on("click", (e: L.LeafletMouseEvent) => {
  if (!byId("tracking").hidden) return;
  moveTo([e.latlng.lat, e.latlng.lng], true);
});

byId<HTMLFormElement>("where-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  moveTo([Number(lat.value), Number(lng.value)], false);
  map.panTo(state.where);
  void findMerchants((ev as SubmitEvent).submitter as HTMLButtonElement);
});

async function findMerchants(button: HTMLButtonElement | null = null): Promise<void> {
  const list = byId("merchant-list");
  await busy(button, whereAlert, async () => {
    const reply = await merchants.listMerchants({
      location: { latitude: state.where[0], longitude: state.where[1] },
      radiusMeters: SEARCH_RADIUS_M,
      openOnly: true,
      pageSize: 20,
    });
    shops.clearLayers();
    if (reply.merchants.length === 0) {
      fill(list, h("li", { class: "muted", text: `No open merchant within ${SEARCH_RADIUS_M / 1000} km of this point. Click the map elsewhere.` }));
      return;
    }
    fill(list, reply.merchants.map(merchantRow));
  }, describeError);
}

function merchantRow(found: NearbyMerchant): HTMLLIElement {
  const m = found.merchant!;
  const marker = pin(point(m.location)!, "shop", m.name, 16).addTo(shops);
  marker.on("click", () => void chooseMerchant(m));
  const rating = m.ratingCount > 0n ? `★ ${m.ratingAverage.toFixed(1)} (${m.ratingCount})` : "not rated yet";
  const button = h("button", { type: "button", class: "secondary", "aria-pressed": String(state.merchant?.merchantId === m.merchantId), "data-merchant-id": m.merchantId }, `Choose ${m.name}`);
  button.addEventListener("click", () => void chooseMerchant(m));
  return h(
    "li",
    { class: "card" },
    h("div", { class: "row spread" }, h("strong", { text: m.name }), h("span", { class: "muted", text: `${Math.round(found.distanceMeters)} m away · ${rating}` })),
    m.description ? h("p", { class: "muted", text: m.description }) : null,
    button,
  );
}

// --- the menu and the cart ----------------------------------------------------------------

async function chooseMerchant(m: Merchant): Promise<void> {
  state.merchant = m;
  state.cart = [];
  state.cartKey = requestId();
  for (const b of document.querySelectorAll<HTMLButtonElement>("[data-merchant-id]")) {
    b.setAttribute("aria-pressed", String(b.dataset.merchantId === m.merchantId));
  }
  byId("merchant-name").textContent = m.name;
  byId("menu").hidden = false;
  renderCart();
  const box = byId("menu-items");
  fill(box, h("p", { text: "Loading the menu…" }));
  await busy(null, menuAlert, async () => {
    const reply = await merchants.listMenuItems({ merchantId: m.merchantId, pageSize: 200 });
    fill(box, reply.menuItems.length ? reply.menuItems.map(menuItem) : h("p", { class: "muted", text: "This merchant has nothing on its menu yet." }));
  }, describeError);
  byId("menu-title").scrollIntoView({ behavior: "smooth", block: "start" });
}

function menuItem(item: MenuItem): HTMLFieldSetElement {
  const quantity = h("input", { type: "number", min: 1, max: 99, value: 1, required: true });
  const groups = item.optionGroups.map((group) => {
    const single = group.maxSelect === 1;
    const rule = group.minSelect === group.maxSelect ? `choose ${group.minSelect}` : `choose ${group.minSelect} to ${group.maxSelect}`;
    return h(
      "fieldset",
      { class: "scores", "data-group": group.optionGroupId, "data-min": group.minSelect, "data-max": group.maxSelect },
      h("legend", { text: `${group.name} (${rule})` }),
      group.options.map((option) =>
        h(
          "label",
          {},
          h("input", {
            type: single ? "radio" : "checkbox",
            name: `${item.menuItemId}-${group.optionGroupId}`,
            value: option.optionId,
            disabled: !option.available,
            "data-name": option.name,
            "data-delta": String(option.priceDelta?.amountMinor ?? 0n),
          }),
          ` ${option.name}${option.priceDelta && option.priceDelta.amountMinor !== 0n ? ` (${option.priceDelta.amountMinor > 0n ? "+" : ""}${money(option.priceDelta)})` : ""}`,
        ),
      ),
    );
  });
  const add = h("button", { type: "submit", disabled: !item.available }, item.available ? `Add ${item.name}` : "Not available right now");
  const form = h(
    "fieldset",
    { class: "item", "data-item-id": item.menuItemId },
    h("legend", {}, h("strong", { text: item.name }), ` · ${money(item.price)}`),
    item.description ? h("p", { class: "muted", text: item.description }) : null,
    groups,
    h("div", { class: "row" }, field("Quantity", quantity), add),
  );
  add.addEventListener("click", (ev) => {
    ev.preventDefault();
    const chosen: CartLine["options"] = [];
    for (const group of form.querySelectorAll<HTMLFieldSetElement>("fieldset[data-group]")) {
      const picked = [...group.querySelectorAll<HTMLInputElement>("input:checked")];
      const min = Number(group.dataset.min);
      const max = Number(group.dataset.max);
      if (picked.length < min || picked.length > max) {
        say(menuAlert, `${item.name}: ${group.querySelector("legend")?.textContent ?? "an option group"} needs ${min === max ? min : `${min} to ${max}`} choices.`);
        return;
      }
      for (const input of picked) {
        chosen.push({ optionGroupId: group.dataset.group!, optionId: input.value, name: input.dataset.name ?? "", deltaMinor: BigInt(input.dataset.delta ?? "0") });
      }
    }
    const count = Math.min(99, Math.max(1, Math.round(Number(quantity.value) || 1)));
    say(menuAlert, "");
    state.cart.push({ item, quantity: count, options: chosen });
    state.cartKey = requestId();
    renderCart();
  });
  return form;
}

function lineTotal(line: CartLine): bigint {
  const unit = (line.item.price?.amountMinor ?? 0n) + line.options.reduce((sum, o) => sum + o.deltaMinor, 0n);
  return unit * BigInt(line.quantity);
}

function renderCart(): void {
  const currency = state.merchant?.currencyCode ?? "EUR";
  fill(
    byId("cart-lines"),
    state.cart.length === 0
      ? h("li", { class: "muted", text: "Nothing yet: add something from the menu." })
      : state.cart.map((line, i) => {
          const remove = h("button", { type: "button", class: "secondary", "aria-label": `Remove ${line.item.name}` }, "Remove");
          remove.addEventListener("click", () => {
            state.cart.splice(i, 1);
            state.cartKey = requestId();
            renderCart();
          });
          const options = line.options.map((o) => o.name).join(", ");
          return h("li", { class: "row spread" }, h("span", {}, `${line.quantity} × ${line.item.name}${options ? ` (${options})` : ""}`), h("span", {}, money({ currencyCode: currency, amountMinor: lineTotal(line) }), " ", remove));
        }),
  );
  const subtotal = state.cart.reduce((sum, line) => sum + lineTotal(line), 0n);
  byId("cart-total").textContent = state.cart.length ? `Items: ${money({ currencyCode: currency, amountMinor: subtotal })} (the delivery fee is added when you place the order)` : "";
  byId<HTMLButtonElement>("place-order").disabled = state.cart.length === 0;
}

byId<HTMLFormElement>("cart").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const merchant = state.merchant;
  if (!merchant || state.cart.length === 0) return;
  const tip = BigInt(byId<HTMLSelectElement>("tip").value);
  void busy(byId<HTMLButtonElement>("place-order"), menuAlert, async () => {
    const reply = await orders.createOrder({
      requestId: state.cartKey,
      merchantId: merchant.merchantId,
      items: state.cart.map((line) => ({
        menuItemId: line.item.menuItemId,
        quantity: line.quantity,
        options: line.options.map((o) => ({ optionGroupId: o.optionGroupId, optionId: o.optionId })),
      })),
      deliveryAddress: byId<HTMLInputElement>("address").value,
      deliveryLocation: { latitude: state.where[0], longitude: state.where[1] },
      tip: tip > 0n ? { currencyCode: merchant.currencyCode, amountMinor: tip } : undefined,
      note: byId<HTMLTextAreaElement>("order-note").value,
    });
    state.cart = [];
    state.cartKey = requestId();
    renderCart();
    watch(reply.order!, merchant.name);
    void loadHistory();
  }, describeError);
});

// --- watching the order -------------------------------------------------------------------

interface Watching {
  order: Order;
  status: OrderStatus;
  driverId: string;
  eta?: Eta;
  fixTime?: Date;
  stale: boolean;
  hidden: boolean;
  stop: AbortController;
  courier?: L.Marker;
  layers: L.LayerGroup;
}

let watching: Watching | undefined;

function watch(order: Order, merchantName: string): void {
  stopWatching();
  sessionStorage.setItem(WATCHED_ORDER, order.orderId);
  const layers = L.layerGroup().addTo(map);
  const w: Watching = { order, status: order.status, driverId: order.driverId, stale: false, hidden: false, stop: new AbortController(), layers };
  watching = w;
  byId("choose").hidden = true;
  byId("menu").hidden = true;
  byId("tracking").hidden = false;
  byId("rate").hidden = true;
  shops.clearLayers();
  home.setLatLng(point(order.deliveryLocation)!);
  const shop = point(order.merchantLocation);
  if (shop) {
    pin(shop, "shop chosen", `Pickup: ${merchantName}`, 18).addTo(layers);
    map.fitBounds(L.latLngBounds([shop, point(order.deliveryLocation)!]).pad(0.4));
  }
  byId("order-summary").textContent = `Order ${shortId(order.orderId)} from ${merchantName}: ${order.items.map((i) => `${i.quantity} × ${i.name}`).join(", ")} · ${money(order.total)}`;
  byId("order-summary").title = order.orderId;
  fill(byId("order-pin"), order.deliveryPin ? ["Your delivery PIN: ", h("span", { class: "pin-code", text: order.deliveryPin }), " (tell it to the courier)"] : []);
  fill(byId("notices"));
  say(byId("tracking-alert"), "");
  renderStatus(w);
  renderCourier(w);
  void follow(w);
}

function stopWatching(): void {
  if (!watching) return;
  watching.stop.abort();
  watching.layers.remove();
  watching = undefined;
}

async function follow(w: Watching): Promise<void> {
  let after = 0n;
  let backoff = 500;
  const alert = byId("tracking-alert");
  while (!w.stop.signal.aborted) {
    try {
      for await (const update of tracking.trackOrder({ orderId: w.order.orderId, resumeAfterSequence: after }, { signal: w.stop.signal })) {
        after = update.sequence;
        backoff = 500;
        say(alert, "");
        apply(w, update);
      }
      // The stream ends when the order is final; otherwise (a restart) it is opened again.
      if (w.status === OrderStatus.DELIVERED || w.status === OrderStatus.CANCELLED) return;
    } catch (err) {
      if (w.stop.signal.aborted || isCancelled(err)) return;
      if (isUnauthenticated(err)) {
        say(alert, "Your session ended; sign in again to keep watching.");
        return;
      }
      say(alert, `Live updates paused: ${describeError(err)} Reconnecting…`, "info");
    }
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 10_000);
  }
}

function apply(w: Watching, u: TrackOrderResponse): void {
  const at = when(u.eventTime) ?? new Date();
  switch (u.update.case) {
    case "statusUpdate": {
      const before = { status: w.status, driverId: w.driverId };
      w.status = u.update.value.status;
      w.driverId = u.update.value.driverId;
      if (!w.driverId && w.courier) {
        w.courier.remove();
        w.courier = undefined;
      }
      if (before.status !== w.status) note(at, `Status: ${statusLabel(w.status)}.`);
      if (!before.driverId && w.driverId) note(at, "A courier accepted your order.");
      if (before.driverId && !w.driverId) note(at, "Your courier changed; looking for another one.");
      renderStatus(w);
      break;
    }
    case "courierPosition": {
      const p = u.update.value;
      const where = point(p.position);
      if (!where) break;
      w.fixTime = when(p.fixTime);
      w.stale = p.stale;
      w.hidden = false;
      if (!w.courier) {
        w.courier = pin(where, "courier", "Your courier", 20).addTo(w.layers);
        w.courier.getElement()?.setAttribute("data-testid", "courier-marker");
      } else {
        w.courier.setLatLng(where);
      }
      const el = w.courier.getElement();
      if (el) {
        // Where the marker stands, as Leaflet has it (tests read it; so may assistive tools).
        const at = w.courier.getLatLng();
        el.dataset.lat = at.lat.toFixed(6);
        el.dataset.lng = at.lng.toFixed(6);
      }
      if (!map.getBounds().pad(-0.1).contains(where)) map.panTo(where);
      break;
    }
    case "eta":
      w.eta = u.update.value.eta;
      break;
    case "notice": {
      const notice = u.update.value;
      switch (notice.type) {
        case TrackingNoticeType.POSITION_STALE:
          w.stale = true;
          break;
        case TrackingNoticeType.POSITION_RESUMED:
          w.stale = false;
          break;
        case TrackingNoticeType.COURIER_HAS_ANOTHER_DROP:
          w.hidden = true;
          w.courier?.remove();
          w.courier = undefined;
          break;
        case TrackingNoticeType.RESYNC:
          // The stream starts over with a snapshot: what was shown is discarded.
          fill(byId("notices"));
          w.courier?.remove();
          w.courier = undefined;
          w.eta = undefined;
          break;
      }
      if (notice.type !== TrackingNoticeType.RESYNC && notice.message) note(at, notice.message, TrackingNoticeType[notice.type]);
      break;
    }
  }
  renderCourier(w);
}

function note(at: Date, text: string, kind = "status"): void {
  byId("notices").prepend(h("li", { "data-kind": kind }, h("span", { class: "muted", text: `${clockTime(at)} ` }), text));
}

function renderStatus(w: Watching): void {
  const cancelled = w.status === OrderStatus.CANCELLED;
  const index = STATUS_STEPS.findIndex((s) => s.status === w.status);
  byId("tracking").classList.toggle("cancelled", cancelled);
  fill(
    byId("steps"),
    STATUS_STEPS.map((step, i) =>
      h("li", { class: i < index || (i === index && w.status === OrderStatus.DELIVERED) ? "done" : "", "aria-current": i === index ? "step" : undefined }, step.label),
    ),
  );
  const status = byId("order-status");
  status.dataset.status = OrderStatus[w.status];
  status.textContent = `Status: ${statusLabel(w.status)}${cancelled && w.order.cancellation?.note ? ` (${w.order.cancellation.note})` : ""}`;
  const final = w.status === OrderStatus.DELIVERED || cancelled;
  byId<HTMLButtonElement>("cancel-order").hidden = final || w.status === OrderStatus.PICKED_UP;
  if (w.status === OrderStatus.DELIVERED) showRating(w);
  if (final) {
    sessionStorage.removeItem(WATCHED_ORDER);
    // The courier is no longer on this order: their position is not the customer's to see.
    w.courier?.remove();
    w.courier = undefined;
  }
  void loadHistory();
}

function renderCourier(w: Watching): void {
  const courier = byId("courier");
  const final = w.status === OrderStatus.DELIVERED || w.status === OrderStatus.CANCELLED;
  if (final) {
    courier.textContent = w.status === OrderStatus.DELIVERED ? "Delivered. Enjoy!" : "";
  } else if (!w.driverId) {
    courier.textContent = "Looking for a courier…";
  } else if (w.hidden) {
    courier.textContent = "Your courier is delivering another order first; their position shows again when they head to you.";
  } else if (w.courier) {
    const p = w.courier.getLatLng();
    const age = w.fixTime ? ` (${span((Date.now() - w.fixTime.getTime()) / 1000)} ago)` : "";
    courier.textContent = `Courier at ${coords({ latitude: p.lat, longitude: p.lng })}${age}.`;
    courier.dataset.lat = p.lat.toFixed(6);
    courier.dataset.lng = p.lng.toFixed(6);
  } else {
    courier.textContent = "A courier is assigned; waiting for their position…";
  }
  // Stale by a notice or by the position itself: the marker greys out until fixes resume.
  w.courier?.getElement()?.classList.toggle("stale", w.stale);
  const stale = byId("stale");
  stale.hidden = final || !w.stale || !w.courier;
  if (!stale.hidden) {
    const age = w.fixTime ? span((Date.now() - w.fixTime.getTime()) / 1000) : "a while";
    stale.textContent = `The courier's position has not been updated for ${age}; it may be out of date.`;
  }
  renderEta(w, final);
}

function renderEta(w: Watching, final: boolean): void {
  const eta = byId("eta");
  const best = when(w.eta?.estimatedDeliveryTime);
  if (final || !best) {
    eta.textContent = final ? "" : "Estimating the delivery time…";
    return;
  }
  const now = Date.now();
  const low = when(w.eta?.lowDeliveryTime);
  const high = when(w.eta?.highDeliveryTime);
  const left = (best.getTime() - now) / 1000;
  const band = low && high ? ` (most likely between ${span(Math.max(0, (low.getTime() - now) / 1000))} and ${span(Math.max(0, (high.getTime() - now) / 1000))}, ${clockTime(low)}–${clockTime(high)})` : "";
  fill(eta, left > 30 ? `Arrives in about ${span(left)}, around ${clockTime(best)}` : "Arriving any moment now", h("span", { class: "eta-band", text: band }), ".");
}

// The ETA counts down and the position's age grows between updates.
setInterval(() => {
  if (watching) renderCourier(watching);
}, 1000);

byId("cancel-order").addEventListener("click", (ev) => {
  const w = watching;
  if (!w || !confirm("Cancel this order?")) return;
  void busy(ev.currentTarget as HTMLButtonElement, byId("tracking-alert"), async () => {
    const reply = await orders.cancelOrder({ orderId: w.order.orderId, requestId: requestId(), reason: CancelReason.CUSTOMER_CHANGED_MIND });
    w.order = reply.order!;
  }, describeError);
});

byId("new-order").addEventListener("click", () => {
  stopWatching();
  sessionStorage.removeItem(WATCHED_ORDER);
  byId("tracking").hidden = true;
  byId("choose").hidden = false;
  moveTo(state.where, true);
  map.setView(state.where, 15);
});

// --- rating -------------------------------------------------------------------------------

function showRating(w: Watching): void {
  const form = byId<HTMLFormElement>("rate");
  if (!form.hidden) return;
  const targets: { target: RatingTarget; label: string }[] = [{ target: RatingTarget.MERCHANT, label: "The merchant" }];
  if (w.driverId) targets.unshift({ target: RatingTarget.DRIVER, label: "Your courier" });
  fill(
    byId("rate-fields"),
    targets.map(({ target, label }) =>
      h(
        "fieldset",
        { class: "scores", "data-target": target },
        h("legend", { text: `${label}: 1 (poor) to 5 (great)` }),
        [1, 2, 3, 4, 5].map((score) => h("label", {}, h("input", { type: "radio", name: `score-${target}`, value: score, required: true }), ` ${score}`)),
      ),
    ),
  );
  form.hidden = false;
  form.onsubmit = (ev) => {
    ev.preventDefault();
    const alert = byId("rate-alert");
    void busy((ev as SubmitEvent).submitter as HTMLButtonElement, alert, async () => {
      const comment = byId<HTMLTextAreaElement>("rate-comment").value;
      for (const set of form.querySelectorAll<HTMLFieldSetElement>("fieldset[data-target]")) {
        const score = Number(set.querySelector<HTMLInputElement>("input:checked")?.value ?? 0);
        try {
          await orders.rateOrder({ orderId: w.order.orderId, requestId: requestId(), target: Number(set.dataset.target), score, comment });
        } catch (err) {
          // Rated already (another tab, or a retry): nothing left to send for that one.
          if (ConnectError.from(err).code !== Code.AlreadyExists) throw err;
        }
      }
      fill(form, h("p", { class: "big", "data-testid": "rated", text: "Thank you for your rating!" }));
    }, describeError);
  };
}

// --- recent orders ------------------------------------------------------------------------

const merchantNames = new Map<string, string>();

async function merchantName(id: string): Promise<string> {
  if (!merchantNames.has(id)) {
    try {
      merchantNames.set(id, (await merchants.getMerchant({ merchantId: id })).merchant?.name ?? shortId(id));
    } catch {
      return shortId(id);
    }
  }
  return merchantNames.get(id)!;
}

async function loadHistory(): Promise<void> {
  const list = byId("history");
  try {
    const reply = await orders.listOrders({ pageSize: 5 });
    if (reply.orders.length === 0) {
      fill(list, h("li", { class: "muted", text: "No orders yet." }));
      return;
    }
    const rows = await Promise.all(
      reply.orders.map(async (o) => {
        const name = await merchantName(o.merchantId);
        const track = h("button", { type: "button", class: "secondary" }, "Watch");
        track.addEventListener("click", () => watch(o, name));
        return h("li", { class: "row" }, h("span", { title: o.orderId }, `${clockTime(when(o.createTime))} · ${name} · ${money(o.total)} · ${statusLabel(o.status)}`), track);
      }),
    );
    fill(list, rows);
  } catch (err) {
    fill(list, h("li", { class: "muted", text: describeError(err) }));
  }
}

async function resume(): Promise<void> {
  const id = sessionStorage.getItem(WATCHED_ORDER);
  if (!id) return;
  try {
    const order = (await orders.getOrder({ orderId: id })).order!;
    watch(order, await merchantName(order.merchantId));
  } catch {
    sessionStorage.removeItem(WATCHED_ORDER);
  }
}

// --- start --------------------------------------------------------------------------------

mountAccount(byId("account-box"), {
  session,
  accounts,
  role: Role.CUSTOMER,
  roleName: "a customer",
  signUp: true,
  onSignedIn() {
    byId("app").hidden = false;
    // Leaflet measured a hidden container: it measures again now that it shows.
    map.invalidateSize();
    moveTo(state.where, true);
    void loadHistory();
    void resume();
  },
  onSignedOut() {
    stopWatching();
    byId("app").hidden = true;
  },
});
