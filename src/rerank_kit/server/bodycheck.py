"""Checking a request body before vLLM parses it: size, JSON shape, nesting depth, and the texts it carries.

Used by ``rerank_kit.server.guard`` (the ASGI middleware) on every request with a body; see its docstring
for what is checked and why. Everything here is pure: bytes and limits in, a ``RejectedRequest`` out.

    >>> from rerank_kit._contract import Limits
    >>> check_body(b'{"query": "q", "documents": ["a", "b"]}', Limits(max_documents=1))
    Traceback (most recent call last):
    ...
    rerank_kit.server.bodycheck.RejectedRequest: 2 documents in one request; ...
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from rerank_kit._contract import Limits

# No vLLM request nests this deep; the json module (which vLLM parses with) raises RecursionError near 1000.
MAX_DEPTH = 64
# JSON keys whose values are texts a model reads, or lists of them, in vLLM's request types: scoring
# (query/documents/queries/items/text_1/text_2/data_1/data_2), pooling and embeddings (input, texts and
# inputs for Cohere), tokenize and completions (prompt, suffix), chat, Anthropic and Responses (messages,
# content, text, system, instructions), structured decisions (state). Other keys (image_url, model, ...)
# are bounded by the body size.
TEXT_FIELDS = frozenset(
    "query queries documents items text_1 text_2 data_1 data_2 input inputs texts prompt suffix messages content "
    "text system instructions state".split()
)
# Lists rerank-kit's client splits by itself (max_docs_per_request).
_SPLIT_BY_CLIENT = frozenset({"documents", "queries", "items", "text_1", "text_2", "data_1", "data_2"})
# The first byte that is not JSON whitespace ("" for a blank body).
_FIRST_BYTE = re.compile(rb"[ \t\r\n]*(.?)", re.DOTALL)


class RejectedRequest(Exception):
    def __init__(self, status: int, message: str, type_: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param


# --- body checks ------------------------------------------------------------------------------------


def is_json_body(raw: bytes, content_type: str | None) -> bool:
    """Whether the guard parses ``raw``: a declared JSON type, or any non-form body that starts with { or [.

    Starlette's ``request.json()`` ignores the content type, so a route that calls it would read a
    ``text/plain`` body starting with ``{`` too; only blank bodies and forms are left to the app.
    """
    first = _FIRST_BYTE.match(raw).group(1)  # type: ignore[union-attr]  # matches every input
    if not first:
        return False
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media.startswith("application/") and (media == "application/json" or media.endswith("+json")):
        return True
    if media.startswith("multipart/") or media == "application/x-www-form-urlencoded":
        return False
    return first in (b"{", b"[")


def check_body(raw: bytes, limits: Limits, content_type: str | None = "application/json") -> dict[str, Any] | None:
    """Raise RejectedRequest when a request body is not JSON where JSON is expected, nests too deeply,
    or carries a text list or a text over a limit. Returns the parsed JSON object (None for a body that
    is not JSON: those pass, their size is checked while reading)."""
    if not is_json_body(raw, content_type):
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in exc.msg:  # orjson stops at 1024 levels, before any recursion in Python
            raise _too_deep() from None
        raise RejectedRequest(
            400,
            f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            "BadRequestError",
        ) from None
    if not isinstance(body, dict):
        raise RejectedRequest(400, "the request body must be a JSON object", "BadRequestError")
    _TextCheck(limits, raw).body(body)
    if b"image_" in raw:  # an image part's type (image_url, image_embeds) names it: no image without these bytes
        check_images(body, limits)
    if "mm_processor_kwargs" in body:  # vLLM < 0.31 takes them from any client
        raise RejectedRequest(
            400,
            "mm_processor_kwargs are this server's to set (the recipe's image sizes, --mm-processor-kwargs): remove "
            "them from the request",
            "BadRequestError",
            "mm_processor_kwargs",
        )
    return body


class _TextCheck:
    """One walk over a parsed body: depth everywhere, counts and lengths under ``TEXT_FIELDS``.

    The raw body rules out what cannot happen, and those checks are skipped: n items take at least
    2n bytes, a string of n characters at least n bytes, n levels at least n opening brackets.
    """

    def __init__(self, limits: Limits, raw: bytes) -> None:
        self.limits = limits
        self.counts = len(raw) > 2 * limits.max_documents
        self.chars = len(raw) > limits.max_document_chars
        self.depth = len(raw) > 2 * MAX_DEPTH and raw.count(b"[") + raw.count(b"{") > MAX_DEPTH

    def body(self, body: dict[str, Any]) -> None:
        if self.counts or self.chars or self.depth:
            for key, value in body.items():
                self.value(value, 2, key in TEXT_FIELDS, key, key, 0)

    def value(self, value: Any, depth: int, text: bool, key: str, field: str, index: int) -> None:
        """Check ``value`` found under ``key``; ``field[index]`` is where it sits in the body's top level."""
        kind = type(value)
        if kind is str:
            if text and self.chars and len(value) > self.limits.max_document_chars:
                raise self._too_long(field, index, len(value))
        elif kind is list:
            if depth > MAX_DEPTH:
                raise _too_deep()
            self.sequence(value, depth, text, key, field, index)
        elif kind is dict:
            if depth > MAX_DEPTH:
                raise _too_deep()
            for name, item in value.items():
                self.value(item, depth + 1, name in TEXT_FIELDS, name, field, index)

    def sequence(self, items: list[Any], depth: int, text: bool, key: str, field: str, index: int) -> None:
        if _numbers(items):
            return  # token ids: one tokenized text, however long (vLLM bounds it by --max-model-len)
        top = depth == 2  # a list that is a top-level field: its items are the texts' positions
        if text and self.counts and len(items) > self.limits.max_documents:
            raise self._too_many(len(items), key, field, index, top)
        kinds = set(map(type, items))
        strings = text and self.chars and str in kinds
        if not strings and list not in kinds and dict not in kinds:
            return  # scalars, or strings nobody measures
        if strings and kinds == {str} and max(map(len, items)) <= self.limits.max_document_chars:
            return  # the common case (a list of documents), measured without a Python loop
        for i, item in enumerate(items):
            self.value(item, depth + 1, text, key, field, i if top else index)

    def _too_many(self, n: int, key: str, field: str, index: int, top: bool) -> RejectedRequest:
        limit = self.limits.max_documents
        if top:
            hint = (
                "split the list (rerank-kit's client does it with max_docs_per_request)"
                if key in _SPLIT_BY_CLIENT
                else "split the request"
            )
            return RejectedRequest(
                413,
                f"{n} {key} in one request; this server accepts at most {limit}: {hint}",
                "RequestTooLargeError",
                field,
            )
        return RejectedRequest(
            413,
            f"{field}[{index}] has a list of {n} {key}; this server accepts at most {limit} per list",
            "RequestTooLargeError",
            field,
        )

    def _too_long(self, field: str, index: int, n: int) -> RejectedRequest:
        return RejectedRequest(
            413,
            f"{field}[{index}] has {n:,} characters; this server accepts at most "
            f"{self.limits.max_document_chars:,} per text: shorten or split it",
            "RequestTooLargeError",
            field,
        )


# --- images ------------------------------------------------------------------------------------------

# Where vLLM's scoring requests carry queries and documents; each is a string or {"content": [parts]}
# (vLLM's ScoreMultiModalParam), an image part {"type": "image_url", "image_url": {"url": ...}} or image_embeds.
_IMAGE_FIELDS = ("query", "queries", "documents", "data_1", "data_2", "text_1", "text_2")
_IMAGE_PARTS = frozenset({"image_url", "image_embeds"})


def check_images(body: dict[str, Any], limits: Limits) -> None:
    """Raise RejectedRequest (413) for a scoring request with more images than ``limits.max_images``, a query or
    document with more than ``limits.max_images_per_text``, or an inline (data: URL) image over
    ``limits.max_image_bytes`` once decoded; (400) for an image part with a client-chosen ``uuid``. Each message
    names which and where."""
    total = 0
    for field in _IMAGE_FIELDS:
        value = body.get(field)
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(parts := item.get("content"), list):
                continue
            where = f"{field}[{index}]" if isinstance(value, list) else field
            images = [p for p in parts if isinstance(p, dict) and p.get("type") in _IMAGE_PARTS]
            if limits.max_images_per_text and len(images) > limits.max_images_per_text:
                raise RejectedRequest(
                    413,
                    f"{where} has {len(images)} images; this model reads at most {limits.max_images_per_text} per "
                    "query or document: send each image as a document of its own",
                    "RequestTooLargeError",
                    field,
                )
            for part in images:
                if "uuid" in part:
                    raise RejectedRequest(
                        400,
                        f"{where} names its image with a uuid, which vLLM would use as the image's cache key instead "
                        "of its content (one request's image could stand in for another's): remove the uuid",
                        "BadRequestError",
                        field,
                    )
                size = _inline_bytes(part)
                if size > limits.max_image_bytes:
                    raise RejectedRequest(
                        413,
                        f"{where} has an image of {size:,} bytes; this server accepts at most "
                        f"{limits.max_image_bytes:,} per image: downscale or recompress it (the model resizes "
                        "every image to its own pixel budget anyway)",
                        "RequestTooLargeError",
                        field,
                    )
            total += len(images)
    if total > limits.max_images:
        raise RejectedRequest(
            413,
            f"{total} images in one request; this server accepts at most {limits.max_images}: split the documents "
            "over several requests (rerank-kit's client does it with max_docs_per_request)",
            "RequestTooLargeError",
        )


def _inline_bytes(part: dict[str, Any]) -> int:
    """The decoded size of an image sent inline as a base64 data: URL (0 for a URL vLLM fetches, or embeddings)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url.startswith("data:"):
        return 0
    payload = len(url) - url.find(",") - 1
    return payload * 3 // 4 - (len(url) - len(url.rstrip("=")))


def _numbers(items: list[Any]) -> bool:
    """Whether every item is a number (or there are none), at C speed: sum() raises TypeError on anything else."""
    try:
        sum(items)
    except (TypeError, OverflowError):  # OverflowError: an int too large for a float beside it; walk them
        return False
    return True


def _too_deep() -> RejectedRequest:
    return RejectedRequest(
        400, f"the request body is nested too deeply (more than {MAX_DEPTH} levels)", "BadRequestError"
    )


def too_large(size: int, limit: int) -> RejectedRequest:
    return RejectedRequest(
        413,
        f"the request body has {size:,} bytes or more; this server accepts at most {limit:,}: "
        "send fewer or shorter documents",
        "RequestTooLargeError",
    )


# --- admission ---------------------------------------------------------------------------------------
