"""Random-weight hybrid models for bench/compare.py: a Qwen3.5-0.8B-wide gated delta-net model
(qwen35: 8 layers, one in four gated attention) and a Granite-4.0-H-like Mamba-2 model
(granitehybrid: 8 layers, one attention), Q8_0, written with the tests' GGUF writers.

    PYTHONPATH=python:convert:tests python3 bench/make_hybrid_models.py OUT_DIR
    PYTHONPATH=python:convert python3 bench/compare.py -m OUT_DIR/qwen35.gguf -m OUT_DIR/granite.gguf \\
        -p 512 -n 64 -t 2 -r 2 --out bench/results/hybrid.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tiny_mamba2 import HybridConfig, write_hybrid_gguf
from tiny_qwen35 import Qwen35Config, write_qwen35_gguf

QWEN35 = Qwen35Config(
    n_layer=8,
    n_embd=1024,
    n_head=8,
    n_head_kv=2,
    head_dim=256,
    n_ff=3584,
    n_vocab=4096,
    full_attention_interval=4,
    k_heads=16,
    v_heads=16,
    dn_head_dim=128,
    n_ctx_train=4096,
)
GRANITE = HybridConfig(
    n_layer=8,
    layer_types=("mamba",) * 3 + ("attention",) + ("mamba",) * 4,
    n_embd=1024,
    n_head=16,
    n_head_kv=4,
    n_ff=3072,
    n_vocab=4096,
    d_state=128,
    ssm_heads=32,
    n_group=1,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for qwen35.gguf and granite.gguf")
    out = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    write_qwen35_gguf(QWEN35, out / "qwen35.gguf", weight_type="Q8_0")
    write_hybrid_gguf(GRANITE, out / "granite.gguf", weight_type="Q8_0")
    print(f"wrote {out / 'qwen35.gguf'} and {out / 'granite.gguf'}")


if __name__ == "__main__":
    main()
