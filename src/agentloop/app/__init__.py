"""The GitHub App, an entry point like the CLI: the webhook server (`server`, `events`, `auth`), the durable
job queue it fills (`queue`, `db`, `schema`, `writer`), and the worker processes that run each job through
the engine (`pool`, `worker`) in a clone per repository (`checkout`). The REST client it posts with is an
adapter, `forge.github`."""
