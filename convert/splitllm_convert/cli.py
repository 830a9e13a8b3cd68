"""``convert-hf MODEL_DIR -o OUT.gguf --type TYPE``: the command-line front end of ``convert``."""

from __future__ import annotations

import argparse
import sys

from splitllm_convert.errors import ConvertError
from splitllm_convert.mix import FILE_TYPES
from splitllm_convert.pipeline import convert
from splitllm_convert.registry import ARCHITECTURES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert-hf",
        description="Convert a Hugging Face model directory (safetensors) to a GGUF file that llama.cpp "
        f"and splitllm load. Architectures: {', '.join(ARCHITECTURES)}.",
    )
    p.add_argument("model_dir", help="directory with config.json, *.safetensors and the tokenizer files")
    p.add_argument("-o", "--outfile", help="output .gguf file (required unless --dry-run)")
    p.add_argument(
        "--type",
        default=None,
        choices=list(FILE_TYPES),
        metavar="TYPE",
        help=f"output type: {', '.join(FILE_TYPES)} (default: f16; for a gpt-oss checkpoint with MXFP4 "
        "experts, as llama.cpp's converter: its bf16, the experts in MXFP4 as stored)",
    )
    p.add_argument("--force", action="store_true", help="overwrite OUTFILE if it exists")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print each tensor's type and size and the output size; write nothing",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--pre",
        metavar="NAME",
        help="tokenizer.ggml.pre name for a BPE tokenizer, overriding detection "
        "(llama.cpp's names: gpt-2, llama-bpe, qwen2, smollm, ...)",
    )
    p.add_argument(
        "--imatrix",
        metavar="FILE",
        help="importance matrix (llama-imatrix's GGUF or .dat file) for the quantizers, as llama-quantize "
        "--imatrix; the iq1_*, iq2_*, iq3_xxs, iq3_xs and q2_k_s types need one",
    )
    p.add_argument("--threads", type=int, default=None, metavar="N", help="quantizer threads (default: all)")
    p.add_argument(
        "--sentence-transformers-dense-modules",
        action="store_true",
        help="include a sentence-transformers model's Dense modules (EmbeddingGemma's projections of the "
        "pooled embedding), as llama.cpp's converter does with this option",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.dry_run and not args.outfile:
        print("convert-hf: error: -o/--outfile is required (or use --dry-run)", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print("convert-hf: error: --threads must be at least 1", file=sys.stderr)
        return 2
    try:
        plan = convert(
            args.model_dir,
            args.outfile or "",
            type=args.type,
            force=args.force,
            dry_run=args.dry_run,
            quiet=args.quiet,
            pre=args.pre,
            n_threads=args.threads,
            sentence_transformers_dense_modules=args.sentence_transformers_dense_modules,
            imatrix=args.imatrix,
        )
    except (ConvertError, OSError) as e:  # OSError: disk full, I/O errors while writing
        print(f"convert-hf: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("convert-hf: interrupted; no output written", file=sys.stderr)
        return 130
    if args.dry_run:
        print(plan.format())
    elif not args.quiet:
        print(
            f"wrote {args.outfile}: {len(plan.tensors)} tensors, {plan.output_bytes / 2**20:.1f} MiB",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
