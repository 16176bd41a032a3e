"""What rerank-kit needs from vLLM, as one table, and two checkers over it.

Each ``Requirement`` names a module, a symbol in it, the parameters rerank-kit passes, a flag of the
API server's parser, an environment variable or a name the CPU backend reads; who uses it (``plugin``,
``offline`` for ``rerank-kit rank``, ``launcher``, ``guard``, ``tests``); and, where a release changed
it, the first release that has it (``since``) and the first without it (``until``).

``check_source`` reads a vLLM source tree or wheel with ``ast`` (nothing is imported, so it works for
a CUDA wheel on a CPU machine); ``check_installed`` checks the importable vllm, for the plugin and the
launcher to decide at run time what is really there. Command line (exit 1 on a missing requirement)::

    python -m rerank_kit.vllm_api /tmp/wheels/vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl [--json]
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rerank_kit._vllm_source import PARSER_MODULES, Sig, SourceTree, has_main, names_in, self_attributes
from rerank_kit.launcher.vllm import version_tuple

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

    def applies(self, version: str | None) -> bool:
        """Whether release ``version`` should have this (None: the newest, unknown release)."""
        if version is None:
            return self.until is None
        v = version_tuple(version)
        return (self.since is None or v >= version_tuple(self.since)) and (
            self.until is None or v < version_tuple(self.until)
        )


def _r(key: str, kind: Kind, module: str, target: str = "", params: str = "", users: str = "",
       since: str | None = None, until: str | None = None, note: str = "") -> Requirement:  # fmt: skip
    return Requirement(key, kind, module, target, tuple(params.split()), tuple(users.split()), since, until, note)


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
)  # fmt: skip
# fmt: off
REQUIREMENTS: tuple[Requirement, ...] = (
    # the plugin (rerank_kit.vllm_plugin)
    _r("plugin.entry_point_group", "mention", "vllm.plugins", "vllm.general_plugins", users="plugin"),
    _r("plugin.io_processor", "module", SCORING, users="plugin", since="0.20.0",
       note="0.12-0.19 render score prompts in pooling/score/utils.py, older ones in entrypoints/score_utils.py"),
    _r("plugin.registry", "symbol", SCORING, "ScoringIOProcessors", users="plugin", since="0.20.0"),
    _r("plugin.cross_encoder", "symbol", SCORING, CROSS, users="plugin", since="0.20.0"),
    _r("plugin.bi_encoder", "symbol", SCORING, BI, users="plugin", since="0.20.0"),
    _r("plugin.cross_encoder_members", "signature", SCORING, CROSS, "chat_template model_config tokenizer",
       "plugin", "0.20.0"),
    _r("plugin.get_score_prompt", "signature", SCORING, f"{CROSS}.get_score_prompt",
       "data_1 data_2 encode_kwargs chat_template max_tokens_per_query max_tokens_per_doc chat_template_kwargs *",
       "plugin", "0.22.0", note="0.20-0.21 take no chat_template_kwargs"),
    _r("plugin.cross_encoder_factory", "signature", SCORING, f"{CROSS}.get_request_factory_online", "ctx *",
       "plugin", "0.27.0", note="0.20-0.26 have pre_process_online(ctx): an override of this is never called"),
    _r("plugin.render", "signature", SCORING, f"{CROSS}.render", "render_params", "plugin", "0.27.0",
       note="the plugin builds a request's prompts at once and hands each pair to render()"),
    _r("plugin.scoring_preprocessing", "signature", "vllm.entrypoints.pooling.scoring.serving",
       "ServingScores._preprocessing", "io_processor ctx", "plugin", "0.27.0",
       note="the plugin renders a scoring request's pairs at once instead of one task per pair"),
    _r("plugin.bi_encoder_factory", "signature", SCORING, f"{BI}.get_request_factory_online", "ctx *",
       "plugin", "0.27.0"),
    _r("plugin.serve_context", "signature", "vllm.entrypoints.pooling.typing", "PoolingServeContext",
       "request prompt_extras", "plugin", "0.27.0"),
    _r("plugin.tokens_prompt", "symbol", "vllm", "TokensPrompt", users="plugin"),
    _r("plugin.parse_score_data", "signature", SCORING_UTILS, "parse_score_data", "data_1 data_2 model_config *",
       "plugin", "0.20.0"),
    _r("plugin.truncate_text_to_tokens", "signature", SCORING_UTILS, "truncate_text_to_tokens",
       "text tokenizer max_tokens *", "plugin", "0.20.0"),
    _r("plugin.safe_apply_chat_template", "signature", "vllm.renderers.hf", "safe_apply_chat_template",
       "model_config tokenizer conversation * chat_template tools tokenize **", "plugin", "0.15.0"),
    _r("plugin.disable_env", "env", "vllm.envs", "VLLM_PLUGINS", users="plugin tests"),
    # rerank-kit rank (rerank_kit.offline) and tests/vllm_prompts.py
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
                   "VLLM_API_KEY")),
    _r("launcher.env.VLLM_USE_AOT_COMPILE", "env", "vllm.envs", "VLLM_USE_AOT_COMPILE", users="launcher",
       since="0.21.0", note="seen in 0.21 (absent in 0.11); older releases ignore the variable"),
)
# fmt: on


@dataclass(frozen=True)
class Finding:
    """What a checker found for one requirement; ``detail`` says where, or what was found instead."""

    requirement: Requirement
    status: Status
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("missing", "differs")

    @property
    def usable(self) -> bool:
        """It is there, with the parameters rerank-kit passes, whatever the table expected."""
        return self.status in ("ok", "present")


def _judge(req: Requirement, version: str | None, found: bool, sig: Sig | None = None, where: str = "") -> Finding:
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


def _static_finding(tree: SourceTree, req: Requirement, version: str | None, flags: set[str]) -> Finding:
    module = tree.tree(req.module)
    if req.kind == "flag":
        return _judge(req, version, req.target in flags)
    if req.kind in ("env", "mention"):
        return _judge(req, version, module is not None and req.target in names_in(module))
    if req.kind == "entrypoint":
        return _judge(req, version, module is not None and has_main(module))
    hit = tree.resolve(req.module, req.target)
    sig = tree.sig(hit) if req.kind == "signature" and hit is not None else None
    where = f"{hit[0]}:{getattr(hit[1], 'lineno', '')}".rstrip(":") if hit else ""
    return _judge(req, version, hit is not None, sig, where)


def _selected(users: Iterable[str] | None) -> list[Requirement]:
    wanted = None if users is None else set(users)
    return [r for r in REQUIREMENTS if wanted is None or wanted & set(r.users)]


def check_source(root: Path, *, users: Iterable[str] | None = None, version: str | None = None) -> list[Finding]:
    """The table checked against a vLLM source tree or ``.whl``, without importing it.

    ``version`` defaults to the tree's own; ``users`` keeps the rows of those users only.
    """
    tree = SourceTree(Path(root))
    version = version or tree.version()
    selected = _selected(users)
    flags = tree.flags() if any(r.kind == "flag" for r in selected) else set()
    return [_static_finding(tree, req, version, flags) for req in selected]


# --- installed: the importable vllm -----------------------------------------------------------------


def _object_sig(obj: Any) -> Sig:
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


def accepts(key: str, obj: Any) -> bool:
    """Whether ``obj`` (a function, method or class) takes what requirement ``key`` says rerank-kit passes.

    The plugin asks this before it overrides a vLLM method, so a changed signature leaves it alone.
    """
    try:
        sig = _object_sig(obj)
    except (TypeError, ValueError):
        return False
    return _judge(requirement(key), None, True, sig).usable


def server_parser() -> Any:
    """The importable vLLM's own API-server argument parser, wherever this release keeps it.

    ``make_arg_parser`` lives in PARSER_MODULES (0.33 moved it again); FlexibleArgumentParser moved to
    vllm.utils.argparse_utils in 0.11.1.
    """
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser  # type: ignore[attr-defined, no-redef]
    for name in PARSER_MODULES:
        try:
            make_arg_parser = importlib.import_module(name).make_arg_parser
        except (ImportError, AttributeError):
            continue
        return make_arg_parser(FlexibleArgumentParser())
    raise ImportError(f"this vLLM has make_arg_parser in none of {', '.join(PARSER_MODULES)}")


def _installed_flags() -> set[str]:
    try:
        return set(server_parser()._option_string_actions)
    except ImportError:
        return set()


def check_installed(*, users: Iterable[str] | None = None) -> list[Finding]:
    """The table checked against the importable vllm; imports what it checks (seconds: torch).

    For the plugin: ``usable = {f.requirement.key: f.usable for f in check_installed(users=["plugin"])}``.
    """
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("vllm is not installed")
    static = SourceTree(Path(next(iter(spec.submodule_search_locations))))
    version = static.version()
    selected = _selected(users)
    flags = _installed_flags() if any(r.kind == "flag" for r in selected) else set()
    findings = []
    for req in selected:
        if req.kind in ("flag", "env", "mention", "entrypoint"):
            # flags come from the real parser (passed in); files that are read, not run, are read the static way
            findings.append(_static_finding(static, req, version, flags))
            continue
        try:
            obj: Any = importlib.import_module(req.module)
            for step in req.target.split(".") if req.target else []:
                name, _, key = step.partition("[")
                obj = getattr(obj, name)[key.rstrip("]")] if key else getattr(obj, name)
            sig = _object_sig(obj) if req.kind == "signature" else None
        except Exception as exc:  # a broken vLLM module raises anything: report it, never crash the caller
            findings.append(_judge(req, version, False, where=f"{type(exc).__name__}: {exc}"[:200]))
            continue
        findings.append(_judge(req, version, True, sig))
    return findings


# --- command line --------------------------------------------------------------------------------------


def format_table(findings: list[Finding]) -> str:
    """Aligned columns for a person: status, requirement, what, users, releases, detail."""
    rows = [("status", "requirement", "what", "users", "releases", "detail")]
    for f in findings:
        r = f.requirement
        what = f"{r.module}:{r.target}" if r.module and r.target else r.module or r.target
        releases = f"{r.since or ''}-{r.until or ''}" if r.since or r.until else "all"
        rows.append((f.status, r.key, what, ",".join(r.users), releases, f.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join([*map(str.ljust, row[:5], widths), row[5]]).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [a for a in args if a != "--json"]
    if len(paths) != 1:
        print("usage: python -m rerank_kit.vllm_api PATH_OR_WHEEL [--json]", file=sys.stderr)
        return 2
    try:
        version = SourceTree(Path(paths[0])).version()
    except (OSError, zipfile.BadZipFile) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    findings = check_source(Path(paths[0]))
    if "--json" in args:
        rows = [{**asdict(f.requirement), "status": f.status, "detail": f.detail} for f in findings]
        checked = time.strftime("%Y-%m-%d")
        print(json.dumps({"path": paths[0], "version": version, "date": checked, "findings": rows}, indent=2))
    else:
        print(f"vLLM {version or '(unknown version)'} at {paths[0]}\n{format_table(findings)}")
    return 1 if any(f.failed for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
