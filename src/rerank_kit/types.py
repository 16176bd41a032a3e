"""Typed results the clients return, the wire formats they parse, and how a document's text is found.

Wire models ignore fields a newer vLLM adds and fail on missing required ones, so a changed server
is a clear error rather than a silent zero.

    >>> r = RerankResult(index=2, relevance_score=0.9, document={"text": "b", "id": 7})
    >>> r.text
    'b'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class WireRerankResult(_Wire):
    index: int
    relevance_score: float


class WireUsage(_Wire):
    prompt_tokens: int = 0
    total_tokens: int = 0


class WireRerankResponse(_Wire):
    model: str = ""
    results: list[WireRerankResult]
    usage: WireUsage = Field(default_factory=WireUsage)


class WireScoreData(_Wire):
    index: int
    score: float


class WireScoreResponse(_Wire):
    model: str = ""
    data: list[WireScoreData]
    usage: WireUsage = Field(default_factory=WireUsage)


class WireModel(_Wire):
    id: str
    max_model_len: int | None = None
    root: str | None = None


class WireModelList(_Wire):
    data: list[WireModel]


# --- documents --------------------------------------------------------------------------------------


def document_text(document: Any, text_key: str = "text") -> str:
    """The text of a document given as a string, a mapping with ``text_key``, or an object with
    ``.text`` / ``.page_content`` (LangChain) / ``.get_content()`` (LlamaIndex); TypeError otherwise.

        >>> document_text({"text": "b", "id": 7})
        'b'
    """
    if isinstance(document, str):
        return document
    if isinstance(document, Mapping):
        value = document.get(text_key)
        if isinstance(value, str):
            return value
        raise TypeError(f"a mapping without a {text_key!r} string")
    for attr in ("text", "page_content"):
        value = getattr(document, attr, None)
        if isinstance(value, str):
            return value
    get_content = getattr(document, "get_content", None)
    if callable(get_content):
        value = get_content()
        if isinstance(value, str):
            return value
    raise TypeError(type(document).__name__)


# --- what callers get -------------------------------------------------------------------------------
# Plain frozen dataclasses and a named tuple: building 100 results per call must cost microseconds,
# not the ~2.5 us each that a pydantic model's validation costs (bench/client_overhead.py measures it).


class _Result:
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``json.dumps(..., default=str)`` for documents that are arbitrary objects)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if isinstance(value, (_Result, RerankResult)):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Usage(_Result):
    """Tokens the server counted, summed over every request a call made."""

    prompt_tokens: int = 0
    total_tokens: int = 0


class RerankResult(NamedTuple):
    """One document's score. ``index`` is its position in the caller's list.

    A named tuple: a call builds one per document, and a tuple is the cheapest immutable record.
    """

    index: int
    relevance_score: float
    # The caller's own document object (str, dict or any object), untouched; None if return_documents=False.
    document: Any = None

    @property
    def text(self) -> str | None:
        """The document's text when it was passed as a string or carries one."""
        if self.document is None:
            return None
        try:
            return document_text(self.document)
        except TypeError:
            return None

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


@dataclass(frozen=True, slots=True)
class RerankResponse(_Result):
    """Results sorted by relevance, best first (cut to ``top_n`` when asked)."""

    model: str
    results: list[RerankResult]
    usage: Usage = field(default_factory=Usage)
    # HTTP requests this call took (chunks of a long list; retries not counted).
    requests: int = 1
    # Query-document pairs the server scored: more than the documents when long ones were scored in windows
    # (a rerank-kit server's max_chunks_per_doc); None from a server that does not say (plain vLLM).
    pairs: int | None = None

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> RerankResult:
        return self.results[i]


@dataclass(frozen=True, slots=True)
class ScoreResponse(_Result):
    """Scores in input order: ``scores[i]`` belongs to the i-th pair."""

    model: str
    scores: list[float]
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True, slots=True)
class HealthStatus(_Result):
    """What `health()` found at one server URL."""

    url: str
    healthy: bool
    models: list[str] = field(default_factory=list)
    version: str | None = None
    latency_ms: float | None = None
    error: str | None = None
