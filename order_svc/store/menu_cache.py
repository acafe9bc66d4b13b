"""A small in-process cache of shops and their menus for order placement.

Placing an order reads the shop and the items it names. Caching them saves two queries per
order; correctness does not rest on the cache: the placement statement checks that the shop
and every item still have the ``updated_at`` the order was priced from, and writes nothing if
not (the caller then reads again and re-prices).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from order_svc.domain.menus import MenuItem, Merchant
from order_svc.store.merchants import MerchantStore


class MenuCache:
    """Recently read shops and items, by shop; bounded and short-lived."""

    def __init__(
        self, merchants: MerchantStore, *, ttl_s: float = 30.0, max_merchants: int = 10_000
    ) -> None:
        self._merchants = merchants
        self._ttl_s = ttl_s
        self._max = max_merchants
        self._entries: OrderedDict[str, tuple[float, Merchant, dict[str, MenuItem]]] = OrderedDict()

    async def lookup(
        self, merchant_id: str, item_ids: Sequence[str], *, fresh: bool = False
    ) -> tuple[Merchant | None, dict[str, MenuItem]]:
        """The shop and those of ``item_ids`` it sells; ``fresh`` skips the cache."""
        now = time.monotonic()
        entry = None if fresh else self._entries.get(merchant_id)
        if entry is not None and now - entry[0] < self._ttl_s:
            cached_items = entry[2]
            if all(i in cached_items for i in item_ids):
                self._entries.move_to_end(merchant_id)
                return entry[1], {i: cached_items[i] for i in item_ids}
        merchant = await self._merchants.get(merchant_id)
        if merchant is None:
            self._entries.pop(merchant_id, None)
            return None, {}
        items = await self._merchants.menu_items_for_order(merchant_id, item_ids)
        known = dict(entry[2]) if entry is not None and entry[1] == merchant else {}
        known.update(items)
        self._entries[merchant_id] = (now, merchant, known)
        self._entries.move_to_end(merchant_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return merchant, items
