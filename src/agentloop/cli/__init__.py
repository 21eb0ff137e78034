"""The `loop` command, an entry point: one module per command group (`main` wires them) and everything a
person reads on a terminal (`display`, `show`, `batch_view`, `demo`). Nothing below imports from here."""
