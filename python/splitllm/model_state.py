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
    and what a model must match to take it back."""

    input_ids: np.ndarray
    n_tokens: int
    llama_state: bytes
    llama_state_size: int
    seed: int
    signature: tuple[Any, ...]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the state to a file (numpy's .npz, no pickled objects), through a temporary file
        renamed at the end."""
        tmp = f"{os.fspath(path)}.part"
        with open(tmp, "wb") as f:
            np.savez(f, input_ids=self.input_ids.astype(np.int32), seed=np.uint64(self.seed),
                     state=np.frombuffer(self.llama_state, dtype=np.uint8),
                     signature=np.array(json.dumps(list(self.signature))))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelState:
        """A state written by :meth:`save`; ValueError naming the file if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                state = z["state"].tobytes()
                sig = json.loads(str(z["signature"]))
                return cls(z["input_ids"].astype(np.intc), len(z["input_ids"]), state, len(state),
                           int(z["seed"]), tuple(tuple(x) if isinstance(x, list) else x for x in sig))
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{os.fspath(path)}: not a saved model state ({e})") from None
