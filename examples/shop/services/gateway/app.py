"""gateway: the shop's public API; checks input and passes requests on to orders and inventory.

    POST /checkout      {"sku", "quantity"} -> 201 order (from orders)
    GET  /orders/{id}   -> order (from orders)
    GET  /stock/{sku}   -> stock level (from inventory)

Downstream services are at `$ORDERS_URL` and `$INVENTORY_URL`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from services.common.web import HttpError, Reply, Request, Service, call_json, error_text


def checkout_request(body: dict[str, Any]) -> dict[str, Any]:
    """The order to place, or a 400 naming the bad field."""
    sku = body.get("sku")
    quantity = body.get("quantity", 1)
    if not isinstance(sku, str) or not sku:
        raise HttpError(400, '\'sku\' is required, e.g. {"sku": "widget", "quantity": 2}')
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= 100:
        raise HttpError(400, f"'quantity' must be a whole number from 1 to 100, got {quantity!r}")
    return {"sku": sku, "quantity": quantity}


def _relay(reply: Reply, upstream: str) -> Reply:
    status, payload = reply
    if status >= 500:
        raise HttpError(502, f"{upstream} failed with {status}: {error_text(payload)}")
    return status, payload


def build(orders_url: str, inventory_url: str) -> Service:
    service = Service("gateway")

    @service.route("POST", "/checkout")
    def _checkout(request: Request) -> Reply:
        order = checkout_request(request.json_object())
        return _relay(call_json("POST", f"{orders_url}/orders", order, request.forward_headers()), "orders")

    @service.route("GET", "/orders/{order_id}")
    def _order(request: Request) -> Reply:
        url = f"{orders_url}/orders/{request.params['order_id']}"
        return _relay(call_json("GET", url, headers=request.forward_headers()), "orders")

    @service.route("GET", "/stock/{sku}")
    def _stock(request: Request) -> Reply:
        url = f"{inventory_url}/stock/{request.params['sku']}"
        return _relay(call_json("GET", url, headers=request.forward_headers()), "inventory")

    return service


def main(argv: Sequence[str] | None = None) -> None:
    urls = {name: os.environ.get(name, "").rstrip("/") for name in ("ORDERS_URL", "INVENTORY_URL")}
    missing = [name for name, url in urls.items() if not url]
    if missing:
        raise SystemExit(f"gateway: set {' and '.join(missing)} to the downstream services' base URLs")
    build(urls["ORDERS_URL"], urls["INVENTORY_URL"]).main(argv)


if __name__ == "__main__":
    main()
