"""Image documents for vision rerankers (jina-reranker-m0): what ``RerankClient.rerank`` sends for them.

A document that is a ``pathlib.Path``, ``bytes``, a PIL image or an ``ImageDocument`` is an image; a ``str`` is
always text (a string that happens to be a path or a URL is not guessed at: wrap it, ``ImageDocument.of(url)``).
Files, bytes and PIL images go inline as base64 ``data:`` URLs; an http(s) URL is sent as it is and fetched by
the server. On the wire each becomes vLLM's multimodal score input, ``{"content": [{"type": "image_url",
"image_url": {"url": ...}}]}``.

    >>> ImageDocument.of(b"\\x89PNG\\r\\n\\x1a\\n...").url[:22]
    'data:image/png;base64,'
    >>> ImageDocument.of("https://example.com/page-3.jpg").wire()
    {'content': [{'type': 'image_url', 'image_url': {'url': 'https://example.com/page-3.jpg'}}]}
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from rerank_kit.errors import InvalidInputError

# Leading bytes -> media type, for the formats vLLM's image loader (PIL) reads and browsers agree on.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)
_URL_SCHEMES = ("https://", "http://", "data:image/")


@dataclass(frozen=True)
class ImageDocument:
    """One image to rank, held as the URL the server reads (a ``data:`` URL for inline bytes)."""

    url: str

    @classmethod
    def of(cls, image: Any) -> ImageDocument:
        """An image from a path (``str`` only through here), bytes, a PIL image, an http(s) or data: URL."""
        if isinstance(image, ImageDocument):
            return image
        if isinstance(image, (bytes, bytearray, memoryview)):
            return cls.from_bytes(bytes(image))
        if isinstance(image, PurePath):
            return cls.from_path(image)
        if isinstance(image, str):
            if image.startswith(_URL_SCHEMES):
                if image.startswith("data:") and ";base64," not in image:
                    raise InvalidInputError("a data: URL image must be base64 (data:image/png;base64,...)")
                return cls(image)
            return cls.from_path(PurePath(image))
        if _is_pil(image):
            return cls.from_pil(image)
        raise InvalidInputError(
            f"{type(image).__name__} is not an image: pass a pathlib.Path, bytes, a PIL image, or an http(s) URL"
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageDocument:
        """Encoded image bytes (PNG, JPEG, GIF, BMP, WebP), sent inline."""
        media = _media_type(data)
        if media is None:
            raise InvalidInputError(
                f"these {len(data):,} bytes are not a PNG, JPEG, GIF, BMP or WebP image (they start with "
                f"{data[:8]!r}): open the file with PIL and pass the PIL image"
            )
        return cls(f"data:{media};base64,{base64.b64encode(data).decode('ascii')}")

    @classmethod
    def from_path(cls, path: str | PurePath) -> ImageDocument:
        """An image file, read now and sent inline (the server need not see the client's files)."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise InvalidInputError(f"cannot read the image file {str(path)!r}: {exc.strerror or exc}") from None
        return cls.from_bytes(data)

    @classmethod
    def from_pil(cls, image: Any) -> ImageDocument:
        """A PIL image, encoded losslessly as PNG (modes PNG cannot hold, e.g. CMYK, converted to RGB)."""
        if image.mode not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return cls.from_bytes(buffer.getvalue())

    def wire(self) -> dict[str, Any]:
        """The document as vLLM's /v1/rerank and /v1/score read it."""
        return {"content": [{"type": "image_url", "image_url": {"url": self.url}}]}


def is_image(document: Any) -> bool:
    """Whether ``rerank()`` sends ``document`` as an image (a str is always text)."""
    return isinstance(document, (ImageDocument, bytes, bytearray, memoryview, PurePath)) or _is_pil(document)


def _is_pil(value: Any) -> bool:
    # PIL is not imported for this: an object of a PIL.Image class has one in its MRO.
    return any(c.__module__.startswith("PIL.") and c.__name__ == "Image" for c in type(value).__mro__)


def _media_type(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((media for magic, media in _MAGIC if data.startswith(magic)), None)
