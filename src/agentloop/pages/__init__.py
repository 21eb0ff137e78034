"""Run pages, an entry point like the CLI and the App: the list of runs and a page per run (verdict, a
timeline of where the time went, each iteration's diff, tests and logs, the evidence and its `loop verify`
status, approve / reject for a run paused by `--review`). Served at /ui by `loop serve` and alone by
`loop ui` on 127.0.0.1 (`web`); pages reached from a pull request carry a signed, expiring token
(`access.run_page_url` makes their address)."""
