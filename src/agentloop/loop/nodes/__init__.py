"""One module per graph node. Each exposes `run(state, ctx) -> dict` (the state update)."""
