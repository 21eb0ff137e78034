"""Sandbox backends: the protocol in `base`, `local` and `kubernetes` each in their own package, chosen by
`factory` (nothing else knows which is in use). The router (`router`, `relay`) and the route key's
wire forms (`route_key`) serve both."""
