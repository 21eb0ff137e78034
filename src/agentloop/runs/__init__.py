"""A run's folder on disk, `runs/<run-id>/` (`folder`), and the shared store of run summaries and events in
PostgreSQL that a team points every machine at (`store`)."""
