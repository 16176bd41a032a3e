"""The token ids vLLM's own score-prompt code produces for a pair, computed in this process.

Builds vLLM's pooling IO processors from the same argv a server gets (through vLLM's parser and
EngineArgs), with general plugins loaded as the server loads them, and calls the cross-encoder
processor's ``get_score_prompt``: the exact function the server runs for /rerank and /score. For a
listwise family (jina-reranker-v3) the prompt is vLLM's ``format_docs_prompts_func`` of its
jina-reranking-scoring processor, tokenized by the server's tokenizer.
"""

from __future__ import annotations

import os
from functools import cache

from rerank_kit._contract import PLUGIN_ENV
from rerank_kit.launcher import Command
from rerank_kit.launcher.offline import engine_kwargs_from_argv


@cache
def _config(argv: tuple[str, ...]):
    from vllm.engine.arg_utils import EngineArgs

    kwargs, _ = engine_kwargs_from_argv(list(argv))
    return EngineArgs(**kwargs).create_engine_config()


@cache
def _tokenizer(argv: tuple[str, ...]):
    """The server's tokenizer, loaded once per command (a new renderer loads it again from disk)."""
    from vllm.renderers import renderer_from_config

    return renderer_from_config(_config(argv)).get_tokenizer()


def _listwise_ids(argv: tuple[str, ...], query: str, document: str, instruction: str | None) -> list[int]:
    from vllm.entrypoints.pooling.scoring.io_processor import JinaRankingIOProcessorMixin

    prompt = JinaRankingIOProcessorMixin.format_docs_prompts_func(query, [document], instruction=instruction)
    return list(_tokenizer(argv)(prompt, add_special_tokens=True)["input_ids"])


@cache
def _processor(argv: tuple[str, ...], plugin_mode: str):
    from vllm.engine.arg_utils import EngineArgs
    from vllm.entrypoints.pooling.factories import init_pooling_io_processors
    from vllm.plugins import load_general_plugins
    from vllm.renderers import renderer_from_config

    try:
        from vllm.renderers.chat_utils import ChatTemplateConfig
    except ImportError:  # vLLM < 0.32 (make test-images runs older releases)
        from vllm.entrypoints.chat_utils import ChatTemplateConfig

    # the plugin acts where the server's environment asks for it; it reads the setting when it registers (once
    # per process), and the test process's environment is left as it was
    saved = os.environ.get(PLUGIN_ENV)
    os.environ[PLUGIN_ENV] = plugin_mode
    try:
        load_general_plugins()
    finally:
        if saved is None:
            os.environ.pop(PLUGIN_ENV, None)
        else:
            os.environ[PLUGIN_ENV] = saved
    kwargs, template = engine_kwargs_from_argv(list(argv))
    config = EngineArgs(**kwargs).create_engine_config()
    processors = init_pooling_io_processors(
        supported_tasks=("classify",),
        vllm_config=config,
        renderer=renderer_from_config(config),
        chat_template_config=ChatTemplateConfig(chat_template=template),
    )
    return processors["cross-encoder"]


def prompt_token_ids(command: Command, query: str, document: str, instruction: str | None = None) -> list[int]:
    """What the server built by ``command`` tokenizes for (query, document)."""
    if command.recipe.score_kind == "listwise":
        return _listwise_ids(command.server_args, query, document, instruction)
    processor = _processor(command.server_args, str(command.env.get(PLUGIN_ENV, "")))
    _, prompt = processor.get_score_prompt(
        query,
        document,
        encode_kwargs={"add_special_tokens": True},
        chat_template=processor.chat_template,
        chat_template_kwargs={"instruction": instruction} if instruction else None,
    )
    return list(prompt["prompt_token_ids"])
