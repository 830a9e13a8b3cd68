"""llama-cpp-python's generation hooks on Model: ``logits_processor`` and ``stopping_criteria``
(single callables or LogitsProcessorList / StoppingCriteriaList)."""

from __future__ import annotations

import numpy as np
import pytest
from splitllm import Model
from splitllm.sampling import LogitsProcessorList, StoppingCriteriaList

PROMPT = "Once upon a time, there was a"


@pytest.fixture(scope="module")
def model(smollm2_path):
    with Model(smollm2_path, n_ctx=256, n_threads=2) as m:
        yield m


def test_logits_processor_sees_the_tokens_and_changes_the_pick(model):
    seen: list[list[int]] = []
    banned = set()

    def ban_first_pick(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        seen.append(input_ids.tolist())
        if not banned:
            banned.add(int(np.argmax(scores)))
        scores[list(banned)] = -np.inf
        return scores

    model.reset()
    plain = model.create_completion(PROMPT, max_tokens=6, temperature=0, logprobs=0)["choices"][0]
    model.reset()
    hooked = model.create_completion(PROMPT, max_tokens=6, temperature=0, logprobs=0,
                                     logits_processor=LogitsProcessorList([ban_first_pick]))["choices"][0]
    prompt = model.tokenize(PROMPT.encode(), add_bos=True, special=True)
    first = model.tokenize(plain["logprobs"]["tokens"][0].encode(), add_bos=False)
    assert banned == set(first)
    assert hooked["logprobs"]["tokens"][0] != plain["logprobs"]["tokens"][0]
    assert hooked["logprobs"]["token_logprobs"][0] is not None
    # Called before each pick with the prompt and the tokens so far.
    gen = model.tokenize(hooked["text"].encode(), add_bos=False)
    assert seen[0] == prompt and seen[1] == prompt + gen[:1] and len(seen) == 6
    with pytest.raises(ValueError, match="logits_processor returned shape"):
        model.create_completion(PROMPT, max_tokens=2, logits_processor=lambda ids, s: s[:10])


def test_stopping_criteria_end_before_the_token(model):
    model.reset()
    full = model.create_completion(PROMPT, max_tokens=8, temperature=0)["choices"][0]
    prompt = model.tokenize(PROMPT.encode(), add_bos=True, special=True)
    gen = model.tokenize(full["text"].encode(), add_bos=False)
    calls: list[int] = []

    def after_three(input_ids: np.ndarray, logits: np.ndarray) -> bool:
        calls.append(len(input_ids))
        assert logits.shape == (model.n_vocab(),)
        return len(input_ids) - len(prompt) >= 3  # input_ids: the tokens evaluated so far

    model.reset()
    out = model.create_completion(PROMPT, max_tokens=8, temperature=0,
                                  stopping_criteria=StoppingCriteriaList([after_three]))["choices"][0]
    assert out["finish_reason"] == "stop"
    assert out["text"] == model.detokenize(gen[:3]).decode()
    assert calls == [len(prompt) + i for i in range(4)]
    model.reset()
    toks = list(model.generate(prompt, temp=0.0, stopping_criteria=after_three))
    assert toks == gen[:3]
    chat = model.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0,
                                        stopping_criteria=lambda ids, logits: True)
    assert chat["choices"][0]["message"]["content"] == "" and chat["choices"][0]["finish_reason"] == "stop"
