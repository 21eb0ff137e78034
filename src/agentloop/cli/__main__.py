"""`python -m agentloop.cli`: the same as the `loop` command."""

from agentloop.cli.main import main

main()
