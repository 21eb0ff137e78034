"""`loop doctor`: every check a run depends on, one line each with its fix (`checks`), and the checks
that start a fresh baseline and run the suites on it (`baseline`)."""
