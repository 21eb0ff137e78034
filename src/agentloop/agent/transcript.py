"""`runs/<id>/transcript.jsonl`: one JSON line per model request, response and retry, secrets masked."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentloop.redact import Redactor


class Transcript:
    def __init__(self, path: Path, secrets: Sequence[str] = (), redactor: Redactor | None = None) -> None:
        self.path = path
        self._redactor = (redactor or Redactor.from_environment()).with_values(*secrets)
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"time": time.time(), "kind": kind, **fields}, default=str, ensure_ascii=False)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(self._redactor.mask(line) + "\n")
