"""What the plugin checks and decides for a scoring request before anything is rendered, and the bounded cache
of template skeletons: no vLLM code runs here except vLLM 0.33's ``merge_kwargs`` (``effective_template``).

- ``check_instruction``: an ``instruction`` the served template would silently drop is a 400.
- ``effective_template``: the server's ``--chat-template``, else vLLM 0.33's saved one, with its kwargs.
- ``check_template_kwargs``: request ``chat_template_kwargs`` that collide with the renderer's own arguments are a
  400 that names them, not a TypeError from deep inside vLLM.
- ``cached_shape``: a template's skeleton (``server.prompts.skeleton``), with the instruction a placeholder like
  the query and the document, in a cache of at most ``MAX_SHAPES`` entries (a client can vary the other kwargs).
- ``default_truncation``: over-long pairs are cut to the model's length unless ``--strict-length``.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from rerank_kit._contract import Limits
from rerank_kit.errors import InstructionNotSupportedError, InvalidInputError
from rerank_kit.recipes import instruction_error
from rerank_kit.server import prompts as score_prompts

# A child of vLLM's logger, so messages appear in the server log with its formatting.
logger = logging.getLogger("vllm.rerank_kit")


@functools.lru_cache(maxsize=64)
def template_uses(template: str | None, name: str) -> bool:
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


def check_instruction(template: str | None, chat_template_kwargs: dict[str, Any] | None) -> None:
    if (chat_template_kwargs or {}).get("instruction") and not template_uses(template, "instruction"):
        raise InstructionNotSupportedError(INSTRUCTION_ERROR)  # a ValueError: vLLM answers 400


def effective_template(
    processor: Any, template: str | None, kwargs: dict[str, Any] | None
) -> tuple[str | None, dict[str, Any] | None]:
    """The template vLLM renders a pair with, and its kwargs: the server's ``--chat-template``, else (vLLM >= 0.33)
    the checkpoint's saved one (``saved_chat_template``, from its Sentence Transformers files), whose kwargs go
    under the request's through vLLM's own ``merge_kwargs``: the rule of 0.33's
    ``CrossEncoderIOProcessor.get_score_prompt`` (pinned in server.compat). A request carries no template."""
    saved = getattr(processor, "saved_chat_template", None)
    if template is not None or saved is None:
        return template, kwargs
    from vllm.renderers import merge_kwargs

    return saved, merge_kwargs(getattr(processor, "saved_chat_template_kwargs", None), kwargs)


# The template variable that receives PIECE_SEP from the plugin.
PIECE_SEP_KWARG = "piece_sep"


@functools.cache
def reserved_kwargs() -> frozenset[str]:
    """What a request's ``chat_template_kwargs`` may not set: the names the plugin passes vLLM's
    ``safe_apply_chat_template`` itself (its row in rerank_kit.server.compat, checked before the plugin
    renders), ``messages`` (transformers renders the conversation under that name) and ``piece_sep``."""
    from rerank_kit.server.compat import requirement

    passed = requirement("plugin.safe_apply_chat_template").params
    return frozenset(name for name in passed if name not in ("*", "**")) | {"messages", PIECE_SEP_KWARG}


def check_template_kwargs(chat_template_kwargs: Mapping[str, Any] | None, *, ours: tuple[str, ...] = ()) -> None:
    """Refuse request ``chat_template_kwargs`` that collide with an argument the renderer sets itself, before
    any render: passed on, they fail deep in vLLM as a TypeError ("got multiple values for keyword argument").
    ``ours``: names the caller has just set itself (``piece_sep`` on the piecewise path)."""
    clash = sorted((reserved_kwargs() - set(ours)) & set(chat_template_kwargs or {}))
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


def cached_shape(
    shapes: dict[tuple[str, str], str | None], template: str, kwargs: dict[str, Any], render: TemplateRender
) -> str | None:
    """The skeleton of ``template`` with ``kwargs``, the request's instruction in place; None where only the
    per-pair path is exact (a template that does not insert its texts verbatim, an instruction that holds a
    placeholder character).

    A non-empty string ``instruction`` is a placeholder like the texts, so one skeleton serves every
    instruction; a request without one (absent, empty or not a string: templates fall back to a default
    task) has its own. ``shapes`` keeps the ``MAX_SHAPES`` most recently used.
    """
    check_template_kwargs(kwargs, ours=(PIECE_SEP_KWARG,))
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
def strict_length() -> bool:
    """`rerank-kit serve --strict-length` (_contract.Limits.strict_length): keep vLLM's 400 for long inputs.
    Read once: the server's environment does not change, and this runs on every request."""
    return Limits.from_env().strict_length


def default_truncation(request: Any) -> None:
    """Truncate over-long inputs to the model's length unless the request or the server says otherwise."""
    if strict_length():
        return
    if getattr(request, "truncate_prompt_tokens", 0) is None:
        request.truncate_prompt_tokens = -1  # vLLM: -1 means "to max_model_len"
