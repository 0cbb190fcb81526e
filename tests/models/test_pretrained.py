"""The published ImageNet weights (``conformer_vision.pretrained``), tested without the internet.

Weights files in mmpretrain's layout are made here (a seeded conformer_mini_test with 1000 classes,
and a seeded conformer_tiny_patch16 stored in float16) and served from 127.0.0.1 by
``weights_server``; the URL is pointed at that server with ``pretrained_cfg_overlay=dict(url=...)``
or ``CONFORMER_WEIGHTS_URL_BASE``. The real variants' routes that need the real file name (whose
hash no made-up file can match) use a copy put into the torch hub cache, the documented offline
route. Every test runs with an empty torch hub cache of its own (``TORCH_HOME``), no proxy, and a
guard that fails any connection or name lookup that is not 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from weights_server import WeightsServer, refused_port, silent_port

import conformer_vision
from conformer_vision import create_model
from conformer_vision.config import Config
from conformer_vision.errors import ConfigError
from conformer_vision.pretrained import (
    PUBLISHED,
    TIMEOUT_ENV,
    URL_BASE_ENV,
    DownloadError,
    cache_path,
    imagenet_class_names,
    is_imagenet_name,
    weights_url,
)

MINI = "conformer_mini_test"
TINY = "conformer_tiny_patch16"
LOCAL = ("127.0.0.1", "::1", "localhost")
FIRST_IMAGENET_CLASS = "tench, Tinca tinca"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No connection or name lookup beyond 127.0.0.1; an empty torch hub cache; no proxy; defaults."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:  # type: ignore[index]
            raise AssertionError(f"a test tried to reach {address}")
        return real_connect(sock, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host not in (*LOCAL, None):
            raise AssertionError(f"a test tried to look up {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.delenv(URL_BASE_ENV, raising=False)
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)


def _to_mmpretrain(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our key names -> mmpretrain's (``backbone.``/``head.`` prefixes, ln1/ln2, ffn.layers)."""
    renames = (
        (".norm1.", ".ln1."),
        (".norm2.", ".ln2."),
        (".mlp.fc1.", ".ffn.layers.0.0."),
        (".mlp.fc2.", ".ffn.layers.1."),
    )
    out = {}
    for key, value in sd.items():
        if key.startswith(("conv_cls_head.", "trans_cls_head.")):
            out["head." + key] = value
            continue
        if re.match(r"(trans_1|conv_trans_\d+\.trans_block)\.", key):
            for old, new in renames:
                key = key.replace(old, new)
        out["backbone." + key] = value
    return out


def _mmpretrain_file(sd: dict[str, torch.Tensor]) -> bytes:
    """A checkpoint as OpenMMLab publishes them: ``{'meta': ..., 'state_dict': mmpretrain keys}``."""
    buf = io.BytesIO()
    torch.save({"meta": {"mmcls_version": "0.18.0", "CLASSES": ["tench"]}, "state_dict": _to_mmpretrain(sd)}, buf)
    return buf.getvalue()


def _hashed_name(data: bytes, stem: str = "conformer-mini_in1k") -> str:
    """``STEM-<first 8 hex digits of the SHA-256>.pth``: the naming torch.hub's hash check reads."""
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


@pytest.fixture(scope="module")
def mini() -> tuple[bytes, dict[str, torch.Tensor]]:
    """(file bytes, state dict) of a seeded conformer_mini_test with 1000 classes, mmpretrain layout."""
    torch.manual_seed(0)
    sd = create_model(MINI).state_dict()
    return _mmpretrain_file(sd), sd


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """(file, the state dict it loads as) of a seeded conformer_tiny_patch16 in mmpretrain's layout,
    stored in float16 to halve its 94 MB."""
    torch.manual_seed(1)
    sd = create_model(TINY).state_dict()
    for head in ("conv_cls_head.weight", "trans_cls_head.weight"):  # spread the logits: a clear top-5
        sd[head] *= 50
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    path = tmp_path_factory.mktemp("tiny") / "conformer-tiny-local.pth"
    path.write_bytes(_mmpretrain_file(half))
    return path, {k: v.float() if v.is_floating_point() else v for k, v in half.items()}


def _cache_copy(tiny_file: Path) -> Path:
    """``tiny_file`` put where the published tiny weights are cached (the offline route)."""
    dst = cache_path(PUBLISHED[TINY].url)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(tiny_file, dst)
    return dst


def _cache_entries() -> list[str]:
    folder = cache_path(PUBLISHED[TINY].url).parent
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _assert_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    own = model.state_dict()
    different = [k for k in sd if not k.startswith(skip) and not torch.equal(own[k], sd[k])]
    assert not different, different[:5]


def _assert_one_line_download_error(error: pytest.ExceptionInfo[DownloadError], url: str, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in (
        url,
        str(cache_path(url)),
        "pretrained_cfg_overlay=dict(file=PATH)",
        "--pretrained PATH",
        "nothing was cached",
        *fragments,
    ):
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---------------------------------------------------------------------------------------------
# The table and the cfgs


def test_each_published_variant_has_a_url_with_a_hash_in_its_cfg():
    assert sorted(timm.list_models("conformer*", pretrained=True)) == sorted(PUBLISHED)
    for variant, weights in PUBLISHED.items():
        cfg = timm.models.get_pretrained_cfg(variant)
        assert cfg.url == weights.url and cfg.url.startswith("https://download.openmmlab.com/")
        assert re.search(r"-[0-9a-f]{8}\.pth$", cfg.url) and cfg.num_classes == 1000
        assert any(str(weights.top1) in note for note in cfg.notes)
    assert not timm.models.get_pretrained_cfg(MINI).url


def test_mini_test_has_no_published_weights_and_says_so():
    for build in (create_model, timm.create_model):
        with pytest.raises(
            ValueError,
            match="no weights are downloaded for conformer_mini_test: it has no published "
            "weights .*pass pretrained=PATH",
        ):
            build(MINI, pretrained=True)


# ---------------------------------------------------------------------------------------------
# Downloading: success, the cache, and each failure


@pytest.mark.slow
def test_pretrained_true_downloads_once_into_the_torch_hub_cache(mini, tmp_path, caplog):
    data, sd = mini
    path = "/weights/" + _hashed_name(data)
    with WeightsServer({path: data}) as server:
        url = server.url(path)
        model = create_model(MINI, pretrained=True, pretrained_cfg_overlay=dict(url=url))
        _assert_weights(model, sd)
        assert server.requests[path] == 1
        cached = tmp_path / "torch" / "hub" / "checkpoints" / path.rsplit("/", 1)[1]
        assert [p.name for p in cached.parent.iterdir()] == [cached.name] and cached.read_bytes() == data
        with caplog.at_level(logging.WARNING):  # timm's route, fine-tuning to 10 classes: the cached file
            again = timm.create_model(MINI, pretrained=True, pretrained_cfg_overlay=dict(url=url), num_classes=10)
        assert server.requests[path] == 1 and again.num_classes == 10
        _assert_weights(again, sd, skip=("conv_cls_head", "trans_cls_head"))
        assert "re-initialised both heads" in caplog.text
        features = timm.create_model(MINI, pretrained=True, features_only=True, pretrained_cfg_overlay=dict(url=url))
        assert server.requests[path] == 1 and len(features.feature_info.channels()) == 4


def test_a_wrong_hash_is_refused_and_nothing_is_cached(mini):
    data, _ = mini
    path = "/conformer-mini_in1k-00000000.pth"  # the name promises another file
    with WeightsServer({path: data}) as server:
        url = server.url(path)
        for attempt in (1, 2):  # nothing was kept: the second call downloads again
            with pytest.raises(DownloadError) as error:
                create_model(MINI, pretrained=True, pretrained_cfg_overlay=dict(url=url))
            assert server.requests[path] == attempt
            assert _cache_entries() == []
    _assert_one_line_download_error(
        error, url, f"SHA-256 is {hashlib.sha256(data).hexdigest()[:16]}", "not the 00000000"
    )


def test_a_truncated_download_is_refused_and_nothing_is_cached(mini):
    data, _ = mini
    path = "/" + _hashed_name(data)
    with WeightsServer({path: data}, truncate=True) as server:
        url = server.url(path)
        with pytest.raises(DownloadError) as error:
            create_model(MINI, pretrained=True, pretrained_cfg_overlay=dict(url=url))
    _assert_one_line_download_error(error, url, f"closed after {len(data) // 2} of {len(data)} bytes", "truncated")
    assert _cache_entries() == []


def test_a_refused_connection_is_one_line_at_once():
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}/conformer-mini_in1k-0123abcd.pth"
        start = time.monotonic()
        with pytest.raises(DownloadError) as error:
            create_model(MINI, pretrained=True, pretrained_cfg_overlay=dict(url=url))
    assert time.monotonic() - start < 5
    _assert_one_line_download_error(error, url, "no connection (", "refused")
    assert _cache_entries() == []


def test_a_server_that_never_answers_times_out_in_seconds(monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")
    with silent_port() as port:
        url = f"http://127.0.0.1:{port}/conformer-mini_in1k-0123abcd.pth"
        start = time.monotonic()
        with pytest.raises(DownloadError) as error:
            create_model(MINI, pretrained=True, pretrained_cfg_overlay=dict(url=url))
    assert time.monotonic() - start < 10
    _assert_one_line_download_error(error, url, "no data for 0.5 s", TIMEOUT_ENV)
    assert _cache_entries() == []


def test_a_bad_timeout_setting_is_a_config_error(monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError, match=f"{TIMEOUT_ENV}='soon' is not a positive number of seconds"):
        create_model(MINI, pretrained=True, pretrained_cfg_overlay=dict(url="http://127.0.0.1:9/w-0123abcd.pth"))


def test_a_mirror_serves_the_published_file_names(mini, monkeypatch):
    """CONFORMER_WEIGHTS_URL_BASE replaces OpenMMLab's folder; the file name, hence the hash check,
    stays: a mirror serving another file is refused."""
    data, _ = mini
    name = PUBLISHED[TINY].file_name
    assert weights_url(PUBLISHED[TINY].url) == PUBLISHED[TINY].url
    with WeightsServer({f"/mirror/{name}": data}) as server:
        monkeypatch.setenv(URL_BASE_ENV, server.url("/mirror/"))
        assert weights_url(PUBLISHED[TINY].url) == server.url(f"/mirror/{name}")
        with pytest.raises(DownloadError, match=f"from {re.escape(server.url('/mirror/' + name))}: the file's SHA-256"):
            create_model(TINY, pretrained=True)
        assert server.requests == {f"/mirror/{name}": 1}
    assert _cache_entries() == []


def test_temporary_files_of_a_killed_download_are_removed(mini):
    data, sd = mini
    name = _hashed_name(data)
    folder = cache_path(f"http://x/{name}").parent
    folder.mkdir(parents=True)
    dead, live, other = folder / f".{name}.0a1b2c.partial", folder / f".{name}.3d4e5f.partial", folder / "keep.partial"
    for path in (dead, live, other):
        path.write_bytes(b"half")
    os.utime(dead, (time.time() - 7200, time.time() - 7200))
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    with WeightsServer({"/" + name: data}) as server:
        _assert_weights(
            create_model(MINI, pretrained=True, pretrained_cfg_overlay=dict(url=server.url("/" + name))), sd
        )
    assert sorted(p.name for p in folder.iterdir()) == sorted([live.name, other.name, name])


@pytest.mark.slow
def test_a_local_copy_loads_without_the_network(tiny):
    """The offline routes of the error message: the file passed with pretrained_cfg_overlay, or put at
    the cache path; the guard of this module fails any connection attempt."""
    path, sd = tiny
    _assert_weights(create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))), sd)
    assert _cache_entries() == []
    _cache_copy(path)
    _assert_weights(timm.create_model(TINY, pretrained=True), sd)


def test_another_input_channel_count_adapts_the_stem_as_timm_does(tiny):
    """timm's own pretrained test builds ``in_chans=1`` with ``num_classes=5`` and ``0`` from the
    published weights: the stem's RGB filters are summed into one channel (timm's
    ``adapt_input_conv``), the heads re-initialised or, without heads, left out."""
    path, sd = tiny
    _cache_copy(path)
    grey = timm.create_model(TINY, pretrained=True, in_chans=1, num_classes=5)
    assert grey.conv1.weight.shape[1] == 1 and grey.num_classes == 5
    summed = sd["conv1.weight"].sum(dim=1, keepdim=True)  # the file is float16: summed, then rounded to it
    torch.testing.assert_close(grey.conv1.weight, summed.half().float(), rtol=0, atol=0)
    _assert_weights(grey, sd, skip=("conv1.weight", "conv_cls_head", "trans_cls_head"))
    assert grey.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 5)
    headless = timm.create_model(TINY, pretrained=True, in_chans=1, num_classes=0)  # the file's heads unused
    _assert_weights(headless, sd, skip=("conv1.weight", "conv_cls_head", "trans_cls_head"))
    assert headless.eval()(torch.randn(1, 1, 64, 64)).shape == (1, headless.num_features)


# ---------------------------------------------------------------------------------------------
# The config, fine-tuning, ImageNet's class names


def test_the_imagenet_name_in_the_config(tmp_path, monkeypatch):
    assert Config(arch="conformer_tiny", pretrained="ImageNet").pretrained == "imagenet"
    with pytest.raises(
        ConfigError, match="pretrained: imagenet: conformer_mini_test has no published ImageNet weights"
    ):
        Config(arch=MINI, pretrained="imagenet")
    assert not is_imagenet_name("imagenet.pth") and not is_imagenet_name(None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imagenet").write_bytes(b"a user's file")
    with pytest.raises(ConfigError, match="there is also a file or folder 'imagenet' here: give that file's full path"):
        Config(arch=TINY, pretrained="imagenet")


@pytest.mark.slow
def test_fine_tuning_from_the_published_weights_reinitialises_the_heads(tiny, caplog):
    from conformer_vision.train import build_model

    path, sd = tiny
    _cache_copy(path)
    with caplog.at_level(logging.WARNING):
        model = build_model(Config(arch=TINY, pretrained="imagenet", num_classes=3), 3)
    assert model.num_classes == 3 and model.training
    _assert_weights(model, sd, skip=("conv_cls_head", "trans_cls_head"))
    assert "its heads have 1000 classes, the model has 3" in caplog.text


def test_imagenet_class_names_come_with_1000_classes():
    names = imagenet_class_names(1000)
    assert len(names) == 1000 and names[0] == FIRST_IMAGENET_CLASS  # in the standard (synset-sorted) order
    assert (names[207], names[281]) == ("golden retriever", "tabby, tabby cat")
    assert imagenet_class_names(10) is None


@pytest.mark.slow
def test_serve_and_visualize_name_1000_unnamed_classes(mini, tiny, tmp_path, monkeypatch):
    """A foreign 1000-class file (no class names) is served and drawn with ImageNet's names, and
    visualize opens the published weights by name."""
    import conformer_vision.visualize as V
    from conformer_vision.serve.model import ServedModel, open_served_model

    _, sd = mini
    plain = tmp_path / "mini_imagenet.pth"
    torch.save(sd, plain)
    served = open_served_model(plain, arch=MINI, image_size=32)
    assert served.class_names[0] == FIRST_IMAGENET_CLASS and served.describe()["classes"][:1] == [FIRST_IMAGENET_CLASS]
    from conformer_vision.runtime import TorchPredictor

    bare = ServedModel(TorchPredictor(create_model(MINI)), Path("folder"), "hub folder")  # predictor without names
    assert bare.class_names[0] == FIRST_IMAGENET_CLASS
    _cache_copy(tiny[0])
    published = open_served_model("imagenet", arch="conformer_tiny", image_size=32)  # `conformer serve imagenet`
    assert published.describe()["arch"] == TINY and published.class_names[0] == FIRST_IMAGENET_CLASS

    drawn: list[tuple[list[str], str]] = []  # the names and title the figure gets (drawing it takes seconds)
    monkeypatch.setattr(
        V, "render_explanation", lambda exp, names, path, *a, title="", **k: drawn.append((names, title))
    )
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(photo)
    V.visualize_image(photo, plain, output=tmp_path / "mini.png", arch=MINI, input_size=(32, 32))
    V.visualize_image(photo, "imagenet", output=tmp_path / "tiny.png", arch=TINY, input_size=(64, 64))
    assert [names[0] for names, _ in drawn] == [FIRST_IMAGENET_CLASS] * 2 and len(drawn[1][0]) == 1000
    assert f"{TINY}  |  imagenet" in drawn[1][1]


# ---------------------------------------------------------------------------------------------
# conformer predict --pretrained imagenet


@pytest.mark.slow
def test_predict_with_the_published_weights_prints_imagenet_names(tiny, tmp_path):
    """The README's command as a real process: the weights come from the cache (the mirror variable
    points at a refused port, so a download attempt would fail), five ImageNet names are printed and
    written, and they are the classes the model gives in this process."""
    from conformer_vision.data.images import load_rgb
    from conformer_vision.data.transforms import Preprocess, preprocess_image

    path, sd = tiny
    cached = _cache_copy(path)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(photo)
    src = Path(conformer_vision.__file__).resolve().parents[1]
    with refused_port() as port:
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", URL_BASE_ENV: f"http://127.0.0.1:{port}/"}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "conformer_vision",
                "predict",
                str(photo),
                "--arch",
                "conformer_tiny",
                "--pretrained",
                "imagenet",
                "--topk",
                "5",
                "--output",
                str(tmp_path / "p.json"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cached.is_symlink() and _cache_entries() == [cached.name]
    names = imagenet_class_names()
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith(f"{photo} (class: ") and len(lines) == 6
    printed = [re.fullmatch(r"\s+\d+\.\d\d%  (.+) \(class (\d+)\)", line) for line in lines[1:]]
    assert all(printed) and all(names[int(m.group(2))] == m.group(1) for m in printed)
    doc = json.loads((tmp_path / "p.json").read_text())[str(photo)]
    assert [p["name"] for p in doc] == [m.group(1) for m in printed]

    model = create_model(TINY).eval()
    model.load_state_dict(sd)
    with torch.no_grad():
        probs = model(preprocess_image(load_rgb(photo), Preprocess())[None]).softmax(dim=1)[0]
    assert [p["class"] for p in doc] == probs.topk(5).indices.tolist()
    assert np.allclose([p["prob"] for p in doc], probs.topk(5).values.numpy(), atol=1e-4) and doc[0]["prob"] > 0.05


@pytest.mark.slow
def test_eval_with_the_published_weights_maps_imagenet_synset_folders(tiny, tmp_path):
    """``conformer eval --pretrained imagenet``: the model file names no classes, so the val folders
    (ImageNet's synset names, n01440764 ...) are the classes in sorted order, as for the authors' files."""
    import inference_testlib as T

    _cache_copy(tiny[0])
    synsets = sorted(timm.data.ImageNetInfo().label_names())
    for i, synset in enumerate(synsets):
        (tmp_path / "data" / "val" / synset).mkdir(parents=True)
        Image.new("RGB", (8, 8), (i % 256, i // 256, 0)).save(tmp_path / "data" / "val" / synset / "a.png")
    rc, out, err = T.cli(
        "eval",
        "--pretrained",
        "imagenet",
        "--arch",
        TINY,
        "--data_url",
        str(tmp_path / "data"),
        "--val_dir",
        "val",
        "--num_parallel_workers",
        "0",
        "--device_target",
        "cpu",
        "--val_num_samples",
        "4",
        "--image_size",
        "64",
        "--output",
        str(tmp_path / "m.json"),
    )
    assert rc == 0, err
    assert "evaluating imagenet at 64x64" in out
    assert [row["name"] for row in json.loads((tmp_path / "m.json").read_text())["per_class"]] == synsets


def test_predict_pretrained_errors_are_one_line(tmp_path, monkeypatch):
    import inference_testlib as T

    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(photo)
    out = str(tmp_path / "p.json")
    rc, _, err = T.cli("predict", str(photo), "--pretrained", "imagenet", "--output", out)
    assert rc == 2 and "the published ImageNet weights need a variant: give --arch" in err
    rc, _, err = T.cli("predict", str(photo), "--pretrained", "imagenet", "--arch", MINI, "--output", out)
    assert rc == 2 and f"--arch {MINI} has no published ImageNet weights" in err
    rc, _, err = T.cli("predict", str(photo), "--pretrained", "imagenet", "--checkpoint", "m.pt", "--output", out)
    assert rc == 2 and "not allowed with argument" in err
    with refused_port() as port:  # offline: nothing in the cache, the (mirror) server unreachable
        monkeypatch.setenv(URL_BASE_ENV, f"http://127.0.0.1:{port}")
        rc, _, err = T.cli(
            "predict", str(photo), "--pretrained", "imagenet", "--arch", "conformer_small_patch32", "--output", out
        )
    lines = err.strip().splitlines()
    assert rc == 2 and "Traceback" not in err and _cache_entries() == []
    assert (
        "could not download conformer_small_patch32's pretrained weights" in lines[-1]
        and "--pretrained PATH" in lines[-1]
    )
