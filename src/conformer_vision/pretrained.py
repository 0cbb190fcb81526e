"""The published ImageNet-1k weights: which file each variant has, fetching it once into the torch
hub cache, and the ImageNet class names that go with 1000-class heads.

OpenMMLab publishes Conformer weights for ImageNet-1k at stable URLs (mmpretrain's Conformer model
table; tiny, small-p16 and base are the authors' release converted, small-p32 was trained by
mmpretrain). ``PUBLISHED`` lists them with the top-1 mmpretrain measured; each variant's timm
``pretrained_cfg`` carries the URL and that top-1 (``models.conformer.default_cfgs``), so ``create_model(name, pretrained=True)``,
``timm.create_model(name, pretrained=True)`` and the config's ``pretrained: imagenet`` load them.
The files are in mmpretrain's layout (``state_dict`` with ``backbone.`` / ``head.`` prefixes),
which ``models.convert`` maps to the model's names; they are read with ``torch.load(weights_only=True)``
like every other weights file.

Fetching (``fetch``):

- the cache is torch.hub's: ``torch.hub.get_dir()/checkpoints/<file name>`` (``$TORCH_HOME/hub/
  checkpoints``, ``~/.cache/torch/hub/checkpoints`` by default), also timm's and mmpretrain's, so a
  copy one of them downloaded is used as is. A file in the cache is used without downloading: only
  complete, verified downloads are ever put there (or a copy a user put there on purpose);
- the download streams into a hidden temporary file in the cache folder with a read timeout
  (``CONFORMER_DOWNLOAD_TIMEOUT`` seconds without data, default 30: torch.hub's own download has
  none, so a firewall that drops packets would hang it), checks the byte count against
  Content-Length and the SHA-256 against the 8 hex digits before ``.pth`` in the file name (OpenMMLab
  names its files so; torch.hub's ``HASH_REGEX`` reads them), and only then renames the file into
  place; on any failure, Ctrl-C included, the temporary file is removed and nothing is cached;
- every failure is one ``DownloadError`` line: what was tried (the URL, the cache path), why, and
  how to use a local copy (``pretrained_cfg_overlay=dict(file=PATH)``, ``--pretrained PATH``, or the
  file put at the cache path);
- ``CONFORMER_WEIGHTS_URL_BASE`` replaces OpenMMLab's folder URL with a mirror's (same file names,
  so the hash check still holds); urllib honours ``https_proxy`` / ``no_proxy``.

Import is torch-free (the config reads the table); torch and timm are imported where needed.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from .checkpoint import LoadedModel

__all__ = [
    "IMAGENET",
    "PUBLISHED",
    "PublishedWeights",
    "URL_BASE_ENV",
    "TIMEOUT_ENV",
    "DEFAULT_TIMEOUT_S",
    "DownloadError",
    "no_weights_message",
    "is_imagenet_name",
    "published_variant",
    "weights_url",
    "cache_path",
    "fetch",
    "imagenet_class_names",
    "load_published",
]

log = logging.getLogger("conformer_vision.pretrained")

IMAGENET = "imagenet"
"""The name of the published weights in configs and commands (``pretrained: imagenet``)."""

OPENMMLAB_BASE = "https://download.openmmlab.com/mmclassification/v0/conformer/"
URL_BASE_ENV = "CONFORMER_WEIGHTS_URL_BASE"
"""A mirror's folder URL that replaces ``OPENMMLAB_BASE`` (the file names stay)."""
TIMEOUT_ENV = "CONFORMER_DOWNLOAD_TIMEOUT"
"""Seconds a download may wait for data (connecting, or between two reads) before it gives up."""
DEFAULT_TIMEOUT_S = 30.0
_CHUNK = 1 << 20
_STALE_PARTIAL_S = 3600.0
"""A temporary file older than this is a dead download's (a live one writes every few seconds)."""


@dataclass(frozen=True)
class PublishedWeights:
    """One published weights file: its name in OpenMMLab's folder and mmpretrain's ImageNet-1k top-1."""

    file_name: str
    top1: float

    @property
    def url(self) -> str:
        return OPENMMLAB_BASE + self.file_name


PUBLISHED: dict[str, PublishedWeights] = {
    "conformer_tiny_patch16": PublishedWeights("conformer-tiny-p16_3rdparty_8xb128_in1k_20211206-f6860372.pth", 81.31),
    "conformer_small_patch32": PublishedWeights("conformer-small-p32_8xb128_in1k_20211206-947a0816.pth", 81.96),
    "conformer_small_patch16": PublishedWeights(
        "conformer-small-p16_3rdparty_8xb128_in1k_20211206-3065dcf5.pth", 83.32
    ),
    "conformer_base_patch16": PublishedWeights("conformer-base-p16_3rdparty_8xb128_in1k_20211206-bfdf8637.pth", 83.82),
}
"""Variant -> its ImageNet-1k weights (1000 classes, 224 px, bicubic, crop 0.875, ImageNet mean/std)."""


class DownloadError(CheckpointError):
    """Published weights could not be downloaded (offline, refused, timed out, truncated, wrong hash)."""


def no_weights_message(variant: str) -> str:
    """Why ``pretrained=True`` cannot load anything for ``variant``, and what to do instead."""
    return (
        f"no weights are downloaded for {variant}: it has no published weights (published: "
        f"{', '.join(PUBLISHED)}); pass pretrained=PATH to a checkpoint file (the authors', mmpretrain's, "
        "safetensors or this project's)"
    )


def is_imagenet_name(value: Any) -> bool:
    """True when ``value`` names the published weights (``imagenet``, any case) rather than a file.
    ConfigError when a file or folder of that name exists in the working folder too (its full path
    names it unambiguously)."""
    if not isinstance(value, (str, os.PathLike)) or os.fspath(value).lower() != IMAGENET:
        return False
    if Path(value).exists():
        raise ConfigError(
            f"'{os.fspath(value)}' names the published ImageNet weights, but there is also a file or "
            f"folder '{os.fspath(value)}' here: give that file's full path, or move it"
        )
    return True


def published_variant(arch: str | None, what: str = "--arch") -> str:
    """The canonical variant name of ``arch`` if it has published weights; ConfigError otherwise
    (``what``: the option that names it, for the message)."""
    from .models.variants import canonical_name

    choices = ", ".join(PUBLISHED)
    if not arch:
        raise ConfigError(f"the published ImageNet weights need a variant: give {what} (one of {choices})")
    try:
        variant = canonical_name(arch)
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None
    if variant not in PUBLISHED:
        raise ConfigError(
            f"{what} {arch} has no published ImageNet weights (published: {choices}); pick one of "
            "those, or give a weights file"
        )
    return variant


def weights_url(url: str) -> str:
    """``url`` with a mirror's folder (``CONFORMER_WEIGHTS_URL_BASE``) in place of OpenMMLab's."""
    base = os.environ.get(URL_BASE_ENV, "").strip()
    if base and url.startswith(OPENMMLAB_BASE):
        return base.rstrip("/") + "/" + url[len(OPENMMLAB_BASE) :]
    return url


def cache_path(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``url``'s file is cached: ``cache_dir`` (timm's ``cache_dir`` option) or torch.hub's
    ``get_dir()/checkpoints``, under the URL's file name."""
    name = os.path.basename(urlparse(url).path)
    if not name:
        raise ConfigError(f"{url} names no file (the cache keeps the file under the URL's last path part)")
    if cache_dir is None:
        from torch.hub import get_dir

        cache_dir = Path(get_dir()) / "checkpoints"
    return Path(cache_dir) / name


def _timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds")
    return value


def _hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix a file name carries (``...-f6860372.pth``), as torch.hub's ``check_hash`` reads it."""
    from torch.hub import HASH_REGEX

    match = HASH_REGEX.search(name)
    return match.group(1) if match and match.group(1) else None


def fetch(
    url: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    timeout: float | None = None,
    progress: bool | None = None,
    what: str = "the weights",
) -> Path:
    """The local path of ``url``'s weights file: the cached copy, else downloaded once into the cache
    (module docstring). ``url`` goes through ``weights_url`` (a mirror). ``timeout``: seconds without
    data (default ``CONFORMER_DOWNLOAD_TIMEOUT`` or 30); ``progress``: a progress bar on stderr
    (default: when stderr is a terminal); ``what`` names the weights in messages. Raises
    DownloadError in one line; nothing is left in the cache then."""
    source = weights_url(url)
    dst = cache_path(url, cache_dir)
    if dst.is_file():
        return dst
    timeout = _timeout() if timeout is None else timeout
    progress = sys.stderr.isatty() if progress is None else progress
    log.info("downloading %s from %s to %s", what, source, dst)
    try:
        _download(source, dst, timeout, progress)
    except DownloadError as e:
        raise DownloadError(f"could not download {what} from {source}: {e}; {_local_copy_hint(dst)}") from None
    return dst


def _local_copy_hint(dst: Path) -> str:
    return (
        f"nothing was cached at {dst}. Without internet access, copy the file there, or pass a local copy: "
        "pretrained_cfg_overlay=dict(file=PATH) in Python, --pretrained PATH on the command line "
        f"(a mirror: set {URL_BASE_ENV})"
    )


def _download(url: str, dst: Path, timeout: float, progress: bool) -> None:
    """Stream ``url`` into a temporary file beside ``dst``, check its length and hash, rename it to
    ``dst``. DownloadError (the reason alone) on failure; the temporary file never stays."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(dst)
        tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(6)}.partial")
        # os.open with 0o666: the umask decides the mode, as for torch.hub's downloads (mkstemp: 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise DownloadError(
            f"cannot write to the cache folder {dst.parent} ({e.strerror or e}); set TORCH_HOME to a writable folder"
        ) from None
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size, expected = _stream(url, out, timeout, progress)
        if expected is not None and size != expected:
            raise DownloadError(f"the connection closed after {size} of {expected} bytes (a truncated download)")
        want = _hash_prefix(dst.name)
        if want is not None and not digest.startswith(want):
            raise DownloadError(
                f"the file's SHA-256 is {digest[:16]}..., not the {want}... its name promises (a "
                "damaged download, or a mirror serving another file)"
            )
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _stream(url: str, out: Any, timeout: float, progress: bool) -> tuple[str, int, int | None]:
    """Copy ``url``'s body to ``out``: (SHA-256 hex digest, bytes read, Content-Length or None)."""
    request = urllib.request.Request(url, headers={"User-Agent": "conformer-vision"})
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            bar = _progress_bar(expected, progress)
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
    except urllib.error.HTTPError as e:
        raise DownloadError(f"the server answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, TimeoutError):
            raise DownloadError(_timed_out(timeout)) from None
        raise DownloadError(f"no connection ({reason})") from None
    except TimeoutError:
        raise DownloadError(_timed_out(timeout)) from None
    except http.client.HTTPException as e:  # a broken chunked body, a malformed answer
        raise DownloadError(f"the server's answer broke off ({type(e).__name__}) after {size} bytes") from None
    except OSError as e:  # the connection reset, or the cache's disk full
        raise DownloadError(f"{type(e).__name__}: {e.strerror or e} after {size} bytes") from None
    return digest.hexdigest(), size, expected


def _timed_out(timeout: float) -> str:
    return f"no data for {timeout:g} s (a firewall, or a stalled server; a slow link: raise {TIMEOUT_ENV})"


def _progress_bar(total: int | None, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)


def _remove_stale_partials(dst: Path) -> None:
    """Remove temporary files of ``dst`` that a killed download left (older than an hour; a live
    download's file is written every few seconds). Only this module's name pattern is touched."""
    pattern = re.compile(rf"\.{re.escape(dst.name)}\.[^/]+\.partial")
    now = time.time()
    for entry in dst.parent.iterdir():
        if pattern.fullmatch(entry.name) and entry.is_file():
            try:
                if now - entry.stat().st_mtime > _STALE_PARTIAL_S:
                    entry.unlink()
            except OSError:  # removed meanwhile by another process: fine
                pass


@functools.lru_cache(maxsize=1)
def _imagenet_descriptions() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo("imagenet-1k").label_descriptions())


def imagenet_class_names(count: int | None = 1000) -> list[str] | None:
    """ImageNet-1k's class names in the standard class order (timm's tables: WordNet lemmas such as
    'tench, Tinca tinca') when ``count`` is 1000; None for any other class count."""
    if count != 1000:
        return None
    return list(_imagenet_descriptions())


def load_published(arch: str | None, what: str = "--arch", **overrides: Any) -> LoadedModel:
    """The published ImageNet weights of ``arch`` as ``checkpoint.load_model`` returns a model file:
    the model in eval mode, its variant, the ImageNet class names and the weights' preprocessing (the
    variant's ``pretrained_cfg``: 224 px, bicubic, crop 0.875, ImageNet mean/std). ``overrides`` are
    ``ConformerArgs`` fields (e.g. ``fused_attn``). ConfigError for a variant without weights,
    DownloadError when they cannot be fetched."""
    from .checkpoint import LoadedModel
    from .models import create_model
    from .runtime import default_preprocess

    variant = published_variant(arch, what)
    model = create_model(variant, pretrained=True, **overrides).eval()
    return LoadedModel(
        model=model,
        arch=variant,
        class_names=imagenet_class_names(model.num_classes),
        preprocess=default_preprocess(model).to_dict(),
    )
