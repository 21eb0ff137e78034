"""`loop batch`, an entry point: many runs in parallel on one shared baseline (`run`), and where each run
executes (`executors`: a process each, or a Kubernetes Job each)."""
