"""Saved prompt states (``Model.save_state`` / ``load_state``, llama-cpp-python's names): a
state put back makes the next prompt with its tokens read only what is new, and gives what the
undisturbed cache gives."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from splitllm import Model
from splitllm.plan import plan

SYSTEM = "You are a helpful assistant. Answer in one short sentence. " * 3


@pytest.mark.parametrize("kv", ["f16", "q8_0", "q4_0"])
def test_state_round_trip(smollm2_path, kv):
    with Model(smollm2_path, n_ctx=256, n_threads=2, type_k=kv, type_v=kv) as m:
        prefix = m.tokenize(SYSTEM.encode(), add_bos=True, special=True)
        question = m.tokenize(b" What is the capital of France?", add_bos=False)
        # The reference: the prefix in the cache, never disturbed (a pass over only the question
        # may round differently from one over the whole prompt, so reading from scratch is not it).
        m.reset()
        m.eval_prompt(prefix)
        want = m.create_completion(prefix + question, max_tokens=8, temperature=0)["choices"][0]["text"]
        m.reset()
        m.eval_prompt(prefix)
        state = pickle.loads(pickle.dumps(m.save_state()))
        assert state.n_tokens == len(prefix) and state.input_ids.tolist() == prefix
        per_token = plan(smollm2_path, n_ctx=256, type_k=kv, type_v=kv).kv_bytes_per_token
        assert state.llama_state_size == len(state.llama_state) == per_token * len(prefix)
        m.create_completion("Something else entirely, to overwrite the cache.", max_tokens=4)
        m.load_state(state)
        before = m.n_eval
        got = m.create_completion(prefix + question, max_tokens=8, temperature=0)
        # Only the question was read (the prompt's last token again, as always, is part of it).
        assert m.n_eval - before == len(question) + got["usage"]["completion_tokens"] - 1
        assert got["choices"][0]["text"] == want


def test_state_from_another_model_is_refused(smollm2_path, tmp_path):
    with Model(smollm2_path, n_ctx=128, n_threads=2) as m:
        m.eval_prompt([1, 2, 3])
        state = m.save_state()
    with Model(smollm2_path, n_ctx=256, n_threads=2) as other:
        with pytest.raises(ValueError, match="another model or with other context"):
            other.load_state(state)
    with Model(smollm2_path, n_ctx=128, n_threads=2, type_k="q8_0") as other:
        with pytest.raises(ValueError, match="another model"):
            other.load_state(state)
    with Model(smollm2_path, n_ctx=128, n_threads=2) as same:
        same.load_state(state)
        with pytest.raises(ValueError, match="ModelState"):
            same.load_state({"input_ids": np.zeros(3)})  # type: ignore[arg-type]


def test_state_file_and_run_prompt_cache(smollm2_path, tmp_path, capsys):
    """ModelState.save / load (no pickle), and `splitllm run --prompt-cache FILE` (llama-cli's
    option): the second run reuses the shared start of its prompt."""
    from splitllm.cli import main
    from splitllm.model import ModelState

    with Model(smollm2_path, n_ctx=128, n_threads=2) as m:
        n_system = len(m.tokenize(SYSTEM.encode(), add_bos=True, special=True))
        m.eval_prompt(m.tokenize(SYSTEM.encode(), add_bos=True, special=True))
        state = m.save_state()
        state.save(tmp_path / "s.npz")
        back = ModelState.load(tmp_path / "s.npz")
        assert back.input_ids.tolist() == state.input_ids.tolist() and back.llama_state == state.llama_state
        m.reset()
        m.load_state(back)  # the signature survives the file
    (tmp_path / "bad.npz").write_bytes(b"not a state")
    with pytest.raises(ValueError, match="bad.npz: not a saved model state"):
        ModelState.load(tmp_path / "bad.npz")

    cache = tmp_path / "prompt.cache"
    args = [str(smollm2_path), "-c", "128", "-t", "2", "-n", "4", "--temp", "0", "--prompt-cache", str(cache)]
    assert main(["run", *args, "-p", SYSTEM + " Question one?"]) == 0
    first = capsys.readouterr()
    assert "0 of" in first.err and cache.exists()
    assert main(["run", *args, "-p", SYSTEM + " Question two?"]) == 0
    second = capsys.readouterr()
    reused = int(second.err.split("prompt cache")[1].split(":")[1].split()[0])
    assert n_system - 2 <= reused < n_system + 3
    (tmp_path / "other.cache").write_bytes(b"junk")
    assert main(["run", *args[:-1], str(tmp_path / "other.cache"), "-p", "Hi"]) == 0
    assert "prompt cache not used" in capsys.readouterr().err
