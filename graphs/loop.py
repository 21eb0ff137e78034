"""The loop as a LangGraph Studio / Server entry point (see langgraph.json).

The server supplies its own checkpointer; a run needs a `RunContext` (repository, config, backends),
which `agentloop.runner` builds -- Studio shows and steps through the same graph the CLI runs.
"""

from agentloop.graph import build_graph

graph = build_graph()
