"""The orders service; run it with `python3 -m services.orders.app --port PORT`."""
