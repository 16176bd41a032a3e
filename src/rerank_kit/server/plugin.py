"""A vLLM plugin that makes LLM rerankers tokenize their prompt the way their reference code does.

vLLM renders a score template to one string and tokenizes it whole. The reference implementations
of mxbai-rerank v2, Qwen3-Reranker and bge-reranker-v2-gemma tokenize the prompt in pieces
(prefix, query, separator, document, task prompt, suffix) and concatenate the ids. BPE merges
across a piece boundary differ: a query ending in "?" gives "?" + "\\n" in the reference and "?\\n"
from vLLM, which moves scores and can reorder documents (vLLM issue 22983).

Recipes whose HF config carries ``rerank_kit_piecewise: true`` (set through ``--hf-overrides``)
get this behaviour: the template receives ``piece_sep``, the rendered text is split there and each
piece is tokenized on its own. Without the plugin the same template renders the same text with
an empty separator, i.e. vLLM's own behaviour.

The plugin also rejects an ``instruction`` that the served template would silently ignore, and
makes truncation the default: a query-document pair longer than ``--max-model-len`` is cut to fit
(the document loses its tail; with piecewise prompts the task prompt and suffix are kept) instead
of failing the whole request. ``rerank-kit serve --strict-length`` (``_contract.Limits.strict_length``)
restores vLLM's reject-with-400.

On vLLM >= 0.27 the plugin also builds a request's prompts in one go instead of pair by pair
(``rerank_kit.server.prompts``): one template render and one batched tokenizer call per request, run on
vLLM's preprocessing thread pool, then each pair's cheap remainder inline, without a task per pair
(``_batch_scoring``). Same token ids, a fraction of
the API server's time per pair (bench/frontend_cost.py).

vLLM loads it through the ``vllm.general_plugins`` entry point of the installed rerank-kit
distribution (``rerank_kit.server.plugin:register``; older installs name the shim ``rerank_kit.vllm_plugin``),
in every vLLM process; the work happens only in the API server, where requests are
rendered. Set ``VLLM_PLUGINS`` to a list without ``rerank_kit`` to disable it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from rerank_kit._contract import PIECEWISE_KEY, Limits
from rerank_kit.errors import InstructionNotSupportedError, InvalidInputError
from rerank_kit.recipes import instruction_error
from rerank_kit.server import prompts as score_prompts
from rerank_kit.server.prompts import DOC_MARK, PIECE_SEP, QUERY_MARK, piecewise_token_ids, special_token_frame

# A child of vLLM's logger, so messages appear in the server log with its formatting.
logger = logging.getLogger("vllm.rerank_kit")

# PIECE_SEP marks piece boundaries in the rendered template. A private-use code point: no tokenizer
# merges across it because it never reaches a tokenizer, and text that contains it falls back to vLLM's
# whole-string path.
ACTIVE_MESSAGE = "rerank-kit: piecewise score-prompt tokenization active for this model"
BATCHED_MESSAGE = "rerank-kit: score prompts built per request (one render, one tokenizer call per distinct text)"


@functools.lru_cache(maxsize=64)
def _template_uses(template: str | None, name: str) -> bool:
    """Cached: a server has one template, and parsing it on every request costs more than the request."""
    if not template:
        return False
    import jinja2
    from jinja2 import meta

    try:
        # parsed for its variable names only, never rendered to HTML
        return name in meta.find_undeclared_variables(jinja2.Environment().parse(template))  # noqa: S701
    except jinja2.TemplateSyntaxError:
        return name in template


# The server knows its template, not the recipe, so the message names no model.
INSTRUCTION_ERROR = instruction_error("this model's score template")


def _check_instruction(template: str | None, chat_template_kwargs: dict[str, Any] | None) -> None:
    if (chat_template_kwargs or {}).get("instruction") and not _template_uses(template, "instruction"):
        raise InstructionNotSupportedError(INSTRUCTION_ERROR)  # a ValueError: vLLM answers 400


# The template variable that receives PIECE_SEP from the plugin.
PIECE_SEP_KWARG = "piece_sep"


@functools.cache
def _reserved_kwargs() -> frozenset[str]:
    """What a request's ``chat_template_kwargs`` may not set: the names the plugin passes vLLM's
    ``safe_apply_chat_template`` itself (its row in rerank_kit.server.compat, checked before the plugin
    renders), ``messages`` (transformers renders the conversation under that name) and ``piece_sep``."""
    from rerank_kit.server.compat import requirement

    passed = requirement("plugin.safe_apply_chat_template").params
    return frozenset(name for name in passed if name not in ("*", "**")) | {"messages", PIECE_SEP_KWARG}


def _check_template_kwargs(chat_template_kwargs: Mapping[str, Any] | None, *, ours: tuple[str, ...] = ()) -> None:
    """Refuse request ``chat_template_kwargs`` that collide with an argument the renderer sets itself, before
    any render: passed on, they fail deep in vLLM as a TypeError ("got multiple values for keyword argument").
    ``ours``: names the caller has just set itself (``piece_sep`` on the piecewise path)."""
    clash = sorted((_reserved_kwargs() - set(ours)) & set(chat_template_kwargs or {}))
    if clash:
        names = ", ".join(repr(name) for name in clash)
        raise InvalidInputError(  # a ValueError: vLLM answers 400
            f"chat_template_kwargs may not set {names}: the server's score-template renderer sets "
            f"{'this argument' if len(clash) == 1 else 'these arguments'} itself. Remove "
            f"{names} from chat_template_kwargs; the template's own variables (e.g. 'instruction') are fine."
        )


# Skeletons kept per IO processor, most recently used last: one per (template, template kwargs other than
# the instruction) in use. A client can vary the other kwargs, so the number is fixed.
MAX_SHAPES = 32
_SHAPES_LOCK = threading.Lock()  # the skeletons are built on vLLM's preprocessing thread pool
# (template kwargs, query, document) -> the rendered template
TemplateRender = Callable[[dict[str, Any], str, str], str]


def _cached_shape(
    shapes: dict[tuple[str, str], str | None], template: str, kwargs: dict[str, Any], render: TemplateRender
) -> str | None:
    """The skeleton of ``template`` with ``kwargs``, the request's instruction in place; None where only the
    per-pair path is exact (a template that does not insert its texts verbatim, an instruction that holds a
    placeholder character).

    A non-empty string ``instruction`` is a placeholder like the texts, so one skeleton serves every
    instruction; a request without one (absent, empty or not a string: templates fall back to a default
    task) has its own. ``shapes`` keeps the ``MAX_SHAPES`` most recently used.
    """
    _check_template_kwargs(kwargs, ours=(PIECE_SEP_KWARG,))
    instruction = kwargs.get("instruction")
    instructed = isinstance(instruction, str) and instruction != ""
    if instructed and not score_prompts.batchable([instruction]):
        return None
    placeheld = {**kwargs, "instruction": score_prompts.INSTRUCTION_MARK} if instructed else kwargs
    key = (template, repr(sorted(placeheld.items())))
    with _SHAPES_LOCK:
        found = key in shapes
        shape = shapes.pop(key, None)
        if found:
            shapes[key] = shape  # now the most recently used
    if not found:

        def probe(query: str, document: str, probe_instruction: str) -> str:
            return render({**kwargs, "instruction": probe_instruction} if instructed else kwargs, query, document)

        shape = score_prompts.skeleton(probe)
        if shape is None:
            logger.info("rerank-kit: this score template does not insert texts verbatim: prompts per pair")
        with _SHAPES_LOCK:
            shapes[key] = shape
            while len(shapes) > MAX_SHAPES:
                del shapes[next(iter(shapes))]
    return score_prompts.with_instruction(shape, instruction) if shape is not None and instructed else shape


@functools.cache
def _strict_length() -> bool:
    """`rerank-kit serve --strict-length` (_contract.Limits.strict_length): keep vLLM's 400 for long inputs.
    Read once: the server's environment does not change, and this runs on every request."""
    return Limits.from_env().strict_length


def _default_truncation(request: Any) -> None:
    """Truncate over-long inputs to the model's length unless the request or the server says otherwise."""
    if _strict_length():
        return
    if getattr(request, "truncate_prompt_tokens", 0) is None:
        request.truncate_prompt_tokens = -1  # vLLM: -1 means "to max_model_len"


def _can_check_requests(base: type, factory_key: str) -> bool:
    """vLLM >= 0.27 builds online requests in ``get_request_factory_online(ctx)`` with ``ctx.prompt_extras``;
    older releases call ``pre_process_online``, where an override of the former would never run."""
    from rerank_kit.server.compat import accepts

    if not accepts(factory_key, getattr(base, "get_request_factory_online", None)):
        return False
    try:
        from vllm.entrypoints.pooling.typing import PoolingServeContext
    except ImportError:
        return False
    return accepts("plugin.serve_context", PoolingServeContext)


def _with_request_checks(base: type, factory_key: str = "plugin.bi_encoder_factory") -> type:
    """``base`` (a vLLM scoring IO processor) that refuses instructions its template would drop and
    truncates over-long inputs by default; ``base`` itself where this vLLM has no place for that."""
    if not _can_check_requests(base, factory_key):
        _OFF.append(f"{base.__name__}: instruction checks and default truncation (vLLM >= 0.27)")
        return base

    class RerankKitScoringIOProcessor(base):  # type: ignore[misc, valid-type]
        rerank_kit = True

        def get_request_factory_online(self, ctx: Any) -> Any:
            _check_instruction(self.chat_template, (ctx.prompt_extras or {}).get("chat_template_kwargs"))
            _default_truncation(ctx.request)
            return super().get_request_factory_online(ctx)

    RerankKitScoringIOProcessor.__name__ = f"RerankKit{base.__name__}"
    return RerankKitScoringIOProcessor


def _piecewise_cross_encoder(base: type) -> type:
    from rerank_kit.server.compat import accepts

    checked = _with_request_checks(base, "plugin.cross_encoder_factory")
    try:
        from vllm import TokensPrompt
        from vllm.entrypoints.pooling.scoring.utils import parse_score_data, truncate_text_to_tokens
        from vllm.renderers.hf import safe_apply_chat_template
    except ImportError as exc:
        _OFF.append(f"piecewise score prompts ({exc})")
        return checked
    if not all(
        (
            accepts("plugin.get_score_prompt", getattr(base, "get_score_prompt", None)),
            accepts("plugin.parse_score_data", parse_score_data),
            accepts("plugin.truncate_text_to_tokens", truncate_text_to_tokens),
            accepts("plugin.safe_apply_chat_template", safe_apply_chat_template),
        )
    ):
        _OFF.append("piecewise score prompts (get_score_prompt(..., chat_template_kwargs) arrived in vLLM 0.22)")
        return checked
    batched = checked is not base and accepts("plugin.render", getattr(base, "render", None)) and _batch_scoring()
    if not batched:
        _OFF.append("prompts built per request instead of per pair (vLLM >= 0.27)")

    class RerankKitCrossEncoderIOProcessor(checked):  # type: ignore[misc, valid-type]
        """vLLM's cross-encoder IO processor, with piecewise prompts and instruction checks."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            hf_config = self.model_config.hf_config
            self._piecewise = bool(getattr(hf_config, PIECEWISE_KEY, False))
            self._frame = special_token_frame(self.tokenizer)
            if self._piecewise:
                if self.chat_template is None:
                    logger.warning(
                        "rerank-kit: %s=true but no --chat-template: scores use vLLM's default prompt", PIECEWISE_KEY
                    )
                else:
                    logger.info(ACTIVE_MESSAGE)
            # rendered skeleton per (template, template kwargs); None: not verbatim, build prompts per pair
            self._shapes: dict[tuple[str, str], str | None] = {}
            self._batched_said = False
            if batched and getattr(self, "_executor", None) is not None:
                self.rerank_kit_render_all = self._render_all

        async def _render_all(self, requests: list[Any]) -> list[Any]:
            """Every pair's engine input: the prompts built at once on vLLM's preprocessing thread pool, then
            each pair's cheap remainder (token checks, engine input) inline, with no task per pair."""
            loop = asyncio.get_running_loop()
            prompts = await loop.run_in_executor(self._executor, self._request_prompts_or_none, requests)
            if prompts is None:
                return list(await asyncio.gather(*(self.render_async(r) for r in requests)))
            if not self._batched_said:
                self._batched_said = True
                logger.info(BATCHED_MESSAGE)
            return [self.render({**r, "data_2": p}) for r, p in zip(requests, prompts, strict=True)]

        def _request_prompts_or_none(self, requests: list[Any]) -> list[score_prompts.Prompt] | None:
            try:
                return self._request_prompts(requests)
            except Exception:  # the per-pair path raises the same error, with vLLM's own message and status
                return None

        def _request_prompts(self, requests: list[Any]) -> list[score_prompts.Prompt] | None:
            """Every pair's prompt in one go, or None where only the per-pair path is exact."""
            first = requests[0]
            if first["max_tokens_per_query"] or first["max_tokens_per_doc"] or getattr(self, "model", 1) is not None:
                return None
            queries, documents = [r["data_1"] for r in requests], [r["data_2"] for r in requests]
            if not (score_prompts.batchable(queries) and score_prompts.batchable(documents)):
                return None
            encode_kwargs = first["tok_params"].get_encode_kwargs()
            template = first["chat_template"]
            if template is None:
                sep = getattr(self, "use_sep_token", None)
                if sep is None:
                    return None
                build = score_prompts.pair_prompts if sep else score_prompts.joined_prompts
                return build(self.tokenizer, queries, documents, encode_kwargs)
            kwargs = (first["prompt_extras"] or {}).get("chat_template_kwargs") or {}
            _check_template_kwargs(kwargs)  # raises: the per-pair path answers with the error
            piecewise = self._piecewise
            shape = self._shape(template, {**kwargs, "piece_sep": PIECE_SEP} if piecewise else kwargs)
            if shape is None:
                return None
            frame = self._frame
            return score_prompts.template_prompts(
                self.tokenizer, shape, queries, documents, encode_kwargs, piecewise=piecewise, frame=frame
            )

        def _shape(self, template: str, kwargs: dict[str, Any]) -> str | None:
            """The request's skeleton (``_cached_shape``), or None: build its prompts per pair."""
            return _cached_shape(self._shapes, template, kwargs, functools.partial(self._render, template))

        def _render(self, template: str, kwargs: dict[str, Any], query: str, document: str) -> str:
            messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
            return safe_apply_chat_template(
                self.model_config, self.tokenizer, messages,
                chat_template=template, tools=None, tokenize=False, **kwargs,
            )  # fmt: skip

        def get_score_prompt(
            self,
            data_1: Any,
            data_2: Any,
            encode_kwargs: dict[str, Any],
            chat_template: str | None = None,
            max_tokens_per_query: int = 0,
            max_tokens_per_doc: int = 0,
            chat_template_kwargs: dict[str, Any] | None = None,
        ) -> Any:
            if isinstance(data_2, score_prompts.Prompt):  # built for the whole request by _request_prompts
                prompt = TokensPrompt(prompt_token_ids=data_2.token_ids)
                if data_2.token_type_ids is not None:
                    prompt["token_type_ids"] = data_2.token_type_ids
                return "", prompt
            _check_instruction(chat_template, chat_template_kwargs)
            args = (
                data_1,
                data_2,
                encode_kwargs,
                chat_template,
                max_tokens_per_query,
                max_tokens_per_doc,
                chat_template_kwargs,
            )
            # vLLM >= 0.33 renders the checkpoint's saved template when the server has none
            if chat_template is not None or getattr(self, "saved_chat_template", None) is not None:
                _check_template_kwargs(chat_template_kwargs)
            if not (self._piecewise and chat_template is not None):
                return super().get_score_prompt(*args)
            query, document, mm_data, _ = parse_score_data(data_1, data_2, self.model_config)
            if mm_data is not None or PIECE_SEP in query or PIECE_SEP in document:
                return super().get_score_prompt(*args)
            if max_tokens_per_query > 0:
                query = truncate_text_to_tokens(query, self.tokenizer, max_tokens_per_query)
            if max_tokens_per_doc > 0:
                document = truncate_text_to_tokens(document, self.tokenizer, max_tokens_per_doc)
            kwargs = {**(chat_template_kwargs or {}), PIECE_SEP_KWARG: PIECE_SEP}
            text, ids = self._piecewise_pair(chat_template, kwargs, query, document, encode_kwargs)
            return text, TokensPrompt(prompt_token_ids=ids)

        def _piecewise_pair(
            self, template: str, kwargs: dict[str, Any], query: str, document: str, encode_kwargs: dict[str, Any]
        ) -> tuple[str, list[int]]:
            """One pair's prompt text and piecewise ids, by the batched path's rule (prompts._joined).

            From the template's skeleton where it has one (the batched path itself, for one pair); else from
            two renders, the texts and the placeholders in their place, which tell the query's and the
            document's pieces apart from the fixed text (prompts.piecewise_token_ids)."""
            shape = self._shape(template, kwargs) if score_prompts.batchable([query, document]) else None
            if shape is not None:
                (prompt,) = score_prompts.template_prompts(
                    self.tokenizer, shape, [query], [document], encode_kwargs, piecewise=True, frame=self._frame
                )
                return score_prompts.fill(shape, query, document).replace(PIECE_SEP, ""), prompt.token_ids
            rendered = self._render(template, kwargs, query, document)
            try:
                marked = self._render(template, kwargs, QUERY_MARK, DOC_MARK)
            except Exception:  # no piece is known: an over-long prompt is cut from its end
                marked = None
            max_length = encode_kwargs.get("max_length") if encode_kwargs.get("truncation") else None
            ids = piecewise_token_ids(
                self.tokenizer,
                rendered,
                marked,
                frame=self._frame if encode_kwargs.get("add_special_tokens", True) else ([], []),
                max_length=max_length,
            )
            return rendered.replace(PIECE_SEP, ""), ids

    return RerankKitCrossEncoderIOProcessor


def _batch_scoring() -> bool:
    """Let vLLM's scoring endpoints hand a request's pairs to the IO processor at once (``_render_all``).

    vLLM renders a scoring request as one task per pair (``asyncio.gather`` of ``render_async``); with
    100 documents that is 100 tasks, futures and thread-pool hops for work the plugin does in one call.
    ServingScores._preprocessing is replaced by one that asks an IO processor with ``rerank_kit_render_all``
    for every pair at once and keeps vLLM's own code for any other.
    """
    from rerank_kit.server.compat import accepts

    try:
        from vllm.entrypoints.pooling.scoring.serving import ServingScores
    except ImportError:
        return False
    base = getattr(ServingScores, "_preprocessing", None)
    if getattr(base, "rerank_kit", False):
        return True
    if not accepts("plugin.scoring_preprocessing", base):
        return False

    async def _preprocessing(self: Any, io_processor: Any, ctx: Any) -> None:
        render_all = getattr(io_processor, "rerank_kit_render_all", None)
        if render_all is None:
            return await base(self, io_processor, ctx)
        requests = io_processor.get_request_factory_online(ctx)
        if len(requests) == 0:
            raise ValueError("You must pass at least one prompt")  # vLLM's own message
        ctx.engine_inputs = await render_all(requests)

    _preprocessing.rerank_kit = True  # type: ignore[attr-defined]
    ServingScores._preprocessing = _preprocessing
    return True


# What this vLLM has no place for: said once, in one warning, by register().
_OFF: list[str] = []


def register() -> None:
    """Entry point for vLLM's ``vllm.general_plugins`` group. Safe to call more than once.

    Every patch point (module, class, method signature: ``rerank_kit.server.compat``) is checked before it is
    used; what is not there is left alone and reported once. Nothing raised here reaches vLLM: a plugin
    must never be the reason a server fails to start. The launcher learns what is active from the
    start-up self-check, not from this log.
    """
    try:
        _register()
    except Exception as exc:  # any vLLM: never let the plugin stop the server
        logger.warning("rerank-kit: plugin inactive (%s: %s); scores use vLLM's own prompts", type(exc).__name__, exc)


def _register() -> None:
    _OFF.clear()
    try:
        from vllm.entrypoints.pooling.scoring import io_processor as scoring_io
    except ImportError:
        logger.warning(
            "rerank-kit: this vLLM has no pooling scoring IO processors (vLLM >= 0.20): piecewise prompts, "
            "instruction checks and default truncation are off"
        )
        return
    processors = getattr(scoring_io, "ScoringIOProcessors", None)
    if not isinstance(processors, dict) or "cross-encoder" not in processors:
        logger.warning("rerank-kit: vLLM's cross-encoder IO processor moved; piecewise prompts are off")
        return
    for name, wrap in (("cross-encoder", _piecewise_cross_encoder), ("bi-encoder", _with_request_checks)):
        base = processors.get(name)
        if isinstance(base, type) and not getattr(base, "rerank_kit", False):
            processors[name] = wrap(base)
    if _OFF:
        logger.warning("rerank-kit: off on this vLLM: %s", "; ".join(dict.fromkeys(_OFF)))
