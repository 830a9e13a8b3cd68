"""Fill-in-the-middle against llama.cpp (llama-cpp-python 0.3.36) and the documented formats.

References:

- the FIM token ids (and the end-of-generation set they join) of llama.cpp's own vocabulary files
  (ggml-vocab-starcoder, -deepseek-coder, -qwen2, -llama-spm, fetched from the llama-cpp-python
  source release) and of two variants written here: Qwen2.5-Coder's (ggml-vocab-qwen2 is
  Qwen1.5/2's 151,936 tokens; Qwen2.5 put its added tokens at 151646-151664, the FIM ones, the
  repository name and the file separator with ``"special": false`` in tokenizer_config.json, so
  the converter writes them user-defined) and CodeLlama's (LLaMA's vocabulary with CodeLlama's
  "▁<PRE>" "▁<SUF>" "▁<MID>" "▁<EOT>" control tokens appended), read by
  ``llama_vocab_fim_pre`` etc.;
- the layout of llama-server's ``/infill`` prompt written out here from its documentation:
  Qwen2.5-Coder's repository-level format (arXiv 2409.12186: ``<|repo_name|>`` name, then
  ``<|file_sep|>`` file name and text per file, then the current file's FIM prompt) as llama-server
  fills it in (project "myproject", files without a name "tmp", the current file "filename", a
  "--- snippet ---" line per chunk without a file separator token; prefix 3/4 of a batch, suffix
  the rest less the prompt and 2, extra context what the context has left after a batch and twice
  n_predict), every piece tokenized by llama.cpp (``Llama.tokenize(..., add_bos=False,
  special=False)``);
- for ``create_completion(suffix=...)``: llama-cpp-python's layout with the FIM ids it means to use,
  and Meta's CodeLlama tokenizer for the suffix (``tokenize("☺" + suffix)[2:]``: no space
  prefix), run by llama.cpp's tokenizer;
- end to end: llama.cpp greedy-decoding the same prompt tokens on a tiny random qwen2 model with
  Qwen2.5-Coder's vocabulary (through llama-cpp-python's ``generate``), stopping at its
  end-of-generation tokens; splitllm's ``create_completion`` and the server's ``/infill`` must
  give the same tokens.

deepseek-coder's pre-tokenizer is not one splitllm runs: its vocabulary is read with the
pre-tokenizer name replaced (the FIM ids depend on the token texts only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import pytest
from lcpp import llama_cpp_vocab
from splitllm.api import create_app
from splitllm.engine import BatchEngine
from splitllm.gguf_file import GGUFFile
from splitllm.infill import completion_prompt, infill_prompt
from splitllm.model import Model
from splitllm.server import BackgroundServer
from splitllm.textstream import utf8_complete_prefix
from splitllm.tokenizer import Tokenizer
from tiny_model import TinyConfig, make_weights, write_gguf, write_metadata

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")

pytestmark = pytest.mark.reference

STARCODER = "ggml-vocab-starcoder.gguf"
DEEPSEEK = "ggml-vocab-deepseek-coder.gguf"
QWEN2 = "ggml-vocab-qwen2.gguf"
LLAMA_SPM = "ggml-vocab-llama-spm.gguf"
CONTROL, USER = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)
QWEN25_ADDED = {  # Qwen2.5's added tokens (tokenizer_config.json), as the converter types them
    151646: "<|object_ref_start|>", 151647: "<|object_ref_end|>", 151648: "<|box_start|>",
    151649: "<|box_end|>", 151650: "<|quad_start|>", 151651: "<|quad_end|>", 151652: "<|vision_start|>",
    151653: "<|vision_end|>", 151654: "<|vision_pad|>", 151655: "<|image_pad|>", 151656: "<|video_pad|>",
    151657: "<tool_call>", 151658: "</tool_call>", 151659: "<|fim_prefix|>", 151660: "<|fim_middle|>",
    151661: "<|fim_suffix|>", 151662: "<|fim_pad|>", 151663: "<|repo_name|>", 151664: "<|file_sep|>",
}
CODELLAMA_ADDED = ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
FIM_NAMES = ("pre", "suf", "mid", "pad", "rep", "sep")
N_GEN = 8
NOISE = 1e-3  # logit gaps this small may flip between two float32 engines


# ---- vocabularies and models ----

@pytest.fixture(scope="module")
def vocab_dir() -> Path:
    return llama_cpp_vocab(STARCODER, (QWEN2, DEEPSEEK, LLAMA_SPM)).parent


def read_metadata(path: Path) -> dict[str, Any]:
    with GGUFFile(path) as f:
        return dict(f.metadata)


def write_vocab(path: Path, md: dict[str, Any]) -> Path:
    wr = gguf.GGUFWriter(str(path), md["general.architecture"])
    write_metadata(wr, md)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


@pytest.fixture(scope="module")
def coder_path(tmp_path_factory, vocab_dir) -> Path:
    """A tiny random qwen2 model with Qwen2.5-Coder's vocabulary."""
    md = read_metadata(vocab_dir / QWEN2)
    vocab = {k: v for k, v in md.items() if k.startswith("tokenizer.")}
    tokens, types = list(vocab["tokenizer.ggml.tokens"]), list(vocab["tokenizer.ggml.token_type"])
    for i, text in QWEN25_ADDED.items():
        tokens[i], types[i] = text, USER if i >= 151657 else CONTROL
    vocab["tokenizer.ggml.tokens"], vocab["tokenizer.ggml.token_type"] = tokens, types
    cfg = TinyConfig(arch="qwen2", n_vocab=len(tokens), n_ctx_train=1024, seed=11)
    path = tmp_path_factory.mktemp("coder") / "tiny-qwen2.5-coder.gguf"
    write_gguf(make_weights(cfg), path, tokenizer=vocab)
    return path


@pytest.fixture(scope="module")
def codellama_path(tmp_path_factory, vocab_dir) -> Path:
    """LLaMA's SentencePiece vocabulary (BOS added, a space in front of the text) with CodeLlama's
    FIM tokens."""
    md = read_metadata(vocab_dir / LLAMA_SPM)
    md["tokenizer.ggml.tokens"] = md["tokenizer.ggml.tokens"] + CODELLAMA_ADDED
    md["tokenizer.ggml.scores"] = md["tokenizer.ggml.scores"] + [0.0] * len(CODELLAMA_ADDED)
    md["tokenizer.ggml.token_type"] = md["tokenizer.ggml.token_type"] + [CONTROL] * len(CODELLAMA_ADDED)
    return write_vocab(tmp_path_factory.mktemp("codellama") / "codellama-vocab.gguf", md)


class Ref:
    """llama.cpp's view of a vocabulary (loaded vocab-only through llama-cpp-python)."""

    def __init__(self, path: Path) -> None:
        self.llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        v = self.llm._model.vocab
        self.fim = {n: getattr(llama_cpp, f"llama_vocab_fim_{n}")(v) for n in FIM_NAMES}
        self.bos = llama_cpp.llama_vocab_bos(v)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(v))
        self.eog = {t for t in range(llama_cpp.llama_vocab_n_tokens(v)) if llama_cpp.llama_vocab_is_eog(v, t)}

    def text(self, s: str) -> list[int]:
        return self.llm.tokenize(s.encode("utf-8"), add_bos=False, special=False)

    def close(self) -> None:
        self.llm.close()


@pytest.fixture(scope="module")
def refs(vocab_dir, coder_path, codellama_path):
    paths = {"starcoder": vocab_dir / STARCODER, "deepseek-coder": vocab_dir / DEEPSEEK,
             "qwen2": vocab_dir / QWEN2, "llama-spm": vocab_dir / LLAMA_SPM, "qwen2.5-coder": coder_path,
             "codellama": codellama_path}
    out = {name: (Ref(p), ours(p)) for name, p in paths.items()}
    yield out
    for ref, _ in out.values():
        ref.close()


def ours(path: Path) -> Tokenizer:
    md = read_metadata(path)
    if md.get("tokenizer.ggml.pre") == "deepseek-coder":  # (not a pre-tokenizer splitllm runs)
        md["tokenizer.ggml.pre"] = "default"
    return Tokenizer.from_metadata(md)


# ---- (a) the FIM tokens ----

def test_fim_tokens_equal_llama_cpp(refs) -> None:
    for name, (ref, tok) in refs.items():
        got = {n: tok.vocab.special[f"fim_{n}"] for n in FIM_NAMES}
        assert {n: -1 if t is None else t for n, t in got.items()} == ref.fim, name
        assert tok.eog_ids == ref.eog, name
    known = {  # (pre, suf, mid, pad, rep, sep) as the vocabularies hold them
        "qwen2.5-coder": (151659, 151661, 151660, 151662, 151663, 151664),
        "starcoder": (1, 3, 2, 4, -1, -1),  # "<repo_name>" and "<file_sep>" are not names llama.cpp looks for
        "deepseek-coder": (32016, 32015, 32017, -1, -1, -1),
        "codellama": (32000, 32001, 32002, -1, -1, -1),
        "qwen2": (-1,) * 6, "llama-spm": (-1,) * 6,
    }
    for name, ids in known.items():
        assert tuple(refs[name][0].fim[n] for n in FIM_NAMES) == ids, name


# ---- (b) the /infill layout ----

PREFIX = "import os\n\n\ndef read(path):\n    with open(path) as f:\n        "
SUFFIX = "\n    return data\n\n\nprint(read('a.txt'))\n"
EXTRA = [("utils.py", "def helper(x):\n    return x * 2\n"), (None, "CONSTANT = 42\n")]


def test_repo_level_layout(refs) -> None:
    """Qwen2.5-Coder's repository-level format, nothing cut."""
    ref, tok = refs["qwen2.5-coder"]
    f, t = ref.fim, ref.text
    want = ([f["rep"]] + t("myproject\n")
            + [f["sep"]] + t("utils.py\n") + t(EXTRA[0][1])
            + [f["sep"]] + t("tmp\n") + t(EXTRA[1][1])
            + [f["sep"]] + t("filename\n")
            + [f["pre"]] + t(PREFIX) + t("data = f.read()") + [f["suf"]] + t(SUFFIX) + [f["mid"]])
    prompt = t("data = f.read()")
    assert not ref.add_bos
    got = infill_prompt(tok, PREFIX, SUFFIX, EXTRA, prompt=prompt, n_batch=512, n_ctx=4096)
    assert got == want
    spm = infill_prompt(tok, PREFIX, SUFFIX, EXTRA, prompt=prompt, n_batch=512, n_ctx=4096, spm=True)
    body = want.index(f["pre"])
    assert spm == want[:body] + [f["suf"]] + t(SUFFIX) + [f["pre"]] + t(PREFIX) + prompt + [f["mid"]]


def expected(ref: Ref, prefix: str, suffix: str, extra: list[tuple[str | None, str]], prompt: list[int], *,
             n_batch: int, n_ctx: int, n_predict: int, spm: bool = False) -> list[int]:
    """The documented layout with its cuts (see the module's docstring)."""
    f, t = ref.fim, ref.text
    context = [f["rep"], *t("myproject\n")] if f["rep"] >= 0 else []
    for name, text in extra:
        context += [f["sep"], *t(f"{name or 'tmp'}\n")] if f["sep"] >= 0 else t("\n\n--- snippet ---\n\n")
        context += t(text)
    if f["sep"] >= 0:
        context += [f["sep"], *t("filename\n")]
    quarter = n_batch // 4
    pre = t(prefix)
    pre = pre[max(0, len(pre) - 3 * quarter):]
    suf = t(suffix)[: max(0, quarter - 2 - len(prompt))]
    keep = min(len(context), max(0, n_ctx - n_batch - 2 * n_predict))
    head = [f["pre"], *pre, *prompt]
    tail = [f["suf"], *suf]
    bos = [ref.bos] if ref.add_bos else []
    return context[len(context) - keep:] + bos + (tail + head if spm else head + tail) + [f["mid"]]


@pytest.mark.parametrize("vocab", ["qwen2.5-coder", "starcoder", "codellama"])
@pytest.mark.parametrize("spm", [False, True], ids=["psm", "spm"])
@pytest.mark.parametrize(("n_batch", "n_ctx", "n_predict"),
                         [(512, 4096, -1), (16, 48, 4), (32, 40, -1), (8, 8, 100)])
def test_layout_and_cuts(refs, vocab, spm, n_batch, n_ctx, n_predict) -> None:
    ref, tok = refs[vocab]
    prompt = ref.text("x")
    want = expected(ref, PREFIX, SUFFIX, EXTRA, prompt, n_batch=n_batch, n_ctx=n_ctx, n_predict=n_predict,
                    spm=spm)
    got = infill_prompt(tok, PREFIX, SUFFIX, EXTRA, prompt=prompt, n_batch=n_batch, n_ctx=n_ctx,
                        n_predict=n_predict, spm=spm)
    assert got == want


def test_small_batch_cuts_by_hand(refs) -> None:
    """n_batch 16: the prefix keeps its last 12 tokens, the suffix its first 4 - 2 - 1 = 1; n_ctx 30
    and n_predict 3 leave 30 - 16 - 6 = 8 tokens of the extra context, its end."""
    ref, tok = refs["qwen2.5-coder"]
    f, t = ref.fim, ref.text
    prompt = t("x")
    assert len(prompt) == 1 and len(t(PREFIX)) > 12 and len(t(SUFFIX)) > 1
    context = ([f["rep"]] + t("myproject\n") + [f["sep"]] + t("utils.py\n") + t(EXTRA[0][1])
               + [f["sep"]] + t("tmp\n") + t(EXTRA[1][1]) + [f["sep"]] + t("filename\n"))
    want = context[-8:] + [f["pre"]] + t(PREFIX)[-12:] + prompt + [f["suf"]] + t(SUFFIX)[:1] + [f["mid"]]
    assert infill_prompt(tok, PREFIX, SUFFIX, EXTRA, prompt=prompt, n_batch=16, n_ctx=30, n_predict=3) == want


def test_bos_and_snippets_by_hand(refs) -> None:
    """A vocabulary that adds BOS and has no file separator (CodeLlama's): the extra chunks, each
    after a snippet line, come before BOS; in SPM order BOS still comes first."""
    ref, tok = refs["codellama"]
    f, t = ref.fim, ref.text
    assert ref.add_bos and f["sep"] == f["rep"] == -1
    snippet = t("\n\n--- snippet ---\n\n")
    context = snippet + t(EXTRA[0][1]) + snippet + t(EXTRA[1][1])
    psm = infill_prompt(tok, PREFIX, SUFFIX, EXTRA, n_batch=512, n_ctx=4096)
    assert psm == context + [ref.bos, f["pre"]] + t(PREFIX) + [f["suf"]] + t(SUFFIX) + [f["mid"]]
    spm = infill_prompt(tok, PREFIX, SUFFIX, EXTRA, n_batch=512, n_ctx=4096, spm=True)
    assert spm == context + [ref.bos, f["suf"]] + t(SUFFIX) + [f["pre"]] + t(PREFIX) + [f["mid"]]


def test_token_and_mixed_inputs(refs) -> None:
    """input_prefix / input_suffix may be token ids, or ids and text (llama-server's tokenize_mixed)."""
    ref, tok = refs["qwen2.5-coder"]
    f, t = ref.fim, ref.text
    ids = t("def f():\n    ")
    got = infill_prompt(tok, ids, [*t("pass"), "\n# end"], n_batch=512, n_ctx=4096)
    context = [f["rep"]] + t("myproject\n") + [f["sep"]] + t("filename\n")
    assert got == context + [f["pre"], *ids, f["suf"], *t("pass"), *t("\n# end"), f["mid"]]


def test_no_fim_tokens_is_refused(refs) -> None:
    _, tok = refs["qwen2"]
    with pytest.raises(ValueError, match="Infill is not supported by this model: prefix token is missing. "
                       "suffix token is missing. middle token is missing."):
        infill_prompt(tok, "a", "b", n_batch=512, n_ctx=512)


# ---- create_completion's suffix ----

class _Holder:
    """What completion_prompt reads of a Model: its tokenizer, spm_infill and plain prompts."""

    def __init__(self, tok: Tokenizer, spm: bool) -> None:
        self.tokenizer, self.spm_infill = tok, spm

    def _prompt_tokens(self, prompt: str) -> list[int]:
        return self.tokenizer.tokenize(prompt, special=True)


@pytest.mark.parametrize("suffix", ["foo", " foo", "\n    return x", "  x", ")\n", ""])
def test_suffix_prompt_codellama(refs, suffix) -> None:
    """[BOS] [PRE] prompt [SUF] suffix [MID], the suffix without the space SentencePiece puts in
    front of a text (Meta's "☺" trick run by llama.cpp's tokenizer)."""
    ref, tok = refs["codellama"]
    f = ref.fim
    prompt = "def add(a, b):"
    smiley = ref.llm.tokenize(("☺" + suffix).encode(), add_bos=False, special=False)
    want_suffix = smiley[2:] if suffix else []
    head = [f["pre"], *ref.llm.tokenize(prompt.encode(), add_bos=False, special=False)]
    tail = [f["suf"], *want_suffix]
    assert completion_prompt(_Holder(tok, False), prompt, suffix) == ([ref.bos, *head, *tail, f["mid"]], "")
    assert completion_prompt(_Holder(tok, True), prompt, suffix) == ([ref.bos, *tail, *head, f["mid"]], "")


def test_suffix_without_fim_tokens_is_appended(refs) -> None:
    _, tok = refs["llama-spm"]
    toks, tail = completion_prompt(_Holder(tok, False), "Hello", " world")
    assert (toks, tail) == (tok.tokenize("Hello", special=True), " world")


# ---- (c) end to end on a tiny random model ----

def greedy_reference(llm: Any, eog: set[int], tokens: list[int], n: int) -> list[int]:
    """llama.cpp's greedy tokens after ``tokens``: n of them, or up to its first end-of-generation
    token (included)."""
    out = []
    for t in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
        out.append(t)
        if t in eog or len(out) == n:
            break
    return out


def assert_same_or_near_tie(llm: Any, prompt: list[int], got: list[int], want: list[int]) -> None:
    """Equal tokens, or a first difference where llama.cpp's own top two are within NOISE."""
    if got == want:
        return
    diffs = [i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b]
    step = diffs[0] if diffs else min(len(got), len(want))
    llm.reset()
    llm.eval(prompt + want[:step])
    row = np.sort(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64))
    assert row[-1] - row[-2] < NOISE, f"differs at step {step} ({got} vs {want}), not at a near-tie"


@pytest.fixture(scope="module")
def coder_ref(coder_path, refs):
    llm = llama_cpp.Llama(str(coder_path), n_ctx=256, n_threads=2, verbose=False)
    yield llm
    llm.close()


CODE_PROMPT = "def add(a, b):\n    "
CODE_SUFFIX = "\n\n\nprint(add(1, 2))\n"


@pytest.mark.parametrize("spm", [False, True], ids=["psm", "spm"])
def test_create_completion_suffix_matches_llama_cpp(coder_path, coder_ref, refs, spm) -> None:
    ref, _ = refs["qwen2.5-coder"]
    f, t = ref.fim, ref.text
    head, tail = [f["pre"], *t(CODE_PROMPT)], [f["suf"], *t(CODE_SUFFIX)]
    prompt = (tail + head if spm else head + tail) + [f["mid"]]
    want = greedy_reference(coder_ref, ref.eog, prompt, N_GEN)
    with Model(coder_path, n_ctx=256, n_threads=2, spm_infill=spm) as m:
        assert completion_prompt(m, CODE_PROMPT, CODE_SUFFIX)[0] == prompt
        out = m.create_completion(CODE_PROMPT, suffix=CODE_SUFFIX, max_tokens=N_GEN, temperature=0.0)
        streamed = "".join(c["choices"][0]["text"] for c in m.create_completion(
            CODE_PROMPT, suffix=CODE_SUFFIX, max_tokens=N_GEN, temperature=0.0, stream=True))
        got = greedy_tokens(m, prompt, N_GEN)  # (the tokens create_completion's text is made of)
        raw = m.tokenizer.detokenize([x for x in got if x not in ref.eog])
    assert_same_or_near_tie(coder_ref, prompt, got, want)
    text = raw[: utf8_complete_prefix(raw)].decode("utf-8", "replace")
    assert out["choices"][0]["text"] == streamed == text
    assert out["choices"][0]["finish_reason"] == ("stop" if got[-1] in ref.eog else "length")


def greedy_tokens(m: Model, prompt: list[int], n: int) -> list[int]:
    out = []
    for t in m.generate(prompt, temp=0.0):
        out.append(t)
        if t in m.tokenizer.eog_ids or len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def coder_server(coder_path):
    model = Model(coder_path, n_ctx=2 * 256, n_seq_max=2, n_batch=16, n_threads=2)
    engine = BatchEngine(model)
    with BackgroundServer(create_app(engine, model_alias="coder")) as srv:
        yield srv, model
    engine.close()
    model.close()


def test_infill_endpoint_matches_llama_cpp(coder_server, coder_ref, refs) -> None:
    """/infill with extra files, a prompt, and a prefix and suffix longer than n_batch 16 lets
    them be: the prompt llama.cpp is given is the documented layout, cut for n_batch 16 and a
    256-token slot (llama-server's n_predict -1), and the greedy tokens are llama.cpp's."""
    srv, model = coder_server
    ref, _ = refs["qwen2.5-coder"]
    prompt = ref.text("data")
    want_prompt = expected(ref, PREFIX, SUFFIX, EXTRA, prompt, n_batch=16, n_ctx=256, n_predict=-1)
    assert len(ref.text(PREFIX)) > 12 and len(ref.text(SUFFIX)) > 4 - 2 - len(prompt)
    want = greedy_reference(coder_ref, ref.eog, want_prompt, N_GEN)
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "prompt": "data", "n_predict": N_GEN,
            "input_extra": [{"filename": n, "text": x} if n else {"text": x} for n, x in EXTRA],
            "temperature": 0, "return_tokens": True}
    r = httpx.post(f"{srv.url}/infill", json=body, timeout=120)
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["tokens_evaluated"] == len(want_prompt)
    assert res["prompt"] == ref.llm.detokenize(want_prompt, special=True).decode("utf-8", "replace")
    assert_same_or_near_tie(coder_ref, want_prompt, res["tokens"], want)
    assert res["stop_type"] == ("eos" if want[-1] in ref.eog else "limit")
    assert res["tokens_predicted"] == len(res["tokens"])
    # streamed: the same tokens, piece by piece, then the final event
    events = [json.loads(line[6:]) for line in httpx.post(f"{srv.url}/infill", json={**body, "stream": True},
                                                          timeout=120).text.splitlines() if line]
    assert [t for e in events[:-1] for t in e["tokens"]] == res["tokens"]
    assert "".join(e["content"] for e in events) == res["content"]
    assert events[-1]["stop"] and not any(e["stop"] for e in events[:-1])


def test_v1_completions_suffix_equals_model(coder_server, coder_path) -> None:
    """The server's /v1/completions suffix gives Model's text; the same fill-in-the-middle tokens
    sent to /completion give it too."""
    srv, _ = coder_server
    body = {"prompt": CODE_PROMPT, "suffix": CODE_SUFFIX, "max_tokens": N_GEN, "temperature": 0}
    r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    with Model(coder_path, n_ctx=256, n_batch=16, n_threads=2) as m:
        want = m.create_completion(CODE_PROMPT, suffix=CODE_SUFFIX, max_tokens=N_GEN, temperature=0.0)
        toks = completion_prompt(m, CODE_PROMPT, CODE_SUFFIX)[0]
    assert r.json()["choices"][0]["text"] == want["choices"][0]["text"]
    native = httpx.post(f"{srv.url}/completion", json={"prompt": toks, "n_predict": N_GEN, "temperature": 0},
                        timeout=120).json()
    assert native["content"] == want["choices"][0]["text"]


BOTH = {"input_prefix": "", "input_suffix": ""}


@pytest.mark.parametrize(("body", "message"), [
    ({"input_suffix": ""}, '"input_prefix" is required'),
    ({"input_prefix": ""}, '"input_suffix" is required'),
    ({**BOTH, "prompt": 5}, '"prompt" must be a string'),
    ({**BOTH, "input_extra": {"text": "x"}}, '"input_extra" must be an array'),
    ({**BOTH, "input_extra": [{"filename": "a"}]}, 'must contain a "text" field'),
    ({**BOTH, "input_extra": [{"text": "a", "filename": 3}]}, '"filename" field must be a string'),
    ({"input_prefix": 5, "input_suffix": ""}, "input_prefix"),
    ({**BOTH, "n_predict": "many"}, "n_predict"),
])
def test_infill_bad_input(coder_server, body, message) -> None:
    srv, _ = coder_server
    r = httpx.post(f"{srv.url}/infill", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    ok = httpx.post(f"{srv.url}/infill", json={"input_prefix": "a", "input_suffix": "b", "n_predict": 1},
                    timeout=60)
    assert ok.status_code == 200, ok.text
