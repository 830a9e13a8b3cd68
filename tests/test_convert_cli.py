"""convert-hf's command line, safe output and errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hf_fixtures as F
import numpy as np
import pytest
from safetensors.numpy import save_file
from splitllm_convert import ConvertError, convert
from splitllm_convert import pipeline as convert_mod
from splitllm_convert.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def model(tmp_path: Path) -> Path:
    F.tiny_model(tmp_path / "hf", "llama", tokenizer="bpe")
    return tmp_path / "hf"


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".part"))


def test_dry_run_prints_plan_and_writes_nothing(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.gguf"
    assert main([str(model), "-o", str(out), "--type", "q4_k_m", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "blk.1.attn_v.weight" in text and "token_embd.weight" in text and "--type q4_k_m" in text
    assert not out.exists() and not _leftovers(tmp_path)


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
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'python'}{os.pathsep}{REPO / 'convert'}"}
    cmd = [
        sys.executable,
        "-m",
        "splitllm_convert.cli",
        str(model),
        "-o",
        str(tmp_path / "a.gguf"),
        "--type",
        "f16",
    ]
    loud = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    assert "convert-hf" in loud.stderr and "it/s" not in loud.stdout
    quiet = subprocess.run(
        [*cmd[:-3], str(tmp_path / "b.gguf"), "--quiet"], capture_output=True, text=True, env=env, check=True
    )
    assert quiet.stderr == "" and quiet.stdout == ""
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


# -- bad input: a clear ConvertError naming the file or tensor ----------------------------------


def _edit_config(d: Path, **changes: object) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_unknown_architecture_lists_supported(model: Path, tmp_path: Path) -> None:
    _edit_config(model, architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(
        ConvertError, match="GPTNeoXForCausalLM.*LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"
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
        ConvertError, match=r"'model.layers.1.mlp.up_proj.weight' \(blk.1.ffn_up.weight\) is missing"
    ):
        convert(model, tmp_path / "m.gguf", quiet=True)


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
