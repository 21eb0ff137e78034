"""Checkout through the gateway, with every service running."""


def test_the_gateway_is_healthy(gateway):
    assert gateway.get("/healthz") == (200, {"status": "ok", "service": "gateway"})


def test_checking_out_one_widget_places_and_reserves_it(gateway):
    status, order = gateway.post("/checkout", {"sku": "widget", "quantity": 1})
    assert status == 201, order
    assert order["quantity"] == 1
    assert order["total"] == 9.99
    assert order["items"] == [{"sku": "widget", "quantity": 1, "unit_price": 9.99}]
    assert order["reservation"] == {"reserved": 1, "backordered": 0}


def test_a_placed_order_can_be_read_back(gateway):
    _, placed = gateway.post("/checkout", {"sku": "gadget", "quantity": 1})
    status, order = gateway.get(f"/orders/{placed['order_id']}")
    assert status == 200
    assert order == placed


def test_an_item_out_of_stock_is_back_ordered(gateway):
    status, order = gateway.post("/checkout", {"sku": "gizmo", "quantity": 1})
    assert status == 201, order
    assert order["total"] == 12.0
    assert order["reservation"] == {"reserved": 0, "backordered": 1}


def test_stock_is_visible_through_the_gateway(gateway):
    status, stock = gateway.get("/stock/widget")
    assert status == 200
    assert stock["sku"] == "widget" and stock["unit_price"] == 9.99 and stock["stock"] >= 0


def test_unknown_products_and_bad_quantities_are_refused(gateway):
    status, reply = gateway.post("/checkout", {"sku": "unobtainium", "quantity": 1})
    assert status == 404 and "unknown sku" in reply["error"]
    status, reply = gateway.post("/checkout", {"sku": "widget", "quantity": 0})
    assert status == 400 and "'quantity'" in reply["error"]
    assert gateway.get("/orders/999999")[0] == 404
