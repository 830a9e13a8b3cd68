"""The mixtures of experts llama.cpp runs as ``dots1`` (Dots1ForCausalLM, dots.llm1), ``bailingmoe2``
(BailingMoeV2ForCausalLM, Ling / Ring 2.0), ``hunyuan-moe`` (HunYuanMoEV1ForCausalLM,
Hunyuan-A13B) and ``smallthinker`` (SmallThinkerForCausalLM), with the tables and metadata of its
converter (conversion/dots1.py, bailingmoe.py, hunyuan.py, smallthinker.py).

config.json is read as transformers' config classes read it (their defaults where keys are left
out). What llama.cpp's graphs would run differently from transformers is refused, nothing written
(each class says what).

dots1: Qwen3's attention (per-head q/k norms, NEOX rope) and, after ``first_k_dense_replace``
dense blocks, a router (``mlp.gate``, its ``e_score_correction_bias`` as ``exp_probs_b.bias``),
n_routed_experts experts (stacked) and n_shared_experts shared experts (one MLP); the router's
settings (sigmoid scores, n_group / topk_group, norm_topk_prob, routed_scaling_factor) as keys.
Refused: attention biases, sliding-window layers, key/value heads fewer than the query heads (its
tensors are created n_head wide), tied embeddings (its output matrix is required).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gguf import ExpertGatingFuncType, GGUFWriter

from splitllm_convert.arch import Architecture, PlannedSource, TensorRule, _describe, _moe_config, _require
from splitllm_convert.deepseek import _DENSE, _EXPERTS, _SHARED, DeepseekV2, _optional
from splitllm_convert.errors import ConvertError
from splitllm_convert.llama_variants import Olmo2, _flag

L, B = "model.layers.{bid}.", "blk.{bid}."


def _attn(qk_norms: tuple[str, str] | None) -> tuple[TensorRule, ...]:
    """The token embedding and a block's rows up to its feed-forward: the norms around the attention,
    q, k, v and o (self_attn.*_proj), the per-head q and k norms (self_attn.<qk_norms>, or none)."""
    rows = [TensorRule("model.embed_tokens.weight", "token_embd.weight", ("vocab", "embd")),
            TensorRule(L + "input_layernorm.weight", B + "attn_norm.weight", ("embd",))]  # fmt: skip
    for t, rows_sym in (("q", "q"), ("k", "kv"), ("v", "kv")):
        rows.append(TensorRule(L + f"self_attn.{t}_proj.weight", B + f"attn_{t}.weight", (rows_sym, "embd")))
    rows.append(TensorRule(L + "self_attn.o_proj.weight", B + "attn_output.weight", ("embd", "q")))
    if qk_norms:
        for t, name in zip("qk", qk_norms, strict=True):
            rows.append(TensorRule(L + f"self_attn.{name}.weight", B + f"attn_{t}_norm.weight", ("head",)))
    rows.append(TensorRule(L + "post_attention_layernorm.weight", B + "ffn_norm.weight", ("embd",)))
    return tuple(rows)


_OUTPUT = (TensorRule("model.norm.weight", "output_norm.weight", ("embd",)),
           TensorRule("lm_head.weight", "output.weight", ("vocab", "embd")))  # fmt: skip


def _ffn(bias: str) -> tuple[TensorRule, ...]:
    """A block's feed-forward rows, DeepSeek V3's (all optional, checked per block): dense, or a
    router with its selection bias (HF's ``mlp.gate.<bias>``), experts and shared experts."""
    return tuple(_optional(r.hf.replace("e_score_correction_bias", bias), r.gguf, r.shape)
                 for r in DeepseekV2.rules if ".mlp." in r.hf)  # fmt: skip


class LeadingDenseMoe(Architecture):
    """A mixture of experts whose first ``first_k_dense_replace`` blocks are dense (DeepSeek V3's
    layout): which of the table's optional rows a block needs is checked per block."""

    n_shared: int
    n_dense: int
    attn_names: tuple[str, ...] = ()  # HF names every block's attention has (checked beside the table)

    def _lead_and_shared(self, config_path: Path, shared_key: str) -> None:
        cfg = self.cfg
        self.n_shared = int(cfg.get(shared_key) or 0)
        k = cfg.get("first_k_dense_replace")
        self.n_dense = 0 if k is None else int(k)
        if not 0 <= self.n_dense <= self.n_layer:
            raise ConvertError(
                f"{config_path}: first_k_dense_replace {k!r} does not fit {self.n_layer} blocks"
            )
        if _flag(cfg, "attention_bias", config_path):
            raise ConvertError(
                f"{config_path}: 'attention_bias' is true: llama.cpp's {self.gguf_arch} has none"
            )
        sliding = "sliding_attention" in (cfg.get("layer_types") or []) or cfg.get("use_sliding_window")
        if sliding:
            raise ConvertError(f"{config_path}: sliding-window layers: llama.cpp's {self.gguf_arch} has none")

    def _needed(self, bid: int) -> list[str]:
        """The HF tensors block bid must have (beside the ones every block has)."""
        p = L.format(bid=bid)
        if bid < self.n_dense:
            return [p + n for n in _DENSE]
        names = [
            p + "mlp.gate.weight",
            *(p + n.format(xid=x) for n in _EXPERTS for x in range(self.n_expert)),
        ]
        return names + ([p + n for n in _SHARED] if self.n_shared else [])

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        for bid in range(self.n_layer):
            for name in self._needed(bid):
                if name not in available:
                    raise ConvertError(f"tensor {name!r} is missing from {_describe(files)}")
        return super().plan(available, where, files)

    def add_router_hparams(self, w: GGUFWriter, gating: ExpertGatingFuncType) -> None:
        """TextModel's expert keys: counts, groups (transformers' default: one), the gating function."""
        cfg = self.cfg
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        w.add_expert_group_count(int(cfg.get("n_group") or 1))
        w.add_expert_group_used_count(int(cfg.get("topk_group") or 1))
        w.add_expert_gating_func(gating)


class Dots1(LeadingDenseMoe):
    """Dots1ForCausalLM (dots.llm1; see the module's docstring)."""

    hf_names = ("Dots1ForCausalLM",)
    gguf_arch = "dots1"
    rules = (*_attn(("q_norm", "k_norm")), *_ffn("e_score_correction_bias"), *_OUTPUT)
    default_ctx = 2048
    read_vocab = Olmo2.read_vocab  # byte-level BPE from tokenizer.json (TextModel.set_vocab)

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self._lead_and_shared(config_path, "n_shared_experts")
        if self.tied:
            raise ConvertError(
                f"{config_path}: 'tie_word_embeddings' is true, but llama.cpp's dots1 needs an output matrix "
                "of its own"
            )
        if self.n_head_kv != self.n_head:
            raise ConvertError(
                f"{config_path}: llama.cpp's dots1 needs num_key_value_heads = num_attention_heads "
                f"({self.n_head_kv} != {self.n_head})"
            )
        groups, used = cfg.get("n_group") or 1, cfg.get("topk_group") or 1
        if self.n_expert % groups or not 1 <= used <= groups:
            raise ConvertError(f"{config_path}: n_group {groups} / topk_group {used} do not fit the experts")

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        return _moe_config(self.cfg, config_path, "n_routed_experts", "moe_intermediate_size")

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "ff_sh": self.n_ff_exp * self.n_shared}

    def add_expert_hparams(self, w: GGUFWriter) -> None:
        self.add_router_hparams(w, ExpertGatingFuncType.SIGMOID)  # (Dots1TopkRouter: always sigmoid)

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:  # (Qwen2MoeModel's, then Dots1Model's)
        cfg = self.cfg
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_leading_dense_block_count(self.n_dense)
        w.add_expert_shared_count(self.n_shared)
        w.add_expert_weights_scale(float(cfg.get("routed_scaling_factor", 1.0)))
        w.add_expert_weights_norm(bool(cfg.get("norm_topk_prob", False)))


class BailingMoeV2(LeadingDenseMoe):
    """BailingMoeV2ForCausalLM (Ling / Ring 2.0 mini and flash; llama.cpp's ``bailingmoe2``): q, k and
    v from one ``query_key_value`` projection, per-head q/k norms (``query_layernorm`` /
    ``key_layernorm``) before a NEOX rotation of ``partial_rotary_factor`` of each head (default
    0.5, as llama.cpp's converter reads it), leading dense blocks, a sigmoid router with
    ``expert_bias`` and groups (BailingMoeV2Gate: the chosen weights renormalized whenever more than
    one expert is used, whatever norm_topk_prob says), num_shared_experts shared experts.
    Multi-token-prediction layers past num_hidden_layers are left out (nextn_predict_layers 0), as
    llama.cpp never runs them."""

    hf_names = ("BailingMoeV2ForCausalLM",)
    gguf_arch = "bailingmoe2"
    rules = (
        TensorRule("model.word_embeddings.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule(L + "input_layernorm.weight", B + "attn_norm.weight", ("embd",)),
        TensorRule(L + "attention.query_key_value.weight", B + "attn_qkv.weight", ("qkv", "embd")),
        TensorRule(L + "attention.query_layernorm.weight", B + "attn_q_norm.weight", ("head",)),
        TensorRule(L + "attention.key_layernorm.weight", B + "attn_k_norm.weight", ("head",)),
        TensorRule(L + "attention.dense.weight", B + "attn_output.weight", ("embd", "q")),
        TensorRule(L + "post_attention_layernorm.weight", B + "ffn_norm.weight", ("embd",)),
        *_ffn("expert_bias"),
        *_OUTPUT,
    )
    default_ctx = 32768
    read_vocab = Olmo2.read_vocab  # byte-level BPE from tokenizer.json (_set_vocab_gpt2)

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        self._lead_and_shared(config_path, "num_shared_experts")
        for key in ("use_qkv_bias", "use_bias"):
            if _flag(cfg, key, config_path):
                raise ConvertError(f"{config_path}: '{key}' is true: llama.cpp's bailingmoe2 has no biases")
        if not cfg.get("use_qk_norm", True) or not self.n_shared or self.tied:
            raise ConvertError(
                f"{config_path}: llama.cpp's bailingmoe2 needs q/k norms (use_qk_norm), shared experts "
                "(num_shared_experts) and an output matrix of its own (tie_word_embeddings false)"
            )
        factor = self.rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.5))
        self.n_rot = int(self.head_dim * factor)
        if not 0 < self.n_rot <= self.head_dim or self.n_rot % 2:
            raise ConvertError(
                f"{config_path}: partial_rotary_factor {factor!r} leaves {self.n_rot} dims rotated"
            )
        groups, used = cfg.get("n_group") or 1, cfg.get("topk_group") or 1
        if self.n_expert % groups or not 1 <= used <= groups:
            raise ConvertError(f"{config_path}: n_group {groups} / topk_group {used} do not fit the experts")

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        return _moe_config(self.cfg, config_path, "num_experts", "moe_intermediate_size")

    def dims(self) -> dict[str, int]:
        d = super().dims()
        return {**d, "qkv": d["q"] + 2 * d["kv"], "ff_sh": self.n_ff_exp * self.n_shared}

    def plan(
        self, available: dict[str, tuple[int, ...]], where: Callable[[str], str], files: Sequence[Path]
    ) -> list[PlannedSource]:
        mtp = re.compile(r"model\.layers\.(\d+)\.")
        available = {n: s for n, s in available.items()
                     if not ((m := mtp.match(n)) and int(m.group(1)) >= self.n_layer)}  # fmt: skip
        return super().plan(available, where, files)

    def add_expert_hparams(self, w: GGUFWriter) -> None:
        self.add_router_hparams(w, ExpertGatingFuncType.SIGMOID)  # (BailingMoeV2Gate: always sigmoid)

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:  # (BailingMoeV2Model's)
        w.add_rope_dimension_count(self.n_rot)
        w.add_leading_dense_block_count(self.n_dense)
        w.add_vocab_size(self.n_vocab)
        w.add_expert_feed_forward_length(self.n_ff_exp)
        # (each shared expert's width: llama.cpp multiplies it by expert_shared_count)
        w.add_expert_shared_feed_forward_length(self.n_ff_exp)
        w.add_expert_weights_scale(float(self.cfg.get("routed_scaling_factor", 1.0)))
        w.add_expert_shared_count(self.n_shared)
        w.add_expert_weights_norm(self.n_expert_used > 1)
        w.add_nextn_predict_layers(0)


def _one_value(cfg: dict[str, Any], key: str, path: Path, default: Any = None) -> int:
    """An integer, or a per-layer list of one integer repeated (HunYuan's moe_topk, ...)."""
    v = cfg.get(key, default)
    if isinstance(v, list) and v and all(x == v[0] for x in v):
        v = v[0]
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ConvertError(
            f"{path}: '{key}' must be an integer (or a list of one integer repeated), got {v!r}"
        )
    return v


class HunYuanMoE(Architecture):
    """HunYuanMoEV1ForCausalLM (Hunyuan-A13B; llama.cpp's ``hunyuan-moe``): q and k RMS-normed per head
    (``query_layernorm`` / ``key_layernorm``) after the NEOX rotation, experts in every block routed by
    the softmax renormalized over the moe_topk chosen (HunYuanTopKGate; one expert would keep its
    probability, which llama.cpp does not: refused), the experts and the shared MLP as wide as
    intermediate_size (transformers' HunYuanMoEV1MLP); NTK-alpha "dynamic" rope as llama.cpp writes
    it: the base times alpha^(d / (d - 2)). The tokenizer is read from tokenizer.json."""

    hf_names = ("HunYuanMoEV1ForCausalLM",)
    gguf_arch = "hunyuan-moe"
    rules = (
        *_attn(("query_layernorm", "key_layernorm")),
        TensorRule(L + "mlp.gate.wg.weight", B + "ffn_gate_inp.weight", ("n_expert", "embd")),
        *(TensorRule(L + hf, B + g, shape) for hf, g, shape in (
            (_EXPERTS[0], "ffn_gate_exps.weight", ("ff", "embd")),
            (_EXPERTS[1], "ffn_up_exps.weight", ("ff", "embd")),
            (_EXPERTS[2], "ffn_down_exps.weight", ("embd", "ff")),
            ("mlp.shared_mlp.gate_proj.weight", "ffn_gate_shexp.weight", ("ff", "embd")),
            ("mlp.shared_mlp.up_proj.weight", "ffn_up_shexp.weight", ("ff", "embd")),
            ("mlp.shared_mlp.down_proj.weight", "ffn_down_shexp.weight", ("embd", "ff")))),
        *_OUTPUT,
    )  # fmt: skip
    default_ctx = 32768
    read_vocab = Olmo2.read_vocab  # byte-level BPE from tokenizer.json

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        if _flag(cfg, "attention_bias", config_path) or _flag(cfg, "mlp_bias", config_path):
            raise ConvertError(
                f"{config_path}: biases (attention_bias / mlp_bias): llama.cpp's hunyuan-moe has none"
            )
        if not cfg.get("use_qk_norm", True):
            raise ConvertError(
                f"{config_path}: 'use_qk_norm' is false: llama.cpp's hunyuan-moe needs the q/k norms"
            )
        if self.n_expert_used < 2:
            raise ConvertError(
                f"{config_path}: moe_topk {self.n_expert_used}: one expert keeps its softmax probability in "
                "transformers' HunYuan, llama.cpp's hunyuan-moe weighs it 1"
            )
        self.n_shared = _one_value(cfg, "num_shared_expert", config_path, 1)
        alpha = self.rope.get("alpha") if self.rope["rope_type"] == "dynamic" else None
        if alpha is not None and (not isinstance(alpha, (int, float)) or alpha <= 0):
            raise ConvertError(f"{config_path}: rope_scaling.alpha must be a positive number, got {alpha!r}")
        self.alpha = alpha

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        n = _one_value(self.cfg, "num_experts", config_path)
        used = _one_value(self.cfg, "moe_topk", config_path)
        if not 0 < used <= n:
            raise ConvertError(f"{config_path}: moe_topk {used} does not fit num_experts {n}")
        return n, used, self.n_ff

    def rope_theta(self) -> float:
        theta = super().rope_theta()
        if self.alpha is None:
            return theta
        return theta * float(self.alpha) ** (self.head_dim / (self.head_dim - 2))  # (HunYuan's NTK alpha)

    def add_expert_hparams(self, w: GGUFWriter) -> None:
        w.add_expert_count(self.n_expert)

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:  # (HunYuanMoEModel's)
        w.add_expert_shared_feed_forward_length(self.n_ff)
        w.add_expert_feed_forward_length(
            _one_value(self.cfg, "moe_intermediate_size", Path("config.json"), self.n_ff)
        )
        w.add_expert_used_count(self.n_expert_used)
        w.add_expert_shared_count(self.n_shared)


_SPARSE = L + "block_sparse_moe."


class SmallThinker(Architecture):
    """SmallThinkerForCausalLM (PowerInfer's SmallThinker-21B-A3B / 4B-A0.6B; llama.cpp's
    ``smallthinker``): no q/k norms, experts in every block (``block_sparse_moe``) whose router
    (``primary_router``) reads the block's input, ReGLU experts of moe_ffn_hidden_size (also written
    as feed_forward_length), softmax or sigmoid routing (moe_primary_router_apply_softmax) as
    expert_gating_func. Sliding-window layers as llama.cpp runs them or not at all: where
    sliding_window_layout has any, it must slide every layer but layers 0, 4, 8, ... over 4096
    positions, and rope_layout leave exactly those unrotated (llama.cpp fixes both); without, every
    layer rotates. Shared or secondary experts and q/k norms (which llama.cpp has not) are refused."""

    hf_names = ("SmallThinkerForCausalLM",)
    gguf_arch = "smallthinker"
    rules = (
        *_attn(None),
        TensorRule(_SPARSE + "primary_router.weight", B + "ffn_gate_inp.weight", ("n_expert", "embd")),
        TensorRule(_SPARSE + "experts.{xid}.gate.weight", B + "ffn_gate_exps.weight", ("ff_exp", "embd")),
        TensorRule(_SPARSE + "experts.{xid}.up.weight", B + "ffn_up_exps.weight", ("ff_exp", "embd")),
        TensorRule(_SPARSE + "experts.{xid}.down.weight", B + "ffn_down_exps.weight", ("embd", "ff_exp")),
        *_OUTPUT,
    )  # fmt: skip
    default_ctx = 4096 * 32
    default_rope_theta = 1e6
    read_vocab = Olmo2.read_vocab  # byte-level BPE from tokenizer.json

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        # (no intermediate_size: the experts' width stands for it, as llama.cpp writes it)
        ff = cfg.get("moe_ffn_hidden_size")
        super().__init__({**cfg, "intermediate_size": ff}, config_path)
        self.cfg = cfg
        if (
            cfg.get("use_qk_norm")
            or cfg.get("moe_shared_primary_experts")
            or cfg.get("moe_enable_secondary_experts")
        ):
            raise ConvertError(
                f"{config_path}: q/k norms, shared or secondary experts: llama.cpp's smallthinker has none"
            )
        n = self.n_layer
        windows = [int(bool(v)) for v in cfg.get("sliding_window_layout") or [0] * n]
        rotary = [int(bool(v)) for v in cfg.get("rope_layout") or [1] * n]
        self.window = any(windows)
        want_windows = [int(i % 4 != 0) for i in range(n)] if self.window else [0] * n
        want_rotary = want_windows if self.window else [1] * n
        size = cfg.get("sliding_window_size", 4096)
        if windows != want_windows or rotary != want_rotary or (self.window and size != 4096):
            raise ConvertError(
                f"{config_path}: sliding_window_layout / rope_layout / sliding_window_size: llama.cpp's "
                "smallthinker slides every layer but 0, 4, 8, ... over 4096 positions and leaves those "
                "unrotated, or has no windows and rotates every layer"
            )

    def _experts(self, config_path: Path) -> tuple[int, int, int]:
        cfg = self.cfg
        n = _require(cfg, "moe_num_primary_experts", config_path)
        used = _require(cfg, "moe_num_active_primary_experts", config_path)
        if used > n:
            raise ConvertError(
                f"{config_path}: moe_num_active_primary_experts {used} is more than the experts {n}"
            )
        return n, used, _require(cfg, "moe_ffn_hidden_size", config_path)

    def add_hparams_after_file_type(self, w: GGUFWriter) -> None:  # (SmallThinkerModel's)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        w.add_expert_feed_forward_length(self.n_ff_exp)
        w.add_feed_forward_length(self.n_ff_exp)
        softmax = bool(self.cfg.get("moe_primary_router_apply_softmax"))
        w.add_expert_gating_func(ExpertGatingFuncType.SOFTMAX if softmax else ExpertGatingFuncType.SIGMOID)
        if self.window:
            w.add_sliding_window(4096)
