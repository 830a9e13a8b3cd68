"""A saved prompt state of a :class:`~splitllm.model.Model` (its ``save_state`` / ``load_state``),
as llama-cpp-python's ``LlamaState``, and its file form."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ModelState:
    """A saved prompt state, as llama-cpp-python's ``LlamaState``: the tokens in the cache
    (``input_ids``, ``n_tokens``), their K/V (``llama_state``, ``llama_state_size`` bytes), the seed,
    and what a model must match to take it back. ``prompt_end``: the logits after the first n of
    the tokens (the prompt the state was generated from), when known: a model that takes the state
    back answers that prompt from them, as it would have before saving, instead of reading its
    last token again (which may round differently)."""

    input_ids: np.ndarray
    n_tokens: int
    llama_state: bytes
    llama_state_size: int
    seed: int
    signature: tuple[Any, ...]
    prompt_end: tuple[int, np.ndarray] | None = None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the state to a file (numpy's .npz, no pickled objects), through a temporary file
        renamed at the end."""
        tmp = f"{os.fspath(path)}.part"
        extra = {} if self.prompt_end is None else {
            "prompt_n": np.int64(self.prompt_end[0]), "prompt_logits": self.prompt_end[1]}
        with open(tmp, "wb") as f:
            np.savez(f, input_ids=self.input_ids.astype(np.int32), seed=np.uint64(self.seed),
                     state=np.frombuffer(self.llama_state, dtype=np.uint8),
                     signature=np.array(json.dumps(list(self.signature))), **extra)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelState:
        """A state written by :meth:`save`; ValueError naming the file if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                state = z["state"].tobytes()
                sig = json.loads(str(z["signature"]))
                end = (int(z["prompt_n"]), z["prompt_logits"].astype(np.float32)) if "prompt_n" in z else None
                return cls(z["input_ids"].astype(np.intc), len(z["input_ids"]), state, len(state),
                           int(z["seed"]), tuple(tuple(x) if isinstance(x, list) else x for x in sig), end)
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{os.fspath(path)}: not a saved model state ({e})") from None
