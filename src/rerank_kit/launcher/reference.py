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
- jina-reranker-v3: the authors' modeling.py (``JinaForRanking.rerank`` / ``_compute_single_batch``): the
  query and the list of documents in one prompt (``format_docs_prompts_func``), the last hidden states at each
  ``<|embed_token|>`` and at the ``<|rerank_token|>`` through the projector, score = their cosine. Pairs that
  share a query consecutively are one list (one block: the authors split lists past 125 documents).
- llama-nemotron-rerank: the model card's transformers recipe (NVIDIA's bidirectional Llama):
  tok("question:q \\n \\n passage:p") with its BOS, attention without the causal mask, the mean of the last
  hidden states, score = the 1-label head's logit.
- jina-reranker-m0: the authors' modeling.py (``JinaVLForRanking.compute_score``, one pair per call):
  "**Document**:\\n{doc}\\n**Query**:\\n{query}" (an image side is ``<|vision_start|><|image_pad|><|vision_end|>``)
  through the Qwen2-VL processor (min_pixels=3136, max_pixels=602112), token 100 appended, the MLP head on the
  last hidden state of that token, score = sigmoid(head - 2.65). A document may be a PIL image.
- Qwen3-VL-Reranker: the authors' ``Qwen3VLReranker`` (QwenLM/Qwen3-VL-Embedding): the system prompt, then
  "<Instruct>: {i}<Query>:{q}\\n<Document>:{d}" (an image's placeholder before its side's text), then
  "<|im_start|>assistant\\n"; the processor without resizing (the reference resizes beforehand with qwen_vl_utils:
  images already sized to multiples of 32 need none); score = the last hidden state times W[yes] - W[no].
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


JINA_V3_PREFIX = (
    "<|im_start|>system\n"
    "You are a search relevance expert who can determine a ranking of the passages based on how relevant they are "
    "to the query. If the query is a question, how relevant a passage is depends on how well it answers the "
    "question. If not, try to analyze the intent of the query and assess how well each passage satisfies the "
    "intent. If an instruction is provided, you should follow the instruction when determining the ranking."
    "<|im_end|>\n<|im_start|>user\n"
)
JINA_V3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
JINA_V3_DOC_TOKEN, JINA_V3_QUERY_TOKEN = "<|embed_token|>", "<|rerank_token|>"
JINA_V3_DOC_ID, JINA_V3_QUERY_ID = 151670, 151671
# jina-reranker-m0 (modeling.py): the image placeholder, the score token appended to every prompt, the logit bias.
JINA_M0_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
JINA_M0_SCORE_ID, JINA_M0_LOGIT_BIAS = 100, 2.65
JINA_M0_PIXELS = {"min_pixels": 3136, "max_pixels": 602112}
QWEN3_VL_SYSTEM = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_VL_DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."


def jina_v3_prompt(query: str, documents: Sequence[str], instruction: str | None = None) -> str:
    """jina-reranker-v3's prompt for a query and its list of documents (modeling.py ``format_docs_prompts_func``,
    no_thinking=True): the marker tokens are removed from the texts, each document ends in ``<|embed_token|>``,
    the query (after the documents) in ``<|rerank_token|>``."""

    def clean(text: str) -> str:
        return text.replace(JINA_V3_QUERY_TOKEN, "").replace(JINA_V3_DOC_TOKEN, "")

    query = clean(query)
    prompt = (
        f"I will provide you with {len(documents)} passages, each indicated by a numerical identifier. "
        f"Rank the passages based on their relevance to query: {query}\n"
    )
    if instruction:
        prompt += f"<instruct>\n{clean(instruction)}\n</instruct>\n"
    passages = [f'<passage id="{i}">\n{clean(d)}{JINA_V3_DOC_TOKEN}\n</passage>' for i, d in enumerate(documents)]
    prompt += "\n".join(passages) + "\n" + f"<query>\n{query}{JINA_V3_QUERY_TOKEN}\n</query>"
    return JINA_V3_PREFIX + prompt + JINA_V3_SUFFIX


def jina_m0_prompt(query: str, document: str) -> str:
    """modeling.py's ``formatting_prompts_func``: the document first (an image side is ``JINA_M0_IMAGE``)."""
    return f"**Document**:\n{document}\n**Query**:\n{query}"


def qwen3_vl_prompt(query: str, document: str, instruction: str | None = None) -> str:
    """Qwen3VLReranker's prompt (format_mm_instruction through the Qwen3-VL chat template): parts joined with
    nothing, the document after one newline, an empty side as "NULL"."""
    task = instruction or QWEN3_VL_DEFAULT_INSTRUCTION
    return (
        f"{QWEN3_VL_SYSTEM}<Instruct>: {task}<Query>:{query or 'NULL'}\n<Document>:{document or 'NULL'}"
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def nemotron_prompt(query: str, document: str) -> str:
    """llama-nemotron-rerank's model card ``prompt_template``."""
    return f"question:{query} \n \n passage:{document}"


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

        if self.family == "jina-reranker-v3":
            self._tokenizer, self._model = AutoTokenizer.from_pretrained(self.path), _load_jina_v3(self.path)
            return
        if self.family == "nemotron-rerank":
            self._tokenizer, self._model = AutoTokenizer.from_pretrained(self.path), _load_nemotron(self.path)
            return
        if self.family == "jina-reranker-m0":
            self._model = _load_jina_m0(self.path)
            self._tokenizer = self._model[0].tokenizer
            return
        if self.family == "qwen3-vl-reranker":
            self._model = _load_qwen3_vl(self.path)
            self._tokenizer = self._model[0].tokenizer
            return
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

    def token_ids(self, query: str, document: str, instruction: str | None = None) -> list[int]:  # noqa: PLR0911
        """The exact token ids the reference implementation scores for one pair."""
        tok = self._load_tokenizer()
        if self.family == "jina-reranker-v3":
            return list(tok(jina_v3_prompt(query, [document], instruction))["input_ids"])
        if self.family == "jina-reranker-m0":
            return [*self._ids(jina_m0_prompt(query, document)), JINA_M0_SCORE_ID]
        if self.family == "qwen3-vl-reranker":
            return self._ids(qwen3_vl_prompt(query, document, instruction))
        if self.family == "nemotron-rerank":
            return list(tok(nemotron_prompt(query, document))["input_ids"])
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
        own = {  # families whose authors' code path is followed here step by step
            "jina-reranker-v3": self._listwise_scores,
            "nemotron-rerank": self._nemotron_scores,
            "jina-reranker-m0": self._jina_m0_scores,
            "qwen3-vl-reranker": self._qwen3_vl_scores,
        }.get(self.family)
        if own is not None:
            return own(pairs, instruction)
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
        return list(raw) if self.score_kind in ("cosine", "listwise") else [sigmoid(x) for x in raw]

    def _listwise_scores(self, pairs: Sequence[tuple[str, str]], instruction: str | None) -> list[float]:
        """jina-reranker-v3: each run of pairs with the same query is one list, scored in one forward pass."""
        import torch

        self._load()
        backbone, projector = self._model
        out: list[float] = []
        start = 0
        while start < len(pairs):
            query = pairs[start][0]
            end = start
            while end < len(pairs) and pairs[end][0] == query:
                end += 1
            documents = [d for _, d in pairs[start:end]]
            ids = torch.tensor([self._tokenizer(jina_v3_prompt(query, documents, instruction))["input_ids"]])
            with torch.no_grad():
                hidden = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
                docs = projector(hidden[ids[0] == JINA_V3_DOC_ID])
                queries = projector(hidden[ids[0] == JINA_V3_QUERY_ID])
                if queries.shape[0] != 1 or docs.shape[0] != len(documents):
                    raise ConfigError("jina-reranker-v3: a text holds a marker token the prompt could not remove")
                scores = torch.nn.functional.cosine_similarity(docs, queries.expand_as(docs), dim=-1)
            out += [float(x) for x in scores]
            start = end
        return out

    def _nemotron_scores(self, pairs: Sequence[tuple[str, str]], _: str | None = None) -> list[float]:
        import torch

        self._load()
        out = []
        for query, document in pairs:
            ids = torch.tensor([self.token_ids(query, document)])
            with torch.no_grad():
                out.append(float(self._model(ids)))
        return out

    def _jina_m0_scores(self, pairs: Sequence[tuple[str, Any]], _: str | None = None) -> list[float]:
        """modeling.py's compute_score for one pair at a time; raw = the head's logit less 2.65 (vLLM's score with
        use_activation=false). A document that is not a string is an image (PIL)."""
        import torch

        self._load()
        processor, model, head = self._model
        out = []
        for query, document in pairs:
            image = not isinstance(document, str)
            text = jina_m0_prompt(query, JINA_M0_IMAGE if image else document)
            batch = processor(text=[text], images=[document] if image else None, return_tensors="pt", padding=True)
            batch["input_ids"] = torch.cat([batch["input_ids"], torch.tensor([[JINA_M0_SCORE_ID]])], dim=1)
            batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones((1, 1), dtype=torch.long)], 1)
            if "mm_token_type_ids" in batch:
                types = batch["mm_token_type_ids"]
                batch["mm_token_type_ids"] = torch.cat([types, torch.zeros((1, 1), dtype=types.dtype)], dim=1)
            with torch.no_grad():
                hidden = model(**batch, use_cache=False, output_hidden_states=True).hidden_states[-1]
                out.append(float(head(hidden[:, -1]).squeeze(-1)[0]) - JINA_M0_LOGIT_BIAS)
        return out

    def _qwen3_vl_scores(self, pairs: Sequence[tuple[str, Any]], instruction: str | None) -> list[float]:
        """Qwen3VLReranker.process, one pair per forward; raw = logit(yes) - logit(no) (vLLM's score before its
        sigmoid). A document that is not a string is an image (PIL), already sized to multiples of 32."""
        import torch

        self._load()
        processor, model, weight = self._model
        out = []
        for query, document in pairs:
            image = not isinstance(document, str)
            text = qwen3_vl_prompt(query, JINA_M0_IMAGE if image else document, instruction)
            batch = processor(text=[text], images=[document] if image else None, return_tensors="pt", do_resize=False)
            with torch.no_grad():
                hidden = model.model(**batch).last_hidden_state[:, -1]
                out.append(float(hidden[0] @ weight))
        return out

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


def _safetensors(path: str, prefix: str) -> dict[str, Any]:
    """The tensors of the checkpoint in ``path`` whose names start with ``prefix`` (prefix removed)."""
    from pathlib import Path

    from safetensors import safe_open

    found = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            found.update({k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    return found


def _load_jina_v3(path: str) -> tuple[Any, Any]:
    """modeling.py's JinaForRanking as its two parts: the Qwen3 decoder (final norm applied: the
    ``hidden_states[-1]`` it reads) and the projector (hidden -> hidden/2 -> ReLU -> 512, no biases)."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config.from_pretrained(path)
    backbone = Qwen3Model.from_pretrained(path, config=config, dtype=torch.float32).eval()
    weights = _safetensors(path, "projector.")
    projector = torch.nn.Sequential(
        torch.nn.Linear(config.hidden_size, config.hidden_size // 2, bias=False),
        torch.nn.ReLU(),
        torch.nn.Linear(config.hidden_size // 2, weights["2.weight"].shape[0], bias=False),
    )
    projector.load_state_dict(weights)
    return backbone, projector.float().eval()


def _load_nemotron(path: str) -> Any:
    """NVIDIA's LlamaBidirectionalForSequenceClassification: a Llama whose attention has no causal mask, the
    mean of the last hidden states over the (unpadded) sequence, then the 1-label head."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(path)
    model = LlamaForSequenceClassification.from_pretrained(
        path, config=config, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    inner = model.model
    for layer in inner.layers:
        layer.self_attn.is_causal = False

    def score(ids: Any) -> Any:
        # eager attention with no mask: every token attends to every token (the bidirectional mask of one
        # unpadded sequence)
        hidden = inner.embed_tokens(ids)
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        rotary = inner.rotary_emb(hidden, position_ids=positions)
        for layer in inner.layers:
            hidden = layer(hidden, attention_mask=None, position_embeddings=rotary, position_ids=positions)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        pooled = inner.norm(hidden).mean(dim=1)
        return model.score(pooled)[0, 0]

    return score


def _load_jina_m0(path: str) -> tuple[Any, Any, Any]:
    """modeling.py's JinaVLForRanking as (processor, Qwen2-VL with an identity lm_head, the score MLP); the
    checkpoint's original names (``model.``, ``visual.``) mapped to transformers 5's."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    mapping = {r"^visual\.": "model.visual.", r"^model\.(?!visual\.|language_model\.)": "model.language_model."}
    model = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32, key_mapping=mapping).eval()
    model.lm_head = torch.nn.Identity()
    weights = _safetensors(path, "score.")
    hidden = weights["0.weight"].shape[1]
    head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    head.load_state_dict(weights)
    return AutoProcessor.from_pretrained(path, **JINA_M0_PIXELS), model, head.float().eval()


def _load_qwen3_vl(path: str) -> tuple[Any, Any, Any]:
    """Qwen3VLReranker's parts: (processor, Qwen3-VL, lm_head[yes] - lm_head[no])."""
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    vocab = processor.tokenizer.get_vocab()
    head = model.lm_head.weight.data
    return processor, model, (head[vocab["yes"]] - head[vocab["no"]]).float()


def load_reference(family: str, path: str, score_kind: str | None = None) -> Reference:
    """A reference scorer for ``family`` backed by the weights in directory ``path``."""
    from rerank_kit.recipes import FAMILIES

    if family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r}. Known families: {', '.join(FAMILIES)}")
    if FAMILIES[family].score_kind == "maxsim":
        raise ConfigError(f"no reference for {family} here: PyLate's ColBERT.encode is the authors' code path")
    return Reference(family=family, path=path, score_kind=score_kind or FAMILIES[family].score_kind)
