"""Model.from_pretrained against a local stand-in for the Hugging Face Hub (its HTTP API as
huggingface_hub calls it: the repository's file list, then HEAD/GET of resolve/<revision>/<file>),
and the parts of a GGUF split in several files."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from split_gguf import write_split
from splitllm import Model
from tiny_model import TinyConfig, make_weights, write_gguf

hub_constants = pytest.importorskip("huggingface_hub.constants")

REPO, COMMIT = "someone/tiny-GGUF", "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves ``files`` (name -> bytes) as the main revision of REPO; counts file downloads."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.downloads = files, []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(body=False)

            def do_GET(self) -> None:
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                path = self.path.split("?")[0]
                if path == f"/api/models/{REPO}/tree/main":
                    tree = [{"type": "file", "path": n, "size": len(v), "oid": hashlib.sha1(v).hexdigest()}
                            for n, v in hub.files.items()]
                    data = json.dumps(tree).encode()
                    return self.send(data, body, {"Content-Type": "application/json"})
                name = path.removeprefix(f"/{REPO}/resolve/main/")
                if name in hub.files:
                    if body:
                        hub.downloads.append(name)
                    data = hub.files[name]
                    return self.send(data, body, {"X-Repo-Commit": COMMIT,
                                                  "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def send(self, data: bytes, body: bool, headers: dict[str, str]) -> None:
                self.send_response(200)
                for k, v in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cfg = TinyConfig(seed=3)
    files = {}
    for t in ("F32", "Q8_0"):
        write_gguf(make_weights(cfg), tmp_path / f"tiny-{t}.gguf", weight_type=t)
        files[f"tiny-{t}.gguf"] = (tmp_path / f"tiny-{t}.gguf").read_bytes()
    files["README.md"] = b"# tiny\n"
    fake = FakeHub(files)
    # what HF_ENDPOINT sets when huggingface_hub is imported (it may be imported already)
    monkeypatch.setattr(hub_constants, "ENDPOINT", fake.url)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        fake.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield fake
    fake.close()


def test_from_pretrained_downloads_once_and_loads(hub, tmp_path):
    tokens = [5, 17, 99, 3]
    with Model.from_pretrained(REPO, "*Q8_0.gguf", cache_dir=tmp_path / "cache", n_ctx=64, n_threads=2) as m:
        path = Path(m.model_path)
        assert path.read_bytes() == hub.files["tiny-Q8_0.gguf"]
        got = m.logits(tokens)
    with Model.from_pretrained(REPO, "tiny-Q8_0.gguf", cache_dir=tmp_path / "cache", n_ctx=64) as m:
        assert Path(m.model_path) == path
    assert hub.downloads == ["tiny-Q8_0.gguf"]  # the second call found it in the cache
    local = tmp_path / "local.gguf"
    local.write_bytes(hub.files["tiny-Q8_0.gguf"])
    with Model(local, n_ctx=64, n_threads=2) as m:
        np.testing.assert_array_equal(m.logits(tokens), got)
    with Model.from_pretrained(REPO, "*F32*", local_dir=tmp_path / "here", n_ctx=64, n_threads=2) as m:
        assert Path(m.model_path) == tmp_path / "here" / "tiny-F32.gguf"


@pytest.mark.parametrize(("pattern", "match"), [
    ("*.gguf", r"2 files \(tiny-F32.gguf, tiny-Q8_0.gguf\) of someone/tiny-GGUF match '\*.gguf'"),
    ("*Q4_K_M.gguf", r"no file of someone/tiny-GGUF match .*its GGUF files: tiny-F32.gguf, tiny-Q8_0.gguf"),
])
def test_from_pretrained_needs_one_match(hub, tmp_path, pattern, match):
    with pytest.raises(ValueError, match=match):
        Model.from_pretrained(REPO, pattern, cache_dir=tmp_path / "cache")
    assert hub.downloads == []


def test_split_gguf_parts_come_along(hub, tmp_path):
    """The first part of a split brings the others (as llama.cpp's -hf does); additional_files
    takes globs of more files; a missing part or a glob matching nothing is an error."""
    parts = write_split(tmp_path / "tiny-Q8_0.gguf", tmp_path / "tiny-split", 3)
    for p in parts:
        hub.files[p.name] = p.read_bytes()
    with Model(tmp_path / "tiny-Q8_0.gguf", n_ctx=64, n_threads=2) as m:
        ref = m.logits([5, 17, 99, 3])
    cache = tmp_path / "cache"
    with Model.from_pretrained(REPO, "*-00001-of-00003.gguf", cache_dir=cache, n_ctx=64, n_threads=2) as m:
        assert Path(m.model_path).name == "tiny-split-00001-of-00003.gguf"
        np.testing.assert_array_equal(m.logits([5, 17, 99, 3]), ref)
    assert sorted(hub.downloads) == sorted(p.name for p in parts)
    Model.from_pretrained(REPO, "*F32.gguf", cache_dir=cache, additional_files=["README*"], n_ctx=64).close()
    assert hub.downloads[-2:] == ["tiny-F32.gguf", "README.md"]
    with pytest.raises(ValueError, match=r"no file of someone/tiny-GGUF match 'nothing\*'"):
        Model.from_pretrained(REPO, "*F32.gguf", cache_dir=cache, additional_files=["nothing*"])
    del hub.files[parts[2].name]
    with pytest.raises(ValueError, match=r"tiny-split-00001-of-00003.gguf is the first of 3 parts, but "
                                         r"tiny-split-00003-of-00003.gguf is not in the repository"):
        Model.from_pretrained(REPO, "*-00001-of-00003.gguf", cache_dir=tmp_path / "cache2")
