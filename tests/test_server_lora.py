"""llama-server's LoRA API on ``splitllm serve``: ``GET`` / ``POST /lora-adapters``, the per-request
``lora`` field and ``--lora-init-without-apply``, on a tiny random llama with two adapters.

References: the shapes and rules are llama-server's (tools/server/README.md, server-context.cpp's
construct_lora_list: adapters a list leaves out get scale 0; an empty ``lora`` is the server's
scales; tests/unit/test_lora.py's parallel requests with different scales); the generated tokens
are the float64 reference forward pass's greedy choices on the weights merged with those
scales (tests/test_lora.py's ``merged``). splitllm answers a bad id or scale with a 400 (llama-server
ignores an unknown id).
"""

from __future__ import annotations

import concurrent.futures
import json
from typing import Any

import httpx
import numpy as np
import pytest
from splitllm.api import create_app
from splitllm.engine import BatchEngine
from splitllm.model import Model
from splitllm.server import BackgroundServer
from test_lora import LLAMA, LLAMA_NAMES, merged, random_pairs, write_lora
from tiny_model import make_weights, reference_logits, write_gguf

PROMPT = [3, 77, 200, 15, 260, 1, 99, 42]
N = 4
EOS = 262  # tiny_model's vocabulary: 261 normal tokens, then BOS, EOS


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("server_lora")
    held = write_gguf(make_weights(LLAMA), d / "base.gguf")
    p1 = random_pairs(held, LLAMA_NAMES[:3], 4, 31)
    p2 = random_pairs(held, LLAMA_NAMES[3:], 4, 32)
    write_lora(d / "1.gguf", "llama", p1, alpha=8.0)
    write_lora(d / "2.gguf", "llama", p2)
    return d, held, [(p1, 8.0), (p2, 0.0)]


@pytest.fixture(scope="module")
def server(files):
    d = files[0]
    model = Model(
        d / "base.gguf",
        n_ctx=128,
        n_batch=32,
        n_seq_max=2,
        n_threads=2,
        loras=[(d / "1.gguf", 1.0), (d / "2.gguf", 1.0)],
    )
    engine = BatchEngine(model)
    with BackgroundServer(create_app(engine, model_alias="tiny")) as srv:
        srv.engine = engine
        yield srv
    engine.close()
    model.close()


def greedy_ref(files, scales: tuple[float, float], prompt: list[int] = PROMPT, n: int = N) -> list[int]:
    """The float64 model's greedy tokens (up to EOS), stopping early where its top two logits are
    too close for float32 rounding to agree."""
    _, held, adapters = files
    w = merged(held, [(p, s, a) for (p, a), s in zip(adapters, scales, strict=True)])
    toks = list(prompt)
    for _ in range(n):
        last = reference_logits(LLAMA, w, toks)[-1]
        top2 = np.sort(last)[-2:]
        if top2[1] - top2[0] < 1e-3:
            break
        t = int(np.argmax(last))
        if t == EOS:
            break
        toks.append(t)
    return toks[len(prompt) :]


def post(server: Any, path: str, body: Any, status: int = 200) -> Any:
    r = httpx.post(
        f"{server.url}{path}",
        content=json.dumps(body),
        timeout=120,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == status, r.text
    return r.json()


def scales_of(server: Any) -> list[float]:
    r = httpx.get(f"{server.url}/lora-adapters", timeout=30)
    assert r.status_code == 200
    return [a["scale"] for a in r.json()]


def complete(server: Any, **kw: Any) -> dict[str, Any]:
    return post(
        server,
        "/completion",
        {"prompt": PROMPT, "n_predict": N, "temperature": 0, "return_tokens": True, **kw},
    )


def check_tokens(got: list[int], want: list[int]) -> None:
    assert want, "the reference has no clear greedy token: pick another seed"
    assert got[: len(want)] == want


def test_get_lists_the_adapters_and_post_sets_them(server, files):
    d = files[0]
    r = httpx.get(f"{server.url}/lora-adapters", timeout=30).json()
    assert [(a["id"], a["path"], a["scale"]) for a in r] == [
        (0, str(d / "1.gguf"), 1.0),
        (1, str(d / "2.gguf"), 1.0),
    ]
    check_tokens(complete(server)["tokens"], greedy_ref(files, (1.0, 1.0)))
    assert post(server, "/lora-adapters", [{"id": 1, "scale": 0.5}]) == {"success": True}
    assert scales_of(server) == [0.0, 0.5]  # (adapter 0 left out: 0)
    check_tokens(complete(server)["tokens"], greedy_ref(files, (0.0, 0.5)))
    post(server, "/lora-adapters", [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 1.0}])


def test_a_change_of_scales_reads_the_prompt_again(server, files):
    post(server, "/lora-adapters", [{"id": 0, "scale": 2.0}, {"id": 1, "scale": -1.0}])
    first = complete(server)
    check_tokens(first["tokens"], greedy_ref(files, (2.0, -1.0)))
    again = complete(server)  # the same prompt under the same scales: from a slot's cache
    assert again["timings"]["cache_n"] == len(PROMPT) and again["tokens"] == first["tokens"]
    post(server, "/lora-adapters", [{"id": 0, "scale": 0.3}])
    other = complete(server)
    assert other["timings"]["cache_n"] == 0
    check_tokens(other["tokens"], greedy_ref(files, (0.3, 0.0)))
    post(server, "/lora-adapters", [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 1.0}])


def test_per_request_scales_in_parallel(server, files):
    """llama-server's test_lora_per_request: the same prompt with different scales at once, each
    request getting its own scales' text; the server's scales stay as they were."""
    configs = [
        [{"id": 0, "scale": 0.0}],
        [{"id": 0, "scale": 0.0}],
        [{"id": 0, "scale": 0.3}],
        [{"id": 0, "scale": 0.7}, {"id": 1, "scale": -0.5}],
        [{"id": 0, "scale": 1.0}],
        [{"id": 1, "scale": 1.5}],
    ]
    with concurrent.futures.ThreadPoolExecutor(len(configs)) as pool:
        results = list(pool.map(lambda lora: complete(server, lora=lora, cache_prompt=False), configs))
    for lora, res in zip(configs, results, strict=True):
        scales = [0.0, 0.0]
        for e in lora:
            scales[e["id"]] = e["scale"]
        check_tokens(res["tokens"], greedy_ref(files, tuple(scales)))
    assert scales_of(server) == [1.0, 1.0]
    check_tokens(complete(server, lora=[])["tokens"], greedy_ref(files, (1.0, 1.0)))  # []: the server's


def test_openai_endpoints_take_lora(server, files):
    lora = [{"id": 0, "scale": 0.4}]
    want = greedy_ref(files, (0.4, 0.0))
    out = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": N, "temperature": 0, "lora": lora})
    native = complete(server, lora=lora)  # (its tokens are checked against the reference; they are
    check_tokens(native["tokens"], want)  # bytes of no valid UTF-8 here, so the texts are compared)
    assert out["choices"][0]["text"] == native["content"]
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": N, "temperature": 0}
    a = post(server, "/v1/chat/completions", {**chat, "lora": lora})
    post(server, "/lora-adapters", lora)
    b = post(server, "/v1/chat/completions", chat)  # the same scales set for the server instead
    post(server, "/lora-adapters", [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 1.0}])
    assert a["choices"][0]["message"] == b["choices"][0]["message"]


@pytest.mark.parametrize(
    "lora,match",
    [
        ({"id": 0, "scale": 1.0}, "must be an array"),
        ([{"id": 2, "scale": 1.0}], "no LoRA adapter with id 2"),
        ([{"id": -1, "scale": 1.0}], "no LoRA adapter with id -1"),
        ([{"id": "0", "scale": 1.0}], "no LoRA adapter with id '0'"),
        ([{"scale": 1.0}], "with 'id' and 'scale'"),
        ([{"id": 0, "scale": "big"}], "finite number"),
        ([{"id": 0, "scale": float("inf")}], "finite number"),
    ],
)
def test_bad_lora_is_a_400_and_the_server_keeps_serving(server, files, lora, match):
    body = lora if isinstance(lora, list) else [lora]
    if isinstance(lora, list):
        err = post(server, "/lora-adapters", body, 400)
        assert match in err["error"]["message"]
    else:
        assert "must be an array" in post(server, "/lora-adapters", lora, 400)["error"]["message"]
    for path, req in [
        ("/completion", {"prompt": PROMPT, "n_predict": 1}),
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 1}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ]:
        err = post(server, path, {**req, "lora": lora}, 400)
        assert match in err["error"]["message"], path
    assert scales_of(server) == [1.0, 1.0]
    check_tokens(complete(server)["tokens"], greedy_ref(files, (1.0, 1.0)))


def test_lora_init_without_apply(files, monkeypatch):
    import splitllm.server as srv
    from splitllm.cli import main

    d = files[0]
    seen = []
    monkeypatch.setattr(srv, "_serve", lambda args, model, **_: seen.append(model.lora_adapters))
    main(
        [
            "serve",
            str(d / "base.gguf"),
            "-c",
            "64",
            "--lora",
            f"{d / '1.gguf'},{d / '2.gguf'}",
            "--lora-init-without-apply",
        ]
    )
    assert seen == [[(str(d / "1.gguf"), 0.0), (str(d / "2.gguf"), 0.0)]]


def test_engine_refuses_bad_scales(server):
    engine = server.engine
    for bad in ([1.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match=r"expected 2 finite LoRA scales"):
            engine.submit(PROMPT, on_event=lambda ev: None, lora=bad)
        with pytest.raises(ValueError, match=r"expected 2 finite LoRA scales"):
            engine.set_lora_scales(bad)
    assert engine.lora_scales == [1.0, 1.0]
