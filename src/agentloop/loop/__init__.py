"""The engine: the graph wired in one file (`graph`), the typed state flowing between its nodes (`state`),
what nodes are given besides the state (`context`), one module per node (`nodes`), and what a run does
before and after its graph (`runner`). `studio` serves the same graph on LangGraph Server.
Uses the adapters (agent, sandbox, forge, validation, evidence, runs); entry points (cli, app, batch) use it."""
