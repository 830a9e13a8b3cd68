"""Memory planning: what a model needs, per device, before it is loaded.

``plan(path, ...)`` reads only the GGUF header and asks the engine what a ``Model`` with the same
settings would allocate (the same code decides placement and sizes buffers when a model loads):
per device the weight bytes (from the real tensor types), the KV cache (2 x layers x kv_heads x
head_dim x bytes of the cache type, per token), scratch buffers and a fixed overhead; per layer
its device and bytes; and the largest context that fits the memory budgets. The sliding-window
layers of a model that has them (Gemma 2/3) hold ``n_swa + n_batch`` cells whatever the context
(unless ``swa_full``), so their cache does not grow with ``n_ctx``.

``n_gpu_layers="auto"`` picks the most layers whose GPU total fits in ``gpu_memory`` (default:
the free memory the GPU reports) minus a margin, keeping room for the KV cache of ``n_ctx``.
``cache_fraction`` works like LMDeploy's ``cache_max_entry_count``: the KV cache takes that
fraction of the memory left after weights, buffers and overhead on the device that holds it, and
the plan's context becomes the number of tokens that holds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from splitllm import _core

GiB = 1 << 30
MiB = 1 << 20
DEFAULT_MARGIN = 256 * MiB  # kept free on the GPU by n_gpu_layers="auto"
# The Python side of a loaded Model is its tokenizer: measured at 400-450 bytes per vocabulary
# entry (token or merge) for both the SentencePiece and the byte-level BPE tokenizers (SmolLM2,
# GPT-2, Llama 2 vocabularies), after the vocabulary arrays themselves are dropped.
TOKENIZER_BYTES_PER_ENTRY = 430
# What else a loaded Model adds to the process (thread stacks, allocator slack after the
# vocabulary arrays are freed), measured on SmolLM2 at 2k and 8k context.
PYTHON_FIXED_OVERHEAD = 8 * MiB
KV_TYPES = ("f16", "q8_0", "q4_0")


@dataclass
class DevicePlan:
    name: str  # "CPU", "CUDA0"
    weights: int
    kv_cache: int
    buffers: int
    overhead: int
    budget: int | None = None  # memory available for the model on this device, when known

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers + self.overhead

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget


@dataclass
class LayerPlan:
    name: str  # "token_embd", "blk.0", ..., "output"
    device: str
    weight_bytes: int
    kv_bytes: int
    kv_device: str


@dataclass
class MemoryPlan:
    model_path: str
    n_ctx: int
    n_batch: int
    n_gpu_layers: int
    type_k: str
    type_v: str
    kv_bytes_per_token: int  # keys and values of the layers whose cache grows with the context
    devices: list[DevicePlan]
    layers: list[LayerPlan]
    max_ctx: int | None = None  # largest n_ctx that fits the budgets (None: no budget limits it)
    cache_tokens: int | None = None  # with cache_fraction: tokens the KV cache holds
    gpu: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    swa_cells: int = 0  # cells of each sliding-window layer's cache (0: none, or swa_full)

    @property
    def kv_bytes(self) -> int:
        """The whole KV cache, every device."""
        return sum(d.kv_cache for d in self.devices)

    @property
    def total(self) -> int:
        return sum(d.total for d in self.devices)

    @property
    def fits(self) -> bool:
        return all(d.fits for d in self.devices)

    def device(self, name: str) -> DevicePlan:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for d, dd in zip(self.devices, out["devices"], strict=True):
            dd["total"] = d.total
            dd["fits"] = d.fits
        out["total"] = self.total
        out["fits"] = self.fits
        return out


def parse_size(value: str | int | float | None) -> int | None:
    """Bytes from 24GiB, 512MiB, 1.5G (binary), 8GB (decimal) or a plain number of bytes."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*", value.lower())
    if not m:
        raise ValueError(f"cannot read a memory size from {value!r} (examples: 24GiB, 512MiB, 8GB)")
    num, unit, binary, byte = m.groups()
    base = 1000 if byte and not binary else 1024  # GB: decimal; GiB, Gi and plain G: binary
    power = " kmgt".index(unit) if unit else 0
    return int(float(num) * base**power)


def _engine_plan(
    path: str,
    *,
    n_ctx: int,
    n_batch: int,
    n_threads: int,
    n_seq_max: int,
    n_gpu_layers: int,
    type_k: str,
    type_v: str,
    offload_kqv: bool,
    op_offload: bool,
    swa_full: bool,
    loras: list[tuple[str, float]],
) -> dict[str, Any]:
    return _core.plan_memory(
        path,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_threads=n_threads,
        n_seq_max=n_seq_max,
        n_gpu_layers=n_gpu_layers,
        type_k=type_k,
        type_v=type_v,
        offload_kqv=offload_kqv,
        op_offload=op_offload,
        swa_full=swa_full,
        loras=loras,
    )


def python_overhead(raw: dict[str, Any]) -> int:
    """Host memory of the Python side of a Model (its tokenizer)."""
    return PYTHON_FIXED_OVERHEAD + TOKENIZER_BYTES_PER_ENTRY * int(raw["tokenizer_entries"])


def _gpu_name(raw: dict[str, Any]) -> str | None:
    names = [d["name"] for d in raw["devices"] if d["name"] != "CPU"]
    return names[0] if names else None


def plan(
    path: str | os.PathLike[str],
    *,
    n_ctx: int = 4096,
    n_batch: int = 512,
    n_gpu_layers: int | str = 0,
    gpu_memory: int | str | None = None,
    cpu_memory: int | str | None = None,
    type_k: str = "f16",
    type_v: str = "f16",
    cache_fraction: float | None = None,
    n_threads: int | None = None,
    n_seq_max: int = 1,
    offload_kqv: bool = True,
    op_offload: bool = True,
    margin: int | str = DEFAULT_MARGIN,
    swa_full: bool = False,
    loras: list[tuple[str, float]] | tuple[()] = (),
) -> MemoryPlan:
    """What a Model(path, ...) with these settings would need, per device; see the module doc."""
    path = os.fspath(path)
    type_k, type_v = type_k.lower(), type_v.lower()
    for name, t in (("type_k", type_k), ("type_v", type_v)):
        if t not in KV_TYPES:
            raise ValueError(f"{name} must be one of {', '.join(KV_TYPES)} (got {t!r})")
    if cache_fraction is not None and not 0 < cache_fraction <= 1:
        raise ValueError(f"cache_fraction must be in (0, 1] (got {cache_fraction})")
    if not isinstance(n_ctx, int) or n_ctx < 1:
        raise ValueError(f"n_ctx must be a positive integer (got {n_ctx!r})")
    if not isinstance(n_seq_max, int) or not 1 <= n_seq_max <= n_ctx:
        raise ValueError(f"n_seq_max (parallel sequences) must be in [1, n_ctx] (got {n_seq_max!r})")
    threads = n_threads or _core.hardware_threads()
    base = dict(
        n_batch=n_batch,
        n_threads=threads,
        n_seq_max=n_seq_max,
        type_k=type_k,
        type_v=type_v,
        offload_kqv=offload_kqv,
        op_offload=op_offload,
        swa_full=swa_full,
        loras=[(os.fspath(p), float(sc)) for p, sc in loras],
    )
    margin_b = parse_size(margin) or 0
    gpu = _core.gpu_info()
    gpu_budget = parse_size(gpu_memory)
    if gpu_budget is None and gpu["available"]:
        gpu_budget = int(gpu["free_bytes"])
    cpu_budget = parse_size(cpu_memory)
    if cpu_budget is None:
        cpu_budget = int(psutil.virtual_memory().available)
    notes: list[str] = []

    def raw_plan(ctx: int, ngl: int) -> dict[str, Any]:
        return _engine_plan(path, n_ctx=ctx, n_gpu_layers=ngl, **base)

    # 1. Layers on the GPU.
    if n_gpu_layers == "auto":
        ngl = _auto_layers(raw_plan, n_ctx, gpu, gpu_budget, margin_b, notes)
    elif isinstance(n_gpu_layers, int) and not isinstance(n_gpu_layers, bool) and n_gpu_layers >= -1:
        ngl = n_gpu_layers
    else:
        raise ValueError(f"n_gpu_layers must be an integer >= -1 or 'auto' (got {n_gpu_layers!r})")

    # 2. Context: given, or sized by cache_fraction.
    raw = raw_plan(n_ctx, ngl)
    cache_tokens = None
    if cache_fraction is not None:
        cache_tokens = _cache_tokens(raw_plan, ngl, raw, cache_fraction, gpu_budget, cpu_budget, margin_b,
                                     n_seq_max)
        if cache_tokens < 1:
            notes.append("cache_fraction leaves no room for the KV cache after weights and buffers")
        else:
            n_ctx = cache_tokens
            raw = raw_plan(n_ctx, ngl)

    budgets = {"CPU": cpu_budget}
    gname = _gpu_name(raw)
    if gname is not None:
        budgets[gname] = gpu_budget
    result = _to_plan(path, raw, n_ctx, n_batch, type_k, type_v, budgets, gpu)
    result.cache_tokens = cache_tokens
    result.max_ctx = _max_ctx(raw_plan, ngl, budgets, margin_b, n_seq_max)
    result.notes = notes + [
        f"{d.name}: needs {d.total / MiB:.1f} MiB but {d.budget / MiB:.1f} MiB is available"
        for d in result.devices
        if not d.fits
    ]
    if not gpu["available"] and (ngl != 0):
        result.notes.append(f"no GPU: {gpu['reason']}; the model would run on the CPU")
    return result


def _to_plan(
    path: str,
    raw: dict[str, Any],
    n_ctx: int,
    n_batch: int,
    type_k: str,
    type_v: str,
    budgets: dict[str, int | None],
    gpu: dict[str, Any],
) -> MemoryPlan:
    devices = [
        DevicePlan(d["name"], d["weights"], d["kv"], d["buffers"], d["overhead"], budgets.get(d["name"]))
        for d in raw["devices"]
    ]
    devices[0].overhead += python_overhead(raw)
    layers = [
        LayerPlan(p["name"], p["device"], p["weight_bytes"], p["kv_bytes"], p["kv_device"])
        for p in raw["parts"]
    ]
    return MemoryPlan(
        path,
        n_ctx,
        n_batch,
        raw["n_gpu_layers"],
        type_k,
        type_v,
        raw["kv_bytes_per_token"],
        devices,
        layers,
        gpu=dict(gpu),
        swa_cells=int(raw.get("swa_cells", 0)),
    )


def _auto_layers(
    raw_plan, n_ctx: int, gpu: dict[str, Any], budget: int | None, margin: int, notes: list[str]
) -> int:
    """The most layers (output first, then blocks from the last) whose GPU total fits."""
    if not gpu["available"] and budget is None:
        notes.append(f"n_gpu_layers=auto: no GPU ({gpu['reason']}); 0 layers")
        return 0
    limit = (budget or 0) - margin

    def gpu_total(ngl: int) -> int:
        raw = raw_plan(n_ctx, ngl)
        return sum(
            d["weights"] + d["kv"] + d["buffers"] + d["overhead"]
            for d in raw["devices"]
            if d["name"] != "CPU"
        )

    # Not monotonic: with every block on the GPU the op-offload buffers for CPU blocks go away.
    n_parts = raw_plan(n_ctx, -1)["n_layer"] + 1
    lo = next((n for n in range(n_parts, 0, -1) if gpu_total(n) <= limit), 0)
    if lo == 0:
        notes.append(
            f"n_gpu_layers=auto: not even the output layer fits in {limit / MiB:.0f} MiB of GPU memory"
        )
    return lo


def _kv_device(raw: dict[str, Any]) -> str:
    kv = {}
    for p in raw["parts"]:
        if p["kv_bytes"]:
            kv[p["kv_device"]] = kv.get(p["kv_device"], 0) + p["kv_bytes"]
    return max(kv, key=kv.get) if kv else "CPU"


def _cache_tokens(
    raw_plan, ngl: int, raw: dict[str, Any], fraction: float, gpu_budget: int | None, cpu_budget: int,
    margin: int, min_ctx: int,
) -> int:
    """Tokens the KV cache holds when it takes `fraction` of what its device has left (the most
    tokens, at least min_ctx (a cell per sequence slot), whose cache there fits: sliding-window
    layers' caches stop growing past their size); 0 if not even min_ctx fits."""
    name = _kv_device(raw)
    dev = next(d for d in raw["devices"] if d["name"] == name)
    budget = cpu_budget if name == "CPU" else (gpu_budget or 0) - margin
    left = (
        budget
        - dev["weights"]
        - dev["buffers"]
        - dev["overhead"]
        - (python_overhead(raw) if name == "CPU" else 0)
    )
    room = fraction * left

    def kv(ctx: int) -> int:
        return sum(p["kv_bytes"] for p in raw_plan(ctx, ngl)["parts"] if p["kv_device"] == name)

    if room <= 0 or kv(min_ctx) > room:
        return 0
    lo = min_ctx
    while lo < (1 << 24) and kv(2 * lo) <= room:
        lo *= 2
    if lo >= (1 << 24):
        return lo
    hi = 2 * lo  # kv(lo) fits, kv(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if kv(mid) <= room else (lo, mid)
    return lo


def _max_ctx(raw_plan, ngl: int, budgets: dict[str, int | None], margin: int, min_ctx: int) -> int | None:
    """Largest n_ctx (at least min_ctx, one cell per sequence slot) whose plan fits every budget
    (binary search; buffers grow with n_ctx too); 0 if not even min_ctx fits."""

    def fits(ctx: int) -> bool:
        raw = raw_plan(ctx, ngl)
        for d in raw["devices"]:
            budget = budgets.get(d["name"])
            if budget is None:
                continue
            room = budget - (margin if d["name"] != "CPU" else python_overhead(raw))
            if d["weights"] + d["kv"] + d["buffers"] + d["overhead"] > room:
                return False
        return True

    if not fits(min_ctx):
        return 0
    hi = min_ctx
    while hi < (1 << 24) and fits(hi * 2):
        hi *= 2
    if hi >= (1 << 24):
        return None
    lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# ---- command line ----


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="what a model needs in memory, per device, before loading it",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("model", help="GGUF model file")
    p.add_argument("-c", "--n-ctx", type=int, default=4096, help="context size (default 4096)")
    p.add_argument("-b", "--n-batch", type=int, default=512, help="tokens per forward pass (default 512)")
    p.add_argument("-ngl", "--n-gpu-layers", default="0", help="N, -1 for all, or auto")
    p.add_argument("--gpu-memory", help="GPU memory to plan for, e.g. 24GiB (default: free memory reported)")
    p.add_argument("--cpu-memory", help="CPU memory to plan for (default: available RAM)")
    p.add_argument("-ctk", "--cache-type-k", default="f16", choices=KV_TYPES)
    p.add_argument("-ctv", "--cache-type-v", default="f16", choices=KV_TYPES)
    p.add_argument(
        "--cache-fraction", type=float, help="KV cache takes this fraction of what is left (LMDeploy)"
    )
    p.add_argument(
        "-t", "--threads", type=int, default=None, help="CPU threads (scratch buffers are per thread)"
    )
    p.add_argument("--parallel", type=int, default=1, help="sequence slots (as splitllm serve --parallel)")
    p.add_argument("--swa-full", action="store_true", help="full-size cache for sliding-window layers")
    from splitllm.cli import add_lora_options

    add_lora_options(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from splitllm.cli import lora_list, parse_gpu_layers

    ngl = parse_gpu_layers(args.n_gpu_layers)
    result = plan(args.model, n_ctx=args.n_ctx, n_batch=args.n_batch, n_gpu_layers=ngl,
                  gpu_memory=args.gpu_memory, cpu_memory=args.cpu_memory, type_k=args.cache_type_k,
                  type_v=args.cache_type_v,
                  cache_fraction=args.cache_fraction, n_threads=args.threads, n_seq_max=args.parallel,
                  swa_full=args.swa_full, loras=lora_list(args))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_table(result)
    return 0 if result.fits else 1


def _mib(n: int) -> str:
    return f"{n / MiB:,.1f} MiB" if n < GiB else f"{n / GiB:,.2f} GiB"


def print_table(p: MemoryPlan) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(
        title=f"{os.path.basename(p.model_path)}: n_ctx {p.n_ctx}, n_gpu_layers {p.n_gpu_layers}, "
        f"KV {p.type_k}/{p.type_v}"
    )
    for col in ("device", "weights", "KV cache", "buffers", "overhead", "total", "available"):
        t.add_column(col, justify="left" if col == "device" else "right")
    for d in p.devices:
        t.add_row(
            d.name,
            _mib(d.weights),
            _mib(d.kv_cache),
            _mib(d.buffers),
            _mib(d.overhead),
            _mib(d.total),
            "-" if d.budget is None else (_mib(d.budget) if d.fits else f"[red]{_mib(d.budget)}[/red]"),
        )
    t.add_row(
        "total",
        _mib(sum(d.weights for d in p.devices)),
        _mib(sum(d.kv_cache for d in p.devices)),
        _mib(sum(d.buffers for d in p.devices)),
        _mib(sum(d.overhead for d in p.devices)),
        _mib(p.total),
        "",
        style="bold",
    )
    console.print(t)
    if p.swa_cells:
        console.print(
            f"KV cache: {_mib(p.kv_bytes)} for {p.n_ctx} tokens ({p.kv_bytes_per_token:,} bytes per token in "
            f"the global layers; the sliding-window layers hold {p.swa_cells} cells each)"
        )
    else:
        console.print(
            f"KV cache: {p.kv_bytes_per_token:,} bytes per token ({_mib(p.kv_bytes_per_token * p.n_ctx)} "
            f"for {p.n_ctx} tokens)"
        )
    if p.max_ctx is not None:
        console.print(f"Largest context that fits: {p.max_ctx:,} tokens")
    if p.cache_tokens is not None:
        console.print(f"cache_fraction: the KV cache holds {p.cache_tokens:,} tokens")
    for n in p.notes:
        console.print(f"[yellow]note:[/yellow] {n}")
