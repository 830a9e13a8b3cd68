"""splitllm-bench, the C++ benchmark binary: its JSON, CSV and Markdown output on a tiny random
model (one row per combination of the listed values), and usage errors (exit code 2, a message
on stderr, nothing on stdout)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import splitllm
from splitllm import _core
from tiny_model import TinyConfig, make_weights, write_gguf

FIELDS = {
    "commit", "cpu_info", "date", "model", "model_filename", "model_size", "model_n_params", "backend",
    "n_threads", "n_gpu_layers", "n_batch", "type_k", "type_v", "test", "n_prompt", "n_gen", "n_depth",
    "avg_ts", "stddev_ts",
}  # fmt: skip


def bench_binary() -> Path:
    """Next to the package (in-place build), else in the scripts folder (a wheel installs it there)."""
    name = "splitllm-bench"
    candidates = [Path(splitllm.__file__).parent / name, Path(sys.executable).parent / name]
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file():
            return c
    pytest.fail("splitllm-bench not found next to the splitllm package nor on PATH: is the C++ core built?")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bench")
    tiny = make_weights(TinyConfig(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, n_vocab=320))
    out = {"F32": d / "tiny-f32.gguf", "Q8_0": d / "tiny-q8_0.gguf"}
    for t, path in out.items():
        write_gguf(tiny, path, weight_type=t)
    return out


def run_bench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(bench_binary()), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def check_rows(rows: list[dict], expected: set[tuple[str, int, str]]) -> None:
    """One row per (model type, threads, test); numbers where numbers belong."""
    assert len(rows) == len(expected)
    seen = set()
    for r in rows:
        assert FIELDS <= set(r), FIELDS - set(r)
        kind = r["model"].split()[-1]
        assert r["model"].startswith("llama ")
        seen.add((kind, int(r["n_threads"]), r["test"]))
        assert int(r["n_gpu_layers"]) == 0 and r["backend"] == "CPU"
        assert int(r["model_size"]) > 0 and int(r["model_n_params"]) > 0
        assert float(r["avg_ts"]) > 0 and float(r["stddev_ts"]) >= 0
        assert r["test"] == (f"pp{r['n_prompt']}" if int(r["n_prompt"]) else f"tg{r['n_gen']}")
        assert r["commit"] == _core.commit and r["cpu_info"]
    assert seen == expected


def test_json_one_row_per_combination(models: dict[str, Path]) -> None:
    p = run_bench("-m", models["F32"], "-t", "1,2", "-p", "16", "-n", "4", "-r", "2", "-o", "json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    check_rows(rows, {("F32", t, test) for t in (1, 2) for test in ("pp16", "tg4")})
    for r in rows:
        assert r["model_filename"] == str(models["F32"])
        assert len(r["samples_ts"]) == 2
        assert r["avg_ts"] == pytest.approx(sum(r["samples_ts"]) / 2, rel=1e-4)


def test_csv_several_models(models: dict[str, Path]) -> None:
    p = run_bench("-m", models["F32"], "-m", models["Q8_0"], "-t", "1", "-p", "16", "-n", "4", "-r", "1",
                  "-o", "csv")  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    check_rows(rows, {(kind, 1, test) for kind in ("F32", "Q8_0") for test in ("pp16", "tg4")})
    assert int(rows[2]["model_size"]) < int(rows[0]["model_size"])  # Q8_0 is smaller than F32


def test_markdown_header_and_depth(models: dict[str, Path]) -> None:
    p = run_bench("-m", models["Q8_0"], "-t", "1", "-p", "16", "-n", "4", "-d", "0,8", "-r", "1")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == f"splitllm-bench | commit {_core.commit} | CPU: {_core.cpu_features()}"
    table = [ln for ln in lines if ln.startswith("|")]
    assert "t/s" in table[0] and "threads" in table[0] and "test" in table[0]
    body = table[2:]
    assert len(body) == 4
    assert [ln.split("|")[-3].strip() for ln in body] == ["pp16", "tg4", "pp16 @ d8", "tg4 @ d8"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "{missing}"], "cannot open"),
        (["-m", "{text}"], "not a GGUF file"),
        (["-m", "{model}", "--bogus", "1"], "unknown option '--bogus'"),
        (["-m", "{model}", "-t", "two"], "option -t: 'two' is not an integer"),
        (["-m", "{model}", "-p", "-5"], "option -p: '-5' is not an integer"),
        (["-m", "{model}", "-o", "xml"], "output format 'xml'"),
        (["-p", "16"], "no model given"),
    ],
    ids=["missing-file", "not-gguf", "unknown-option", "bad-threads", "bad-prompt", "bad-format", "no-model"],
)
def test_usage_errors_exit_2(models: dict[str, Path], tmp_path: Path, args: list[str], message: str) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("this is not a model\n" * 4)
    paths = {"missing": tmp_path / "absent.gguf", "text": text, "model": models["F32"]}
    p = run_bench(*(a.format(**paths) for a in args), "-p", "16", "-n", "4", "-r", "1")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stdout == ""
    first = p.stderr.splitlines()[0]
    assert first.startswith("splitllm-bench: error:") and message in first, p.stderr
    if "{missing}" in args or "{text}" in args:
        assert str(paths["missing" if "{missing}" in args else "text"]) in first  # names the file


def test_embeddings(models: dict[str, Path], tmp_path: Path) -> None:
    """-embd 1 times the hidden states (llama-bench's option, its own field and column); an encoder
    (bert) always gives them: its pp tests run, each batch one text, and its tg and depth tests, and
    texts past its positions, are skipped with a warning."""
    p = run_bench("-m", models["F32"], "-t", "1", "-p", "16", "-n", "4", "-embd", "0,1", "-r", "1",
                  "-o", "json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [(r["test"], r["embeddings"]) for r in rows] == [("pp16", False), ("tg4", False), ("pp16", True),
                                                             ("tg4", True)]
    p = run_bench("-m", models["F32"], "-t", "1", "-p", "16", "-n", "0", "-embd", "1", "-r", "1")
    table = [ln for ln in p.stdout.splitlines() if ln.startswith("|")]
    assert "embd" in table[0] and table[2].split("|")[-4].strip() == "1"
    from tiny_bert import BertConfig
    from tiny_bert import make_weights as bert_weights
    from tiny_bert import write_gguf as write_bert

    cfg = BertConfig(n_ctx_train=64)
    write_bert(cfg, bert_weights(cfg), tmp_path / "bert.gguf")
    p = run_bench("-m", tmp_path / "bert.gguf", "-t", "1", "-p", "48,100", "-b", "16,128", "-n", "4",
                  "-d", "0,8", "-r", "1", "-o", "csv")  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert [(r["test"], r["n_batch"], r["embeddings"]) for r in rows] == [
        ("pp48", "16", "1"), ("pp100", "16", "1"), ("pp48", "128", "1")]  # pp100 in one batch: past 64
    assert "an encoder has no tg or depth tests" in p.stderr and "pp100 with n_batch 128 skipped" in p.stderr
    p = run_bench("-m", models["F32"], "-embd", "2")
    assert p.returncode == 2 and "option -embd" in p.stderr
