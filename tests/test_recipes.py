import json

import pytest

from rerank_kit.errors import UnknownModelError
from rerank_kit.recipes import FAMILIES, PIECEWISE_KEY, RECIPES, get_recipe

REQUIRED_MODELS = [
    "mixedbread-ai/mxbai-rerank-base-v2",
    "mixedbread-ai/mxbai-rerank-large-v2",
    "Qwen/Qwen3-Reranker-0.6B",
    "Qwen/Qwen3-Reranker-4B",
    "Qwen/Qwen3-Reranker-8B",
    "tomaarsen/Qwen3-Reranker-0.6B-seq-cls",
    "tomaarsen/Qwen3-Reranker-4B-seq-cls",
    "tomaarsen/Qwen3-Reranker-8B-seq-cls",
    "BAAI/bge-reranker-base",
    "BAAI/bge-reranker-large",
    "BAAI/bge-reranker-v2-m3",
    "BAAI/bge-reranker-v2-gemma",
    "jinaai/jina-reranker-v2-base-multilingual",
    "Alibaba-NLP/gte-multilingual-reranker-base",
    "Alibaba-NLP/gte-reranker-modernbert-base",
    "cross-encoder/ms-marco-MiniLM-L-6-v2",
    "cross-encoder/ms-marco-MiniLM-L-12-v2",
]


@pytest.mark.parametrize("model", REQUIRED_MODELS)
def test_every_required_model_has_an_exact_recipe(model):
    recipe = get_recipe(model)
    assert recipe.model_id == model
    assert recipe.family in FAMILIES


def test_lookup_is_exact_not_substring():
    with pytest.raises(UnknownModelError):
        get_recipe("Qwen/Qwen3-Reranker")  # a prefix of real ids must not match
    with pytest.raises(UnknownModelError):
        get_recipe("bge-reranker-base")  # neither does a suffix


def test_unknown_model_error_lists_families_and_says_what_to_do():
    with pytest.raises(UnknownModelError) as exc:
        get_recipe("acme/unknown-reranker")
    message = str(exc.value)
    assert "--family" in message
    for family in FAMILIES:
        assert family in message


def test_local_directory_without_family_is_explained(tmp_path):
    with pytest.raises(UnknownModelError, match="local directory"):
        get_recipe(str(tmp_path))


def test_family_applies_to_any_path():
    recipe = get_recipe("/models/my-finetune", family="qwen3-reranker")
    assert recipe.model_id == "/models/my-finetune"
    assert recipe.template == "qwen3_reranker.jinja"


def test_unknown_family_lists_known_ones():
    with pytest.raises(UnknownModelError, match="qwen3-reranker"):
        get_recipe("x", family="qwen4")


def test_classifier_from_token_order_is_false_then_true():
    # vLLM builds the score head as W[tokens[1]] - W[tokens[0]]; swapping the order inverts every score.
    assert get_recipe("mixedbread-ai/mxbai-rerank-base-v2").hf_overrides["classifier_from_token"] == ["0", "1"]
    assert get_recipe("Qwen/Qwen3-Reranker-0.6B").hf_overrides["classifier_from_token"] == ["no", "yes"]


def test_mxbai_v2_is_qwen2_not_qwen3():
    overrides = get_recipe("mixedbread-ai/mxbai-rerank-large-v2").hf_overrides
    assert overrides["architectures"] == ["Qwen2ForSequenceClassification"]


def test_llm_rerankers_ship_a_template_and_piecewise_tokenization():
    for recipe in RECIPES.values():
        if recipe.score_kind == "llm-yes-no":
            assert recipe.template is not None, recipe.model_id
            assert recipe.template_path().is_file(), recipe.model_id
            # Qwen3-VL-Reranker's reference tokenizes its rendered prompt whole (processor(text=...)): no pieces
            assert recipe.hf_overrides.get(PIECEWISE_KEY) is (None if recipe.images else True), recipe.model_id


def test_hf_overrides_serialise_as_json_round_trip():
    for recipe in RECIPES.values():
        text = recipe.hf_overrides_json()
        if recipe.hf_overrides:
            assert json.loads(text) == dict(recipe.hf_overrides)
        else:
            assert text is None


def test_recipes_are_frozen():
    recipe = get_recipe("BAAI/bge-reranker-base")
    with pytest.raises(AttributeError):
        recipe.max_model_len = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        recipe.hf_overrides["x"] = 1  # type: ignore[index]


def test_templates_keep_their_final_newlines_when_rendered_like_vllm():
    """vLLM renders through transformers' Jinja env (trim_blocks, no keep_trailing_newline)."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    messages = [{"role": "query", "content": "Q?"}, {"role": "document", "content": "D."}]
    qwen3 = _compile_jinja_template(get_recipe("Qwen/Qwen3-Reranker-0.6B").template_path().read_text())
    assert qwen3.render(messages=messages).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    mxbai = _compile_jinja_template(get_recipe("mixedbread-ai/mxbai-rerank-base-v2").template_path().read_text())
    text = mxbai.render(messages=messages)
    assert text.endswith("Relevance:<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>user\nquery: Q?\ndocument: D.\nYou are a search relevance expert" in text
    with_instruction = mxbai.render(messages=messages, instruction="Find code")
    assert "<|im_start|>user\ninstruction: Find code\nquery: Q?\n" in with_instruction
