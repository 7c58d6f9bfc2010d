"""``msdn serve``: start the inference service with uvicorn.

Options override the ``MSDN_*`` environment (see ``service.settings``); the model must be an ONNX
file with its card (``msdn export``).
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="ONNX model (MSDN_MODEL_PATH; default models/default.onnx)")
    parser.add_argument("--host", help="bind address (MSDN_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (MSDN_PORT; default 8000)")
    parser.add_argument("--providers", help="auto, tensorrt, cuda or cpu (MSDN_PROVIDERS)")
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16"], help="MSDN_PRECISION")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (MSDN_INTRA_OP_THREADS)")
    parser.add_argument("--max-concurrent", type=int, help="concurrent inferences (MSDN_MAX_CONCURRENT_INFERENCES)")
    parser.add_argument("--api-key", action="append", help="require this API key (repeatable; MSDN_API_KEYS)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up run")


def settings_from_args(args: argparse.Namespace):
    """``Settings`` from the environment with the command-line options on top."""
    from service.settings import Settings

    overrides = {
        "model_path": args.model,
        "host": args.host,
        "port": args.port,
        "providers": args.providers,
        "precision": getattr(args, "precision", None),
        "intra_op_threads": args.threads,
        "max_concurrent_inferences": args.max_concurrent,
        "api_keys": args.api_key,
    }
    if args.no_warmup:
        overrides["warmup"] = False
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def uvicorn_options(settings) -> dict:
    """uvicorn settings from ``Settings``: address, the HTTP front's limits and timeouts."""
    from service.http_protocol import guarded_protocol

    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "http": guarded_protocol(settings.header_timeout_s),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keep_alive_s,
        "limit_concurrency": settings.max_connections,
        "proxy_headers": True,
        "server_header": False,
        # SIGTERM (docker stop): stop accepting, let running requests finish this long, then cut them
        # (service.shutdown answers those 503).
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
    }


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.errors import ModelLoadError
    from service.main import create_app
    from service.model import ModelRuntime

    settings = settings_from_args(args)
    try:  # load here, to fail with a clear message rather than deep inside uvicorn's start-up
        runtime = ModelRuntime.from_settings(settings)
    except ModelLoadError as exc:
        logger.error("%s", exc)
        return 2
    app = create_app(settings, runtime=runtime)
    logger.info(
        "serving %s on http://%s:%d (API keys %s)",
        settings.model_path,
        settings.host,
        settings.port,
        "on" if settings.auth_enabled else "off",
    )
    uvicorn.run(app, **uvicorn_options(settings))
    return 0
