"""The shop's services: gateway -> orders -> inventory, each a standard-library HTTP server."""
