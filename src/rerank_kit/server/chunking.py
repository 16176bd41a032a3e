"""Long documents scored in windows: a document longer than what fits beside the query is cut into token windows,
each window is scored as its own pair through the same recipe, and the document gets its best window's score.

This is Cohere's answer to long documents (its v1 API's ``max_chunks_per_doc``); vLLM only truncates, so a passage
past the first window is invisible. The guard (``server.guard``) applies it to every scoring route, so every client
benefits: /rerank, /v1/rerank, /v2/rerank, /score and /v1/score. For each request:

1. What fits (from the served model's IO processor, ``rerank_kit_window``): the document tokens that fit beside
   the query, i.e. ``--max-model-len`` less the query, the instruction and the template's fixed tokens (for a
   bi-encoder, which embeds a document alone, less its special tokens).
2. ``plan_windows``: a document of more tokens is cut into windows of that many tokens less ``MARGIN``, 12 %
   of them (``OVERLAP_PERCENT``) shared with the next window, the last one ending at the document's end; at
   most ``max_chunks_per_doc`` windows (the request's field, else the server's ``--max-chunks-per-doc``), the
   rest of a longer document unread (refused with ``--strict-length``). A document that fits is sent
   unchanged: it scores exactly as without chunking.
3. ``expand``: the request vLLM sees lists every window as a document (``top_n`` removed), bounded by the server's
   ``--max-documents`` in total (413 otherwise).
4. ``collapse``: one result per original document, its index, its text and the best window's score; ``top_n``
   applied after the maximum; a document scored in windows says which one won (``"chunk"``: its index, the number
   of windows and the window's character span). ``usage`` is vLLM's: every scored token.

Pure functions over parsed JSON and token offsets; the tokenizer and the window come from the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rerank_kit.server.bodycheck import RejectedRequest

# Tokens left free in a window: the window's text tokenized on its own may come out a token longer at an edge
# (SentencePiece's word-start mark before a window that starts inside a word; a merge the surrounding text
# prevented), and a template that tokenizes the prompt whole may merge the document with its neighbours. What
# still does not fit is cut from the window's end by the plugin's truncation rule.
MARGIN = 2
# Tokens a query may add to a prompt beyond one per UTF-8 byte of it: SentencePiece's word-start mark, and the
# merges a template tokenized whole makes or breaks where the query meets its neighbours.
QUERY_SLACK = 16
# Tokens a window shares with the next, in percent of the window: a passage cut by a window's end still has
# this much of it whole in the next window (bench/RESULTS.md section 10 measured 0, 12 and 25; the server's
# RERANK_KIT_CHUNK_OVERLAP_PERCENT, which is there to measure others).
OVERLAP_PERCENT = 12
# The request field (Cohere v1's name) and the score routes' field pairs (first: the queries' side).
FIELD = "max_chunks_per_doc"
SCORE_FIELDS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))


@dataclass
class Plan:
    """Which original document each expanded position scores, and where in it."""

    owners: list[int] = field(default_factory=list)  # expanded position -> original document index
    spans: list[tuple[int, int] | None] = field(default_factory=list)  # its character span; None: the whole
    counts: list[int] = field(default_factory=list)  # windows per original document
    firsts: list[int] = field(default_factory=list)  # each original document's first expanded position

    @property
    def pairs(self) -> int:
        return len(self.owners)


def overlap(window: int, percent: int = OVERLAP_PERCENT) -> int:
    """Tokens a window of ``window`` tokens shares with the next one.

    >>> overlap(254), overlap(8190), overlap(1), overlap(254, 0)
    (30, 982, 0, 0)
    """
    return window * percent // 100


def plan_windows(
    n_tokens: int, window: int, max_chunks: int, percent: int = OVERLAP_PERCENT
) -> list[tuple[int, int]] | None:
    """Token ranges ``[start, end)`` of a document of ``n_tokens`` tokens, or None when it is read whole.

    Windows of ``window`` tokens, each starting ``window - overlap(window)`` after the previous; the last one
    ends at the document's end (so every window is full) unless ``max_chunks`` windows stop short of it.

        >>> plan_windows(10, 16, 8) is None, plan_windows(100, 16, 1) is None
        (True, True)
        >>> plan_windows(40, 16, 8)
        [(0, 16), (15, 31), (24, 40)]
        >>> plan_windows(40, 16, 2)
        [(0, 16), (15, 31)]
    """
    if n_tokens <= window or max_chunks <= 1 or window < 1:
        return None
    stride = max(1, window - overlap(window, percent))
    starts = list(range(0, n_tokens - window, stride))[:max_chunks]
    if len(starts) < max_chunks:
        starts.append(n_tokens - window)
    return [(s, min(s + window, n_tokens)) for s in starts]


def spans(offsets: Sequence[tuple[int, int]], ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans of token ranges, from the tokenizer's offsets (first token's start, last token's end)."""
    return [(offsets[start][0], offsets[end - 1][1]) for start, end in ranges]


def max_chunks(body: dict[str, Any], default: int) -> int:
    """The request's ``max_chunks_per_doc``, else the server's; 400 for anything but a positive integer."""
    value = body.get(FIELD)
    if value is None:
        return default
    if type(value) is not int or value < 1:
        raise RejectedRequest(
            400,
            f"{FIELD} must be a positive integer (1 reads each document's first window only), not {value!r}",
            "BadRequestError",
            FIELD,
        )
    return value


def documents_field(path: str, body: dict[str, Any]) -> tuple[str | None, str] | None:
    """(queries field or None, documents field) of a scoring body: ``query``/``documents`` on the rerank routes,
    one of vLLM's score field pairs on the score routes; None when the body has none of them."""
    if path.endswith("rerank"):
        return (None, "documents") if "documents" in body else None
    for first, second in SCORE_FIELDS:
        if first in body and second in body:
            return first, second
    return None


def expand(
    body: dict[str, Any],
    queries_field: str | None,
    documents_field_: str,
    cuts: list[list[tuple[int, int]] | None],
    *,
    limit: int,
    requested: int,
) -> tuple[dict[str, Any], Plan]:
    """The body vLLM scores: every window of a cut document as a document of its own (``cuts[i]``: document
    i's character spans, None: whole), its query repeated beside it where queries pair one to one; ``top_n``
    and ``max_chunks_per_doc`` removed. 413 when the windows add up to more than ``limit`` pairs."""
    documents = _as_list(body[documents_field_])
    plan = Plan()
    texts: list[Any] = []
    for index, (document, cut) in enumerate(zip(documents, cuts, strict=True)):
        plan.firsts.append(len(plan.owners))
        for span in cut or [None]:
            plan.owners.append(index)
            plan.spans.append(span)
            texts.append(document if span is None else document[span[0] : span[1]])
        plan.counts.append(len(cut or [None]))
    if plan.pairs > limit:
        raise RejectedRequest(
            413,
            f"{len(documents)} documents make {plan.pairs:,} windows to score ({requested} at most per document, "
            f"{FIELD}); this server scores at most {limit:,} per request (--max-documents): send fewer "
            f"documents or a smaller {FIELD}",
            "RequestTooLargeError",
            documents_field_,
        )
    out = {k: v for k, v in body.items() if k not in ("top_n", FIELD)}
    out[documents_field_] = texts
    if queries_field is not None:
        queries = body[queries_field]
        if isinstance(queries, list) and len(queries) == len(documents) and len(documents) > 1:
            out[queries_field] = [queries[owner] for owner in plan.owners]
    return out, plan


def collapse_rerank(response: dict[str, Any], plan: Plan, documents: list[Any], top_n: int | None) -> dict[str, Any]:
    """vLLM's rerank response over the windows -> one result per original document, best first, ``top_n``."""
    best: dict[int, tuple[float, int]] = {}
    for result in response["results"]:
        position = result["index"]
        owner, score = plan.owners[position], result["relevance_score"]
        if owner not in best or score > best[owner][0]:
            best[owner] = (score, position)
    results = []
    for owner, (score, position) in best.items():
        document = documents[owner]
        result: dict[str, Any] = {
            "index": owner,
            "document": {"text": document, "multi_modal": None} if isinstance(document, str) else document,
            "relevance_score": score,
        }
        results.append(_with_chunk(result, plan, owner, position))
    results.sort(key=lambda r: r["relevance_score"], reverse=True)
    if top_n:
        results = results[:top_n]
    return {**response, "results": results}


def collapse_score(response: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """vLLM's score response over the windows -> one item per original document, in the documents' order."""
    best: dict[int, tuple[float, int, dict[str, Any]]] = {}
    for item in response["data"]:
        position = item["index"]
        owner, score = plan.owners[position], item["score"]
        if owner not in best or score > best[owner][0]:
            best[owner] = (score, position, item)
    data = [
        _with_chunk({**item, "index": owner, "score": score}, plan, owner, position)
        for owner, (score, position, item) in sorted(best.items())
    ]
    return {**response, "data": data}


def _with_chunk(result: dict[str, Any], plan: Plan, owner: int, position: int) -> dict[str, Any]:
    count = plan.counts[owner]
    span = plan.spans[position]
    if count > 1 and span is not None:
        result["chunk"] = {"index": position - plan.firsts[owner], "count": count, "start": span[0], "end": span[1]}
    return result


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- the request's cuts, from the served model's tokenizer ---------------------------------------------------


def chat_template_kwargs(body: dict[str, Any]) -> dict[str, Any] | None:
    """The template kwargs vLLM renders with: ``chat_template_kwargs`` with a top-level ``instruction`` folded in
    (vLLM's ``ScoringRequestMixin`` rule: an explicit key wins)."""
    kwargs = body.get("chat_template_kwargs")
    instruction = body.get("instruction")
    if instruction is None:
        return kwargs if isinstance(kwargs, dict) else None
    merged = dict(kwargs) if isinstance(kwargs, dict) else {}
    merged.setdefault("instruction", instruction)
    return merged


class Chunker:
    """Cuts a request's documents for one served model: its IO processor's ``rerank_kit_window`` (set by the
    rerank-kit plugin) and its tokenizer, which must give character offsets (a Hugging Face fast tokenizer)."""

    def __init__(self, io_processor: Any, overlap_percent: int = OVERLAP_PERCENT) -> None:
        self.window_of = io_processor.rerank_kit_window
        self.tokenizer = io_processor.tokenizer
        self.overlap_percent = overlap_percent
        # vLLM's own tokenizer threads (the renderer's pool), or None (asyncio's default executor). vLLM's tokenizer
        # keeps one copy per renderer thread; a call from any other thread while they are busy deep-copies the
        # whole tokenizer (0.5 s of the API server's time for a 150k vocabulary), and the copy stays.
        self.executor = getattr(io_processor, "_executor", None)
        # template kwargs -> the window beside a one-byte query (``floor``); bounded, as instructions vary
        self._floors: dict[str, int] = {}

    def floor(self, query: str, kwargs: dict[str, Any] | None, *, compute: bool = True) -> int | None:
        """A lower bound of the document tokens that fit beside ``query``, without tokenizing it: the window
        beside a one-byte query (computed once per template kwargs), less a token per UTF-8 byte of ``query``
        and ``QUERY_SLACK``. None when not computed yet and ``compute`` is false."""
        base = self._base(kwargs, compute)
        return None if base is None else base - len(query.encode()) - QUERY_SLACK

    def _base(self, kwargs: dict[str, Any] | None, compute: bool = True) -> int | None:
        """The window beside a one-byte query for these template kwargs (``floor``), cached."""
        key = repr(sorted(kwargs.items())) if kwargs else ""
        if (base := self._floors.get(key)) is None:
            if not compute:
                return None
            base = self.window_of("a", kwargs)
            if len(self._floors) >= 256:
                self._floors.clear()
            self._floors[key] = base
        return base

    def fits_as_sent(self, queries: list[Any], documents: list[Any], kwargs: dict[str, Any] | None) -> bool:
        """True when every document surely fits beside its query whole (``floor``) with the template kwargs'
        window known: nothing to tokenize, so the caller need not leave the event loop. False: ask ``cuts``."""
        base = self._base(kwargs, compute=False)
        for query, document in zip(queries, documents, strict=True):
            if not isinstance(document, str) or not isinstance(query, str):
                continue
            if base is None:
                return False
            floor = base - len(query.encode()) - QUERY_SLACK
            if floor <= MARGIN or len(document.encode()) >= floor:
                return False
        return True

    @classmethod
    def of(cls, io_processor: Any, overlap_percent: int = OVERLAP_PERCENT) -> Chunker | None:
        """A chunker for this IO processor, or None where it cannot cut: no plugin window (plugin off, a vLLM
        it does not wrap, a late-interaction or listwise model) or a tokenizer without offsets."""
        if getattr(io_processor, "rerank_kit_window", None) is None:
            return None
        if not getattr(getattr(io_processor, "tokenizer", None), "is_fast", False):
            return None
        return cls(io_processor, overlap_percent)

    def cuts(
        self,
        queries: list[Any],
        documents: list[Any],
        kwargs: dict[str, Any] | None,
        *,
        max_chunks: int,
        strict: bool,
        max_tokens_per_doc: int = 0,
    ) -> list[list[tuple[int, int]] | None]:
        """Each document's windows as character spans (None: read whole). ``queries`` pairs one to one with
        ``documents`` (a single query repeated). With ``strict``, a document that needs more than ``max_chunks``
        windows is refused (400) instead of being read in part."""
        fits: dict[str, int] = {}  # query -> document tokens that fit beside it
        cuts: list[list[tuple[int, int]] | None] = [None] * len(documents)
        if max_chunks <= 1 and not strict:
            return cuts  # truncation, as without chunking: nothing to tokenize here
        todo: list[tuple[int, int]] = []  # (document index, what fits)
        base: int | None = None  # the kwargs' window beside a one-byte query (``floor``), looked up once
        for i, (query, document) in enumerate(zip(queries, documents, strict=True)):
            if not isinstance(document, str) or not isinstance(query, str):
                continue  # multimodal content: vLLM's own rules
            # A token covers at least one UTF-8 byte (a SentencePiece word start at most one more): what has
            # fewer bytes than fit cannot be too long, and is not tokenized here. Most documents are far shorter
            # than the window: the floor says so without rendering this query's prompt.
            size = len(document.encode())
            if base is None:
                base = self._base(kwargs)
            if (floor := base - len(query.encode()) - QUERY_SLACK) > MARGIN and size < floor:
                continue
            if query not in fits:
                fits[query] = self.window_of(query, kwargs)
            limit = fits[query]
            if limit <= MARGIN or size < limit:
                continue
            todo.append((i, limit))
        if not todo:
            return cuts
        encoded = self.tokenizer(
            [documents[i] for i, _ in todo], add_special_tokens=False, return_offsets_mapping=True
        )["offset_mapping"]
        for (i, limit), offsets in zip(todo, encoded, strict=True):
            n = min(len(offsets), max_tokens_per_doc) if max_tokens_per_doc > 0 else len(offsets)
            if n <= limit:
                continue  # fits whole: sent as it came
            window = limit - MARGIN
            needed = len(plan_windows(n, window, n, self.overlap_percent) or ()) if strict else 0
            if needed > max_chunks:
                raise RejectedRequest(
                    400,
                    f"document {i} needs {needed} windows of {window} tokens beside its query and {FIELD} is "
                    f"{max_chunks}; this server does not read documents in part (--strict-length): raise "
                    f"{FIELD} or shorten the document",
                    "BadRequestError",
                    FIELD,
                )
            ranges = plan_windows(n, window, max_chunks, self.overlap_percent)
            if ranges is not None:
                cuts[i] = spans(offsets, ranges)
        return cuts
