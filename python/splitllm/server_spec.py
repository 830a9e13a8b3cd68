"""``splitllm serve``'s speculative decoding options, as llama-server's (``-md``, ``--spec-type``,
``--spec-draft-n-max`` ...), and the drafter they describe (see :mod:`splitllm.engine_draft`)."""

from __future__ import annotations

import argparse
from typing import Any

from splitllm.engine_draft import SPEC_TYPES, ModelSlotDrafter, NgramSlotDrafter, SlotDrafter, SpecParams


def add_speculative_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "speculative decoding",
        "guessed tokens checked in the shared pass: the same text, faster where the guesses are right",
    )
    g.add_argument(
        "-md",
        "--model-draft",
        "--spec-draft-model",
        dest="spec_model_draft",
        default=None,
        metavar="FNAME",
        help="draft model (a small GGUF with the same vocabulary; --spec-type draft-simple)",
    )
    g.add_argument(
        "--spec-type",
        default="none",
        metavar="TYPE",
        help=f"kind of drafting: {', '.join(SPEC_TYPES)} (default: draft-simple with -md, else none)",
    )
    g.add_argument(
        "--spec-draft-n-max",
        "--draft-max",
        "--draft",
        "--draft-n",
        dest="draft_max",
        type=int,
        default=3,
        metavar="N",
        help="tokens guessed at most per step (default 3)",
    )
    g.add_argument(
        "--spec-draft-n-min",
        "--draft-min",
        "--draft-n-min",
        dest="draft_min",
        type=int,
        default=0,
        metavar="N",
        help="fewer guesses than N are not used (default 0)",
    )
    g.add_argument(
        "--spec-draft-p-min",
        "--draft-p-min",
        dest="draft_p_min",
        type=float,
        default=0.0,
        metavar="P",
        help="the draft model stops guessing where its top token's probability is below P (default 0)",
    )
    g.add_argument(
        "-ngld",
        "--spec-draft-ngl",
        "--gpu-layers-draft",
        "--n-gpu-layers-draft",
        dest="n_gpu_layers_draft",
        default="0",
        metavar="N",
        help="layers of the draft model on the GPU (N, -1 for all, or auto; default 0)",
    )
    g.add_argument(
        "-cd",
        "--ctx-size-draft",
        dest="ctx_size_draft",
        type=int,
        default=0,
        metavar="N",
        help="the draft model's context, split between the slots as --n-ctx (default 0: --n-ctx)",
    )
    g.add_argument(
        "--spec-ngram-simple-size-n",
        dest="ngram_size_n",
        type=int,
        default=12,
        metavar="N",
        help="ngram-simple: tokens looked up (default 12)",
    )
    g.add_argument(
        "--spec-ngram-simple-size-m",
        dest="ngram_size_m",
        type=int,
        default=48,
        metavar="N",
        help="ngram-simple: tokens guessed at most after a match (default 48)",
    )


def speculative_params(args: argparse.Namespace) -> SpecParams:
    """The server's default draft settings; ValueError naming the option."""
    if args.draft_max < 0:
        raise ValueError(f"--spec-draft-n-max must be at least 0 (got {args.draft_max})")
    if args.draft_min < 0 or args.draft_min > max(args.draft_max, 0):
        raise ValueError(
            f"--spec-draft-n-min must be in [0, --spec-draft-n-max = {args.draft_max}] (got {args.draft_min})"
        )
    if not 0.0 <= args.draft_p_min <= 1.0:
        raise ValueError(f"--spec-draft-p-min must be in [0, 1] (got {args.draft_p_min})")
    return SpecParams(n_max=args.draft_max, n_min=args.draft_min, p_min=args.draft_p_min)


def spec_type(args: argparse.Namespace) -> str:
    """The one kind of drafting the options ask for (llama-server infers draft-simple from -md)."""
    kinds = [k.strip() for k in args.spec_type.split(",") if k.strip() and k.strip() != "none"]
    for k in kinds:
        if k not in SPEC_TYPES:
            raise ValueError(f"--spec-type {k!r}: splitllm serves {', '.join(SPEC_TYPES)}")
    if len(set(kinds)) > 1:
        raise ValueError(f"--spec-type {args.spec_type!r}: one kind of drafting at a time")
    kind = kinds[0] if kinds else ("draft-simple" if args.spec_model_draft else "none")
    if kind == "draft-simple" and not args.spec_model_draft:
        raise ValueError("--spec-type draft-simple needs a draft model (-md FNAME)")
    if kind != "draft-simple" and args.spec_model_draft:
        raise ValueError(
            f"-md {args.spec_model_draft}: a draft model is --spec-type draft-simple, not {kind}"
        )
    return kind


def load_drafter(args: argparse.Namespace, model: Any) -> SlotDrafter | None:
    """The drafter of the options, checked against the target ``model``; None without one."""
    from splitllm.cli import parse_gpu_layers

    kind = spec_type(args)
    speculative_params(args)
    if kind == "ngram-simple":
        return NgramSlotDrafter(args.ngram_size_n, args.ngram_size_m)
    if kind == "none":
        return None
    if model.config["encoder"] or model.config["recurrent"]:
        raise ValueError(
            f"{model.model_path}: speculative decoding needs a decoder without a recurrent "
            f"state ({model.config['arch']} is not)"
        )
    if args.ctx_size_draft < 0:
        raise ValueError(f"--ctx-size-draft must be at least 0 (got {args.ctx_size_draft})")
    n_ctx = args.ctx_size_draft or model.n_ctx()
    drafter = ModelSlotDrafter(
        args.spec_model_draft,
        int(model._n_seq_max),
        n_ctx=n_ctx,
        n_batch=model._n_batch,
        n_threads=args.threads,
        n_gpu_layers=parse_gpu_layers(args.n_gpu_layers_draft),
    )
    try:
        drafter.check_vocab(model)
    except BaseException:
        drafter.close()
        raise
    return drafter
