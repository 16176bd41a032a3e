"""A separate virtual environment with the model authors' own packages, for the parity tests.

The ``mxbai-rerank`` package needs transformers < 5 while vLLM 0.32 needs transformers 5, so the
packages cannot share an environment. ``python tests/reference_env.py ensure`` creates
``.venv-reference`` (once; it is reused while this file is unchanged) with:

- mxbai-rerank       (MxbaiRerankV2: the mxbai v2 reference)
- FlagEmbedding      (FlagLLMReranker: the bge-reranker-v2-gemma reference)
- transformers < 5, torch 2.13 (CPU)

``python tests/reference_env.py score FAMILY MODEL_DIR PAIRS_JSON`` runs inside it and prints the
packages' token ids and scores as JSON (used by tests/test_reference_packages.py).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-reference"
REQUIREMENTS = ["torch==2.13.0", "transformers>=4.49,<5", "mxbai-rerank==0.1.6", "FlagEmbedding==1.4.2", "numpy"]


TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def torch_index_args(url: str = TORCH_CPU_INDEX) -> list[str]:
    """``["--extra-index-url", url]`` when the index answers, else ``[]`` (bench/compare_systems.py uses it too).

    pip retries an unreachable index for every package it resolves (one CI run spent ~40 min so).
    """
    import socket
    from urllib.parse import urlsplit

    try:
        socket.create_connection((urlsplit(url).hostname, 443), timeout=5).close()
    except OSError:
        return []
    return ["--extra-index-url", url]


def _stamp() -> str:
    return hashlib.sha256(json.dumps(REQUIREMENTS).encode()).hexdigest()[:16]


def ensure() -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / ".stamp"
    if python.exists() and stamp.exists() and stamp.read_text() == _stamp():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *torch_index_args(),
            *REQUIREMENTS,
        ],
        check=True,
    )
    stamp.write_text(_stamp())
    return python


def score(family: str, model_dir: str, pairs: list[list[str]]) -> list[dict]:
    """Run the authors' package on ``pairs`` (one at a time, no padding effects)."""
    import torch

    out = []
    if family == "mxbai-rerank-v2":
        from mxbai_rerank import MxbaiRerankV2

        model = MxbaiRerankV2(model_dir, device="cpu", torch_dtype=torch.float32)
        for query, document in pairs:
            inputs = model.prepare_inputs([query], [document])
            ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
            out.append({"ids": ids, "score": float(model.predict([query], [document])[0])})
    elif family == "bge-reranker-v2-gemma":
        from FlagEmbedding import FlagLLMReranker

        model = FlagLLMReranker(model_dir, use_fp16=False, devices=["cpu"])
        for query, document in pairs:
            out.append({"score": float(model.compute_score([[query, document]], batch_size=1)[0])})
    else:
        raise SystemExit(f"no reference package for {family}")
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["ensure"]:
        print(ensure())
    elif sys.argv[1:2] == ["score"]:
        print(json.dumps(score(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))))
    else:
        raise SystemExit(__doc__)
