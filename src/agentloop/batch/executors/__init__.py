"""Where a batch's runs execute: `local` (a `loop fix` process each, the default) or `kubernetes` (a
Job each). Both hand the batch a `RunHandle` per run and read run summaries back."""
