"""Importance matrices: llama-imatrix's files, read, written and combined.

An importance matrix holds, for every weight matrix the model multiplies activations by, the sum
over the tokens of a calibration text of the squared activation entering each input column, and
how many tokens (rows) were summed. llama-quantize divides one by the other and hands the result
to the quantizers as per-column importance weights.

Two file formats, both as llama.cpp's ``llama-imatrix`` writes them:

* GGUF (its default): ``general.type = "imatrix"``, ``imatrix.datasets`` (array of str),
  ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32); per weight NAME two F32 tensors,
  ``NAME.in_sum2`` (ggml shape ``[n_per_row, n_mat]``: the raw sums) and ``NAME.counts``
  (``[1, n_mat]``: tokens per matrix; n_mat > 1 for stacked MoE experts), names sorted.
* the legacy ``.dat``: int32 entry count; per entry int32 name length, the name, int32 ``ncall``,
  int32 ``nval``, ``nval`` floats already divided (``sum / count * ncall``, ``ncall`` = the
  largest count in chunks, rounded up); then, optionally, int32 last chunk and the dataset name
  (int32 length, bytes). A ``.dat`` does not record n_mat: its entries read back as one row.

:class:`Imatrix` keeps what the file holds (``legacy`` tells which form); :meth:`Imatrix.weights`
is exactly what llama-quantize's ``load_imatrix`` computes from it, and :func:`combine` adds files
as ``llama-imatrix --in-file a --in-file b`` does (a ``.dat`` is first scaled back to raw sums by
the chunk size). :func:`compute` collects one with the engine (``Model.imatrix_start`` /
``imatrix_stop``) over a text, as llama-imatrix does.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    from splitllm.model import Model

__all__ = [
    "ComputeResult",
    "Imatrix",
    "ImatrixEntry",
    "ImatrixError",
    "TensorStats",
    "chunk_tokens",
    "combine",
    "compute",
    "from_collected",
    "statistics",
]

_IN_SUM2 = ".in_sum2"
_COUNTS = ".counts"
_KEY_DATASETS = "imatrix.datasets"
_KEY_CHUNK_COUNT = "imatrix.chunk_count"
_KEY_CHUNK_SIZE = "imatrix.chunk_size"
_GGUF_ALIGN = 32  # ggml's default alignment (the writer sets no general.alignment)


class ImatrixError(ValueError):
    """A malformed importance-matrix file, or entries that do not fit together."""


@dataclass
class ImatrixEntry:
    """One weight's data: ``sums`` (n_mat, n_per_row) float32 and ``counts`` (n_mat,) int64.

    Raw form: sums of squared activations and tokens per matrix. Legacy form (a ``.dat``):
    ``sums`` (1, nval) holds ``sum / count * ncall`` and ``counts`` is ``[ncall]``.
    """

    sums: np.ndarray
    counts: np.ndarray

    @property
    def n_mat(self) -> int:
        return int(self.sums.shape[0])

    @property
    def n_per_row(self) -> int:
        return int(self.sums.shape[1])


class Imatrix:
    """Entries by weight name, plus the datasets, chunk count and chunk size they came from."""

    def __init__(
        self,
        entries: dict[str, ImatrixEntry] | None = None,
        *,
        datasets: Iterable[str] = (),
        chunk_count: int = 0,
        chunk_size: int = 0,
        legacy: bool = False,
        has_metadata: bool = True,
    ) -> None:
        self.entries: dict[str, ImatrixEntry] = dict(entries or {})
        self.datasets: list[str] = list(datasets)
        self.chunk_count = int(chunk_count)
        self.chunk_size = int(chunk_size)
        self.legacy = legacy  # entries in the .dat form (see ImatrixEntry)
        self.has_metadata = has_metadata  # a GGUF with all three imatrix.* keys (llama-quantize wants them)

    def __repr__(self) -> str:
        kind = "legacy" if self.legacy else "raw"
        return (
            f"Imatrix({len(self.entries)} entries, {kind}, chunk_count={self.chunk_count}, "
            f"chunk_size={self.chunk_size}, datasets={self.datasets!r})"
        )

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Imatrix:
        """Reads a GGUF or legacy ``.dat`` imatrix (told apart by the GGUF magic)."""
        p = os.fspath(path)
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return _load_gguf(p)
        return _load_dat(p)

    def weights(self, name: str, n_per_row: int | None = None) -> np.ndarray:
        """The importance weights llama-quantize gives the quantizers for ``name``, float32.

        Raw form: ``sums / count`` per matrix, all ones for a matrix with no tokens. Legacy form:
        ``values / ncall`` (the values themselves when ``ncall`` is 0). Shape (n_mat, n_per_row);
        pass ``n_per_row`` to reshape a legacy entry (whose n_mat the file does not record).
        """
        e = self.entries[name]
        if self.legacy:
            ncall = int(e.counts[0]) if e.counts.size else 0
            w = e.sums / np.float32(ncall) if ncall > 0 else e.sums.copy()
        else:
            w = np.ones_like(e.sums)
            for j, c in enumerate(e.counts):
                if c > 0:
                    w[j] = e.sums[j] / np.float32(c)  # float division, as quantize.cpp
        w = w.astype(np.float32, copy=False)
        return w.reshape(-1, n_per_row) if n_per_row else w

    def to_raw(self, chunk_size: int = 512) -> Imatrix:
        """This matrix in raw form; a legacy one scaled back by ``chunk_size`` as llama-imatrix does."""
        out = Imatrix(chunk_size=chunk_size if self.legacy else self.chunk_size)
        out.add(self, chunk_size=chunk_size)
        out.chunk_count = out._last_chunk() if out.chunk_size > 0 else self.chunk_count
        return out

    def add(self, other: Imatrix, *, chunk_size: int | None = None) -> None:
        """Adds ``other``'s sums and counts to this raw matrix (llama-imatrix's ``--in-file``).

        A legacy ``other`` counts as ``values * chunk_size`` over ``ncall * chunk_size`` tokens
        (``chunk_size`` defaults to this matrix's). Datasets are appended; ``chunk_count`` is left
        to the caller (:func:`combine` sets it).
        """
        if self.legacy:
            raise ImatrixError("cannot add to a legacy (.dat) imatrix: convert it with to_raw() first")
        cs = self.chunk_size if chunk_size is None else int(chunk_size)
        for name, src in other.entries.items():
            if other.legacy:
                if cs <= 0:
                    raise ImatrixError(f"{name}: adding a .dat imatrix needs a chunk size > 0")
                sums = src.sums * np.float32(cs)
                counts = np.asarray([int(src.counts[0]) * cs], dtype=np.int64)
            else:
                sums, counts = src.sums, src.counts
            self._accumulate(name, sums, counts)
        self.datasets.extend(other.datasets)

    def _accumulate(self, name: str, sums: np.ndarray, counts: np.ndarray) -> None:
        e = self.entries.get(name)
        if e is None:
            self.entries[name] = ImatrixEntry(
                sums.astype(np.float32, copy=True), counts.astype(np.int64, copy=True)
            )
            return
        if e.sums.size != sums.size:
            raise ImatrixError(f"{name}: {sums.size} values do not match the {e.sums.size} already held")
        n_mat = max(e.counts.size, counts.size)
        if e.counts.size != counts.size and min(e.counts.size, counts.size) != 1:
            raise ImatrixError(f"{name}: {counts.size} counts do not match the {e.counts.size} already held")
        # a single count (a .dat's, or a dense tensor's) spreads over stacked matrices
        total = np.broadcast_to(e.counts, (n_mat,)) + np.broadcast_to(counts, (n_mat,))
        self.entries[name] = ImatrixEntry(
            (e.sums.reshape(-1) + sums.reshape(-1)).reshape(n_mat, -1), total.astype(np.int64)
        )

    def _last_chunk(self) -> int:
        top = max((int(c.max()) for e in self.entries.values() for c in [e.counts] if c.size), default=0)
        return top // self.chunk_size if self.chunk_size > 0 else 0

    def save(self, path: str | os.PathLike[str], format: str = "gguf") -> None:  # noqa: A002 (llama-imatrix's word)
        """Writes ``format`` "gguf" or "dat" as llama-imatrix would (temporary file, then rename)."""
        if format not in ("gguf", "dat"):
            raise ValueError(f"format must be 'gguf' or 'dat', not {format!r}")
        if format == "gguf":
            src = self.to_raw() if self.legacy else self
            data = _gguf_bytes(src)
        else:
            data = _dat_bytes(self)
        _write_atomic(os.fspath(path), data)


def combine(imatrices: Iterable[Imatrix], *, chunk_size: int = 512) -> Imatrix:
    """The raw sum of several matrices (``llama-imatrix --in-file a --in-file b -c chunk_size``)."""
    out = Imatrix(chunk_size=chunk_size)
    for m in imatrices:
        out.add(m, chunk_size=chunk_size)
    out.chunk_count = out._last_chunk()
    return out


# ---------------------------------------------------------------------------------------------
# Computing (llama-imatrix's compute_imatrix)


@dataclass
class ComputeResult:
    """What :func:`compute` measured: the matrix, and the perplexity unless it was turned off."""

    imatrix: Imatrix
    n_chunks: int
    n_ctx: int
    seconds: float
    chunk_ppl: list[float] = field(default_factory=list)  # running estimate after each chunk
    ppl: float | None = None
    ppl_error: float | None = None


def chunk_tokens(
    model: Model, tokens: Sequence[int], n_ctx: int, n_chunks: int | None = None
) -> list[list[int]]:
    """llama-imatrix's chunks of ``tokens`` (tokenized with BOS where the model adds it): at least
    two chunks' worth required, ``n_ctx`` tokens each, the first of each set to BOS."""
    if n_ctx < 4:
        raise ValueError(f"n_ctx must be at least 4 (got {n_ctx})")
    if len(tokens) < 2 * n_ctx:
        raise ValueError(
            f"the text has {len(tokens)} tokens: at least {2 * n_ctx} are needed for a context of {n_ctx} "
            "tokens (as llama-imatrix)"
        )
    available = len(tokens) // n_ctx
    n = available if n_chunks is None or n_chunks < 0 else min(n_chunks, available)
    bos = model.tokenizer.bos_id if model.tokenizer.add_bos else None
    chunks = []
    for i in range(n):
        chunk = [int(t) for t in tokens[i * n_ctx : (i + 1) * n_ctx]]
        if bos is not None:
            chunk[0] = bos
        chunks.append(chunk)
    return chunks


def compute(
    model: Model,
    text: str | Sequence[int],
    *,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    process_output: bool = False,
    ppl: bool = True,
    parse_special: bool = False,
    dataset: str | None = None,
    progress: Callable[[int, int, float | None], None] | None = None,
) -> ComputeResult:
    """The importance matrix of ``model`` over ``text`` (or its tokens), as llama-imatrix computes it.

    The text is tokenized (BOS first where the model adds one) and cut into chunks of ``n_ctx``
    tokens (``n_chunks`` at most), each evaluated from an empty cache with its first token set to
    BOS; every matmul input of the blocks (and of ``output.weight`` with ``process_output``) is
    collected. With ``ppl``, each chunk's second half is scored as llama-perplexity does.
    ``dataset`` names the text in the file (``imatrix.datasets``). Sums accumulate in float64
    (llama-imatrix: float32) and are stored as float32. As llama-imatrix, a dense matmul of fewer
    than 16 rows is not collected: keep the model's ``n_batch`` at 16 or more.
    """
    from splitllm.perplexity import _ppl_stats, log_softmax

    if isinstance(text, str):
        tokens = model.tokenize(text.encode("utf-8"), add_bos=True, special=parse_special)
    else:
        tokens = [int(t) for t in text]
    if n_ctx > model.n_ctx():
        raise ValueError(f"n_ctx {n_ctx} is larger than the model's context {model.n_ctx()}")
    chunks = chunk_tokens(model, tokens, n_ctx, n_chunks)
    t0 = time.perf_counter()
    nll_parts: list[np.ndarray] = []
    running: list[float] = []
    model.imatrix_start(process_output=process_output)
    try:
        for i, chunk in enumerate(chunks):
            if ppl or process_output:
                logits = model.logits(chunk)  # every row: output.weight sees them all
            else:
                model.reset()
                model.eval_prompt(chunk)
            if ppl:
                first = n_ctx // 2
                lp = log_softmax(logits[first : n_ctx - 1])
                tgt = np.asarray(chunk[first + 1 :], dtype=np.int64)
                nll_parts.append(-lp[np.arange(len(tgt)), tgt])
                running.append(math.exp(float(np.concatenate(nll_parts).mean())))
            if progress:
                progress(i + 1, len(chunks), running[-1] if ppl else None)
    finally:
        m = model.imatrix_stop()
    m.chunk_size = n_ctx
    m.chunk_count = m._last_chunk()
    m.datasets = [dataset] if dataset else []
    for name, e in m.entries.items():
        if not np.all(np.isfinite(e.sums)):
            raise ImatrixError(f"non-finite activations entering {name} (llama-imatrix stops there too)")
    res = ComputeResult(m, len(chunks), n_ctx, time.perf_counter() - t0, running)
    if ppl and nll_parts:
        res.ppl, res.ppl_error = _ppl_stats(np.concatenate(nll_parts))
    return res


def from_collected(collected: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> Imatrix:
    """An Imatrix of the engine's collected (name, float64 sums, counts), names sorted."""
    entries = {
        name: ImatrixEntry(np.asarray(sums, dtype=np.float32), np.asarray(counts, dtype=np.int64))
        for name, sums, counts in sorted(collected, key=lambda t: t[0])
    }
    return Imatrix(entries)


# ---------------------------------------------------------------------------------------------
# Reading


def _load_gguf(path: str) -> Imatrix:
    from splitllm.gguf_file import GGUFFile

    try:
        gf = GGUFFile(path)
    except ValueError as e:  # GGUFError names the file and what is wrong
        raise ImatrixError(f"{path}: not a readable GGUF imatrix: {e}") from None
    with gf:
        meta = gf.metadata
        datasets = meta.get(_KEY_DATASETS, [])
        if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
            raise ImatrixError(f"{path}: {_KEY_DATASETS} is not an array of strings")
        chunk_count = _meta_uint(path, meta, _KEY_CHUNK_COUNT)
        chunk_size = _meta_uint(path, meta, _KEY_CHUNK_SIZE)
        has_metadata = all(k in meta for k in (_KEY_DATASETS, _KEY_CHUNK_COUNT, _KEY_CHUNK_SIZE))
        pairs: dict[str, dict[str, str]] = {}
        for tname in gf.tensors:
            for suffix in (_IN_SUM2, _COUNTS):
                if tname.endswith(suffix) and len(tname) > len(suffix):
                    pairs.setdefault(tname[: -len(suffix)], {})[suffix] = tname
        if not pairs:
            raise ImatrixError(f"{path}: no NAME.in_sum2 / NAME.counts tensors: not an imatrix file")
        entries = {name: _gguf_entry(path, gf, name, pair) for name, pair in sorted(pairs.items())}
    return Imatrix(
        entries, datasets=datasets, chunk_count=chunk_count, chunk_size=chunk_size, has_metadata=has_metadata
    )


def _meta_uint(path: str, meta: dict[str, Any], key: str) -> int:
    v = meta.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32:
        raise ImatrixError(f"{path}: {key} = {v!r} is not an unsigned 32-bit integer")
    return v


def _gguf_entry(path: str, gf: Any, name: str, pair: dict[str, str]) -> ImatrixEntry:
    for suffix in (_IN_SUM2, _COUNTS):
        if suffix not in pair:
            raise ImatrixError(f"{path}: {name} has no {name}{suffix} tensor (sums and counts come in pairs)")
        info = gf.tensors[pair[suffix]]
        if info.type != "F32":
            raise ImatrixError(f"{path}: tensor {pair[suffix]} is {info.type}, not F32")
    sums = np.asarray(gf.tensor(pair[_IN_SUM2]), dtype=np.float32).reshape(-1)
    raw_counts = np.asarray(gf.tensor(pair[_COUNTS]), dtype=np.float32).reshape(-1)
    if raw_counts.size == 0 or sums.size == 0 or sums.size % raw_counts.size:
        raise ImatrixError(
            f"{path}: {name}: {sums.size} sums do not split into {raw_counts.size} matrices ({name}.counts)"
        )
    if not np.all(np.isfinite(raw_counts)) or np.any(raw_counts < 0):
        raise ImatrixError(f"{path}: {name}.counts holds negative or non-finite values")
    counts = np.floor(raw_counts.astype(np.float64) + 0.5).astype(np.int64)  # lround, counts >= 0
    return ImatrixEntry(sums.reshape(raw_counts.size, -1).copy(), counts)


class _Reader:
    """Little-endian reads from a .dat file that name the field on a short read."""

    def __init__(self, path: str, f: BinaryIO) -> None:
        self.path, self.f = path, f

    def take(self, n: int, field: str) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise ImatrixError(f"{self.path}: truncated at {field} (wanted {n} bytes, got {len(b)})")
        return b

    def i32(self, field: str) -> int:
        return struct.unpack("<i", self.take(4, field))[0]


def _load_dat(path: str) -> Imatrix:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        r = _Reader(path, f)
        n_entries = r.i32("the entry count")
        if n_entries < 1:
            raise ImatrixError(f"{path}: entry count {n_entries}: no data (not an imatrix file?)")
        entries: dict[str, ImatrixEntry] = {}
        for i in range(n_entries):
            where = f"entry {i + 1} of {n_entries}"
            n = r.i32(f"the name length of {where}")
            if not 0 < n <= size - f.tell():
                raise ImatrixError(f"{path}: name length {n} of {where} is out of range")
            name = r.take(n, f"the name of {where}").decode("utf-8", "surrogateescape")
            ncall = r.i32(f"ncall of {name}")
            nval = r.i32(f"nval of {name}")
            if nval < 1 or 4 * nval > size - f.tell():
                raise ImatrixError(f"{path}: nval {nval} of {name} is out of range")
            values = np.frombuffer(r.take(4 * nval, f"the values of {name}"), dtype="<f4").astype(np.float32)
            entries[name] = ImatrixEntry(values.reshape(1, -1), np.asarray([ncall], dtype=np.int64))
        chunk_count, datasets = _dat_trailer(r)
    return Imatrix(entries, datasets=datasets, chunk_count=chunk_count, chunk_size=0, legacy=True)


def _dat_trailer(r: _Reader) -> tuple[int, list[str]]:
    """The optional last chunk and dataset name; a short trailer is tolerated as llama.cpp does."""
    rest = r.f.read()
    if len(rest) < 4:
        return 0, []
    chunk_count = struct.unpack_from("<i", rest)[0]
    if len(rest) < 8:
        return chunk_count, []
    n = struct.unpack_from("<i", rest, 4)[0]
    if n <= 0 or len(rest) < 8 + n:
        return chunk_count, []
    return chunk_count, [rest[8 : 8 + n].decode("utf-8", "surrogateescape")]


# ---------------------------------------------------------------------------------------------
# Writing


def _gguf_str(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(b)) + b


def _pad(n: int) -> int:
    return (n + _GGUF_ALIGN - 1) // _GGUF_ALIGN * _GGUF_ALIGN


def _gguf_bytes(m: Imatrix) -> bytes:
    """ggml's gguf_write_to_file of llama-imatrix's context: KVs, sorted tensors, 32-byte padding."""
    kv = [
        _gguf_str("general.type") + struct.pack("<I", 8) + _gguf_str("imatrix"),
        _gguf_str(_KEY_DATASETS)
        + struct.pack("<IIQ", 9, 8, len(m.datasets))
        + b"".join(_gguf_str(d) for d in m.datasets),
        _gguf_str(_KEY_CHUNK_COUNT) + struct.pack("<II", 4, m.chunk_count),
        _gguf_str(_KEY_CHUNK_SIZE) + struct.pack("<II", 4, m.chunk_size),
    ]
    tensors: list[tuple[str, tuple[int, int], bytes]] = []
    for name in sorted(m.entries):
        e = m.entries[name]
        if e.sums.size == 0 or e.counts.size == 0:
            continue
        n_mat = e.counts.size
        tensors.append((name + _IN_SUM2, (e.sums.size // n_mat, n_mat), e.sums.astype("<f4").tobytes()))
        tensors.append((name + _COUNTS, (1, n_mat), e.counts.astype("<f4").tobytes()))
    infos, data, offset = [], [], 0
    for tname, ne, raw in tensors:
        dims = list(ne)
        while len(dims) > 1 and dims[-1] == 1:  # ggml_n_dims: trailing ones dropped
            dims.pop()
        infos.append(_gguf_str(tname) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, 0, offset))
        data.append(raw + bytes(_pad(len(raw)) - len(raw)))
        offset += _pad(len(raw))
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv) + b"".join(infos)
    return head + bytes(_pad(len(head)) - len(head)) + b"".join(data)


def _dat_bytes(m: Imatrix) -> bytes:
    """llama-imatrix's save_imatrix_legacy: per entry values / count * ncall, names sorted."""
    out = []
    if m.legacy:
        stored = [
            (n, e.sums.reshape(-1).astype(np.float32), int(e.counts[0])) for n, e in sorted(m.entries.items())
        ]
    else:
        if m.chunk_size <= 0:
            raise ImatrixError("writing a .dat needs the chunk size (ncall counts chunks)")
        stored = []
        for name, e in sorted(m.entries.items()):
            if e.counts.size == 0 or not np.any(e.counts):
                continue  # no data: llama-imatrix skips the entry
            ncall = (int(e.counts.max()) + m.chunk_size - 1) // m.chunk_size
            vals = np.empty_like(e.sums)
            for j, c in enumerate(e.counts):
                if c == 0:  # partial data: 1 / 1
                    vals[j] = np.float32(ncall)
                else:
                    vals[j] = (e.sums[j] / np.float32(c)) * np.float32(ncall)
            stored.append((name, vals.reshape(-1), ncall))
    out.append(struct.pack("<i", len(stored)))
    for name, vals, ncall in stored:
        b = name.encode("utf-8", "surrogateescape")
        out.append(struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, vals.size))
        out.append(vals.astype("<f4").tobytes())
    dataset = (m.datasets[-1] if m.datasets else "").encode("utf-8", "surrogateescape")
    out.append(struct.pack("<ii", m.chunk_count, len(dataset)) + dataset)
    return b"".join(out)


def _write_atomic(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".imatrix-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------------------------
# Statistics (llama-imatrix --show-statistics)


@dataclass(frozen=True)
class TensorStats:
    """One tensor's row of llama-imatrix's statistics table (over the per-token means)."""

    name: str
    layer: str  # "-" outside the blocks
    tensor: str  # the short name (attn_q, ffn_down, ...)
    total: float  # sum of the mean squared activations
    min: float
    max: float
    mean: float
    stddev: float
    active: float  # fraction above 1e-5
    elements: int
    entropy: float  # bits, of the means normalised to sum 1
    zd: float  # fraction more than one standard deviation above the mean
    cossim: float  # cosine similarity with the same tensor of the previous block (0 if none)


def statistics(m: Imatrix) -> list[TensorStats]:
    """llama-imatrix's per-tensor statistics of a raw (or legacy, via to_raw) matrix, sorted as it does."""
    raw = m.to_raw() if m.legacy else m
    rows: list[TensorStats] = []
    for name, e in raw.entries.items():
        keep = e.counts > 0
        if not np.any(keep):
            continue
        a = (e.sums[keep] / e.counts[keep, None].astype(np.float32)).reshape(-1).astype(np.float32)
        total = float(np.sum(a, dtype=np.float32))
        mean = total / a.size
        var = float(np.dot(a, a)) / a.size - mean * mean
        dev = float(np.sqrt(max(0.0, var)))
        entropy = 0.0
        if total > 0:
            p = a[a > 0] / np.float32(total)
            entropy = float(-np.sum(p * np.log2(p)))
        zd = float(np.count_nonzero((a - mean) / dev > 1)) / a.size if dev > 0 else 0.0
        layer, short = _split_name(name)
        rows.append(
            TensorStats(
                name,
                layer,
                short,
                total,
                float(a.min()),
                float(a.max()),
                mean,
                dev,
                1.0 - np.count_nonzero(np.abs(a) <= 1e-5) / a.size,
                int(a.size),
                entropy,
                zd,
                0.0,
            )
        )
    by_name = {r.name: r for r in rows}
    out = []
    for r in rows:
        out.append(_with_cossim(r, by_name, raw))
    out.sort(key=lambda r: (r.tensor, -r.total))
    return out


def _split_name(name: str) -> tuple[str, str]:
    parts = name.split(".")
    layer = next((parts[i + 1] for i in range(len(parts) - 1) if parts[i] == "blk"), "-")
    short = next((parts[i - 1] for i in range(1, len(parts)) if parts[i] == "weight"), name)
    return layer, short


def _with_cossim(r: TensorStats, by_name: dict[str, TensorStats], m: Imatrix) -> TensorStats:
    if not r.layer.isdigit():
        return r
    prev = r.name.replace(f"blk.{r.layer}.", f"blk.{int(r.layer) - 1}.", 1)
    if prev not in by_name:
        return r
    a = m.entries[r.name].sums.reshape(-1).astype(np.float64)  # the raw sums, as llama-imatrix
    b = m.entries[prev].sums.reshape(-1).astype(np.float64)
    if a.size != b.size:
        return r
    cs = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return TensorStats(**{**r.__dict__, "cossim": cs})
