"""Plan and write a GGUF file from a Hugging Face model directory, one tensor at a time.

The plan (every tensor's GGUF name, shape and final type) is known from the safetensors headers
alone, so the GGUF header, metadata and tensor infos are written first; then each tensor is read,
transformed, quantized and appended, and dropped before the next. Peak memory is about one tensor
in float32 plus its encoded copy. The file is written beside the target under a temporary name
and renamed at the end; any error or Ctrl-C removes it.
"""

from __future__ import annotations

import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import yaml
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.gguf_writer import WriterState

from splitllm_convert import hfdir, importance, mix, quant_rules
from splitllm_convert.arch import Architecture, PlannedSource
from splitllm_convert.errors import ConvertError
from splitllm_convert.hfdir import TensorEntry
from splitllm_convert.registry import architecture
from splitllm_convert.vocab import Vocab

Q = GGMLQuantizationType


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: GGUF name, shape (row-major), type, output bytes, and where it comes from."""

    name: str
    shape: tuple[int, ...]
    type: GGMLQuantizationType
    nbytes: int
    source: str  # "file.safetensors:hf.name" or "generated"
    in_bytes: int  # bytes read from the model files


@dataclass(frozen=True)
class ConvertPlan:
    """What ``convert`` writes (or, with ``dry_run``, would write)."""

    model_dir: Path
    arch: str
    file_type: str
    tensors: tuple[TensorPlan, ...]
    output_bytes: int  # the whole GGUF file
    input_bytes: int  # tensor bytes read from the safetensors files

    def format(self) -> str:
        """The plan as a table, one tensor a line, and the totals."""
        w = max((len(t.name) for t in self.tensors), default=10)
        lines = [f"{'tensor':<{w}}  {'shape (ggml order)':<22} {'type':<6} {'bytes':>12}  source"]
        for t in self.tensors:
            shape = "{" + ", ".join(str(d) for d in reversed(t.shape)) + "}"
            lines.append(f"{t.name:<{w}}  {shape:<22} {t.type.name:<6} {t.nbytes:>12}  {t.source}")
        lines.append(
            f"{len(self.tensors)} tensors, {self.arch}, --type {self.file_type}: "
            f"{self.input_bytes / 2**20:.1f} MiB read -> {self.output_bytes / 2**20:.1f} MiB GGUF "
            f"({self.output_bytes} bytes)"
        )
        return "\n".join(lines)


@dataclass
class _Job:
    """Everything needed to write: the plan, its sources, and the writer with all metadata added."""

    plan: ConvertPlan
    meta: bytes  # header, key-values and tensor infos, serialized once
    sources: list[PlannedSource]
    entries: dict[str, TensorEntry]
    arch: Architecture
    writer: GGUFWriter
    weights: dict[str, np.ndarray]  # tensor name -> importance-matrix rows (experts, columns)


def _prepare(model_dir: Path, ftype_name: str | None, pre: str | None, dense_modules: bool,
             matrix: importance.Importance | None) -> _Job:  # fmt: skip
    if not model_dir.is_dir():
        raise ConvertError(f"{model_dir}: not a directory")
    config_path = model_dir / "config.json"
    arch = architecture(hfdir.read_json(config_path), config_path)
    arch.dense_modules = dense_modules
    if ftype_name is not None:
        mix.file_type(ftype_name)  # an unknown --type before reading any weights
    entries = hfdir.index_tensors(model_dir)
    entries.update(arch.extra_tensors(model_dir))
    sources = arch.plan(
        {n: e.shape for n, e in entries.items()},
        lambda n: str(entries[n].file),
        hfdir.weight_files(model_dir),
    )
    if ftype_name is None:
        ftype_name = arch.default_type({n: (e.dtype, e.shape) for n, e in entries.items()})
    ft = mix.file_type(ftype_name)
    # every tensor's type first: llama.cpp's quantizer visits them in its own order, not ours
    packed = {s.gguf_name: s.packed for s in sources if s.packed is not None}
    types = mix.tensor_types(ft, arch.hparams(), {s.gguf_name: s.shape for s in sources}, packed,
                             has_imatrix=matrix is not None)  # fmt: skip
    types = arch.adjust_types(ft.name, {s.gguf_name: s.shape for s in sources}, types)
    weights = _imatrix_rows(matrix, ft, sources, types, packed)
    vocab = arch.read_vocab(model_dir, pre)

    writer = GGUFWriter(path=None, arch=arch.gguf_arch)
    tensors = []
    for s in sources:
        t = types[s.gguf_name]
        nbytes = mix.tensor_nbytes(t, s.shape)
        entry = entries.get(s.hf_name or (s.hf_stack[0] if s.hf_stack else ""))
        src = f"{entry.file.relative_to(model_dir).as_posix()}:{entry.name}" if entry else "generated"
        in_bytes = sum(entries[n].nbytes for n in s.hf_stack) if s.hf_stack else entry.nbytes if entry else 0
        in_bytes += sum(entries[n].nbytes for n in s.hf_extra)
        if s.hf_stack:
            src += f" (+{len(s.hf_stack) - 1} experts)"
        shape = s.shape  # (llama-quantize writes ggml's dimensions: none past the last that is not 1)
        if ft.is_quantized:
            shape = shape[len(shape) - quant_rules.n_dims(shape[::-1]) :]
        tensors.append(TensorPlan(s.gguf_name, shape, t, nbytes, src, in_bytes))
        writer.add_tensor_info(s.gguf_name, shape, np.dtype(np.float32), nbytes, raw_dtype=t)
    _add_metadata(writer, model_dir, arch, ft, vocab)
    for key, value in matrix.override_kvs() if matrix else ():  # as llama-quantize adds them
        writer.add_string(key, value) if isinstance(value, str) else writer.add_uint32(key, value)
    meta = _metadata_bytes(writer)
    size = GGUFWriter.ggml_pad(len(meta), writer.data_alignment)
    size += sum(GGUFWriter.ggml_pad(t.nbytes, writer.data_alignment) for t in tensors)
    plan = ConvertPlan(
        model_dir, arch.gguf_arch, ft.name, tuple(tensors), size, sum(t.in_bytes for t in tensors)
    )
    return _Job(plan, meta, sources, entries, arch, writer, weights)


def _imatrix_rows(
    matrix: importance.Importance | None,
    ft: mix.FileType,
    sources: list[PlannedSource],
    types: dict[str, GGMLQuantizationType],
    packed: dict[str, Any],
) -> dict[str, np.ndarray]:
    """Each quantized tensor's importance-matrix rows; llama-quantize's refusals of a type that
    needs a matrix without one."""
    rows = {}
    for s in sources:
        name, t = s.gguf_name, types[s.gguf_name]
        if name in packed or not quant_rules.is_quantized(t):
            continue
        needs = quant_rules.requires_imatrix(name, t, ft.ftype)
        if matrix is None:
            if needs:
                raise ConvertError(f"--type {ft.name} requires an importance matrix (--imatrix): tensor "
                                   f"{name!r} gets type {t.name}, which needs one")  # fmt: skip
            continue
        try:
            r = matrix.rows_for(name, tuple(reversed(s.shape)))
        except importance.ImatrixError as e:
            raise ConvertError(str(e)) from None
        if r is None and needs:
            raise ConvertError(f"{matrix.file}: no importance matrix entry for tensor {name!r}, which gets "
                               f"type {t.name} (a very low-bit quantization needs one)")  # fmt: skip
        if r is not None:
            rows[name] = r
    return rows


def _add_metadata(w: GGUFWriter, model_dir: Path, arch: Architecture, ft: mix.FileType, vocab: Vocab) -> None:
    """general.*, {arch}.*, tokenizer.* in the order llama.cpp's converter adds them."""
    w.add_type(gguf.GGUFType.MODEL)
    total, shared, expert, n_expert = w.get_total_parameter_count()
    try:
        meta = gguf.Metadata.load(None, model_dir, None, total)
    except yaml.YAMLError as e:
        card = model_dir / "README.md"
        raise ConvertError(f"{card}: the model card's YAML header is invalid ({e})") from None
    if meta.name is None:
        meta.name = model_dir.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    meta.set_gguf_meta_model(w)
    arch.add_hparams(w)
    w.add_file_type(int(arch.written_file_type(ft.ftype, ft.is_quantized)))
    arch.add_hparams_after_file_type(w)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.add_to(w)


def _metadata_bytes(w: GGUFWriter) -> bytes:
    """Header, key-values and tensor infos, serialized by ``w`` into memory.

    The writer is left expecting tensor data; ``_write`` points it at the real file.
    """
    buf = io.BytesIO()
    w.fout, w.state = [buf], WriterState.EMPTY  # type: ignore[list-item]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    return buf.getvalue()


# -- producing tensor data ------------------------------------------------------------------------


def _to_bf16(x: np.ndarray[Any, Any], chunk: int = 1 << 22) -> np.ndarray[Any, Any]:
    """Round float32 (finite) to bfloat16 bits, nearest-even, as ggml does; in chunks to bound memory."""
    flat = x.reshape(-1)
    out = np.empty(flat.size, dtype=np.uint16)
    for i in range(0, flat.size, chunk):
        u = flat[i : i + chunk].view(np.uint32)
        out[i : i + chunk] = ((u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    return out.reshape(x.shape)


def encode(x: np.ndarray[Any, Any], t: GGMLQuantizationType, n_threads: int | None,
           weights: np.ndarray[Any, Any] | None = None) -> np.ndarray[Any, Any]:  # fmt: skip
    """float32 ``x`` in GGUF type ``t``: float arrays as they are stored, block types as bytes;
    ``weights``: importance-matrix rows, one per matrix of ``x`` (its experts)."""
    if t == Q.F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if t == Q.F16:
        return x.astype(np.float16)
    if t == Q.BF16:
        return _to_bf16(np.ascontiguousarray(x, dtype=np.float32))
    try:
        from splitllm.quants import quantize
    except ImportError as e:
        raise ConvertError(
            f"quantizing to {t.name} needs splitllm's C++ core (splitllm.quants): {e}"
        ) from None
    x = np.ascontiguousarray(x, dtype=np.float32)
    if weights is None:
        return quantize(x, t, n_threads=n_threads)
    mats = x.reshape(len(weights), -1, x.shape[-1])
    out = [quantize(m, t, n_threads=n_threads, imatrix=w) for m, w in zip(mats, weights, strict=True)]
    return np.stack(out).reshape(*x.shape[:-1], -1)


def _produce(
    job: _Job, s: PlannedSource, t: GGMLQuantizationType, n_threads: int | None
) -> np.ndarray[Any, Any]:
    if s.packed is not None:  # already encoded: the bits rearranged, nothing requantized
        assert s.hf_name is not None and s.transform is not None
        raw = [hfdir.read_raw(job.entries[n]) for n in (s.hf_name, *s.hf_extra)]
        if s.packed == Q.MXFP4 and (raw[-1] == 0xFF).any():  # E8M0 exponent 255: not a number
            entry = job.entries[s.hf_extra[-1]]
            raise ConvertError(f"{entry.file}: tensor {entry.name!r} has an MXFP4 scale of 255 (NaN)")
        return job.arch.packed_transforms()[s.transform](*raw)
    if s.generate is not None:
        x = s.generate()
    elif s.hf_extra:  # from several stored tensors, read by the transform
        assert s.hf_name is not None and s.transform is not None
        entry = job.entries[s.hf_name]
        x = job.arch.entry_transforms()[s.transform](*(job.entries[n] for n in (s.hf_name, *s.hf_extra)))
        hfdir.check_finite(x, entry)
    elif s.hf_stack:  # experts, stacked
        x = np.empty(s.shape, dtype=np.float32)
        for i, name in enumerate(s.hf_stack):
            entry = job.entries[name]
            x[i] = hfdir.read_f32(entry)
            hfdir.check_finite(x[i], entry)
    else:
        assert s.hf_name is not None
        entry = job.entries[s.hf_name]
        x = hfdir.read_f32(entry)
        hfdir.check_finite(x, entry)
        if s.transform:
            x = job.arch.transforms()[s.transform](x)
    w = job.weights.get(s.gguf_name)
    return encode(x, t, n_threads) if w is None else encode(x, t, n_threads, w)


# -- the public entry point -----------------------------------------------------------------------


def _progress(total: int, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="convert-hf", disable=quiet)


def _write(job: _Job, out: Path, *, n_threads: int | None, quiet: bool) -> None:
    # a fresh name beside the target, created exclusively with the usual permissions (umask)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    w = job.writer
    try:
        w.fout = [open(tmp, "xb")]  # closed by w.close()
    except OSError as e:  # nothing was created (or the name is someone else's): nothing to remove
        raise ConvertError(f"{out.parent}: cannot create the output file ({e})") from None
    except BaseException:  # Ctrl-C as open() returns: the file exists, the handler below does not yet
        tmp.unlink(missing_ok=True)
        raise
    try:
        w.fout[0].write(job.meta)
        w.state = WriterState.TI_DATA  # write_tensor_data pads to the alignment before each tensor
        with _progress(job.plan.input_bytes, quiet) as bar:
            for i, (s, tp) in enumerate(zip(job.sources, job.plan.tensors, strict=True)):
                bar.set_postfix_str(f"{i + 1}/{len(job.sources)} {tp.name}", refresh=False)
                data = _produce(job, s, tp.type, n_threads)
                if data.nbytes != tp.nbytes:
                    raise ConvertError(f"{tp.name}: encoded to {data.nbytes} bytes, planned {tp.nbytes}")
                w.write_tensor_data(data)
                del data
                bar.update(tp.in_bytes)
        assert w.fout is not None
        w.fout[0].flush()
        os.fsync(w.fout[0].fileno())
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise


def convert(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    type: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    quiet: bool = False,
    pre: str | None = None,
    n_threads: int | None = None,
    sentence_transformers_dense_modules: bool = False,
    imatrix: str | os.PathLike[str] | None = None,
) -> ConvertPlan:
    """Convert the Hugging Face model in ``model_dir`` to GGUF file ``out``; returns the plan.

    ``type``: one of ``mix.FILE_TYPES`` (f32, f16, bf16, q8_0, q4_0, ... q3_k_s, q3_k_m, q3_k_l,
    ... q4_k_m, q6_k, iq4_nl, iq4_xs, mxfp4_moe); None: f16, or what llama.cpp's converter writes
    for the model by default where that differs (a gpt-oss checkpoint with MXFP4 experts: the
    checkpoint's bf16, experts in MXFP4 as stored, general.file_type MOSTLY_MXFP4_MOE).
    ``force``: overwrite an existing ``out``. ``dry_run``: plan only, write nothing.
    ``pre``: the tokenizer.ggml.pre name, overriding detection. ``n_threads``: quantizer
    threads (default all). ``sentence_transformers_dense_modules``: include the Dense modules
    of a sentence-transformers model (EmbeddingGemma's projections of the pooled embedding; off by
    default, as in llama.cpp's converter). ``imatrix``: an importance matrix file (llama-imatrix's
    GGUF or legacy .dat) for the quantizers, used and recorded as llama-quantize does (the IQ1,
    IQ2, IQ3_XXS, IQ3_XS and Q2_K_S types need one). Raises ConvertError for bad input; ``out``
    is never left half-written.
    """
    model_path, out_path = Path(model_dir), Path(out)
    if not dry_run:
        if out_path.is_dir():
            raise ConvertError(f"{out_path}: is a directory; give the output file name")
        if out_path.exists() and not force:
            raise ConvertError(f"{out_path}: already exists (use --force to overwrite)")
        if not out_path.parent.is_dir():
            raise ConvertError(f"{out_path.parent}: output directory does not exist")
    matrix = None
    if imatrix is not None:
        try:
            matrix = importance.load(imatrix)
            if matrix is not None:
                matrix.check_finite()
        except importance.ImatrixError as e:
            raise ConvertError(str(e)) from None
    job = _prepare(model_path, type, pre, sentence_transformers_dense_modules, matrix)
    if not dry_run:
        _write(job, out_path, n_threads=n_threads, quiet=quiet)
    return job.plan
