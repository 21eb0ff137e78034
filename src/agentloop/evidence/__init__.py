"""Evidence: the run record's `evidence.json` and the pull request body rendered from it."""

from agentloop.evidence.manifest import (
    EVIDENCE_FILE,
    SCHEMA_VERSION,
    artifacts,
    finalize_evidence,
    sha256_of,
    write_evidence,
)
from agentloop.evidence.report import is_draft, render_report

__all__ = ["EVIDENCE_FILE", "SCHEMA_VERSION", "artifacts", "finalize_evidence", "is_draft", "render_report",
           "sha256_of", "write_evidence"]
