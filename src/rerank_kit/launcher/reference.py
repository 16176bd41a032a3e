"""Reference scores: what each model's authors' own code computes, from local weights, in float32.

Used by `rerank-kit verify` and the parity tests. Each family follows its published recipe:

- mxbai-rerank v2: the ``mxbai-rerank`` package (``MxbaiRerankV2.prepare_inputs`` / ``forward``):
  prefix + tok("[instruction: ...\\n]query: q") + tok("\\n") + tok("document: d") + tok("\\n") +
  tok(task prompt) + suffix, score = logit("1") - logit("0") at the last token. The package pins
  transformers < 5, so this module follows its code line for line; the parity tests also run the
  package itself in its own environment when one is available.
- Qwen3-Reranker: the model card's transformers recipe (prefix, formatted pair, suffix with the
  empty think block), score = logit("yes") - logit("no"), i.e. P(yes) after a sigmoid.
- Qwen3-Reranker *-seq-cls: the converted checkpoint's 1-label head on the same token ids.
- bge-reranker-v2-gemma: FlagEmbedding's ``BaseLLMReranker``: [bos] + tok("A: q") + tok("\\n") +
  tok("B: p") + tok("\\n") + tok(prompt), score = logit("Yes") at the last token.
- cross-encoders (BERT, XLM-R, ModernBERT, GTE): sentence-transformers ``CrossEncoder.predict``.
- embedding models: cosine of sentence-transformers' own pooled, normalised embeddings.

Scores are returned raw (logits; cosine for embeddings). ``activate`` maps them to what vLLM's
/rerank returns by default (sigmoid for classifiers).

    >>> ref = load_reference("qwen3-reranker", "/models/Qwen3-Reranker-0.6B")  # doctest: +SKIP
    >>> ref.scores([("what is vLLM?", "an inference engine")])                # doctest: +SKIP
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rerank_kit.errors import ConfigError

_IMPORT_LOCK = threading.Lock()

MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass
class Reference:
    """Reference scoring for one family and one local model directory."""

    family: str
    path: str
    score_kind: str
    _model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    # --- loading ----------------------------------------------------------------------------------

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        if self.score_kind in ("cross-encoder", "cosine"):
            return  # sentence-transformers loads its own
        self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.family == "qwen3-reranker-seq-cls":
            self._model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=torch.float32)
        else:
            self._model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32)
        self._model.eval()

    def _load_tokenizer(self) -> Any:
        """The tokenizer alone (no weights): enough for ``token_ids``."""
        with _IMPORT_LOCK:  # transformers' lazy imports fail when two threads trigger them at once
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        return self._tokenizer

    def _ids(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    # --- token ids (the prompt the reference feeds the model) -------------------------------------

    def token_ids(self, query: str, document: str, instruction: str | None = None) -> list[int]:
        """The exact token ids the reference implementation scores for one pair."""
        tok = self._load_tokenizer()
        if self.score_kind == "cross-encoder":
            return list(tok(query, document, truncation=True)["input_ids"])
        if self.family == "mxbai-rerank-v2":
            # MxbaiRerankV2.prepare_inputs: query (with instruction) and document tokenized separately.
            query_prompt = f"query: {query}"
            if instruction:
                query_prompt = "".join([f"instruction: {instruction}", "\n", query_prompt])
            sep = self._ids("\n")
            item = self._ids(query_prompt) + sep + self._ids(f"document: {document}")
            return self._ids(MXBAI_PREFIX) + item + sep + self._ids(MXBAI_TASK) + self._ids(MXBAI_SUFFIX)
        if self.family in ("qwen3-reranker", "qwen3-reranker-seq-cls"):
            # Model card: prefix_tokens + tokenizer(format_instruction(...)) + suffix_tokens.
            body = f"<Instruct>: {instruction or QWEN3_DEFAULT_INSTRUCTION}\n<Query>: {query}\n<Document>: {document}"
            return self._ids(QWEN3_PREFIX) + self._ids(body) + self._ids(QWEN3_SUFFIX)
        if self.family == "bge-reranker-v2-gemma":
            # FlagEmbedding BaseLLMReranker: [bos] + "A: q" + sep + "B: p" + sep + prompt.
            bos = [tok.bos_token_id] if tok.bos_token_id is not None and tok.bos_token_id != tok.pad_token_id else []
            sep = self._ids("\n")
            return (
                bos
                + self._ids(f"A: {query}")
                + sep
                + self._ids(f"B: {document}")
                + sep
                + self._ids(instruction or GEMMA_PROMPT)
            )
        raise ConfigError(f"no reference prompt for family {self.family!r}")

    # --- scores ------------------------------------------------------------------------------------

    def scores(self, pairs: Sequence[tuple[str, str]], instruction: str | None = None) -> list[float]:
        """Raw reference scores (logits, or cosine similarity for embedding models), in pair order."""
        if self.score_kind == "cross-encoder":
            return self._cross_encoder_scores(pairs)
        if self.score_kind == "cosine":
            return self._cosine_scores(pairs)
        import torch

        self._load()
        tok = self._tokenizer
        out = []
        for query, document in pairs:
            ids = torch.tensor([self.token_ids(query, document, instruction)])
            with torch.no_grad():
                logits = self._model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
            if self.family == "qwen3-reranker-seq-cls":
                out.append(float(logits[0, 0]))  # [batch, num_labels=1]: the head already reads the last token
                continue
            logits = logits[0, -1]  # next-token logits at the last position
            if self.family == "mxbai-rerank-v2":
                out.append(float(logits[self._ids("1")[0]] - logits[self._ids("0")[0]]))
            elif self.family == "qwen3-reranker":
                yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
                out.append(float(logits[yes] - logits[no]))
            elif self.family == "bge-reranker-v2-gemma":
                out.append(float(logits[self._ids("Yes")[0]]))
        return out

    def activate(self, raw: Sequence[float]) -> list[float]:
        """Map raw scores to vLLM's default /rerank scores (sigmoid for classifiers, cosine as is)."""
        return list(raw) if self.score_kind == "cosine" else [sigmoid(x) for x in raw]

    def _cross_encoder_scores(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        import torch
        from sentence_transformers import CrossEncoder

        if self._model is None:
            self._model = CrossEncoder(self.path, device="cpu", trust_remote_code=True)
            self._model.model.float()
        raw = self._model.predict(list(pairs), activation_fn=torch.nn.Identity(), batch_size=1, convert_to_numpy=True)
        return [float(x) for x in raw]

    def _cosine_scores(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        from sentence_transformers import SentenceTransformer

        if self._model is None:
            self._model = SentenceTransformer(self.path, device="cpu")
        queries = self._model.encode([q for q, _ in pairs], normalize_embeddings=True, convert_to_numpy=True)
        docs = self._model.encode([d for _, d in pairs], normalize_embeddings=True, convert_to_numpy=True)
        return [float((q * d).sum()) for q, d in zip(queries, docs, strict=True)]


def load_reference(family: str, path: str, score_kind: str | None = None) -> Reference:
    """A reference scorer for ``family`` backed by the weights in directory ``path``."""
    from rerank_kit.recipes import FAMILIES

    if family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r}. Known families: {', '.join(FAMILIES)}")
    return Reference(family=family, path=path, score_kind=score_kind or FAMILIES[family].score_kind)
