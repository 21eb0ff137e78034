"""Order arithmetic and the gateway's input checks, in-process."""

import pytest
from services.common.web import HttpError
from services.gateway.app import checkout_request
from services.orders.app import order_total_cents, order_view


def test_an_order_is_charged_for_every_unit():
    assert order_total_cents(999, 3) == 2997


def test_the_order_view_shows_items_and_what_is_back_ordered():
    view = order_view(7, "gizmo", 2, 1200, {"reserved": 0, "backordered": 2})
    assert view == {
        "order_id": 7,
        "sku": "gizmo",
        "quantity": 2,
        "total": 24.0,
        "items": [{"sku": "gizmo", "quantity": 2, "unit_price": 12.0}],
        "reservation": {"reserved": 0, "backordered": 2},
    }


def test_the_gateway_passes_a_valid_checkout_on():
    assert checkout_request({"sku": "widget", "quantity": 2}) == {"sku": "widget", "quantity": 2}
    assert checkout_request({"sku": "widget"}) == {"sku": "widget", "quantity": 1}


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "sku"),
        ({"sku": "widget", "quantity": 0}, "quantity"),
        ({"sku": "widget", "quantity": "3"}, "quantity"),
        ({"sku": "widget", "quantity": True}, "quantity"),
        ({"sku": "widget", "quantity": 101}, "quantity"),
    ],
)
def test_the_gateway_refuses_bad_checkouts_naming_the_field(body, field):
    with pytest.raises(HttpError) as refused:
        checkout_request(body)
    assert refused.value.status == 400 and f"'{field}'" in refused.value.message
