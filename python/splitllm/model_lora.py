"""Model's LoRA methods: the adapters' scales changed after loading (llama.cpp's
``llama_set_adapter_lora``; llama-server's ``/lora-adapters``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


class LoraMethods:
    """Mixed into :class:`splitllm.Model` (which sets ``_loras``, ``_lora_paths``, ``_lora_scales``,
    ``_history``, ``_prompt_end`` and ``_engine``)."""

    _loras: list[tuple[Any, ...]]
    _lora_paths: list[str]
    _lora_scales: list[float]  # as given (the engine holds them as float32)
    _history: list[int]
    _prompt_end: Any

    def _engine(self) -> Any:  # (Model's)
        raise NotImplementedError

    @property
    def lora_adapters(self) -> list[tuple[str, float]]:
        """The LoRA adapters loaded (``lora_path`` first, then ``loras``) as ``(path, scale)``, with
        the scales set last; an adapter's index here is its id for :meth:`set_lora_scales`."""
        self._engine()
        return list(zip(self._lora_paths, self._lora_scales, strict=True))

    def set_lora_scales(self, scales: Mapping[int, float] | Sequence[float]) -> None:
        """Changes the adapters' scales without reloading (llama.cpp's ``llama_set_adapter_lora``):
        a sequence gives every adapter's, a mapping ``{index: scale}`` those of some (the others
        keep theirs). Scale 0 turns an adapter off. The cached prompt was computed under the old
        scales: a change forgets it (the next evaluation starts from scratch)."""
        self._apply_lora_scales(self.lora_scales_from(scales, keep_missing=True))

    def lora_scales_from(
        self, scales: Mapping[int, float] | Sequence[float], *, keep_missing: bool
    ) -> list[float]:
        """Every adapter's scale from a full sequence or an ``{index: scale}`` mapping (adapters
        it leaves out: their current scale with ``keep_missing``, else 0 as llama-server's
        ``lora`` field has it); ValueError naming a bad index or scale."""
        self._engine()
        current = list(self._lora_scales)
        if isinstance(scales, Mapping):
            out = list(current) if keep_missing else [0.0] * len(current)
            items = list(scales.items())
        else:
            if isinstance(scales, (str, bytes)) or len(scales) != len(current):
                raise ValueError(f"expected {len(current)} LoRA scales, one per adapter (got {scales!r})")
            out, items = [0.0] * len(current), list(enumerate(scales))
        for i, s in items:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(current):
                raise ValueError(
                    f"no LoRA adapter with id {i!r} (ids 0..{len(current) - 1})"
                    if current
                    else f"no LoRA adapter with id {i!r}: none is loaded"
                )
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise ValueError(f"LoRA adapter {i}: scale must be a finite number (got {s!r})")
            out[i] = float(s)
        return out

    def _apply_lora_scales(self, scales: list[float]) -> bool:
        """Sets the scales (a full list, checked); True if any changed, which drops the cached
        prompt: its K/V hold the old scales' updates."""
        core = self._engine()
        if self._lora_scales == scales:
            return False
        core.set_lora_scales(scales)
        self._lora_scales = list(scales)
        self._loras = [(p, s, *rest) for (p, _, *rest), s in zip(self._loras, scales, strict=True)]
        self._history = []
        self._prompt_end = None
        return True
