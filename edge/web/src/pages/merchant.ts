// The merchant page: a merchant's owner signs in, picks their merchant and works its orders
// as they arrive (StreamNotifications tells the page when to read ListOrders again): confirm,
// start preparing, mark ready or reject; items that run out are marked unavailable.

import { AccountService } from "@gen/delivery/order/v1/account_service_pb";
import { MerchantService } from "@gen/delivery/order/v1/merchant_service_pb";
import { OrderService } from "@gen/delivery/order/v1/order_service_pb";
import { TrackingService } from "@gen/delivery/tracking/v1/tracking_service_pb";
import { OrderStatus, Role } from "@gen/delivery/common/v1/common_pb";
import type { User } from "@gen/delivery/order/v1/account_pb";
import type { MenuItem, Merchant } from "@gen/delivery/order/v1/merchant_pb";
import { CancelReason, type Order } from "@gen/delivery/order/v1/order_pb";
import { Code, ConnectError } from "@connectrpc/connect";
import { mountAccount } from "../lib/account";
import { busy, byId, field, fill, h, say } from "../lib/dom";
import { HELSINKI } from "../lib/places";
import {
  clients,
  clockTime,
  describeError,
  isCancelled,
  isUnauthenticated,
  money,
  OPEN_STATUSES,
  requestId,
  seconds,
  Session,
  shortId,
  span,
  statusLabel,
  when,
} from "../lib/rpc";

const session = new Session("delivery.merchant.session");
const client = clients(session);
const accounts = client(AccountService);
const merchants = client(MerchantService);
const orders = client(OrderService);
const tracking = client(TrackingService);

/** Where the page looks for the owner's merchants (ListMerchants is a proximity search). */
const SEARCH_RADIUS_M = 50_000;

const state = {
  me: undefined as User | undefined,
  merchant: undefined as Merchant | undefined,
  orders: new Map<string, Order>(),
  live: undefined as AbortController | undefined,
};

const shopAlert = byId("shop-alert");
const ordersAlert = byId("orders-alert");
const menuAlert = byId("menu-alert");

// --- which merchant -----------------------------------------------------------------------

/** The owner's merchants: those near Helsinki, and those their orders name. */
async function findMine(me: User): Promise<Merchant[]> {
  const found = new Map<string, Merchant>();
  let pageToken = "";
  for (let page = 0; page < 5; page++) {
    const reply = await merchants.listMerchants({
      location: { latitude: HELSINKI[0], longitude: HELSINKI[1] },
      radiusMeters: SEARCH_RADIUS_M,
      pageSize: 100,
      pageToken,
    });
    for (const near of reply.merchants) {
      if (near.merchant && near.merchant.ownerUserId === me.userId) found.set(near.merchant.merchantId, near.merchant);
    }
    pageToken = reply.nextPageToken;
    if (!pageToken) break;
  }
  const recent = await orders.listOrders({ pageSize: 100 });
  for (const id of new Set(recent.orders.map((o) => o.merchantId))) {
    if (!found.has(id)) {
      const m = (await merchants.getMerchant({ merchantId: id })).merchant;
      if (m) found.set(id, m);
    }
  }
  return [...found.values()].sort((a, b) => a.name.localeCompare(b.name));
}

async function loadShops(me: User): Promise<void> {
  const select = byId<HTMLSelectElement>("shop-select");
  fill(select, h("option", { value: "", text: "Looking for your merchants…" }));
  await busy(null, shopAlert, async () => {
    const mine = await findMine(me);
    fill(
      select,
      mine.length ? h("option", { value: "", text: "Choose…" }) : h("option", { value: "", text: "None found near Helsinki: enter its id" }),
      mine.map((m) => h("option", { value: m.merchantId, text: m.name })),
    );
    if (mine.length === 1) await show(mine[0].merchantId);
  }, describeError);
}

byId("shop-select").addEventListener("change", (ev) => {
  const id = (ev.target as HTMLSelectElement).value;
  if (id) void show(id);
});

byId<HTMLFormElement>("shop-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = byId<HTMLInputElement>("shop-id").value.trim() || byId<HTMLSelectElement>("shop-select").value;
  if (id) void show(id);
});

async function show(merchantId: string): Promise<void> {
  await busy(null, shopAlert, async () => {
    const m = (await merchants.getMerchant({ merchantId })).merchant!;
    if (m.ownerUserId !== state.me?.userId) {
      say(shopAlert, `${m.name} belongs to another account.`);
      return;
    }
    state.merchant = m;
    byId<HTMLSelectElement>("shop-select").value = m.merchantId;
    renderShop();
    byId("work").hidden = false;
    startLive();
    await Promise.all([loadOrders(), loadMenu()]);
  }, describeError);
}

function renderShop(): void {
  const m = state.merchant!;
  const toggle = h("button", { type: "button", class: "secondary" }, m.open ? "Close for new orders" : "Open for orders");
  toggle.addEventListener("click", () =>
    void busy(toggle, shopAlert, async () => {
      state.merchant = (await merchants.setMerchantOpen({ requestId: requestId(), merchantId: m.merchantId, open: !m.open })).merchant;
      renderShop();
    }, describeError),
  );
  fill(
    byId("shop-state"),
    h("strong", { text: m.name }),
    h("span", { class: `pill ${m.open ? "open" : "closed"}`, text: m.open ? "open" : "closed" }),
    h("span", { class: "muted", text: `typical preparation ${span(seconds(m.averagePrepDuration))}` }),
    toggle,
  );
}

// --- orders -------------------------------------------------------------------------------

async function loadOrders(): Promise<void> {
  const m = state.merchant;
  if (!m) return;
  try {
    const reply = await orders.listOrders({ pageSize: 100, statuses: OPEN_STATUSES });
    state.orders = new Map(reply.orders.filter((o) => o.merchantId === m.merchantId).map((o) => [o.orderId, o]));
    say(ordersAlert, "");
    renderOrders();
  } catch (err) {
    say(ordersAlert, describeError(err));
  }
}

function renderOrders(): void {
  const all = [...state.orders.values()].sort((a, b) => Number((a.createTime?.seconds ?? 0n) - (b.createTime?.seconds ?? 0n)));
  const group = (statuses: OrderStatus[], empty: string) => {
    const some = all.filter((o) => statuses.includes(o.status));
    return some.length ? some.map(orderCard) : h("li", { class: "muted", text: empty });
  };
  fill(byId("orders-new"), group([OrderStatus.PENDING], "No new orders."));
  fill(byId("orders-kitchen"), group([OrderStatus.CONFIRMED, OrderStatus.PREPARING], "Nothing being prepared."));
  fill(byId("orders-ready"), group([OrderStatus.READY_FOR_PICKUP, OrderStatus.PICKED_UP], "Nothing waiting."));
}

function orderCard(o: Order): HTMLLIElement {
  const alert = h("p", { class: "alert", role: "alert", hidden: true });
  const act = (label: string, run: () => Promise<{ order?: Order }>, cls = "", ask = "") => {
    const b = h("button", { type: "button", class: cls }, label);
    b.addEventListener("click", () => {
      // A step that cannot be undone (rejecting) is asked about first.
      if (ask && !confirm(ask)) return;
      void busy(b, alert, async () => {
        const reply = await run();
        if (reply.order) {
          state.orders.set(reply.order.orderId, reply.order);
          renderOrders();
        }
      }, (err) => {
        if (ConnectError.from(err).code !== Code.Aborted) return describeError(err);
        // Changed since the page read it (a courier assigned, another tab): read it again; the
        // card is drawn anew, so the word goes above the lists.
        void loadOrders().then(() =>
          say(ordersAlert, `Order ${shortId(o.orderId)} changed meanwhile; it is shown as it is now. Check it and try again.`, "info"),
        );
        return "";
      });
    });
    return b;
  };
  const ref = { orderId: o.orderId, expectedVersion: o.version };
  const actions: HTMLElement[] = [];
  if (o.status === OrderStatus.PENDING) {
    const minutes = Math.max(1, Math.round(seconds(o.estimatedPrepDuration || state.merchant?.averagePrepDuration) / 60));
    const prep = h("input", { type: "number", min: 1, max: 180, value: minutes, "aria-label": `Preparation minutes for order ${shortId(o.orderId)}` });
    const reason = h(
      "select",
      { "aria-label": `Why reject order ${shortId(o.orderId)}` },
      h("option", { value: String(CancelReason.ITEM_UNAVAILABLE), text: "An item is unavailable" }),
      h("option", { value: String(CancelReason.MERCHANT_TOO_BUSY), text: "Too busy" }),
      h("option", { value: String(CancelReason.MERCHANT_CLOSED), text: "Closing" }),
    );
    actions.push(
      h("label", {}, "Ready in ", prep, " min"),
      act(`Confirm`, () =>
        orders.confirmOrder({ ...ref, requestId: requestId(), estimatedPrepDuration: { seconds: BigInt(Math.round(Number(prep.value) || minutes) * 60) } }),
      ),
      reason,
      act(
        "Reject",
        () => orders.rejectOrder({ ...ref, requestId: requestId(), reason: Number(reason.value) }),
        "danger",
        `Reject order ${shortId(o.orderId)} (${reason.selectedOptions[0]?.text ?? "no reason"})? The customer is told at once.`,
      ),
    );
  } else if (o.status === OrderStatus.CONFIRMED) {
    actions.push(
      act("Start preparing", () => orders.startPreparing({ ...ref, requestId: requestId() })),
      act("Mark ready", () => orders.markOrderReady({ ...ref, requestId: requestId() })),
    );
  } else if (o.status === OrderStatus.PREPARING) {
    actions.push(act("Mark ready", () => orders.markOrderReady({ ...ref, requestId: requestId() })));
  }
  const courier = o.driverId ? `courier ${shortId(o.driverId)} assigned` : "no courier yet";
  const eta = when(o.estimatedDeliveryTime);
  return h(
    "li",
    { class: "card", "data-order-id": o.orderId, "data-status": OrderStatus[o.status] },
    h(
      "div",
      { class: "row spread" },
      h("strong", { title: o.orderId, text: `Order ${shortId(o.orderId)}` }),
      h("span", { class: "muted", text: `placed ${clockTime(when(o.createTime))} · ${statusLabel(o.status)} · ${courier}${eta ? ` · due ${clockTime(eta)}` : ""}` }),
    ),
    h(
      "ul",
      {},
      o.items.map((i) =>
        h("li", {}, `${i.quantity} × ${i.name}`, i.options.length ? ` (${i.options.map((x) => x.name).join(", ")})` : "", i.note ? ` — “${i.note}”` : ""),
      ),
    ),
    o.note ? h("p", {}, h("em", { text: `Note: ${o.note}` })) : null,
    h("p", { class: "muted", text: `${money(o.subtotal)} of items · deliver to ${o.deliveryAddress}` }),
    h("div", { class: "row" }, actions),
    alert,
  );
}

// --- live: the notification stream --------------------------------------------------------

let refresh: number | undefined;

function soon(): void {
  // A burst of notifications (an order placed and paid) is one read of the list.
  window.clearTimeout(refresh);
  refresh = window.setTimeout(() => void loadOrders(), 250);
}

function startLive(): void {
  if (state.live) return;
  const stop = new AbortController();
  state.live = stop;
  const live = byId("live");
  void (async () => {
    let after = 0n;
    let backoff = 500;
    while (!stop.signal.aborted) {
      try {
        live.textContent = "Live";
        for await (const message of tracking.streamNotifications({ resumeAfterSequence: after }, { signal: stop.signal })) {
          after = message.sequence;
          backoff = 500;
          const n = message.notification;
          if (n) {
            const which = n.orderId ? ` (order ${shortId(n.orderId)})` : "";
            byId("feed").prepend(h("li", {}, h("span", { class: "muted", text: `${clockTime(when(n.createTime))} ` }), h("strong", { text: n.title }), ` ${n.body}${which}`));
          }
          soon();
        }
      } catch (err) {
        if (stop.signal.aborted || isCancelled(err)) return;
        if (isUnauthenticated(err)) {
          live.textContent = "Signed out: sign in again for live orders.";
          return;
        }
        live.textContent = `Reconnecting (${describeError(err)})`;
      }
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 10_000);
      // Whatever happened while the stream was down is read from the list.
      soon();
    }
  })();
}

// A slow read as well: the list also changes without a notification to the owner (a courier
// assigned, say), and what the stream missed while down shows up here.
setInterval(() => {
  if (state.merchant && session.token) void loadOrders();
}, 15_000);

// --- the menu -----------------------------------------------------------------------------

async function loadMenu(): Promise<void> {
  const m = state.merchant;
  if (!m) return;
  await busy(null, menuAlert, async () => {
    const reply = await merchants.listMenuItems({ merchantId: m.merchantId, pageSize: 200 });
    fill(byId("menu"), reply.menuItems.length ? reply.menuItems.map(menuRow) : h("li", { class: "muted", text: "No items yet." }));
  }, describeError);
}

function menuRow(item: MenuItem): HTMLLIElement {
  const box = h("input", { type: "checkbox", checked: item.available, "data-item-id": item.menuItemId });
  box.addEventListener("change", () =>
    void busy(null, menuAlert, async () => {
      const reply = await merchants.upsertMenuItem({
        requestId: requestId(),
        merchantId: item.merchantId,
        // The full item goes back: only its availability changes.
        menuItem: { ...item, available: box.checked },
      });
      const row = menuRow(reply.menuItem!);
      li.replaceWith(row);
    }, (err) => {
      box.checked = !box.checked;
      return describeError(err);
    }),
  );
  const li = h("li", { class: "card" }, field(`${item.name} · ${money(item.price)}`, h("span", {}, box, item.available ? " available" : " unavailable")));
  return li;
}

// --- start --------------------------------------------------------------------------------

mountAccount(byId("account-box"), {
  session,
  accounts,
  role: Role.MERCHANT,
  roleName: "a merchant's owner",
  signUp: false,
  onSignedIn(user) {
    state.me = user;
    byId("app").hidden = false;
    void loadShops(user);
  },
  onSignedOut() {
    state.live?.abort();
    state.live = undefined;
    state.merchant = undefined;
    byId("app").hidden = true;
    byId("work").hidden = true;
  },
});
