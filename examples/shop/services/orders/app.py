"""orders: places orders, reserving stock in inventory; keeps orders in SQLite.

    POST /orders        {"sku", "quantity"} -> 201 order
    GET  /orders/{id}   -> order

An order is charged for everything ordered; what inventory cannot reserve now is back-ordered.
Inventory is at `$INVENTORY_URL`; the database is `$LOOP_DB_PATH`, else data/orders.db.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from services.common.web import HttpError, Reply, Request, Service, call_json, error_text

DEFAULT_DB = "data/orders.db"


def order_total_cents(unit_price_cents: int, quantity: int) -> int:
    return unit_price_cents * quantity


def order_view(
    order_id: int, sku: str, quantity: int, unit_price_cents: int, reservation: dict[str, int]
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "sku": sku,
        "quantity": quantity,
        "total": order_total_cents(unit_price_cents, quantity) / 100,
        "items": [{"sku": sku, "quantity": quantity, "unit_price": unit_price_cents / 100}],
        "reservation": reservation,
    }


def connect(db_path: Path) -> sqlite3.Connection:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(db_path), timeout=10)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY AUTOINCREMENT, sku TEXT NOT NULL,"
        " quantity INTEGER NOT NULL, unit_price_cents INTEGER NOT NULL, reservation TEXT NOT NULL)"
    )
    return conn


def build(db_path: Path, inventory_url: str) -> Service:
    service = Service("orders")
    log = service.log
    with closing(connect(db_path)):
        pass  # create the schema at startup, not on the first order

    @service.route("POST", "/orders")
    def _place(request: Request) -> Reply:
        body = request.json_object()
        sku = body.get("sku")
        if not isinstance(sku, str):
            raise HttpError(400, "'sku' is required")
        quantity = int(body.get("qty", 1))
        status, reply = call_json(
            "POST", f"{inventory_url}/reserve", {"sku": sku, "quantity": quantity}, request.forward_headers()
        )
        if status != 200:
            raise HttpError(status if status < 500 else 502, f"inventory: {error_text(reply)}")
        reserved = reply["reserved"]
        reservation = {"reserved": reserved, "backordered": quantity - reserved}
        with closing(connect(db_path)) as conn, conn:
            cursor = conn.execute(
                "INSERT INTO orders (sku, quantity, unit_price_cents, reservation) VALUES (?, ?, ?, ?)",
                (sku, quantity, reply["unit_price_cents"], json.dumps(reservation)),
            )
            order_id = int(cursor.lastrowid or 0)
        if reserved < quantity:
            log.warning(
                "order %d: inventory reserved %d of %d %s; back-ordering %d",
                order_id,
                reserved,
                quantity,
                sku,
                quantity - reserved,
            )
        return 201, order_view(order_id, sku, quantity, reply["unit_price_cents"], reservation)

    @service.route("GET", "/orders/{order_id}")
    def _get(request: Request) -> Reply:
        with closing(connect(db_path)) as conn:
            row = conn.execute(
                "SELECT id, sku, quantity, unit_price_cents, reservation FROM orders WHERE id = ?",
                (request.params["order_id"],),
            ).fetchone()
        if row is None:
            raise HttpError(404, f"no order {request.params['order_id']}")
        return 200, order_view(row[0], row[1], row[2], row[3], json.loads(row[4]))

    return service


def main(argv: Sequence[str] | None = None) -> None:
    inventory_url = os.environ.get("INVENTORY_URL", "").rstrip("/")
    if not inventory_url:
        raise SystemExit("orders: set INVENTORY_URL to the inventory service's base URL")
    build(Path(os.environ.get("LOOP_DB_PATH") or DEFAULT_DB), inventory_url).main(argv)


if __name__ == "__main__":
    main()
