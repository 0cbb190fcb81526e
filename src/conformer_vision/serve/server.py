"""Run the service: check the options, load the model, listen, serve with uvicorn until a signal.

``serve`` is what ``conformer serve`` calls. It binds the socket itself (so ``port=0`` picks a free
port and the log says which), logs ``listening on URL`` once bound and ``ready`` once the model is
warmed up. SIGTERM or SIGINT drain: ``/readyz`` and new requests answer 503, queued images run
without waiting for batches to fill, uvicorn stops accepting connections and waits for the requests
in flight; then the model thread ends and the process exits 0 (SIGTERM) or 130 (SIGINT).
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .app import ServeSettings, ServeState, create_app
from .model import open_served_model

__all__ = ["serve", "is_loopback", "exposure_warning", "API_KEY_ENV"]

log = logging.getLogger("conformer_vision.serve")

API_KEY_ENV = "CONFORMER_API_KEY"


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or a name) only reaches this machine."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a server other machines can reach without an API key (None when fine)."""
    if api_key or is_loopback(host):
        return None
    return (
        f"warning: listening on {host}, which other machines can reach, without an API key: anyone who can "
        f"reach this port can use the model; pass --api_key KEY (or set {API_KEY_ENV})"
    )


SERVE_PACKAGES = {
    "fastapi": ("fastapi",),
    "uvicorn": ("uvicorn",),
    "prometheus-client": ("prometheus_client",),
    "python-multipart": ("python_multipart", "multipart"),
}
"""What the service is built on: package to install -> the module names it is imported under."""


def _require_packages() -> None:
    """A clear error naming what to install when a package of the service is missing."""
    import importlib.util

    missing = []
    for package, modules in SERVE_PACKAGES.items():
        try:
            found = any(importlib.util.find_spec(m) is not None for m in modules)
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
            found = False
        if not found:
            missing.append(package)
    if missing:
        raise ConfigError(
            f"conformer serve needs {', '.join(missing)}, which this Python does not have: "
            f"pip install {' '.join(missing)}  (or reinstall conformer-vision)"
        )


def _check(settings: ServeSettings, port: int) -> None:
    positive = {
        "--max_batch_size": settings.max_batch_size,
        "--max_queue": settings.max_queue,
        "--max_images": settings.max_images,
        "--topk": settings.topk,
        "--timeout_s": settings.timeout_s,
        "--max_body_mb": settings.max_body_bytes,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if settings.max_wait_ms < 0:
        raise ConfigError(f"--max_wait_ms must be >= 0, got {settings.max_wait_ms}")
    if settings.max_images > settings.max_queue:
        raise ConfigError(
            f"--max_images ({settings.max_images}) cannot exceed --max_queue ({settings.max_queue}): "
            "such a request could never be admitted"
        )
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535 (0 = any free port), got {port}")
    if settings.api_key is not None and not settings.api_key.strip():
        raise ConfigError("--api_key is empty: give a non-empty key, or leave the option out")


def _listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket for ``host:port`` (uvicorn starts listening on it)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise ConfigError(f"--host {host!r} is not an address or a known host name ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)  # connections wait in the backlog until uvicorn serves them
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror}); choose another --port (0 picks a free one) or --host"
        ) from None
    return sock


def serve(
    model_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    arch: str | None = None,
    device: str = "cpu",
    use_ema: bool = False,
    precision: str = "O0",
    threads: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    access_log: bool = False,
) -> int:
    """Serve the model in ``model_path`` over HTTP until SIGTERM/SIGINT; returns the exit status.

    Options are checked and the model loaded before anything listens, so a bad option or file is a
    ConformerError (the CLI's exit status 2) with no server started.
    """
    _require_packages()
    import uvicorn

    settings = settings or ServeSettings()
    _check(settings, port)
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    warning = exposure_warning(host, settings.api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    model = open_served_model(
        model_path,
        arch=arch,
        device=device,
        use_ema=use_ema,
        precision=precision,
        threads=threads,
        image_size=image_size,
    )
    sock = _listen(host, port)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"http://{shown}:{bound[1]}"
    state = ServeState(model, settings)
    config = uvicorn.Config(
        create_app(state),
        lifespan="on",
        access_log=access_log,
        log_level="info",
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
    )
    server = _draining_server(config, state)
    _announce_when_ready(state, server, url)
    log.info(
        "listening on %s: %s (%s, %s), batches of up to %d (%g ms window), %d thread(s)",
        url,
        model.source,
        model.kind,
        model.describe()["precision"],
        settings.max_batch_size,
        settings.max_wait_ms,
        threads or torch.get_num_threads(),
    )
    previous = _quiet_sigterm()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if state.batcher.failed is not None:
        return 1
    log.info("stopped")
    return 0


def _draining_server(config: Any, state: ServeState) -> Any:
    """uvicorn's Server whose signal handler first puts the app into draining (503 for new work,
    no waiting for batches to fill), then lets uvicorn shut down gracefully."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not state.draining:
                log.info("%s: draining (new requests get 503, queued images run now)", signal.Signals(sig).name)
            state.drain()
            super().handle_exit(sig, frame)

    return DrainingServer(config)


def _announce_when_ready(state: ServeState, server: Any, url: str) -> None:
    """Log 'ready' once warmed up; stop the server when the warm-up failed (exit status 1)."""

    def watch() -> None:
        while not state.batcher.ready.wait(0.2):
            if state.batcher.failed is not None:
                log.error("the model failed to warm up; stopping")
                server.should_exit = True
                return
            if server.should_exit:
                return
        log.info("ready: %s (page %s/ , API %s/v1/predict, docs %s/docs)", url, url, url, url)

    threading.Thread(target=watch, name="conformer-ready", daemon=True).start()


def _quiet_sigterm() -> Any:
    """uvicorn re-raises the signal that stopped it once it is done; for SIGTERM that would kill the
    process after a clean drain. A no-op handler during the run makes that re-raise harmless."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
