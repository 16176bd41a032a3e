"""A whole request's score prompts at once: the template rendered once, each distinct text tokenized once.

vLLM's API server builds a cross-encoder's prompts pair by pair: one template render and one tokenizer call
per (query, document) pair, each dispatched to a thread pool (plus one more call per piece when the
rerank-kit plugin tokenizes a prompt in pieces). On a GPU that per-pair Python work, not the model, limits a
reranker's throughput. Here the same token ids come from one render and one batched tokenizer call per
request:

- the template is rendered once with placeholder characters for the query, the document and the
  instruction (its *skeleton*), and each pair's text is the skeleton with the placeholders replaced. That
  is exact for a template that inserts the texts verbatim, which ``skeleton()`` checks with probe texts
  before it is used; a template that transforms them (``| trim``, ``| upper``, branches on content) gets no
  skeleton and the caller keeps its per-pair path. The instruction is a placeholder too, so one skeleton
  serves every instruction a client sends;
- texts are deduplicated before the tokenizer sees them: a query's pieces are tokenized once per request,
  not once per document (a BERT-style pair too: its texts tokenized alone, joined by the tokenizer's pair
  template as its post-processor joins them, ``_template_pairs``);
- one tokenizer call per distinct kind of text, which Hugging Face tokenizers encode in a batch.

The piecewise rule (the references' way: each piece of the prompt tokenized on its own, the document's
piece cut to fit) is here once, in ``_joined``, for one pair (``piecewise_token_ids``, the plugin's per-pair
path for a template without a skeleton) and for a whole request (``template_prompts``). Both find the
document's and the query's piece by placeholder, never by searching for the text. Pure functions over a
Hugging Face tokenizer; no vLLM import (the plugin wires them in).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rerank_kit.server import fast_bpe

try:
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers.processors import TemplateProcessing as RustTemplate
except ImportError:  # no Hugging Face tokenizers: every call goes through the tokenizer object
    RustTokenizer = RustTemplate = None

# Rust tokenizer -> its pair template (``_pair_template``; None: not a TemplateProcessing)
_TEMPLATES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_UNSEEN = object()

# Private Rust tokenizers ``_rust_encodings`` keeps per truncation setting (each holds the whole vocabulary).
MAX_TOKENIZER_COPIES = 4

# Private-use code points: no tokenizer or template ever sees them (texts that contain one are not
# batched, see ``batchable``).
PIECE_SEP = "\U000f8a5e"
QUERY_MARK = "\U000f8a5f"
DOC_MARK = "\U000f8a60"
INSTRUCTION_MARK = "\U000f8a61"
MARKS = (PIECE_SEP, QUERY_MARK, DOC_MARK, INSTRUCTION_MARK)

# (query, document, instruction) a verbatim template must reproduce exactly: whitespace at the edges,
# template syntax, markup, quotes, control characters, the empty string, the words the reranker templates
# themselves use. Instructions are never empty: templates replace an empty one with their default task, so
# a request without an instruction has a skeleton of its own.
PROBES: tuple[tuple[str, str, str], ...] = (
    ("q", "d", "i"),
    ("  leading and trailing  ", "\n\ttabs and newlines\n\n", " "),
    ("", "", "\n"),
    ("{{ query }} {% raw %}", "{# comment #} }}", "{{ instruction }} {% endraw %}"),
    ("<b>&amp;\"'</b>", "\r\n\\n yes no", "  Given a query, <b>&amp;\"'</b>\r\n"),
    ("Ünïcode ✓ 中文", "Instruct: Query: Document:", "Ünïcode ✓ 中文 Instruct:"),
)


@dataclass(frozen=True)
class Prompt:
    """One pair's model input: what vLLM's ``TokensPrompt`` carries."""

    token_ids: list[int]
    token_type_ids: list[int] | None = None


# (query, document, instruction) -> the rendered template; a renderer for a request without an instruction
# ignores the third argument.
Render = Callable[[str, str, str], str]


def batchable(texts: Sequence[Any]) -> bool:
    """Plain strings without the placeholder characters."""
    return all(isinstance(t, str) and not any(m in t for m in MARKS) for t in texts)


def skeleton(render: Render) -> str | None:
    """The template rendered with placeholders, or None when it does not insert its texts verbatim.

    The skeleton holds the query's and the document's placeholder once each, and the instruction's at most
    once (none: the template does not use the instruction, or ``render`` does not pass one).
    """
    try:
        shape = render(QUERY_MARK, DOC_MARK, INSTRUCTION_MARK)
        if shape.count(QUERY_MARK) != 1 or shape.count(DOC_MARK) != 1 or shape.count(INSTRUCTION_MARK) > 1:
            return None
        for query, document, instruction in PROBES:
            if render(query, document, instruction) != fill(with_instruction(shape, instruction), query, document):
                return None
    except Exception:  # a template that cannot render probes is handled by the caller's per-pair path
        return None
    return shape


def with_instruction(shape: str, instruction: str) -> str:
    """The skeleton for one request: its instruction in place (``batchable`` texts only)."""
    return shape.replace(INSTRUCTION_MARK, instruction)


def fill(shape: str, query: str, document: str) -> str:
    return shape.replace(QUERY_MARK, query).replace(DOC_MARK, document)


def _encode_unique(tokenizer: Any, texts: list[str], *, add_special_tokens: bool) -> list[list[int]]:
    """Token ids of each text, one tokenizer call for the distinct ones (equal texts share one list: read only)."""
    unique = list(dict.fromkeys(texts))
    ids = _ids(tokenizer, unique, add_special_tokens) if unique else []
    by_text = dict(zip(unique, ids, strict=True))
    return [by_text[t] for t in texts]


def _ids(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=...)["input_ids"]``: through tiktoken where ``fast_bpe`` gives the same
    ids (plain texts, no special tokens), from ``_rust_encodings`` where it can, else the tokenizer's own call."""
    if not add_special_tokens and (fast := fast_bpe.get(tokenizer)) is not None:
        return fast.encode(texts, lambda rest: _tokenizer_ids(tokenizer, rest, False))
    return _tokenizer_ids(tokenizer, texts, add_special_tokens)


def _tokenizer_ids(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    encodings = _rust_encodings(tokenizer, texts, {"add_special_tokens": add_special_tokens}, None)
    if encodings is not None:
        return [e.ids for e in encodings]
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]


def _rust_encodings(tokenizer: Any, inputs: list[Any], encode_kwargs: dict, copies: dict | None) -> list[Any] | None:
    """What ``tokenizer(inputs, **encode_kwargs)`` encodes, straight from its Rust tokenizer, or None where that call
    might differ. Transformers wraps the same ``encode_batch`` and builds a dict of lists per text around it; the
    ids need no character offsets (``encode_batch_fast``): a third of the tokenizer's time per document.

    For a Hugging Face fast tokenizer. Transformers first sets its Rust tokenizer's truncation and padding for the
    call (none, or ``truncation=True`` to ``max_length``); with ``copies`` (a dict the caller keeps) that is done
    once, on a private copy per setting. Without, only a Rust tokenizer that needs no setting is used, as it is.
    Read-only on the shared tokenizer: safe from several threads (vLLM's own calls go to copies of it)."""
    if (limit := _limit(encode_kwargs)) is False or (backend := _backend(tokenizer, limit, copies)) is None:
        return None
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    return encode(inputs, add_special_tokens=encode_kwargs.get("add_special_tokens", True))


def _backend(tokenizer: Any, limit: int | None, copies: dict | None) -> Any:
    """The Rust tokenizer that encodes as transformers' call truncating to ``limit`` does: a private copy set so
    (kept in ``copies``), or without ``copies`` the shared one where it needs no setting; None: neither."""
    shared = getattr(tokenizer, "_tokenizer", None)
    if RustTokenizer is None or not isinstance(shared, RustTokenizer):
        return None
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    side = getattr(tokenizer, "truncation_side", "right")
    if copies is not None:
        if (backend := copies.get((limit, side, split))) is None:
            if len(copies) >= MAX_TOKENIZER_COPIES:  # a client varying truncate_prompt_tokens: transformers' call
                return None
            backend = RustTokenizer.from_str(shared.to_str())
            backend.no_padding()
            if limit is None:
                backend.no_truncation()
            else:
                backend.enable_truncation(limit, stride=0, strategy="longest_first", direction=side)
            backend.encode_special_tokens = split
            copies[(limit, side, split)] = backend
        return backend
    if limit is None and (shared.truncation, shared.padding, shared.encode_special_tokens) == (None, None, split):
        return shared
    return None


def _limit(encode_kwargs: dict) -> int | Literal[False] | None:
    """The length transformers truncates a call with ``encode_kwargs`` to (None: none), False where that call
    takes other arguments (a call this module leaves to transformers)."""
    if not set(encode_kwargs) <= {"add_special_tokens", "truncation", "max_length"}:
        return False
    truncation, max_length = encode_kwargs.get("truncation", False), encode_kwargs.get("max_length")
    if truncation is True and isinstance(max_length, int) and max_length > 0:
        return max_length
    if truncation is False or truncation is None:
        return None
    return False


def _pair_template(shared: Any) -> tuple[tuple[Any, ...], int] | None:
    """The Rust tokenizer's pair template as (pieces, tokens it adds): a piece is ``"A"`` or ``"B"`` (a text) with
    its type id, or a special token's ids with theirs. None for a post-processor other than ``TemplateProcessing``
    (BERT's, XLM-R's and their kin's as transformers converts them)."""
    cached = _TEMPLATES.get(shared, _UNSEEN)
    if cached is not _UNSEEN:
        return cached
    template = None
    processor = shared.post_processor
    if RustTemplate is not None and isinstance(processor, RustTemplate):
        state = json.loads(processor.__getstate__())
        specials = {name: token["ids"] for name, token in state.get("special_tokens", {}).items()}
        pieces: list[Any] = []
        for piece in state.get("pair", ()):
            if "Sequence" in piece:
                pieces.append((piece["Sequence"]["id"], piece["Sequence"]["type_id"]))
            else:
                pieces.append((list(specials[piece["SpecialToken"]["id"]]), piece["SpecialToken"]["type_id"]))
        added = sum(len(p) for p, _ in pieces if not isinstance(p, str))
        texts = sorted(p for p, _ in pieces if isinstance(p, str))
        if texts == ["A", "B"] and added == processor.num_special_tokens_to_add(True):
            template = (tuple(pieces), added)
    _TEMPLATES[shared] = template
    return template


def _template_pairs(
    tokenizer: Any, queries: list[str], documents: list[str], encode_kwargs: dict, copies: dict | None
) -> list[Prompt] | None:
    """``tokenizer(text=query, text_pair=document, **encode_kwargs)`` for every pair from each distinct text's ids
    (one Rust call: a request's query once, not once per document) joined by the tokenizer's pair template, as its
    post-processor joins them. A pair longer than the truncation limit goes to ``_rust_encodings`` (cut as
    transformers cuts it); None where the Rust tokenizer is not one this applies to."""
    if encode_kwargs.get("add_special_tokens", True) is not True or (limit := _limit(encode_kwargs)) is False:
        return None
    if (backend := _backend(tokenizer, None, copies)) is None or (template := _pair_template(backend)) is None:
        return None
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    unique = list(dict.fromkeys([*queries, *documents]))
    by_text = dict(zip(unique, (e.ids for e in encode(unique, add_special_tokens=False)), strict=True))
    pieces, added = template
    types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    prompts: list[Prompt] = []
    long: list[int] = []
    for i, (query, document) in enumerate(zip(queries, documents, strict=True)):
        texts = {"A": by_text[query], "B": by_text[document]}
        if limit is not None and len(texts["A"]) + len(texts["B"]) + added > limit:
            long.append(i)
        ids: list[int] = []
        type_ids: list[int] | None = [] if types else None
        for piece, type_id in pieces:
            part = texts[piece] if isinstance(piece, str) else piece
            ids += part
            if type_ids is not None:
                type_ids += [type_id] * len(part)
        prompts.append(Prompt(ids, type_ids))
    if long:
        encodings = _rust_encodings(tokenizer, [(queries[i], documents[i]) for i in long], encode_kwargs, copies)
        if encodings is None:
            return None
        for i, prompt in zip(long, _from_rust(tokenizer, encodings), strict=True):
            prompts[i] = prompt
    return prompts


def _from_rust(tokenizer: Any, encodings: list[Any]) -> list[Prompt]:
    """Prompts from Rust encodings, token types where transformers returns them (the model takes them)."""
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        return [Prompt(e.ids, e.type_ids) for e in encodings]
    return [Prompt(e.ids, None) for e in encodings]


def _from_encoding(encoding: Any) -> list[Prompt]:
    types = encoding.get("token_type_ids")
    return [
        Prompt(list(ids), list(types[i]) if types is not None else None) for i, ids in enumerate(encoding["input_ids"])
    ]


def pair_prompts(
    tokenizer: Any, queries: list[str], documents: list[str], encode_kwargs: dict, copies: dict | None = None
) -> list[Prompt]:
    """BERT-style cross-encoders: ``tokenizer(text=query, text_pair=document)`` for every pair, in one call
    (``_template_pairs``: each distinct text once, else ``_rust_encodings``: each pair; ``copies``: their Rust
    tokenizers set as transformers sets them, kept by the caller).

    Except pairs with an empty text: alone, transformers treats an empty ``text_pair`` as no pair (one
    [SEP]); in a batch it is an empty second sequence (two). Those are tokenized one by one, as vLLM does.
    """
    prompts = _template_pairs(tokenizer, queries, documents, encode_kwargs, copies)
    if prompts is None:
        encodings = _rust_encodings(tokenizer, list(zip(queries, documents, strict=True)), encode_kwargs, copies)
        if encodings is not None:
            prompts = _from_rust(tokenizer, encodings)
        else:
            prompts = _from_encoding(tokenizer(text=queries, text_pair=documents, **encode_kwargs))
    for i, (query, document) in enumerate(zip(queries, documents, strict=True)):
        if not (query and document):
            one = tokenizer(text=query, text_pair=document, **encode_kwargs)
            types = one.get("token_type_ids")
            prompts[i] = Prompt(list(one["input_ids"]), list(types) if types is not None else None)
    return prompts


def joined_prompts(
    tokenizer: Any, queries: list[str], documents: list[str], encode_kwargs: dict, copies: dict | None = None
) -> list[Prompt]:
    """vLLM's "LLM as reranker" default without a template: query + document as one text."""
    texts = [q + d for q, d in zip(queries, documents, strict=True)]
    if (encodings := _rust_encodings(tokenizer, texts, encode_kwargs, copies)) is not None:
        return _from_rust(tokenizer, encodings)
    return _from_encoding(tokenizer(texts, **encode_kwargs))


def special_token_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a text when add_special_tokens=True."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    framed = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(framed) - len(plain) + 1):
        if framed[start : start + len(plain)] == plain:
            return list(framed[:start]), list(framed[start + len(plain) :])
    return [], []


def piecewise_token_ids(
    tokenizer: Any,
    rendered: str,
    marked: str | None,
    *,
    frame: tuple[list[int], list[int]] = ([], []),
    max_length: int | None = None,
) -> list[int]:
    """Tokenize ``rendered`` one ``PIECE_SEP``-delimited piece at a time, inside ``frame``, cut as ``_joined`` says.

    ``marked`` is the same template rendered with the same arguments but ``QUERY_MARK`` and ``DOC_MARK`` in
    place of the query and the document: the pieces that hold them are the query's and the document's, for
    any text (a document that also occurs in the template's fixed text, e.g. "think" in Qwen3's suffix,
    still finds its own piece). When the two renders split into different numbers of pieces, or a mark is
    not in exactly one piece (a template that branches on its texts; ``marked`` None), no piece is known
    and an over-long prompt is cut from its end. ``frame`` is the (prefix, suffix) of special tokens,
    e.g. ``([bos], [])`` for Gemma.
    """
    pieces = rendered.split(PIECE_SEP)
    encoded = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) if p else [] for p in pieces]
    marks = marked.split(PIECE_SEP) if marked is not None else []
    known = len(marks) == len(pieces)
    doc_piece = _holder(marks, DOC_MARK) if known else None
    query_piece = _holder(marks, QUERY_MARK) if known else None
    return _joined(encoded, frame, doc_piece, query_piece, max_length)


def _holder(pieces: list[str], mark: str) -> int | None:
    """The index of the one piece that holds ``mark``, when it occurs exactly once."""
    holders = [i for i, p in enumerate(pieces) if mark in p]
    return holders[0] if len(holders) == 1 and pieces[holders[0]].count(mark) == 1 else None


def _joined(
    encoded: list[list[int]],
    frame: tuple[list[int], list[int]],
    doc_piece: int | None,
    query_piece: int | None,
    max_length: int | None,
) -> list[int]:
    """The pieces' ids inside ``frame``, at most ``max_length`` of them: the one truncation rule.

    Past ``max_length``, the document's piece loses tokens from its end, as the references do
    ("only_second" truncation); once it is empty, the query's piece loses tokens from its end; if the
    rest (the template's fixed pieces and the frame) still does not fit, the whole is cut from its end.
    So the task prompt and the suffix survive whenever the fixed pieces fit. A piece that is not known
    (None) is skipped.
    """
    prefix, suffix = frame
    if max_length is not None:
        excess = len(prefix) + len(suffix) + sum(len(e) for e in encoded) - max_length
        for piece in dict.fromkeys(p for p in (doc_piece, query_piece) if p is not None):
            if excess <= 0:
                break
            keep = max(0, len(encoded[piece]) - excess)
            excess -= len(encoded[piece]) - keep
            encoded[piece] = encoded[piece][:keep]
    joined = list(prefix)
    for e in encoded:
        joined += e
    joined += suffix
    return joined if max_length is None else joined[: max(0, max_length)]


def template_prompts(
    tokenizer: Any,
    shape: str,
    queries: list[str],
    documents: list[str],
    encode_kwargs: dict,
    *,
    piecewise: bool,
    frame: tuple[list[int], list[int]] = ([], []),
) -> list[Prompt]:
    """Every pair's prompt from the template's skeleton.

    ``shape`` is a skeleton with the request's instruction in place (``with_instruction``). Whole (vLLM's
    behaviour): each filled text tokenized with ``encode_kwargs``. Piecewise (the references' behaviour, see
    rerank_kit.server.plugin): the skeleton split at ``PIECE_SEP``, each piece tokenized on its own inside
    ``frame``, and with truncation the pieces that hold the document and the query cut as ``_joined`` says.
    """
    if not piecewise:
        texts = [fill(shape, q, d) for q, d in zip(queries, documents, strict=True)]
        return _from_encoding(tokenizer(texts, **encode_kwargs))
    pieces = [p for p in shape.split(PIECE_SEP) if p]
    # per piece: the token ids of each pair's version of it (a fixed piece is one text for every pair)
    columns = [
        _encode_unique(tokenizer, [fill(p, q, d) for q, d in zip(queries, documents, strict=True)],
                       add_special_tokens=False)
        for p in pieces
    ]  # fmt: skip
    doc_piece, query_piece = _holder(pieces, DOC_MARK), _holder(pieces, QUERY_MARK)
    max_length = encode_kwargs.get("max_length") if encode_kwargs.get("truncation") else None
    frame = frame if encode_kwargs.get("add_special_tokens", True) else ([], [])
    prompts = []
    for row in range(len(documents)):
        prompts.append(Prompt(_joined([column[row] for column in columns], frame, doc_piece, query_piece, max_length)))
    return prompts
