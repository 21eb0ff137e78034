"""Sandbox backends: the protocol in `base` (with the optional capabilities and `baseline_held`), `local`
and `kubernetes` each in their own package, chosen by `factory` (nothing else knows which is in use). The
router (`router`, `relay`), the route key's wire forms (`route_key`) and what a sandbox's clients are
given -- its environment and routing headers (`client`) -- serve both."""
