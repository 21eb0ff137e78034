"""inventory: products, prices and stock, kept in SQLite; reserves stock for orders.

    GET  /stock/{sku}   -> {"sku", "name", "stock", "unit_price"}
    POST /reserve       {"sku", "quantity"} -> {"sku", "reserved", "remaining", "unit_price_cents"}

A reservation takes what is in stock (possibly less than asked, possibly nothing); orders
back-orders the rest. The database is `$LOOP_DB_PATH`, else data/inventory.db; it is created and
seeded on first start.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from services.common.web import HttpError, Reply, Request, Service

DEFAULT_DB = "data/inventory.db"
SEED = (
    # sku, name, unit price in cents, stock
    ("widget", "Widget", 999, 1000),
    ("gadget", "Gadget", 2450, 250),
    ("gizmo", "Gizmo", 1200, 0),
)


def connect(db_path: Path) -> sqlite3.Connection:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode, so `BEGIN IMMEDIATE` below takes the write lock before reading stock.
    conn = sqlite3.connect(str(db_path), timeout=10, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def init_db(db_path: Path) -> None:
    with closing(connect(db_path)) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS products ("
            " sku TEXT PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL, stock INTEGER NOT NULL)"
        )
        conn.executemany("INSERT OR IGNORE INTO products VALUES (?, ?, ?, ?)", SEED)


def stock_level(conn: sqlite3.Connection, sku: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM products WHERE sku = ?", (sku,)).fetchone()
    if row is None:
        raise HttpError(404, f"unknown sku {sku!r}")
    return {
        "sku": row["sku"],
        "name": row["name"],
        "stock": row["stock"],
        "unit_price": row["price_cents"] / 100,
    }


def reserve(conn: sqlite3.Connection, sku: str, quantity: int) -> dict[str, Any]:
    """Take up to `quantity` units of `sku` out of stock."""
    if quantity < 1:
        raise HttpError(400, f"quantity must be at least 1, got {quantity}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT stock, price_cents FROM products WHERE sku = ?", (sku,)).fetchone()
        if row is None:
            raise HttpError(404, f"unknown sku {sku!r}")
        reserved = min(quantity, row["stock"])
        conn.execute("UPDATE products SET stock = stock - ? WHERE sku = ?", (reserved, sku))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return {
        "sku": sku,
        "reserved": reserved,
        "remaining": row["stock"] - reserved,
        "unit_price_cents": row["price_cents"],
    }


def build(db_path: Path) -> Service:
    init_db(db_path)
    service = Service("inventory")
    log = service.log

    @service.route("GET", "/stock/{sku}")
    def _stock(request: Request) -> Reply:
        with closing(connect(db_path)) as conn:
            return 200, stock_level(conn, request.params["sku"])

    @service.route("POST", "/reserve")
    def _reserve(request: Request) -> Reply:
        body = request.json_object()
        sku = body.get("sku")
        if not isinstance(sku, str) or not sku:
            raise HttpError(400, "'sku' is required")
        quantity = body.get("qty")
        if quantity is None:
            # Clients from before bulk orders sent no quantity: they always reserved one unit.
            log.warning(
                "reserve %s: request has no 'qty' (fields: %s); reserving 1", sku, ", ".join(sorted(body))
            )
            quantity = 1
        if not isinstance(quantity, int):
            raise HttpError(400, f"'qty' must be an integer, got {quantity!r}")
        with closing(connect(db_path)) as conn:
            result = reserve(conn, sku, quantity)
        if result["reserved"] < quantity:
            log.info("reserve %s: only %d of %d in stock", sku, result["reserved"], quantity)
        return 200, result

    return service


def main(argv: Sequence[str] | None = None) -> None:
    build(Path(os.environ.get("LOOP_DB_PATH") or DEFAULT_DB)).main(argv)


if __name__ == "__main__":
    main()
