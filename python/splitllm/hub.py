"""GGUF files from the Hugging Face Hub, as llama-cpp-python's ``Llama.from_pretrained`` fetches
them: ``filename`` may be a glob (``"*Q4_K_M.gguf"``) that must match exactly one file of the
repository, and so must each of ``additional_files``; the files are downloaded once into the
hub's cache (or ``local_dir``) by ``huggingface_hub``, which is needed for this (``pip install
huggingface_hub``). When ``filename`` is the first part of a split (``NAME-00001-of-0000N.gguf``)
the other parts come too, as llama.cpp's ``-hf`` fetches them."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Sequence

PathLike = str | os.PathLike[str]

_FIRST_PART = re.compile(r"^(.*)-00001-of-(\d{5})\.gguf$")


def _one(repo_id: str, files: list[str], pattern: str) -> str:
    matches = sorted(fnmatch.filter(files, pattern))
    if len(matches) != 1:
        ggufs = [f for f in files if f.endswith(".gguf")]
        listed = ", ".join(ggufs[:12]) + (", ..." if len(ggufs) > 12 else "") if ggufs else "none"
        what = "no file" if not matches else f"{len(matches)} files ({', '.join(matches[:6])})"
        raise ValueError(f"{what} of {repo_id} match {pattern!r}; name one (its GGUF files: {listed})")
    return matches[0]


def download(repo_id: str, filename: str, *, revision: str | None = None, cache_dir: PathLike | None = None,
             local_dir: PathLike | None = None, additional_files: Sequence[str] = ()) -> str:
    """The local path of the one file of ``repo_id`` that ``filename`` (a name or a glob) matches,
    after downloading it, the files ``additional_files`` match and, for a split's first part, its
    other parts."""
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError:
        raise ImportError("from_pretrained needs huggingface_hub: pip install huggingface_hub") from None
    files = HfApi().list_repo_files(repo_id, revision=revision)
    main = _one(repo_id, files, filename)
    extra = [_one(repo_id, files, p) for p in additional_files]
    if m := _FIRST_PART.match(main):
        count = int(m.group(2))
        for i in range(2, count + 1):
            part = f"{m.group(1)}-{i:05d}-of-{count:05d}.gguf"
            if part not in files:
                raise ValueError(f"{repo_id}: {main} is the first of {count} parts, but {part} is not in the "
                                 "repository")
            if part not in extra:
                extra.append(part)
    path = hf_hub_download(repo_id, main, revision=revision, cache_dir=cache_dir, local_dir=local_dir)
    for name in extra:
        hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, local_dir=local_dir)
    return path
