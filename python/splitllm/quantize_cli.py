"""``splitllm quantize``: a GGUF file to another file type, as llama.cpp's llama-quantize.

    splitllm quantize [options] IN.gguf [OUT.gguf] TYPE [NTHREADS]

TYPE is a name (Q4_K_M, q8_0, ...; Q3_K, Q4_K, Q5_K are Q3_K_M, Q4_K_M, Q5_K_M) or llama.cpp's
file type number (15 is Q4_K_M); without OUT.gguf the output is ggml-model-TYPE.gguf beside the
input. Options, with llama-quantize's names: --allow-requantize, --leave-output-tensor, --pure,
--output-tensor-type, --token-embedding-type, --tensor-type, --tensor-type-file, --override-kv,
--dry-run, --max-buffer-size, --imatrix, --include-weights, --exclude-weights, --prune-layers;
--keep-split is refused. The output is byte-identical to llama-quantize's; see
``splitllm_convert.requantize``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_REFUSED = {
    "keep_split": "--keep-split is not supported (split GGUF files are not supported)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="quantize a GGUF file (llama-quantize)",
        usage="splitllm quantize [options] IN.gguf [OUT.gguf] TYPE [NTHREADS]",
        description=__doc__.split("\n\n")[0],
        epilog="Options go before IN.gguf, as llama-quantize's. Types: Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, "
        "Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, IQ4_NL, IQ4_XS, MXFP4_MOE, Q8_0, F16, "
        "BF16, F32, Q2_K_S, IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ2_M, IQ3_XXS, IQ3_XS, IQ3_S, IQ3_M, "
        "TQ1_0, TQ2_0 (and the aliases Q3_K, Q4_K, Q5_K). Q2_K_S, IQ1_*, IQ2_*, IQ3_XXS and IQ3_XS need an "
        "importance matrix (--imatrix).",
    )
    p.add_argument("args", nargs="+", metavar="IN.gguf [OUT.gguf] TYPE [NTHREADS]",
                   help="input file, output file (default: ggml-model-TYPE.gguf beside the input), type "
                   "(name or number), threads (default: all)")
    p.add_argument("--allow-requantize", action="store_true",
                   help="allow requantizing tensors that are already quantized (they are dequantized first; "
                   "quality suffers compared with quantizing from 16 or 32 bits)")
    p.add_argument("--leave-output-tensor", action="store_true", help="leave output.weight un(re)quantized")
    p.add_argument("--pure", action="store_true",
                   help="no k-quant mixture: quantize every tensor to the same type")
    p.add_argument("--output-tensor-type", metavar="GGML_TYPE", help="type of output.weight (q8_0, f16, ...)")
    p.add_argument("--token-embedding-type", metavar="GGML_TYPE", help="type of token_embd.weight")
    p.add_argument("--tensor-type", action="append", default=[], metavar="PATTERN=GGML_TYPE",
                   help="quantize the tensors whose name matches PATTERN (a regular expression, lower-cased) "
                   "to GGML_TYPE; repeatable, the first match wins (example: --tensor-type attn_q=q8_0)")
    p.add_argument("--tensor-type-file", metavar="FILE",
                   help="PATTERN=GGML_TYPE entries separated by spaces or newlines")
    p.add_argument("--override-kv", action="append", default=[], metavar="KEY=TYPE:VALUE",
                   help="set a metadata key in the output (TYPE: int, float, bool, str); repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="print each tensor's type and the sizes; write nothing")
    p.add_argument("--max-buffer-size", type=int, metavar="MiB",
                   help="memory for the rows of one tensor being quantized (default 1024)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no messages")
    p.add_argument("--imatrix", metavar="FILE",
                   help="importance matrix (llama-imatrix's GGUF or legacy .dat file) for the quantizers")
    p.add_argument("--include-weights", action="append", default=[], metavar="NAME",
                   help="use the matrix only for the tensors whose name contains NAME; repeatable")
    p.add_argument("--exclude-weights", action="append", default=[], metavar="NAME",
                   help="do not use the matrix for the tensors whose name contains NAME; repeatable "
                   "(not with --include-weights)")  # fmt: skip
    p.add_argument("--prune-layers", metavar="L0,L1,...",
                   help="drop these layers (comma-separated numbers) and renumber the rest")  # fmt: skip
    p.add_argument("--keep-split", action="store_true", help="refused")
    p.set_defaults(func=_cmd)


def parse_override_kv(text: str) -> tuple[str, int | float | bool | str]:
    """llama.cpp's KEY=TYPE:VALUE (common's string_parse_kv_override), TYPE int, float, bool or str."""
    key, sep, rest = text.partition("=")
    if not sep or not key or len(key) >= 128:
        raise ValueError(f"--override-kv {text!r}: malformed (KEY=TYPE:VALUE, KEY under 128 characters)")
    kind, _, value = rest.partition(":")
    try:
        if kind == "int":
            return key, int(value)
        if kind == "float":
            return key, float(value)
    except ValueError:
        raise ValueError(f"--override-kv {text!r}: {value!r} is not a valid {kind}") from None
    if kind == "bool" and value in ("true", "false"):
        return key, value == "true"
    if kind == "bool":
        raise ValueError(f"--override-kv {text!r}: invalid boolean value (true or false)")
    if kind == "str":
        if len(value.encode()) > 127:
            raise ValueError(f"--override-kv {text!r}: the value cannot exceed 127 characters")
        return key, value
    raise ValueError(f"--override-kv {text!r}: invalid type (int, float, bool or str)")


def parse_tensor_type(text: str) -> tuple[str, str]:
    """llama-quantize's PATTERN=TYPE: the pattern lower-cased, the type checked later."""
    name, sep, qtype = text.partition("=")
    if not sep:
        raise ValueError(f"--tensor-type {text!r}: malformed (PATTERN=GGML_TYPE)")
    if not name:
        raise ValueError(f"--tensor-type {text!r}: missing tensor name")
    if not qtype:
        raise ValueError(f"--tensor-type {text!r}: missing quantization type")
    return name.lower(), qtype


def parse_positionals(args: list[str]) -> tuple[str, str | None, str, int | None]:
    """llama-quantize's grammar: IN [OUT] TYPE [NTHREADS]; the second argument is TYPE when it
    names a type. Returns (input, output or None, type name, threads or None)."""
    from splitllm_convert.requantize import SUPPORTED_NAMES, parse_ftype

    if len(args) < 2:
        raise ValueError("bad arguments: IN.gguf [OUT.gguf] TYPE [NTHREADS] expected")
    inp, out = args[0], None
    parsed = parse_ftype(args[1])
    i = 2
    if parsed is None:
        out = args[1]
        if len(args) < 3:
            raise ValueError("missing ftype")
        parsed = parse_ftype(args[2])
        if parsed is None:
            raise ValueError(f"invalid ftype '{args[2]}'; supported: {', '.join(SUPPORTED_NAMES)} "
                             "or their numbers")
        i = 3
    threads = None
    if len(args) > i:
        try:
            threads = int(args[i])
        except ValueError:
            raise ValueError(f"invalid nthread '{args[i]}'") from None
    if len(args) > i + 1:
        raise ValueError(f"unexpected argument '{args[i + 1]}' after NTHREADS")
    return inp, out, parsed[0], threads


def _cmd(args: argparse.Namespace) -> int:
    from splitllm_convert.quant_rules import parse_prune_layers
    from splitllm_convert.requantize import default_output, quantize

    for option, message in _REFUSED.items():
        if getattr(args, option):
            raise ValueError(message)
    inp, out, type_name, threads = parse_positionals(args.args)
    prune = parse_prune_layers(args.prune_layers) if args.prune_layers is not None else ()
    tensor_types = [parse_tensor_type(t) for t in args.tensor_type]
    if args.tensor_type_file:
        with open(args.tensor_type_file, encoding="utf-8") as f:
            tensor_types += [parse_tensor_type(t) for t in f.read().split()]
    if args.max_buffer_size is not None and args.max_buffer_size <= 0:
        raise ValueError(f"invalid --max-buffer-size '{args.max_buffer_size}'")
    if not args.quiet:
        target = "" if args.dry_run else f" to '{out or default_output(inp, type_name)}'"
        on = f" using {threads} threads" if threads and threads > 0 else ""
        verb = "sizing" if args.dry_run else "quantizing"
        print(f"splitllm quantize: {verb} '{inp}'{target} as {type_name}{on}", file=sys.stderr)
    plan = quantize(
        inp, out, type_name, nthreads=threads, allow_requantize=args.allow_requantize,
        leave_output_tensor=args.leave_output_tensor, pure=args.pure,
        output_tensor_type=args.output_tensor_type, token_embedding_type=args.token_embedding_type,
        tensor_types=tensor_types, override_kv=dict(parse_override_kv(o) for o in args.override_kv),
        imatrix=args.imatrix, include_weights=args.include_weights, prune_layers=prune,
        exclude_weights=args.exclude_weights, dry_run=args.dry_run,
        max_buffer_size=None if args.max_buffer_size is None else args.max_buffer_size << 20,
        quiet=args.quiet,
    )  # fmt: skip
    if args.dry_run:
        print(plan.format())
    elif not args.quiet:
        print(plan.summary(), file=sys.stderr)
        print(f"splitllm quantize: wrote {Path(plan.dst or '')} ({plan.output_bytes / 2**20:.2f} MiB)",
              file=sys.stderr)  # fmt: skip
    return 0
