"""What rerank-kit needs from vLLM, as one table, and ``accepts``: the plugin's check before it patches.

Each ``Requirement`` names a module, a symbol in it, the parameters rerank-kit passes, a flag of the
API server's parser, an environment variable or a name the CPU backend reads; who uses it (``plugin``,
``offline`` for ``rerank-kit rank``, ``launcher``, ``guard``, ``tests``); and, where a release changed
it, the first release that has it (``since``) and the first without it (``until``).

Where the plugin wraps or re-implements a vLLM function, the row also names that function's definition
(``body``) and pins the fingerprints of the bodies the plugin was verified against (``pins``,
``rerank_kit.server.fingerprint``: normalised syntax, so formatting, comments and docstrings do not count), each
with the releases that ship it. ``pinned(key, obj)`` tells the plugin whether the installed body is one of them;
an unknown body makes that patch point step aside to vLLM's own code.

``accepts(key, obj)`` tells the plugin whether the importable vLLM object takes what row ``key`` says;
``rerank_kit.launcher.wheelcheck`` checks the whole table against a vLLM source tree or wheel without
importing it (``python -m rerank_kit.vllm_api WHEEL``). Standard library only (the wheel checker runs
under ``python -S -I``).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from rerank_kit._contract import VLLM_API_KEY_ENV, version_tuple
from rerank_kit.server import fingerprint

# Where `make_arg_parser` (the API server's argument parser) lives, newest first.
PARSER_MODULES = (
    "vllm.entrypoints.common.cli_args",  # 0.33
    "vllm.entrypoints.launchers.cli_args",  # 0.29 - 0.32
    "vllm.entrypoints.openai.cli_args",  # up to 0.28
)


@dataclass(frozen=True)
class Sig:
    """Parameter (or member) names: positional ones in order, keyword-capable ones, and ``**kwargs``."""

    positional: tuple[str, ...]
    keyword: frozenset[str]
    var_keyword: bool = False

    def __str__(self) -> str:
        rest = sorted(self.keyword - set(self.positional))
        return f"({', '.join([*self.positional, *(['*', *rest] if rest else []), *(['**'] * self.var_keyword)])})"


def function_sig(node: ast.FunctionDef | ast.AsyncFunctionDef) -> Sig:
    a = node.args
    positional = [x.arg for x in (*a.posonlyargs, *a.args)]
    skip = 1 if positional and positional[0] in ("self", "cls") else 0
    keyword = {x.arg for x in (*a.args, *a.kwonlyargs)} - {"self", "cls"}
    return Sig(tuple(positional[skip:]), frozenset(keyword), a.kwarg is not None)


def self_attributes(tree: ast.AST) -> set[str]:
    """The ``self.x`` a class (or any code) assigns."""
    return {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and getattr(n.value, "id", "") == "self"
    }


Kind = Literal["module", "symbol", "signature", "entrypoint", "flag", "env", "mention"]
# ok: there as the table says. missing / differs: the table says this release has it, but it is not
# there (or takes other parameters). absent: not there, as the table says. present: there although
# the table says this release lacks it (the table's range is too narrow).
Status = Literal["ok", "missing", "differs", "absent", "present"]


@dataclass(frozen=True)
class Requirement:
    """One thing rerank-kit relies on. ``params``: names before a ``"*"`` entry are passed by
    position, in that order; names after it by keyword; ``"**"``: extra keywords must be accepted.
    For a class the names are its members (fields, ``__init__`` parameters, ``self.x`` attributes)."""

    key: str
    kind: Kind
    module: str
    target: str = ""
    params: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    note: str = ""
    # "module:Qual.name" of the definition the plugin wraps or re-implements, and (fingerprint, releases) of each
    # body it was verified against
    body: str = ""
    pins: tuple[tuple[str, str], ...] = ()
    # (fingerprint, releases) of bodies read and deliberately left to vLLM's own code (``note`` says why): the plugin
    # steps aside from them as from any unpinned body, and the wheel checker does not flag them as unreviewed.
    declined: tuple[tuple[str, str], ...] = ()

    def applies(self, version: str | None) -> bool:
        """Whether release ``version`` should have this (None: the newest, unknown release)."""
        if version is None:
            return self.until is None
        v = version_tuple(version)
        return (self.since is None or v >= version_tuple(self.since)) and (
            self.until is None or v < version_tuple(self.until)
        )


def _r(key: str, kind: Kind, module: str, target: str = "", params: str = "", users: str = "",
       since: str | None = None, until: str | None = None, note: str = "", body: str = "",
       pins: str = "", declined: str = "") -> Requirement:  # fmt: skip
    pinned = tuple(tuple(p.split("=", 1)) for p in pins.split())
    left = tuple(tuple(p.split("=", 1)) for p in declined.split())
    return Requirement(key, kind, module, target, tuple(params.split()), tuple(users.split()), since, until, note,
                       body, pinned, left)  # type: ignore[arg-type]  # fmt: skip


SCORING = "vllm.entrypoints.pooling.scoring.io_processor"
SCORING_UTILS = "vllm.entrypoints.pooling.scoring.utils"
CROSS, BI = "ScoringIOProcessors[cross-encoder]", "ScoringIOProcessors[bi-encoder]"
LAUNCHER_FLAGS = (  # (flag, since, until); every flag launcher.command can emit
    ("--model", None, None), ("--served-model-name", None, None), ("--host", None, None), ("--port", None, None),
    ("--runner", "0.10.1", None), ("--convert", "0.10.1", None), ("--task", None, "0.13.0"),
    ("--hf-overrides", None, None), ("--chat-template", None, None), ("--trust-remote-code", None, None),
    ("--pooler-config", "0.11.0", None), ("--max-model-len", None, None), ("--enable-prefix-caching", None, None),
    ("--tensor-parallel-size", None, None), ("--data-parallel-size", None, None), ("--enforce-eager", None, None),
    ("--middleware", None, None), ("--dtype", None, None), ("--kv-cache-memory-bytes", "0.10.2", None),
    ("--distributed-executor-backend", None, None), ("--api-server-count", None, None),
    ("--quantization", None, None), ("--mamba-ssm-cache-dtype", "0.10.2", None),
    ("--mm-processor-kwargs", None, None), ("--limit-mm-per-prompt", None, None),
)  # fmt: skip
# fmt: off
REQUIREMENTS: tuple[Requirement, ...] = (
    # the plugin (rerank_kit.server.plugin)
    _r("plugin.entry_point_group", "mention", "vllm.plugins", "vllm.general_plugins", users="plugin"),
    _r("plugin.io_processor", "module", SCORING, users="plugin", since="0.20.0",
       note="0.12-0.19 render score prompts in pooling/score/utils.py, older ones in entrypoints/score_utils.py"),
    _r("plugin.registry", "symbol", SCORING, "ScoringIOProcessors", users="plugin", since="0.20.0"),
    _r("plugin.cross_encoder", "symbol", SCORING, CROSS, users="plugin", since="0.20.0"),
    _r("plugin.bi_encoder", "symbol", SCORING, BI, users="plugin", since="0.20.0"),
    _r("plugin.cross_encoder_members", "signature", SCORING, CROSS, "chat_template model_config tokenizer",
       "plugin", "0.20.0", note="the batched path reads model, use_sep_token and _executor, set in __init__",
       body=f"{SCORING}:CrossEncoderIOProcessor.__init__",
       pins="58b98808a055b700=0.27.1-0.29.0 dd1abc78fb648844=0.30.0-0.32.0 3bc31a345769bac0=0.33.0-0.34.0"),
    _r("plugin.get_score_prompt", "signature", SCORING, f"{CROSS}.get_score_prompt",
       "data_1 data_2 encode_kwargs chat_template max_tokens_per_query max_tokens_per_doc chat_template_kwargs *",
       "plugin", "0.22.0", note="0.20-0.21 take no chat_template_kwargs; 0.33 falls back to a saved template",
       body=f"{SCORING}:CrossEncoderIOProcessor.get_score_prompt",
       pins="368c6ca22714b9da=0.27.1-0.30.0 b3447a8bb945ea35=0.31.0-0.32.0 18b98be46f94378e=0.33.0-0.34.0"),
    _r("plugin.cross_encoder_factory", "signature", SCORING, f"{CROSS}.get_request_factory_online", "ctx *",
       "plugin", "0.27.0", note="0.20-0.26 have pre_process_online(ctx): an override of this is never called",
       body=f"{SCORING}:CrossEncoderIOProcessor.get_request_factory_online", pins="3c89b7a48b57dd9a=0.27.1-0.34.0"),
    _r("plugin.render", "signature", SCORING, f"{CROSS}.render", "render_params", "plugin", "0.27.0",
       note="the plugin builds a request's prompts at once and hands each pair to render()",
       body=f"{SCORING}:CrossEncoderIOProcessor.render",
       pins="4d2db42f4e05e810=0.27.1-0.32.0 02d08f7d60cb3abe=0.33.0-0.34.0"),
    _r("plugin.scoring_preprocessing", "signature", "vllm.entrypoints.pooling.scoring.serving",
       "ServingScores._preprocessing", "io_processor ctx", "plugin", "0.27.0",
       note="the plugin renders a scoring request's pairs at once instead of one task per pair",
       body="vllm.entrypoints.pooling.base.serving:PoolingBaseServing._preprocessing",
       pins="83abc4b111bc4552=0.27.1-0.34.0"),
    _r("plugin.prepare_generators", "signature", "vllm.entrypoints.pooling.scoring.serving",
       "ServingScores._prepare_generators", "ctx", "plugin", "0.27.0",
       note="the plugin hands a scoring request's pairs to the engine with no generator or task per pair",
       body="vllm.entrypoints.pooling.base.serving:PoolingBaseServing._prepare_generators",
       pins="9354c286cf5c5415=0.27.1-0.34.0"),
    _r("plugin.async_llm_encode", "signature", "vllm.v1.engine.async_llm", "AsyncLLM.encode",
       "prompt pooling_params request_id * lora_request trace_headers priority", "plugin", "0.27.0",
       note="re-implemented for a request's pairs at once: add_request per pair, its error handling",
       body="vllm.v1.engine.async_llm:AsyncLLM.encode",
       pins="fe27df5a87cad68f=0.27.1-0.28.0 bb49b9752d9558ce=0.29.0-0.32.0 27b1c6443e0dda96=0.33.0-0.34.0"),
    _r("plugin.async_llm_add_request", "signature", "vllm.v1.engine.async_llm", "AsyncLLM.add_request",
       "request_id prompt params * lora_request trace_headers priority", "plugin", "0.27.0"),
    # a request's pairs sent to the engine core in one utility call (rerank_kit.server.engine_batch)
    _r("plugin.core_client_add_request", "signature", "vllm.v1.engine.core_client", "AsyncMPClient.add_request_async",
       "request", "plugin", "0.27.0",
       note="the plugin collects a scoring request's pairs where this would send each; 0.34 packs the token ids into "
            "an array sent out of band (more than one buffer per message): left to vLLM",
       body="vllm.v1.engine.core_client:AsyncMPClient.add_request_async", pins="e8bd6aa5e4c27a18=0.27.1-0.33.0",
       declined="5584c27a0e09a08d=0.34.0"),
    _r("plugin.engine_input_add", "signature", "vllm.v1.engine.core", "EngineCoreProc.process_input_sockets",
       "input_addresses coord_input_address identity ready_event", "plugin", "0.27.0",
       note="its ADD branch is what the plugin's engine-core method does per request: decode, "
            "preprocess_add_request, the multimodal cache miss (0.28+) and validation error (0.33+) answered as there",
       body="vllm.v1.engine.core:EngineCoreProc.process_input_sockets",
       pins="0468f6a214ce0459=0.27.1 e3a77e0ca593dc9b=0.28.0-0.32.0 a6579c766a75d92c=0.33.0-0.34.0"),
    _r("plugin.engine_client_request", "signature", "vllm.v1.engine.core", "EngineCoreProc._handle_client_request",
       "request_type request", "plugin", "0.27.0",
       note="a utility call is getattr(self, name)(*args); the plugin's method hands each request to its ADD branch "
            "(0.33 adds the refusal while paused)",
       body="vllm.v1.engine.core:EngineCoreProc._handle_client_request",
       pins="3c97ec217f3a052e=0.27.1-0.32.0 42fe4fc23c0dcb22=0.33.0-0.34.0"),
    _r("plugin.rerank_response", "signature", "vllm.entrypoints.pooling.scoring.serving",
       "ServingScores._request_output_to_rerank_response",
       "final_res_batch request_id model_name documents top_n num_prompt_tokens", "plugin", "0.30.0",
       note="the plugin builds /rerank answers from dicts (the same JSON), every pair's score in one tensor operation; "
            "before 0.30 the builder counted the prompt tokens itself (no num_prompt_tokens): left to vLLM",
       body="vllm.entrypoints.pooling.scoring.serving:ServingScores._request_output_to_rerank_response",
       pins="a7aa88fc286e1ecb=0.30.0-0.34.0", declined="90621cd7f3dee48d=0.27.1-0.29.0"),
    # what the two builders read each pair's score with: responses.pair_scores does the same for all pairs at once
    _r("plugin.scoring_output", "signature", "vllm.outputs", "ScoringOutput.from_base", "pooling_output", "plugin",
       "0.30.0", body="vllm.outputs:ScoringOutput.from_base", pins="ea11dcfd644c2712=0.30.0-0.34.0"),
    _r("plugin.scoring_request_output", "signature", "vllm.outputs", "ScoringRequestOutput.from_base",
       "request_output", "plugin", "0.30.0", note="0.32 adds the pair's error (score 0.0 with one)",
       body="vllm.outputs:ScoringRequestOutput.from_base",
       pins="40aa6bd7c3ce42be=0.30.0-0.31.0 d3fac8fb3f3ce090=0.32.0-0.34.0"),
    _r("plugin.score_response", "signature", "vllm.entrypoints.pooling.scoring.serving",
       "ServingScores._request_output_to_score_response",
       "final_res_batch request_id created_time model_name num_prompt_tokens", "plugin", "0.30.0",
       note="the plugin builds /score answers from dicts (the same JSON), every pair's score in one tensor operation; "
            "before 0.30 the builder counted the prompt tokens itself (no num_prompt_tokens): left to vLLM",
       body="vllm.entrypoints.pooling.scoring.serving:ServingScores._request_output_to_score_response",
       pins="7e1f6a76b7a4e058=0.30.0-0.34.0", declined="3763d7ad0213eea4=0.27.1-0.29.0"),
    # vLLM's bookkeeping per engine request, the same result for less (rerank_kit.server.bookkeeping)
    _r("plugin.pooling_params_clone", "signature", "vllm.pooling_params", "PoolingParams.clone", "", "plugin",
       "0.27.0", note="a pair's parameters copied field by field (the same copy as vLLM's deepcopy)",
       body="vllm.pooling_params:PoolingParams.clone", pins="546ec0459c407400=0.27.1-0.34.0"),
    _r("plugin.assign_request_id", "signature", "vllm.v1.engine.input_processor", "InputProcessor.assign_request_id",
       "request", "plugin", "0.27.0", note="the request id's random suffix from a per-process generator",
       body="vllm.v1.engine.input_processor:InputProcessor.assign_request_id", pins="e8c3532a61b32099=0.27.1-0.34.0"),
    _r("plugin.random_uuid", "signature", "vllm.utils", "random_uuid", "", "plugin", "0.27.0",
       body="vllm.utils:random_uuid", pins="ad3640ab37008599=0.27.1-0.34.0"),
    _r("plugin.decode_tensor", "signature", "vllm.v1.serial_utils", "MsgpackDecoder._decode_tensor", "arr", "plugin",
       "0.27.0", note="the API server's output decoder reads a pair's inline score tensor with one copy",
       body="vllm.v1.serial_utils:MsgpackDecoder._decode_tensor", pins="502f7e6ffcdb0da5=0.27.1-0.34.0"),
    _r("plugin.envs_cache", "symbol", "vllm.envs", "enable_envs_cache", users="plugin", since="0.27.0",
       note="the API server's vLLM variables cached once it serves, as vLLM's engine core caches its own"),
    _r("plugin.cpu_engine_start", "signature", "vllm.platforms.cpu", "CpuPlatform.check_and_update_config",
       "vllm_config", "plugin", "0.20.0",
       note="sets VLLM_WORKER_MULTIPROC_METHOD=spawn; with RERANK_KIT_ENGINE_START=fork the plugin forks the engine "
            "core instead, on the bodies it ran forked (each release's differs; 0.33.0, read, not run: no CPU "
            "build, differs from 0.32.0 only in the KV cache's default block size). 0.34.0 is left to vLLM's spawn: "
            "its body differs from 0.33.0 only in refusing x86 without triton-cpu, but its CPU engine core is always "
            "the Triton-CPU model runner (the V1 runner is gone), which no fork here has run",
       body="vllm.platforms.cpu:CpuPlatform.check_and_update_config",
       pins="f816ea6e47dd6591=0.31.0 130180b09f4e55ed=0.32.0 00f9a6726507d003=0.33.0",
       declined="85d6984ebd641aa8=0.34.0"),
    _r("plugin.bi_encoder_factory", "signature", SCORING, f"{BI}.get_request_factory_online", "ctx *",
       "plugin", "0.27.0", body=f"{SCORING}:BiEncoderIOProcessor.get_request_factory_online",
       pins="6391199ab376df31=0.27.1-0.34.0"),
    _r("plugin.serve_context", "signature", "vllm.entrypoints.pooling.typing", "PoolingServeContext",
       "request prompt_extras", "plugin", "0.27.0"),
    _r("plugin.tokens_prompt", "symbol", "vllm", "TokensPrompt", users="plugin"),
    _r("plugin.parse_score_data", "signature", SCORING_UTILS, "parse_score_data", "data_1 data_2 model_config *",
       "plugin", "0.20.0", body=f"{SCORING_UTILS}:parse_score_data", pins="0eb13be2fb882c94=0.27.1-0.34.0"),
    # parse_score_data's helpers: the plugin's prompts start from what they make of a query or a document, so a
    # change inside them (0.34 edited _parse_score_content under an unchanged parse_score_data) changes its input.
    _r("plugin.parse_score_content", "signature", SCORING_UTILS, "_parse_score_content", "role data mm_tracker",
       "plugin", "0.27.0", note="0.33 calls the renamed parse_chat_message_content_parts; 0.34 drops a fallback no "
       "call could reach (the parser returns one message)", body=f"{SCORING_UTILS}:_parse_score_content",
       pins="3c077dcefc32f978=0.27.1-0.32.0 7457ff59024fba8f=0.33.0 dcbd9f6e9e2a8f4f=0.34.0"),
    _r("plugin.ensure_str", "signature", SCORING_UTILS, "_ensure_str", "content", "plugin", "0.27.0",
       body=f"{SCORING_UTILS}:_ensure_str", pins="9f6b650f37785576=0.27.1-0.34.0"),
    _r("plugin.truncate_text_to_tokens", "signature", SCORING_UTILS, "truncate_text_to_tokens",
       "text tokenizer max_tokens *", "plugin", "0.20.0", body=f"{SCORING_UTILS}:truncate_text_to_tokens",
       note="0.34.0 adds a branch for Mistral tokenizers; the Hugging Face branch the plugin's tokenizers take is "
            "0.33.0's, line for line",
       pins="6ee636babd9c3a0e=0.27.1-0.30.0 bc1e76217d013263=0.31.0-0.33.0 bcd602bc33dd0d87=0.34.0"),
    _r("plugin.safe_apply_chat_template", "signature", "vllm.renderers.hf", "safe_apply_chat_template",
       "model_config tokenizer conversation * chat_template tools tokenize **", "plugin", "0.15.0",
       body="vllm.renderers.hf:safe_apply_chat_template",
       pins="6b13409d249828fc=0.27.1-0.29.0 50093c624b6faf10=0.30.0 99b008d7ee35692e=0.31.0-0.34.0"),
    _r("plugin.merge_kwargs", "signature", "vllm.renderers.params", "merge_kwargs", "defaults overrides *", "plugin",
       "0.27.0", note="how vLLM 0.33 merges a saved template's kwargs under the request's; the plugin calls it",
       body="vllm.renderers.params:merge_kwargs", pins="99cd92c39aacae37=0.27.1-0.34.0"),
    _r("plugin.disable_env", "env", "vllm.envs", "VLLM_PLUGINS", users="plugin tests"),
    # rerank-kit rank (rerank_kit.launcher.offline) and tests/vllm_prompts.py
    _r("offline.make_arg_parser.openai", "signature", PARSER_MODULES[2], "make_arg_parser", "parser *",
       "offline tests", until="0.29.0"),
    _r("offline.make_arg_parser.launchers", "signature", PARSER_MODULES[1], "make_arg_parser", "parser *",
       "offline tests", "0.29.0", "0.33.0"),
    _r("offline.make_arg_parser.common", "signature", PARSER_MODULES[0], "make_arg_parser", "parser *",
       "offline tests", "0.33.0"),
    _r("offline.flexible_argument_parser", "symbol", "vllm.utils.argparse_utils", "FlexibleArgumentParser",
       users="offline tests", since="0.11.1", note="before: vllm.utils.FlexibleArgumentParser"),
    _r("offline.from_cli_args", "signature", "vllm.engine.arg_utils", "EngineArgs.from_cli_args", "args *",
       "offline tests"),
    _r("offline.llm", "symbol", "vllm", "LLM", users="offline"),
    _r("offline.llm_score", "signature", "vllm.entrypoints.llm", "LLM.score",
       "data_1 data_2 * use_tqdm chat_template pooling_params", "offline", "0.14.0"),
    _r("offline.pooling_params", "signature", "vllm", "PoolingParams", "extra_kwargs", "offline"),
    _r("offline.logging_stream", "env", "vllm.envs", "VLLM_LOGGING_STREAM", users="offline", since="0.10.2"),
    _r("tests.init_pooling_io_processors", "signature", "vllm.entrypoints.pooling.factories",
       "init_pooling_io_processors", "supported_tasks vllm_config renderer chat_template_config", "tests", "0.20.0"),
    _r("tests.load_general_plugins", "symbol", "vllm.plugins", "load_general_plugins", users="tests"),
    _r("tests.renderer_from_config", "symbol", "vllm.renderers", "renderer_from_config", users="tests",
       since="0.15.0"),
    _r("tests.chat_template_config", "signature", "vllm.renderers.chat_utils", "ChatTemplateConfig",
       "chat_template", "tests", "0.32.0", note="0.17-0.31: vllm.entrypoints.chat_utils"),
    _r("tests.create_engine_config", "symbol", "vllm.engine.arg_utils", "EngineArgs.create_engine_config",
       users="tests"),
    # the launcher's command (rerank_kit.launcher) and the guard it loads with --middleware
    _r("launcher.entrypoint", "entrypoint", "vllm.entrypoints.openai.api_server", users="launcher",
       note="warns 'deprecated' from 0.29 on"),
    _r("launcher.entrypoint.launchers", "entrypoint", "vllm.entrypoints.launchers.api_server.entry",
       users="launcher", since="0.29.0", note="the same main() without the deprecation warning"),
    *(_r(f"launcher.flag{flag}", "flag", "", flag, users="launcher guard" if flag == "--middleware" else "launcher",
         since=since, until=until) for flag, since, until in LAUNCHER_FLAGS),
    _r("launcher.cpu_kv_cache_bytes", "mention", "vllm.v1.worker.cpu_worker", "kv_cache_memory_bytes",
       users="launcher", since="0.20.0",
       note="before 0.20 the CPU worker ignores --kv-cache-memory-bytes: only VLLM_CPU_KVCACHE_SPACE sizes it"),
    *(_r(f"launcher.env.{name}", "env", "vllm.envs", name, users="launcher guard" if "KEY" in name else "launcher")
      for name in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_ENABLE_V1_MULTIPROCESSING",
                   VLLM_API_KEY_ENV)),
    _r("launcher.env.VLLM_USE_AOT_COMPILE", "env", "vllm.envs", "VLLM_USE_AOT_COMPILE", users="launcher",
       since="0.21.0", note="seen in 0.21 (absent in 0.11); older releases ignore the variable"),
    _r("launcher.env.VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB", "env", "vllm.envs", "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB",
       users="launcher", since="0.29.0", note="vision rerankers: the guard's per-image cap on images vLLM fetches"),
)
# fmt: on


@dataclass(frozen=True)
class Finding:
    """What a checker found for one requirement; ``detail`` says where, or what was found instead."""

    requirement: Requirement
    status: Status
    detail: str = ""
    # the fingerprint of the row's ``body`` where it was read ("" for a row without one, "absent" if not found)
    body: str = ""

    @property
    def body_changed(self) -> bool:
        """The definition the plugin wraps or re-implements is there, but not as any body it was verified on."""
        known = {pin for pin, _ in (*self.requirement.pins, *self.requirement.declined)}
        return bool(self.body) and self.body != "absent" and self.body not in known

    @property
    def failed(self) -> bool:
        return self.status in ("missing", "differs") or (self.body_changed and self.status == "ok")

    @property
    def usable(self) -> bool:
        """It is there, with the parameters rerank-kit passes, whatever the table expected."""
        return self.status in ("ok", "present")


def judge(req: Requirement, version: str | None, found: bool, sig: Sig | None = None, where: str = "") -> Finding:
    cut = req.params.index("*") if "*" in req.params else 0
    positional, keyword = req.params[:cut], [p for p in req.params[cut:] if p not in ("*", "**")]
    good = found and (
        sig is None
        or (
            sig.positional[:cut] == positional
            and all(name in sig.keyword for name in keyword)
            and ("**" not in req.params or sig.var_keyword)
        )
    )
    detail = f"found {sig}" if found and not good else where
    if req.applies(version):
        return Finding(req, "ok" if good else "differs" if found else "missing", detail)
    return Finding(req, "present" if good else "absent", detail)


def select(users: Iterable[str] | None) -> list[Requirement]:
    wanted = None if users is None else set(users)
    return [r for r in REQUIREMENTS if wanted is None or wanted & set(r.users)]


# --- the importable vllm: what the plugin asks before it patches ------------------------------------


def object_sig(obj: Any) -> Sig:
    if inspect.isclass(obj):
        names = set(inspect.signature(obj).parameters)
        for klass in obj.__mro__:
            names |= set(getattr(klass, "__annotations__", {})) | {k for k in vars(klass) if not k.startswith("__")}
            try:
                names |= self_attributes(ast.parse(textwrap.dedent(inspect.getsource(klass))))
            except (OSError, TypeError, SyntaxError):
                continue
        return Sig((), frozenset(names))
    params = list(inspect.signature(obj).parameters.values())
    params = params[1:] if params and params[0].name in ("self", "cls") else params
    P = inspect.Parameter
    return Sig(
        tuple(p.name for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)),
        frozenset(p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)),
        any(p.kind is P.VAR_KEYWORD for p in params),
    )


def requirement(key: str) -> Requirement:
    """The table's row ``key`` (e.g. ``"plugin.get_score_prompt"``)."""
    for req in REQUIREMENTS:
        if req.key == key:
            return req
    raise KeyError(key)


def pinned(key: str, obj: Any) -> str | None:
    """None when ``obj``'s source is a body row ``key`` pins (or the row pins none); else what the plugin says when
    it steps aside: the definition, the fingerprint found and the releases whose bodies were verified."""
    req = requirement(key)
    if not req.pins:
        return None
    try:
        found = fingerprint.of_object(obj)
    except (OSError, TypeError, SyntaxError):
        found = "no source"
    if any(found == pin for pin, _ in req.pins):
        return None
    name = req.body.split(":", 1)[-1]
    for pin, releases in req.declined:
        if found == pin:
            return f"{name} of vLLM {releases} ({found}) was read and is left to vLLM's own code (compat row {key})"
    return f"{name} is not a body rerank-kit was verified on ({found}; verified: {verified_releases(req)})"


def verified_releases(req: Requirement) -> str:
    return ", ".join(releases for _, releases in req.pins)


def accepts(key: str, obj: Any) -> bool:
    """Whether ``obj`` (a function, method or class) takes what requirement ``key`` says rerank-kit passes.

    The plugin asks this before it overrides a vLLM method, so a changed signature leaves it alone.
    """
    try:
        sig = object_sig(obj)
    except (TypeError, ValueError):
        return False
    return judge(requirement(key), None, True, sig).usable
