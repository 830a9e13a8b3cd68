"""GGUF files from the Hugging Face Hub, as llama-cpp-python's ``Llama.from_pretrained`` fetches
them: ``filename`` may be a glob (``"*Q4_K_M.gguf"``) that must match exactly one file of the
repository; the file is downloaded once into the hub's cache (or ``local_dir``) by
``huggingface_hub``, which is needed for this (``pip install huggingface_hub``)."""

from __future__ import annotations

import fnmatch
import os

PathLike = str | os.PathLike[str]


def download(repo_id: str, filename: str, *, revision: str | None = None, cache_dir: PathLike | None = None,
             local_dir: PathLike | None = None) -> str:
    """The local path of the one file of ``repo_id`` that ``filename`` (a name or a glob) matches."""
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError:
        raise ImportError("from_pretrained needs huggingface_hub: pip install huggingface_hub") from None
    files = HfApi().list_repo_files(repo_id, revision=revision)
    matches = sorted(fnmatch.filter(files, filename))
    if len(matches) != 1:
        ggufs = [f for f in files if f.endswith(".gguf")]
        listed = ", ".join(ggufs[:12]) + (", ..." if len(ggufs) > 12 else "") if ggufs else "none"
        what = "no file" if not matches else f"{len(matches)} files ({', '.join(matches[:6])})"
        raise ValueError(f"{what} of {repo_id} match {filename!r}; name one (its GGUF files: {listed})")
    return hf_hub_download(repo_id, matches[0], revision=revision, cache_dir=cache_dir, local_dir=local_dir)
