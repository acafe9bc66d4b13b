// The pages' gRPC-web clients: one transport to the edge that serves the page, the session
// token of the page's user added to every call, and small helpers for what replies carry.

import { createClient, ConnectError, Code, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate, type Timestamp, type Duration } from "@bufbuild/protobuf/wkt";
import type { DescService } from "@bufbuild/protobuf";
import { OrderStatus } from "@gen/delivery/common/v1/common_pb";

/** Where one page keeps its user's session token (each page signs in on its own). */
export class Session {
  private readonly endedListeners: (() => void)[] = [];

  constructor(private readonly key: string) {}

  /** Calls ``listener`` whenever the service says the session is over (see ``clients``). */
  onEnded(listener: () => void): void {
    this.endedListeners.push(listener);
  }

  /** Forgets the token and tells the page: signed out elsewhere, expired or revoked. */
  end(): void {
    this.token = "";
    for (const listener of this.endedListeners) listener();
  }

  get token(): string {
    return sessionStorage.getItem(this.key) ?? "";
  }

  set token(value: string) {
    if (value) sessionStorage.setItem(this.key, value);
    else sessionStorage.removeItem(this.key);
  }
}

/** Clients of the mesh's services for one page, authenticated as ``session``'s user. Any call,
 * unary or stream, that the services refuse UNAUTHENTICATED while it carried the current token
 * ends the session for the whole page (signed out in another tab, expired, revoked). */
export function clients(session: Session) {
  const auth: Interceptor = (next) => async (req) => {
    const token = session.token;
    if (token) req.header.set("authorization", `Bearer ${token}`);
    const refused = (err: unknown) => {
      if (token && token === session.token && isUnauthenticated(err)) session.end();
    };
    try {
      const res = await next(req);
      if (!res.stream) return res;
      const messages = res.message;
      async function* watched() {
        try {
          yield* messages;
        } catch (err) {
          refused(err);
          throw err;
        }
      }
      return { ...res, message: watched() };
    } catch (err) {
      refused(err);
      throw err;
    }
  };
  const transport = createGrpcWebTransport({
    baseUrl: location.origin,
    useBinaryFormat: true,
    interceptors: [auth],
  });
  return <T extends DescService>(service: T): Client<T> => createClient(service, transport);
}

/** A fresh idempotency key for a mutating call. */
export function requestId(): string {
  return crypto.randomUUID();
}

/** What to tell the user about a failed call: the server's own message, which names fields. */
export function describeError(err: unknown): string {
  const e = ConnectError.from(err);
  if (e.code === Code.Unavailable || e.code === Code.Unknown) {
    return `The service is not reachable right now (${e.rawMessage || Code[e.code]}). Try again.`;
  }
  return e.rawMessage || Code[e.code];
}

/** Whether ``err`` says the session is missing, expired or revoked. */
export function isUnauthenticated(err: unknown): boolean {
  return ConnectError.from(err).code === Code.Unauthenticated;
}

/** Whether ``err`` is the cancellation of a call this page aborted itself. */
export function isCancelled(err: unknown): boolean {
  return ConnectError.from(err).code === Code.Canceled;
}

/** An amount of money for display, e.g. "€12.50". */
export function money(m: { currencyCode: string; amountMinor: bigint } | undefined): string {
  if (!m) return "";
  const amount = Number(m.amountMinor) / 100;
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: m.currencyCode }).format(amount);
  } catch {
    return `${amount.toFixed(2)} ${m.currencyCode}`;
  }
}

/** A timestamp as a Date, or undefined when unset. */
export function when(t: Timestamp | undefined): Date | undefined {
  return t ? timestampDate(t) : undefined;
}

/** A clock time such as "14:32". */
export function clockTime(d: Date | undefined): string {
  return d ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

/** A duration in seconds. */
export function seconds(d: Duration | undefined): number {
  return d ? Number(d.seconds) + d.nanos / 1e9 : 0;
}

/** "3 min", "45 s", "1 h 5 min". */
export function span(totalSeconds: number): string {
  const s = Math.max(0, Math.round(totalSeconds));
  if (s < 60) return `${s} s`;
  const minutes = Math.round(s / 60);
  if (minutes < 60) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** Coordinates for display, five decimals (about a metre). */
export function coords(p: { latitude: number; longitude: number } | undefined): string {
  return p ? `${p.latitude.toFixed(5)}, ${p.longitude.toFixed(5)}` : "";
}

/** The order statuses in the order an order passes them. */
export const STATUS_STEPS: { status: OrderStatus; label: string }[] = [
  { status: OrderStatus.PENDING, label: "Placed" },
  { status: OrderStatus.CONFIRMED, label: "Confirmed" },
  { status: OrderStatus.PREPARING, label: "Preparing" },
  { status: OrderStatus.READY_FOR_PICKUP, label: "Ready for pickup" },
  { status: OrderStatus.PICKED_UP, label: "On the way" },
  { status: OrderStatus.DELIVERED, label: "Delivered" },
];

/** A status as people say it. */
export function statusLabel(status: OrderStatus): string {
  if (status === OrderStatus.CANCELLED) return "Cancelled";
  return STATUS_STEPS.find((s) => s.status === status)?.label ?? "Unknown";
}

/** The statuses of orders that are not final. */
export const OPEN_STATUSES = [
  OrderStatus.PENDING,
  OrderStatus.CONFIRMED,
  OrderStatus.PREPARING,
  OrderStatus.READY_FOR_PICKUP,
  OrderStatus.PICKED_UP,
];

/** An id shortened for display (the full one is in the title). */
export function shortId(id: string): string {
  return id.slice(0, 8);
}
