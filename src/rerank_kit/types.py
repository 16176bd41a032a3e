"""Typed results the clients return, and the wire formats they parse.

Wire models ignore fields a newer vLLM adds and fail on missing required ones, so a changed server
is a clear error rather than a silent zero.

    >>> r = RerankResult(index=2, relevance_score=0.9, document={"text": "b", "id": 7})
    >>> r.text
    'b'
"""

from __future__ import annotations

from typing import Any

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


# --- what callers get -------------------------------------------------------------------------------


class Usage(BaseModel):
    """Tokens the server counted, summed over every request a call made."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    total_tokens: int = 0


class RerankResult(BaseModel):
    """One document's score. ``index`` is its position in the caller's list."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    index: int
    relevance_score: float
    # The caller's own document object (str, dict or any object), untouched; None if return_documents=False.
    document: Any = None

    @property
    def text(self) -> str | None:
        """The document's text when it was passed as a string or carries one."""
        from rerank_kit._core import document_text

        if self.document is None:
            return None
        try:
            return document_text(self.document)
        except TypeError:
            return None


class RerankResponse(BaseModel):
    """Results sorted by relevance, best first (cut to ``top_n`` when asked)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    model: str
    results: list[RerankResult]
    usage: Usage = Field(default_factory=Usage)
    # HTTP requests this call took (chunks of a long list; retries not counted).
    requests: int = 1

    def __iter__(self):  # type: ignore[override]
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> RerankResult:
        return self.results[i]


class ScoreResponse(BaseModel):
    """Scores in input order: ``scores[i]`` belongs to the i-th pair."""

    model_config = ConfigDict(frozen=True)

    model: str
    scores: list[float]
    usage: Usage = Field(default_factory=Usage)


class HealthStatus(BaseModel):
    """What `health()` found at one server URL."""

    model_config = ConfigDict(frozen=True)

    url: str
    healthy: bool
    models: list[str] = Field(default_factory=list)
    version: str | None = None
    latency_ms: float | None = None
    error: str | None = None
