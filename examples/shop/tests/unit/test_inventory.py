"""Inventory's stock keeping on a fresh SQLite file, in-process."""

from contextlib import closing

import pytest
from services.common.web import HttpError
from services.inventory.app import build, connect, init_db, reserve, stock_level


@pytest.fixture
def conn(tmp_path):
    path = tmp_path / "inventory.db"
    init_db(path)
    with closing(connect(path)) as connection:
        yield connection


def test_a_new_database_is_seeded(conn):
    assert stock_level(conn, "widget") == {
        "sku": "widget",
        "name": "Widget",
        "stock": 1000,
        "unit_price": 9.99,
    }


def test_reserving_takes_units_out_of_stock(conn):
    result = reserve(conn, "gadget", 4)
    assert result == {"sku": "gadget", "reserved": 4, "remaining": 246, "unit_price_cents": 2450}
    assert stock_level(conn, "gadget")["stock"] == 246


def test_reserving_more_than_is_in_stock_takes_what_is_left(conn):
    assert reserve(conn, "gadget", 300)["reserved"] == 250
    assert reserve(conn, "gadget", 1)["reserved"] == 0
    assert stock_level(conn, "gadget")["stock"] == 0


def test_unknown_products_and_bad_quantities_are_refused(conn):
    with pytest.raises(HttpError) as unknown:
        reserve(conn, "unobtainium", 1)
    assert unknown.value.status == 404
    with pytest.raises(HttpError) as zero:
        reserve(conn, "widget", 0)
    assert zero.value.status == 400
    assert stock_level(conn, "widget")["stock"] == 1000


def test_restarting_keeps_the_stock(tmp_path):
    path = tmp_path / "inventory.db"
    with closing(connect(path)) as first:
        init_db(path)
        reserve(first, "widget", 5)
    service = build(path)
    assert service.dispatch("GET", "/stock/widget")[1]["stock"] == 995
    assert service.dispatch("GET", "/stock/nope")[0] == 404
