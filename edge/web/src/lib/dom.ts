// A few DOM helpers: the pages build plain, labelled HTML with no framework.

type Child = Node | string | null | undefined | false;
type Props = Record<string, string | number | boolean | EventListener | undefined>;

/** An element with attributes (``on*`` props become listeners) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Props = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "text") {
      el.textContent = String(value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el: Element, children: (Child | Child[])[]): void {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
}

/** Replaces an element's children. */
export function fill(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

/** The element with ``id``; a page that lacks it is a bug in the page. */
export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el as T;
}

/** A labelled form field: ``<label>Text <input ...></label>``. */
export function field(label: string, input: HTMLElement, hint?: string): HTMLLabelElement {
  return h("label", { class: "field" }, h("span", { class: "label" }, label), input, hint ? h("small", { text: hint }) : null);
}

/** Shows a message in a page's alert region (an empty one hides it). */
export function say(region: HTMLElement, message: string, kind: "error" | "info" = "error"): void {
  region.textContent = message;
  region.dataset.kind = kind;
  region.hidden = !message;
}

/** Runs ``work`` with ``button`` disabled, reporting a failure in ``region``. */
export async function busy(button: HTMLButtonElement | null, region: HTMLElement, work: () => Promise<void>, describe: (e: unknown) => string): Promise<boolean> {
  if (button) button.disabled = true;
  say(region, "");
  try {
    await work();
    return true;
  } catch (err) {
    say(region, describe(err));
    return false;
  } finally {
    if (button) button.disabled = false;
  }
}
