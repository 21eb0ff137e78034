"""The inventory service; run it with `python3 -m services.inventory.app --port PORT`."""
