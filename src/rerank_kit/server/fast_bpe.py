"""Byte-level BPE through tiktoken, for the tokenizers and texts where it gives the Hugging Face tokenizer's ids.

Qwen2-family tokenizers (Qwen3-Reranker, mxbai-rerank v2) split text with a regular expression before BPE. Hugging
Face tokenizers runs that expression with Oniguruma: ~85 µs for a 120-token English document on one core of a
Zen 4 EPYC, the largest single cost of such a reranker's API server per pair (bench/RESULTS.md 11.7). tiktoken
(OpenAI's BPE, a vLLM dependency) runs the same expression over the same vocabulary in ~14 µs. It is used only
where the two give the same ids:

- the tokenizer: a BPE model over bytes (no dropout, byte fallback, word prefixes or suffixes), pre-tokenized by one
  ``Split`` on a regular expression followed by ``ByteLevel`` without its own expression or a prefix space, no
  normaliser or NFC, and merges whose products' ids rise with the merges' order (so tiktoken's rank, a token's id,
  orders merges as the merges list does). Qwen2's tokenizer.json is such a conversion of tiktoken's own format;
- the text: ASCII, Latin (U+0080-U+024F) and General Punctuation (U+2000-U+206F) only, NFC-normalised first as the
  tokenizer does (Python's tables and the tokenizer's agree on these blocks, and so do the two regex engines'
  letter, digit and space classes: tests check every code point of them), holding no added token's text (Hugging
  Face splits those out before anything else). Any other text goes to the Hugging Face tokenizer, in the same
  call;
- a check when it is built: ``PROBES`` (whitespace runs, contractions, digits, punctuation, control characters,
  code, long words) encoded both ways; one difference and it is not used.

Built in a background thread when the plugin's IO processor starts (``prepare``, ~1 s for Qwen's 151k tokens),
so the server's start does not wait for it; requests that come before it is ready use Hugging Face's tokenizer.
tests/test_fast_bpe.py compares the two on every ASCII token of the real Qwen vocabulary, MS MARCO passages and
generated hostile text.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("vllm.rerank_kit")

READY_MESSAGE = "rerank-kit: Latin-script texts tokenized with tiktoken's BPE (the tokenizer's own ids on every probe)"

# Texts the two engines must encode alike before tiktoken is used: the regular expression's alternatives and edges.
PROBES: tuple[str, ...] = (
    "",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "Given a web search query, retrieve relevant passages that answer the query",
    "it's they're we've I'm you'll he'd IT'S THEY'RE WE'VE I'M YOU'LL HE'D 's 't 're 've 'm 'll 'd",
    "   leading spaces and trailing   ",
    "tabs\tand\t\tnewlines\n\nand\r\nwindows\rline ends \n \n  \n",
    "\n\n\n    \t \x0b\x0c mixed whitespace runs      \n",
    "numbers 0 12 345 6789 3.14159 1,000,000 -42 +7 1e10 0x1F 2026-12-07 12:30:45",
    "punctuation!!! ??? ... --- ___ *** ### $$$ %%% &&& @@@ ^^^ ~~~ ``` ||| \\\\ /// ;;; ::: ,,,",
    "<b>&amp;\"'</b> {{ query }} {% raw %} [link](http://example.com/a?b=c&d=e#f) user@example.com",
    "def f(x):\n    return x ** 2  # comment\n\nclass A(B):\n\tpass\n",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilistic",
    "MixedCASE camelCase snake_case kebab-case SCREAMING_CASE Title Case iPhone eBay McDonald's",
    "\x00\x01\x02\x1f\x7f control characters \x07 bell \x1b[0m",
    "a" * 300,
    " " * 50 + "x" + "\n" * 20,
    "'''\"\"\"''''",
    "word" + " word" * 100,
    "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m \u0141\u00f3d\u017a \u2013 \u201cquoted\u201d \u2026",
    "MS MARCO's mojibake: it\u00e2\u0080\u0099s \u00c2\u00b0C",
    "\u2000en quad\u2001em quad\u00a0no-break\u200bzero width\u2028line\u2029para",
)
# Code points outside ASCII, Latin and General Punctuation: such a text goes to the Hugging Face tokenizer.
_OTHER = re.compile("[^\x00-\u024f\u2000-\u206f]")

_STATE: weakref.WeakKeyDictionary[Any, FastBPE | None] = weakref.WeakKeyDictionary()  # built (None: not usable)
_PENDING: set[int] = set()  # id() of tokenizers being built
_LOCK = threading.Lock()


class FastBPE:
    """tiktoken for the texts it encodes exactly (``usable``), the Hugging Face tokenizer for the rest."""

    def __init__(self, encoding: Any, added: re.Pattern[str] | None) -> None:
        self._encoding = encoding
        self._added = added

    def usable(self, text: str) -> bool:
        return (text.isascii() or _OTHER.search(text) is None) and (self._added is None or not self._added.search(text))

    def encode(self, texts: list[str], fallback: Callable[[list[str]], list[list[int]]]) -> list[list[int]]:
        """Token ids without special tokens, as ``fallback`` (the Hugging Face tokenizer) gives them."""
        out: list[list[int] | None] = [None] * len(texts)
        rest: list[int] = []
        encode = self._encoding.encode_ordinary
        for i, text in enumerate(texts):
            if self.usable(text):
                out[i] = encode(text if text.isascii() else unicodedata.normalize("NFC", text))
            else:
                rest.append(i)
        if rest:
            for i, ids in zip(rest, fallback([texts[i] for i in rest]), strict=True):
                out[i] = list(ids)
        return out  # type: ignore[return-value]


def _layout(spec: dict) -> str | None:
    """The pre-tokenizer's regular expression when the tokenizer has the layout tiktoken reproduces, else None."""
    model = spec.get("model") or {}
    model_ok = model.get("type") == "BPE" and not any(
        model.get(k) for k in ("dropout", "byte_fallback", "continuing_subword_prefix", "end_of_word_suffix")
    )
    normalizer_ok = (spec.get("normalizer") or {"type": "NFC"}).get("type") == "NFC"
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not (model_ok and normalizer_ok and steps and len(steps) == 2):
        return None
    split, level = steps
    split_ok = split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert")
    level_ok = level.get("type") == "ByteLevel" and not level.get("add_prefix_space") and not level.get("use_regex")
    pattern = (split.get("pattern") or {}).get("Regex")
    return pattern if split_ok and level_ok and isinstance(pattern, str) else None


def _ranks(model: dict) -> dict[bytes, int] | None:
    """tiktoken's ranks (the vocabulary as bytes -> id), when merge order and id order agree."""
    try:  # ByteLevel's printable character per byte (GPT-2's table), as transformers converts tiktoken files with it
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:
        return None
    decode = {c: b for b, c in bytes_to_unicode().items()}
    try:
        ranks = {bytes(decode[c] for c in token): i for token, i in model["vocab"].items()}
    except KeyError:  # a token outside ByteLevel's alphabet
        return None
    if len(ranks) != len(model["vocab"]) or any(bytes([b]) not in ranks for b in range(256)):
        return None
    last = -1
    for merge in model.get("merges") or ():
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        product = model["vocab"].get(left + right)
        if product is None or product < last:
            return None
        last = product
    return ranks


def build(tokenizer: Any) -> tuple[FastBPE | None, str]:
    """A FastBPE for ``tokenizer`` (a Hugging Face fast tokenizer), or None and why not."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str") or getattr(tokenizer, "split_special_tokens", False):
        return None, "not a Hugging Face fast tokenizer that splits out its special tokens"
    # the model's kind first: a WordPiece or Unigram vocabulary is not read as JSON
    bpe = type(getattr(backend, "model", None)).__name__ == "BPE"
    spec = json.loads(backend.to_str()) if bpe else {}
    pattern = _layout(spec)
    ranks = None if pattern is None else _ranks(spec["model"])
    if pattern is None or ranks is None:
        return None, "not a byte-level BPE with one regular-expression pre-tokenizer and merges in id order"
    added = [t["content"] for t in spec.get("added_tokens") or () if t.get("content")]
    found = re.compile("|".join(map(re.escape, sorted(added, key=len, reverse=True)))) if added else None
    try:
        encoding = tiktoken.Encoding("rerank-kit", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    except Exception as exc:  # e.g. an expression tiktoken's regex engine does not take
        return None, f"tiktoken refused it: {exc}"
    fast = FastBPE(encoding, found)
    theirs = [e.ids for e in backend.encode_batch_fast(list(PROBES), add_special_tokens=False)]
    wrong = [p for p, ids in zip(PROBES, theirs, strict=True) if not fast.usable(p) or fast.encode([p], list) != [ids]]
    if wrong:
        return None, f"differs from the tokenizer on {wrong[0][:40]!r}"
    return fast, ""


def prepare(tokenizer: Any) -> None:
    """Build ``tokenizer``'s FastBPE in a background thread (once per tokenizer); ``get`` returns it when ready."""
    with _LOCK:
        if tokenizer in _STATE or id(tokenizer) in _PENDING:
            return
        _PENDING.add(id(tokenizer))

    def run() -> None:
        try:
            fast, why = build(tokenizer)
        except Exception as exc:  # never break the server for a speed-up
            fast, why = None, repr(exc)
        with _LOCK:
            _STATE[tokenizer] = fast
            _PENDING.discard(id(tokenizer))
        if fast is not None:
            logger.info(READY_MESSAGE)
        else:
            logger.info("rerank-kit: tokenizer's own BPE kept (tiktoken not used: %s)", why)

    threading.Thread(target=run, name="rerank-kit-fast-bpe", daemon=True).start()


def get(tokenizer: Any) -> FastBPE | None:
    """``tokenizer``'s FastBPE once ``prepare`` has built it, else None."""
    try:
        return _STATE.get(tokenizer)
    except TypeError:  # not weak-referenceable
        return None
