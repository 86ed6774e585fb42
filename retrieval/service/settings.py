"""The service's limits and resources (kept apart so the CLI can read the defaults without FastAPI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..types import MAX_ID_LENGTH


@dataclass
class ServiceSettings:
    """Limits and resources of one service. Each limit is enforced with a 4xx that names it."""

    max_query_chars: int = 2000
    max_k: int = 100
    max_batch_docs: int = 256
    max_doc_chars: int = 100_000
    max_id_chars: int = 256
    max_body_bytes: int = 8 * 1024 * 1024
    workers: int = 2            # threads that run searches and writes
    max_queue: int = 64         # requests waiting for a worker beyond those running; more get 429
    snippet_chars: int = 240
    threads: int | None = None  # Lucene search threads per domain
    device: str | None = None
    sync: bool = True           # fsync the journal before acknowledging a write
    compact_after: int = 10_000  # journal records that trigger a compaction in the background (0: only on request)

    def __post_init__(self):
        for name, value in asdict(self).items():
            if name.startswith("max_") or name in ("workers", "snippet_chars", "compact_after"):
                if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name in ("max_queue", "compact_after") else 1):
                    raise ValueError(f"service setting {name} must be a positive integer, got {value!r}")
        if self.max_id_chars > MAX_ID_LENGTH:
            raise ValueError(f"max_id_chars is at most {MAX_ID_LENGTH}, the longest id the library stores; got "
                             f"{self.max_id_chars}")
