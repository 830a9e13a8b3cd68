"""``splitllm serve MODEL``: the OpenAI-compatible server (FastAPI + uvicorn).

``--parallel N`` sequence slots share ``--n-ctx`` (llama-server's convention: each request gets
``n_ctx // N`` tokens of context) and share every forward pass (continuous batching, see
:mod:`splitllm.engine`). The HTTP API is in :mod:`splitllm.api`.

:class:`BackgroundServer` runs the same app in a thread on a free loopback port, for tests and
benchmarks.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from typing import Any

from splitllm.cli import add_model_options, budget_arg, json_object, load_model
from splitllm.server_spec import add_speculative_options, load_drafter, speculative_params


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching",
                       description="Serve a model over HTTP with OpenAI's API: /v1/completions, "
                       "/v1/chat/completions (streamed as server-sent events with stream: true), "
                       "/v1/embeddings, /v1/rerank, /v1/models, /v1/responses, /health; Anthropic's "
                       "/v1/messages; and llama-server's /completion, /infill (fill-in-the-middle for code "
                       "completion clients), /embedding, /props, /apply-template, /tokenize, /detokenize, "
                       "/metrics, /slots, /lora-adapters. Concurrent requests share each forward pass.")
    p.add_argument("model", help="GGUF model file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=23333, help="port (default 23333)")
    p.add_argument("-np", "--parallel", type=int, default=8,
                   help="requests run at once (sequence slots); --n-ctx is split between them (default 8)")
    p.add_argument("--api-key", default=os.environ.get("SPLITLLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on all but /health (default: $SPLITLLM_API_KEY)")
    p.add_argument("--model-alias", "-a", default=None,
                   help="model name clients use (default: the file name without .gguf)")
    p.add_argument("--pooling", default=None, choices=["none", "mean", "cls", "last", "rank"],
                   help="how /v1/embeddings pools a text's token vectors (default: the model's; none "
                   "without one); rank: a reranker's scores, for /v1/rerank")
    p.add_argument("--reranking", "--rerank", dest="pooling", action="store_const", const="rank",
                   help="serve a reranker on /v1/rerank (llama-server's flag; --pooling rank)")
    p.add_argument("--chat-template-kwargs", type=json_object, default=None, metavar="JSON",
                   help='chat template variables for every request, e.g. \'{"enable_thinking": false}\'')
    p.add_argument("--reasoning-format", default="deepseek", choices=["none", "deepseek"],
                   help="deepseek (default): a <think> block opening an answer goes to reasoning_content; "
                        "none: it stays in the content")
    p.add_argument("--reasoning-budget", type=budget_arg, default=-1, metavar="N",
                   help="thinking budget of chat answers of <think> models: after N tokens the block's end "
                        "is forced (-1: unrestricted, default; 0: end at once), as llama-server's")
    p.add_argument("--reasoning-budget-message", default="", metavar="MESSAGE",
                   help="text forced before </think> when the budget runs out (default: none)")
    p.add_argument("--no-prefill-assistant", dest="prefill_assistant", action="store_false",
                   help="a chat request ending with an assistant message starts a new answer instead of "
                        "continuing that one (llama-server's flag)")
    p.add_argument("--spm-infill", action="store_true",
                   help="fill-in-the-middle prompts (/infill, a completion's suffix) put the suffix before "
                        "the prefix, as some code models want (llama-server's flag)")
    p.add_argument("--no-slots", dest="slots", action="store_false",
                   help="do not answer GET /slots (the slots' state), as llama-server's flag")
    p.add_argument("--slots", dest="slots", action="store_true", default=True, help=argparse.SUPPRESS)
    p.add_argument("--slot-save-path", default=None, metavar="DIR",
                   help="folder where POST /slots/{id}?action=save|restore writes and reads slots' caches "
                        "(without it, that endpoint answers 501)")
    p.add_argument("--lora-init-without-apply", action="store_true",
                   help="load the LoRA adapters with scale 0 (set them later with POST /lora-adapters)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_model_options(p)
    add_speculative_options(p)
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.parallel < 1:
        raise ValueError(f"--parallel must be at least 1 (got {args.parallel})")
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be in [0, 65535] (got {args.port})")
    if args.slot_save_path is not None and not os.path.isdir(args.slot_save_path):
        raise ValueError(f"--slot-save-path {args.slot_save_path!r}: not a folder")
    spec = speculative_params(args)
    pooling = args.pooling if args.pooling is not None else -1
    extra = {"n_seq_max": args.parallel, "pooling_type": pooling, "spm_infill": args.spm_infill}
    with load_model(args, **extra) as model:
        if args.lora_init_without_apply:
            model.set_lora_scales([0.0] * len(model.lora_adapters))
        drafter = load_drafter(args, model)
        _serve(args, model, drafter=drafter, speculative=spec)
    return 0


def _serve(args: argparse.Namespace, model: Any, **engine_options: Any) -> None:
    import uvicorn

    from splitllm.api import create_app
    from splitllm.engine import BatchEngine

    with BatchEngine(model, **engine_options) as engine:
        app = create_app(engine, model_alias=args.model_alias, api_key=args.api_key,
                         chat_template_kwargs=args.chat_template_kwargs,
                         reasoning_format=args.reasoning_format, slots_endpoint=args.slots,
                         slot_save_path=args.slot_save_path, reasoning_budget=args.reasoning_budget,
                         reasoning_budget_message=args.reasoning_budget_message,
                         prefill_assistant=args.prefill_assistant)
        alias = app.state.service.alias
        print(f"splitllm: serving {alias!r} on http://{args.host}:{args.port}/v1 — {engine.n_parallel} slots "
              f"of {engine.slot_ctx} tokens, up to {engine.decode_width} decoded per pass"
              f"{engine.spec_summary()}"
              f"{', API key required' if args.api_key else ''}", file=sys.stderr)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=5)


class BackgroundServer:
    """Runs an ASGI app with uvicorn in a daemon thread on ``host`` (port 0: a free one).

    ``with BackgroundServer(app) as srv: ... srv.url ...``; the socket is bound before the thread
    starts, so there is no race for the port.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning") -> None:
        self.app = app
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = int(self._sock.getsockname()[1])
        self._log_level = log_level
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        import uvicorn

        config = uvicorn.Config(self.app, log_level=self._log_level, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="splitllm-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
