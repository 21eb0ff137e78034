"""The gateway service; run it with `python3 -m services.gateway.app --port PORT`."""
