"""``splitllm serve``'s speculative decoding options, as llama-server's (``-md``, ``--spec-type``,
``--spec-draft-n-max`` ...), and the drafter they describe (see :mod:`splitllm.engine_draft`)."""

from __future__ import annotations

import argparse
from typing import Any

from splitllm.engine_draft import SPEC_TYPES, ModelSlotDrafter, NgramSlotDrafter, SlotDrafter, SpecParams

# (flags, dest, type, default, metavar, help) of each option, llama-server's names first
_OPTIONS = (
    (
        ("-md", "--model-draft", "--spec-draft-model"),
        "spec_model_draft",
        str,
        None,
        "FNAME",
        "draft model (a small GGUF with the same vocabulary; --spec-type draft-simple)",
    ),
    (
        ("--spec-type",),
        "spec_type",
        str,
        "none",
        "TYPE",
        f"kind of drafting: {', '.join(SPEC_TYPES)} (default: draft-simple with -md, else none)",
    ),
    (
        ("--spec-draft-n-max", "--draft-max", "--draft", "--draft-n"),
        "draft_max",
        int,
        3,
        "N",
        "tokens guessed at most per step (default 3)",
    ),
    (
        ("--spec-draft-n-min", "--draft-min", "--draft-n-min"),
        "draft_min",
        int,
        0,
        "N",
        "fewer guesses than N are not used (default 0)",
    ),
    (
        ("--spec-draft-p-min", "--draft-p-min"),
        "draft_p_min",
        float,
        0.0,
        "P",
        "the draft model stops guessing where its top token's probability is below P (default 0)",
    ),
    (
        ("-ngld", "--spec-draft-ngl", "--gpu-layers-draft", "--n-gpu-layers-draft"),
        "n_gpu_layers_draft",
        str,
        "0",
        "N",
        "layers of the draft model on the GPU (N, -1 for all, or auto; default 0)",
    ),
    (
        ("-cd", "--ctx-size-draft"),
        "ctx_size_draft",
        int,
        0,
        "N",
        "the draft model's context, split between the slots as --n-ctx (default 0: --n-ctx)",
    ),
    (
        ("--spec-ngram-simple-size-n",),
        "ngram_size_n",
        int,
        12,
        "N",
        "ngram-simple: tokens looked up (default 12)",
    ),
    (
        ("--spec-ngram-simple-size-m",),
        "ngram_size_m",
        int,
        48,
        "N",
        "ngram-simple: tokens guessed at most after a match (default 48)",
    ),
)


def add_speculative_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "speculative decoding",
        "guessed tokens checked in the shared pass: the same text, faster where the guesses are right",
    )
    for flags, dest, kind, default, metavar, text in _OPTIONS:
        g.add_argument(*flags, dest=dest, type=kind, default=default, metavar=metavar, help=text)


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
