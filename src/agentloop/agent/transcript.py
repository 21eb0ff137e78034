"""`runs/<id>/transcript.jsonl`: one JSON line per model request, response and retry, secrets redacted."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentloop.redact import redact


class Transcript:
    def __init__(self, path: Path, secrets: Sequence[str] = ()) -> None:
        self.path = path
        self._secrets = [s for s in secrets if s]
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"time": time.time(), "kind": kind, **fields}, default=str, ensure_ascii=False)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(redact(line, extra=self._secrets) + "\n")
