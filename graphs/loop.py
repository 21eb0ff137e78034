"""The loop as a LangGraph Server / Studio entry point (see langgraph.json): `langgraph dev` serves it.

The same nodes and edges the CLI runs, between a `start` node that builds the run from the run's context
(`repo`, `issue`, `model`, `max_iterations`; all optional: by default a fresh copy of examples/shop and its
scripted cassette) and a `finish` node that stops what the run started. See `agentloop.loop.studio`.
"""

from agentloop.loop.studio import build_server_graph

graph = build_server_graph()
