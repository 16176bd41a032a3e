"""Apple Silicon: detection, the settings and commands produced for a simulated Mac, install commands, errors.

No Mac here: every test builds the Mac's facts (sysctl values, vm_stat output, platform strings) itself.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rerank_kit.errors import ConfigError
from rerank_kit.launcher import apple
from rerank_kit.launcher.apple import (
    MAC_VLLM_VERSION,
    METAL_FAMILIES,
    NO_COMPILE,
    VLLM_GIT_URL,
    MacFacts,
    check_serve,
    install_commands,
    is_apple_silicon,
    mac_choices,
    omp_threads,
    parse_vm_stat,
    plan_install,
    read_mac,
)
from rerank_kit.launcher.machine import GiB, Machine, kv_cache_bytes
from rerank_kit.recipes import FAMILIES, RECIPES

# What `sysctl -n KEY` prints on the chips simulated here (keys absent from a dict: sysctl has no such key).
M2_PRO_SYSCTL = {
    "machdep.cpu.brand_string": "Apple M2 Pro",
    "hw.perflevel0.physicalcpu": "8",
    "hw.perflevel1.physicalcpu": "4",
    "hw.optional.arm.FEAT_BF16": "1",
    "sysctl.proc_translated": "0",
    "hw.memsize": str(32 * GiB),
}
M1_SYSCTL = {
    "machdep.cpu.brand_string": "Apple M1",
    "hw.perflevel0.physicalcpu": "4",
    "hw.perflevel1.physicalcpu": "4",
    "hw.optional.arm.FEAT_BF16": "0",
    "sysctl.proc_translated": "0",
    "hw.memsize": str(16 * GiB),
}
VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               65536.
Pages active:                            500000.
Pages inactive:                          262144.
Pages speculative:                         2048.
Pages throttled:                              0.
Pages wired down:                        150000.
Pages purgeable:                           9000.
"""
VM_STAT_AVAILABLE = (65536 + 262144 + 2048) * 16384

M2_PRO = read_mac("arm64", M2_PRO_SYSCTL.get)
M1 = read_mac("arm64", M1_SYSCTL.get)
M2_PRO_MACHINE = Machine(cpu_count=12, cpu_flags=frozenset(), total_memory=32 * GiB, available_memory=20 * GiB, gpus=0)
M1_MACHINE = Machine(cpu_count=8, cpu_flags=frozenset(), total_memory=16 * GiB, available_memory=6 * GiB, gpus=0)


def _by_name(choices):
    return {c.name: c for c in choices}


# --- detection -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "arch", "expected"),
    [
        ("Darwin", "arm64", True),
        ("Darwin", "x86_64", False),  # an Intel Mac, or an x86_64 Python under Rosetta 2
        ("Linux", "x86_64", False),
        ("Linux", "aarch64", False),  # Linux on ARM is the ordinary CPU build
        ("Linux", "arm64", False),
        ("Windows", "ARM64", False),
    ],
)
def test_only_darwin_arm64_is_apple_silicon(system, arch, expected):
    assert is_apple_silicon(system, arch) is expected


def test_read_mac_reads_the_chip_cores_and_bf16_from_sysctl():
    assert M2_PRO == MacFacts(
        arch="arm64", chip="Apple M2 Pro", performance_cores=8, efficiency_cores=4, bf16=True, translated=False
    )
    assert M2_PRO.apple_silicon
    assert M1.bf16 is False and M1.performance_cores == 4


def test_rosetta_and_intel_are_not_apple_silicon():
    rosetta = read_mac("x86_64", {**M2_PRO_SYSCTL, "sysctl.proc_translated": "1"}.get)
    intel = read_mac("x86_64", {"machdep.cpu.brand_string": "Intel(R) Core(TM) i9-9880H"}.get)
    assert rosetta.translated and not rosetta.apple_silicon
    assert not intel.translated and not intel.apple_silicon


def test_read_mac_tolerates_missing_and_odd_keys():
    facts = read_mac("arm64", {"hw.perflevel0.physicalcpu": "eight"}.get)
    assert facts == MacFacts(arch="arm64")


def test_parse_vm_stat_counts_free_speculative_and_inactive_pages():
    assert parse_vm_stat(VM_STAT) == VM_STAT_AVAILABLE
    assert parse_vm_stat("") == 0


# --- settings on a simulated Mac ------------------------------------------------------------------------------


def test_mac_defaults_on_an_m2_pro():
    choices = mac_choices(M2_PRO_MACHINE, M2_PRO, family="bge-reranker")
    by = _by_name(choices)
    assert by["VLLM_TARGET_DEVICE"].value == "cpu" and by["VLLM_TARGET_DEVICE"].kind == "env"
    assert by["--dtype"].value == "float32"
    assert by["VLLM_ENABLE_V1_MULTIPROCESSING"].value == "0"
    assert by["OMP_NUM_THREADS"].value == "8"  # the performance cores, not all 12
    assert "Apple M2 Pro" in by["OMP_NUM_THREADS"].reason
    assert by["--kv-cache-memory-bytes"].value == str(kv_cache_bytes(M2_PRO_MACHINE))
    assert json.loads(by["--compilation-config"].value) == {"mode": 0}
    # Linux-only settings never reach a Mac: no preloading, no reserved core, no thread binding.
    assert not {"LD_PRELOAD", "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_OMP_THREADS_BIND"} & set(by)
    assert all(c.reason for c in choices)


def test_explicit_settings_win_on_a_mac():
    by = _by_name(mac_choices(M2_PRO_MACHINE, M2_PRO, dtype="float16", kv_cache_gib=2, executor="mp", eager=True))
    assert (by["--dtype"].value, by["--dtype"].reason) == ("float16", "asked for")
    assert by["--kv-cache-memory-bytes"].value == str(2 * GiB)
    # A worker process: vLLM's automatic binding is switched off instead of the in-process engine.
    assert by["VLLM_CPU_OMP_THREADS_BIND"].value == "nobind"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in by
    assert "--compilation-config" not in by  # --eager already turns compilation off


def test_threads_are_a_share_of_the_performance_cores():
    assert omp_threads(M2_PRO_MACHINE, M2_PRO) == 8
    half = Machine(cpu_count=6, cpu_flags=frozenset(), total_memory=16 * GiB, available_memory=10 * GiB, gpus=0)
    assert omp_threads(half, M2_PRO) == 4  # one of two replicas: half of the 8 performance cores
    assert omp_threads(M1_MACHINE, MacFacts("arm64")) == 8  # macOS did not say: every core


def test_the_backend_reason_names_what_vllm_metal_could_do_for_the_family():
    for family in FAMILIES:
        reason = _by_name(mac_choices(M1_MACHINE, M1, family=family))["VLLM_TARGET_DEVICE"].reason
        if family in METAL_FAMILIES:
            assert "PR #391" in reason
        else:
            assert f"vllm-metal cannot score {family}" in reason
    assert set(METAL_FAMILIES) <= set(FAMILIES)


# --- what cannot work on a Mac --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mac", "kwargs", "says"),
    [
        (M2_PRO, {"device": "cuda"}, "no CUDA GPU"),
        (M2_PRO, {"tensor_parallel_size": 2}, "--tensor-parallel-size 2"),
        (M2_PRO, {"data_parallel_size": 4}, "--replicas N"),
        (M1, {"dtype": "bfloat16"}, "Apple M1's CPU has no BF16"),
        (M1, {"reserved_cpus": 1}, "--reserved-cpus on a Mac"),
        (MacFacts("x86_64", translated=True), {}, "Rosetta 2"),
        (MacFacts("x86_64"), {}, "macOS on x86_64"),
    ],
)
def test_check_serve_refuses_what_cannot_work_and_says_what_to_do(mac, kwargs, says):
    with pytest.raises(ConfigError) as exc:
        check_serve(mac, **kwargs)
    assert says in str(exc.value)


def test_check_serve_accepts_what_works():
    check_serve(M2_PRO)
    check_serve(M2_PRO, device="cpu", dtype="bfloat16")  # M2 has BF16
    check_serve(M1, dtype="float16")


# --- installing -------------------------------------------------------------------------------------------------


def test_install_commands_build_the_release_from_its_git_tag(tmp_path):
    src = tmp_path / "vllm"
    pip = ["/py", "-m", "pip", "install", "--disable-pip-version-check"]
    assert install_commands("/py", src) == [
        ["git", "clone", "--depth", "1", "--branch", f"v{MAC_VLLM_VERSION}", VLLM_GIT_URL, str(src)],
        [*pip, "-r", str(src / "requirements" / "build" / "cpu.txt")],
        [*pip, "-r", str(src / "requirements" / "cpu.txt")],
        [*pip, "--no-build-isolation", str(src)],
    ]
    assert all(isinstance(arg, str) for step in install_commands("/py", src) for arg in step)
    assert install_commands("/py", src, clone=False)[0][:4] == pip[:4]


def _plan(tmp_path, **changes):
    given = {
        "system": "Darwin",
        "arch": "arm64",
        "python": "/venv/bin/python",
        "python_version": (3, 12),
        "src": tmp_path / "missing",
        "which": {"git": "/usr/bin/git"}.get,
    }
    return plan_install(**{**given, **changes})


def test_plan_install_on_a_mac_clones_unless_the_source_is_there(tmp_path):
    assert _plan(tmp_path)[0][0] == "git"
    assert all(step[0] == "/venv/bin/python" for step in _plan(tmp_path, src=tmp_path))  # tmp_path exists


def test_plan_install_does_nothing_when_that_release_is_installed(tmp_path):
    assert _plan(tmp_path, installed=f"{MAC_VLLM_VERSION}+cpu") == []
    assert _plan(tmp_path, installed=MAC_VLLM_VERSION, xcode_tools=False) == []  # nothing to build: no compiler needed
    assert _plan(tmp_path, installed="0.31.0")  # another release is rebuilt


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"system": "Linux", "arch": "x86_64"}, "Apple Silicon Macs only"),
        ({"arch": "x86_64", "translated": True}, "Rosetta 2"),
        ({"arch": "x86_64"}, "macOS on x86_64"),
        ({"python_version": (3, 10)}, "CPython 3.11 to 3.13"),
        ({"python_version": (3, 14)}, "PYTHON=python3.12"),
        ({"xcode_tools": False}, "xcode-select --install"),
        ({"which": {}.get}, "git not found"),
    ],
)
def test_plan_install_says_what_is_missing(tmp_path, changes, says):
    with pytest.raises(ConfigError) as exc:
        _plan(tmp_path, **changes)
    assert says in str(exc.value)


@pytest.fixture
def simulated_mac(monkeypatch):
    """The running Python looks like a native arm64 Python on a Mac with Xcode's tools and no vLLM."""
    monkeypatch.setattr(apple.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(apple.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(apple, "sysctl_value", lambda key: None)
    monkeypatch.setattr(apple, "_xcode_tools", lambda: True)
    monkeypatch.setattr(apple, "vllm_version", lambda: None)
    monkeypatch.setattr(apple.sys, "version_info", (3, 12, 7, "final", 0))
    ran = []

    def run(argv, **kwargs):
        ran.append((argv, kwargs))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(apple.subprocess, "run", run)
    return ran


def test_main_dry_run_prints_the_commands_and_runs_nothing(simulated_mac, tmp_path, capsys):
    assert apple.main(["install", "--dry-run", "--src", str(tmp_path / "vllm")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"+ git clone --depth 1 --branch v{MAC_VLLM_VERSION} {VLLM_GIT_URL}")
    assert lines[-1].endswith(f"--no-build-isolation {tmp_path / 'vllm'}")
    assert simulated_mac == []


def test_main_runs_each_step_with_the_cpu_target_and_stops_at_a_failure(simulated_mac, tmp_path, monkeypatch):
    assert apple.main(["install", "--src", str(tmp_path / "vllm")]) == 0
    assert [argv[0] for argv, _ in simulated_mac][:1] == ["git"] and len(simulated_mac) == 4
    assert all(kwargs["env"]["VLLM_TARGET_DEVICE"] == "cpu" for _, kwargs in simulated_mac)

    ran = []

    def second_step_fails(argv, **kwargs):
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 1 if len(ran) == 2 else 0)

    monkeypatch.setattr(apple.subprocess, "run", second_step_fails)
    assert apple.main(["install", "--src", str(tmp_path / "vllm")]) == 1
    assert len(ran) == 2  # the failed step is the last one run


def test_main_on_linux_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(apple.platform, "system", lambda: "Linux")
    monkeypatch.setattr(apple.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(apple, "_xcode_tools", lambda: False)
    assert apple.main(["install", "--dry-run"]) == 2
    assert "Apple Silicon Macs only" in capsys.readouterr().err


# --- with the hook: Machine.mac and the Mac branch of build_command --------------------------------------------


def _mac_machine(sysctl=M2_PRO_SYSCTL, cpu_count=12):
    return apple.detect_mac(arch="arm64", sysctl=sysctl.get, vm_stat=lambda: VM_STAT, cpu_count=cpu_count)


def test_detect_mac_reads_memory_and_cores_without_proc():
    machine = _mac_machine()
    assert machine.mac == M2_PRO
    assert (machine.cpu_count, machine.gpus, machine.total_memory) == (12, 0, 32 * GiB)
    assert machine.available_memory == VM_STAT_AVAILABLE


def test_machine_detect_uses_sysctl_on_macos(monkeypatch):
    from rerank_kit.launcher import host
    from rerank_kit.launcher import machine as machine_mod

    monkeypatch.setattr(host.sys, "platform", "darwin")
    monkeypatch.setattr(apple.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(host, "sysctl_value", M1_SYSCTL.get)
    monkeypatch.setattr(host, "vm_stat_text", lambda: VM_STAT)
    detected = machine_mod.detect()
    assert detected.mac == M1
    assert detected.total_memory == 16 * GiB


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_gets_the_mac_settings_and_keeps_its_recipe(family):
    from rerank_kit.launcher import ServeOptions, build_command

    recipe = next(r for r in RECIPES.values() if r.family == family)
    linux = build_command(recipe, ServeOptions(), vllm_version="0.32.0", machine=None)
    cmd = build_command(recipe, ServeOptions(), vllm_version="0.32.0", machine=_mac_machine())
    argv = cmd.server_args
    assert cmd.env["VLLM_TARGET_DEVICE"] == "cpu"
    assert cmd.env["OMP_NUM_THREADS"] == "8" and cmd.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "LD_PRELOAD" not in cmd.env
    assert argv[argv.index("--dtype") + 1] == "float32"
    assert argv[argv.index("--compilation-config") + 1] == NO_COMPILE
    assert "--kv-cache-memory-bytes" in argv
    # Everything the recipe asks vLLM for is there, as on Linux.
    for flag in ("--runner", "--convert", "--hf-overrides", "--chat-template", "--pooler-config", "--middleware"):
        if flag in linux.server_args:
            assert argv[argv.index(flag) + 1] == linux.server_args[linux.server_args.index(flag) + 1]
    for flag in ("--trust-remote-code", "--enable-prefix-caching"):
        assert (flag in argv) == (flag in linux.server_args)
    assert {c.name for c in cmd.choices} >= {"VLLM_TARGET_DEVICE", "--dtype", "OMP_NUM_THREADS"}


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"device": "cuda"}, "no CUDA GPU"),
        ({"tensor_parallel_size": 2}, "--tensor-parallel-size 2"),
        ({"data_parallel_size": 2}, "--replicas N"),
        ({"reserved_cpus": 0}, "--reserved-cpus"),
    ],
)
def test_build_command_refuses_on_a_mac(options, says):
    from rerank_kit.launcher import ServeOptions, build_command
    from rerank_kit.recipes import get_recipe

    with pytest.raises(ConfigError) as exc:
        build_command(
            get_recipe("BAAI/bge-reranker-base"), ServeOptions(**options), vllm_version="0.32.0", machine=_mac_machine()
        )
    assert says in str(exc.value)


def test_eager_on_a_mac_and_replicas_split_the_performance_cores(monkeypatch):
    import os
    import shutil

    from rerank_kit.launcher import ServeOptions, build_command, replica_commands
    from rerank_kit.recipes import get_recipe

    recipe = get_recipe("BAAI/bge-reranker-base")
    eager = build_command(recipe, ServeOptions(eager=True), vllm_version="0.32.0", machine=_mac_machine())
    assert "--enforce-eager" in eager.server_args and "--compilation-config" not in eager.server_args
    # macOS has neither sched_getaffinity nor taskset: replicas share the cores by thread count only.
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    replicas = replica_commands(recipe, ServeOptions(), 2, vllm_version="0.32.0", machine=_mac_machine())
    assert [c.env["OMP_NUM_THREADS"] for c in replicas] == ["4", "4"]  # half of the 8 performance cores each
    assert [c.port for c in replicas] == [8000, 8001]
    assert all(c.argv[0] != "taskset" for c in replicas)


def test_linux_machines_are_unchanged_by_the_mac_branch():
    from rerank_kit.launcher import ServeOptions, build_command
    from rerank_kit.recipes import get_recipe

    linux = Machine(
        cpu_count=2, cpu_flags=frozenset({"avx2"}), total_memory=24 * GiB, available_memory=23 * GiB, gpus=0
    )
    cmd = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(), vllm_version="0.32.0", machine=linux)
    assert linux.mac is None
    assert "VLLM_TARGET_DEVICE" not in cmd.env and "--compilation-config" not in cmd.server_args


def test_the_source_is_checked_out_inside_the_environment(tmp_path):
    assert apple.default_source_dir() == Path(apple.sys.prefix) / "src" / f"vllm-{MAC_VLLM_VERSION}"
    _plan(tmp_path)  # planning creates nothing: git clone does
    assert not (tmp_path / "missing").exists()
