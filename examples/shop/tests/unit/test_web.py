"""The shared HTTP kit, in-process: routing, errors and which headers travel downstream."""

import logging

from services.common.web import HttpError, Service, propagated_headers, route_key


def test_only_trace_and_routing_headers_are_passed_on():
    incoming = {
        "Baggage": "sd-routing-key=abc123",
        "tracestate": "sd-routing-key=abc123",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "X-Loop-Route": "abc123",
        "Authorization": "Bearer secret",
        "Content-Length": "12",
    }
    assert propagated_headers(incoming) == {
        "baggage": "sd-routing-key=abc123",
        "tracestate": "sd-routing-key=abc123",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-loop-route": "abc123",
    }


def test_route_key_is_read_from_any_routing_header():
    assert route_key({"x-loop-route": "k1"}) == "k1"
    assert route_key({"baggage": "user=7,sd-routing-key=k2;ttl=60"}) == "k2"
    assert route_key({"tracestate": "vendor=x, sd-routing-key=k3"}) == "k3"
    assert route_key({"baggage": "user=7"}) is None


def test_routes_match_path_parameters_and_methods():
    service = Service("demo")

    @service.route("GET", "/things/{name}")
    def _thing(request):
        return 200, {"name": request.params["name"]}

    assert service.dispatch("GET", "/things/bolt") == (200, {"name": "bolt"})
    assert service.dispatch("POST", "/things/bolt")[0] == 405
    assert service.dispatch("GET", "/nothing")[0] == 404
    assert service.dispatch("GET", "/healthz") == (200, {"status": "ok", "service": "demo"})


def test_handler_errors_become_json_replies_and_crashes_are_logged(caplog):
    service = Service("demo")

    @service.route("POST", "/refuse")
    def _refuse(request):
        raise HttpError(409, "not today")

    @service.route("POST", "/crash")
    def _crash(request):
        raise ZeroDivisionError("boom")

    assert service.dispatch("POST", "/refuse") == (409, {"error": "not today"})
    with caplog.at_level(logging.ERROR, logger="demo"):
        status, body = service.dispatch("POST", "/crash")
    assert status == 500 and "internal error" in body["error"]
    assert "POST /crash failed" in caplog.text and "ZeroDivisionError" in caplog.text
