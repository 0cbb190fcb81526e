"""Training runs on a tiny generated ImageFolder with conformer_mini_test (seconds each, in process):
what a run writes, config -> component mappings, exact resume, non-finite losses, output-folder
policy, checkpoint rotation and transfer learning."""

from __future__ import annotations

import json
import logging
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_entry import nan_loss_at_steps, signal_at_step  # tests/fault_entry.py (pytest pythonpath: tests)
from PIL import Image
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from conformer_vision import checkpoint as ckpt_module
from conformer_vision.checkpoint import CheckpointManager, load_model, read_checkpoint
from conformer_vision.config import Config, load_config
from conformer_vision.distributed import DistInfo, GlooSyncBatchNorm
from conformer_vision.errors import ConfigError
from conformer_vision.rundir import RunManifest, run_dir_for
from conformer_vision.train import RunSetup, TrainingError, build_model, build_run, run_dir_of, train


def write_dataset(root: Path, classes: int = 3, train: int = 16, val: int = 4, size: int = 32) -> Path:
    """root/{train,val}/class{c}/k.png: noise images whose channel c is brighter (learnable)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
                pixels[..., c % 3] += 150
                Image.fromarray(pixels).save(folder / f"{k:02d}.png")
    return root


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and far faster on a busy machine


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


def make_config(data: Path, out: Path, **overrides: object) -> Config:
    base = dict(
        data_url=str(data),
        train_dir="train",
        val_dir="val",
        arch="conformer_mini_test",
        num_classes=3,
        image_size=32,
        batch_size=8,
        epochs=2,
        augment=False,
        num_parallel_workers=0,
        warmup_length=1,
        device_target="cpu",
        drop_path=0.0,
        print_loss_every=2,
        summary_loss_collect_freq=1,
        ckpt_save_every_seconds=0,
        ckpt_root_dir=str(out / "checkpoints"),
        best_ckpt_root_dir=str(out / "best"),
        summary_root_dir=str(out / "summary"),
    )
    if overrides.get("epochs") == 1:
        base["warmup_length"] = 0
    return load_config(None, {**base, **overrides})


def final_state(result) -> dict:
    return read_checkpoint(result.last_checkpoint)


@pytest.mark.slow
def test_run_writes_config_metrics_events_and_self_describing_checkpoints(data: Path, tmp_path: Path) -> None:
    cfg = make_config(
        data,
        tmp_path / "run",
        ckpt_save_every_step=2,
        ckpt_keep_num=2,
        best_ckpt_num=1,
        with_ema=True,
        ema_decay=0.5,
        dump_graph=True,
        collect_input_data=True,
    )
    result = train(cfg)
    run_dir = tmp_path / "run"
    assert result.status == "completed" and result.exit_code == 0 and result.step == 12
    assert run_dir_of(cfg) == run_dir.absolute()
    assert load_config(run_dir / "config.yaml").to_dict() == cfg.to_dict()
    assert json.loads((run_dir / "class_names.json").read_text()) == ["class0", "class1", "class2"]
    assert list((run_dir / "summary").glob("events.out.tfevents.*"))
    assert (run_dir / "model.txt").read_text().startswith("conformer_mini_test: ")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if r["kind"] == "train"]
    val_lines = [r for r in lines if r["kind"] == "val"]
    assert [r["step"] for r in train_lines] == [2, 4, 6, 8, 10, 12] and [r["epoch"] for r in val_lines] == [1, 2]
    assert [r["epoch"] for r in train_lines] == [1, 1, 1, 2, 2, 2]  # 1-based, as in the log and the file names
    assert {"time", "loss", "lr", "images_per_s"} <= set(train_lines[0])
    assert {"Loss", "Top1-Acc", "Top5-Acc", "conv_top1", "trans_top1", "ema_Top1-Acc", "ema_trans_loss"} <= set(
        val_lines[-1]
    )
    # rotation: every 2 steps and at each epoch end, keep the 2 newest; 1 best
    latest = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert latest == ["conformer_mini_test_0_e0001_s00000010.pt", "conformer_mini_test_0_e0002_s00000012.pt"]
    assert len(list((run_dir / "best").glob("*.pt"))) == 1
    obj = read_checkpoint(result.last_checkpoint)  # weights_only
    assert obj["config"] == cfg.to_dict() and obj["class_names"] == ["class0", "class1", "class2"]
    assert obj["preprocess"]["input_size"] == [32, 32] and obj["ema"] is not None
    ts = obj["train_state"]
    assert (ts["epoch"], ts["batch_in_epoch"], ts["step"], ts["sampler_seed"]) == (2, 0, 12, 0)
    assert {"optimizer", "scheduler", "scaler", "rng"} <= set(ts) and isinstance(
        ts["rng"][0]["numpy"]["keys"], torch.Tensor
    )
    assert obj["metrics"]["Top1-Acc"] == pytest.approx(val_lines[-1]["Top1-Acc"])
    loaded = load_model(result.last_checkpoint, use_ema=True)
    assert loaded.class_names == ["class0", "class1", "class2"] and loaded.arch == "conformer_mini_test"
    # the manifest lists exactly the files the run wrote and still has, wherever they lie
    manifest = RunManifest.read(run_dir)
    written = {p for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith(".conformer-run")}
    assert manifest.prefix == "conformer_mini_test_0" and set(manifest.existing()) == {p.absolute() for p in written}


@pytest.mark.slow
def test_timed_checkpoints(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 10_000, 7))  # every call to the clock: 7 more seconds
    monkeypatch.setattr(ckpt_module.time, "monotonic", lambda: float(next(clock)))
    result = train(make_config(data, tmp_path / "run", epochs=1, ckpt_save_every_seconds=10, ckpt_keep_num=100))
    steps = sorted(int(p.stem.rsplit("_s", 1)[1]) for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert result.step == 6 and steps[-1] == 6 and len(steps) >= 3  # mid-epoch saves + the epoch end


def components(data: Path, tmp_path: Path, **overrides: object) -> RunSetup:
    return build_run(make_config(data, tmp_path / "run", **overrides), DistInfo(), torch.device("cpu"), None)


@pytest.mark.slow
def test_options_map_to_components(data: Path, tmp_path: Path) -> None:
    t = components(
        data,
        tmp_path,
        augment=True,
        mixup=0.8,
        cutmix=1.0,
        mixup_prob=0.5,
        switch_prob=0.3,
        mixup_mode="pair",
        mixup_off_epoch=1.5,
        label_smoothing=0.2,
        optimizer="sgd",
        momentum=0.8,
        base_lr=0.05,
        with_ema=True,
        ema_decay=0.99,
        amp_level="O1",
        is_dynamic_loss_scale=False,
        loss_scale=128,
        use_clip_grad_norm=True,
        clip_grad_norm=2.0,
        sync_bn=True,
        warmup_length=0,
    )
    p = t.parts
    assert isinstance(p.criterion.base, SoftTargetCrossEntropy)
    assert (
        p.mixup.mixup_alpha,
        p.mixup.cutmix_alpha,
        p.mixup.mix_prob,
        p.mixup.switch_prob,
        p.mixup.mode,
        p.mixup.label_smoothing,
    ) == (0.8, 1.0, 0.5, 0.3, "pair", 0.2)
    assert p.mixup_off_step == 9  # 1.5 epochs x 6 steps
    assert isinstance(p.optimizer, torch.optim.SGD) and p.optimizer.defaults["momentum"] == 0.8
    assert p.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert p.ema.decay == 0.99 and p.clip_grad_norm == 2.0
    assert p.amp_dtype == torch.float16 and p.scaler.get_scale() == 128 and p.static_loss_scale == 128
    assert any(isinstance(m, GlooSyncBatchNorm) for m in t.model.modules())
    t = components(
        data,
        tmp_path,
        augment=True,
        mixup=0.0,
        cutmix=0.0,
        label_smoothing=0.1,
        amp_level="bf16",
        use_clip_grad_norm=False,
        channels_last=True,
    )
    p = t.parts
    assert p.mixup is None and isinstance(p.criterion.base, LabelSmoothingCrossEntropy)
    assert p.amp_dtype == torch.bfloat16 and p.scaler is None and p.ema is None and p.clip_grad_norm is None
    assert isinstance(p.optimizer, torch.optim.AdamW)
    assert t.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    t = components(data, tmp_path, amp_level="O2", loss_scale=64)  # dynamic by default
    assert t.parts.scaler.get_scale() == 64 and t.parts.static_loss_scale is None
    assert isinstance(t.parts.criterion.base, torch.nn.CrossEntropyLoss)  # augment off: no smoothing
    with pytest.raises(ConfigError, match="even"):
        components(data, tmp_path, augment=True, mixup=0.8, batch_size=7)
    with pytest.raises(ConfigError, match="num_classes is 5"):
        components(data, tmp_path, num_classes=5)


@pytest.mark.slow
@pytest.mark.parametrize(("amp", "epochs", "workers"), [("O0", 2, 0), ("O1", 1, 0), ("O0", 2, 2)])
def test_exact_resume_after_sigterm(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amp: str, epochs: int, workers: int
) -> None:
    """Interrupted mid-epoch and resumed: bitwise the weights of an uninterrupted run, with every
    random augmentation on (crop, flip, RandAugment, erasing, mixup/cutmix, drop path) and EMA.
    The interrupted run may use loader workers: each image's augmentation depends on (seed, epoch,
    index) only, so the reference run without workers is matched bit for bit too."""
    recipe = dict(
        augment=True,
        auto_augment="rand-m9-mstd0.5-inc1",
        re_prob=0.5,
        mixup=0.8,
        cutmix=1.0,
        drop_path=0.1,
        with_ema=True,
        ema_decay=0.9,
        amp_level=amp,
        epochs=epochs,
    )
    reference = final_state(train(make_config(data, tmp_path / "a", **recipe)))
    recipe["num_parallel_workers"] = workers
    with monkeypatch.context() as fault:
        signal_at_step(fault.setattr, 4, signal.SIGTERM)
        stopped = train(make_config(data, tmp_path / "b", **recipe))
    assert (stopped.status, stopped.exit_code, stopped.step) == ("interrupted", 143, 4)
    assert read_checkpoint(stopped.last_checkpoint)["train_state"]["batch_in_epoch"] == 4
    resumed = final_state(train(make_config(data, tmp_path / "b", checkpoint="auto", **recipe)))
    for key in ("model", "ema"):
        assert all(torch.equal(reference[key][k], resumed[key][k]) for k in reference[key]), key
    assert reference["train_state"]["optimizer"]["state"][0]["exp_avg"].equal(
        resumed["train_state"]["optimizer"]["state"][0]["exp_avg"]
    )
    lines = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    for kind in ("train", "val"):  # one history: the lines of the interrupted run after step 4 were dropped
        steps = [r["step"] for r in lines if r["kind"] == kind]
        assert steps == sorted(set(steps)), kind


@pytest.mark.slow
def test_nonfinite_loss_is_skipped_then_fatal(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with monkeypatch.context() as fault, caplog.at_level(logging.WARNING, logger="conformer_vision.train"):
        nan_loss_at_steps(fault.setattr, [3])
        result = train(make_config(data, tmp_path / "a", epochs=1))
    assert result.status == "completed" and "step 3: non-finite loss, update skipped" in caplog.text
    state = final_state(result)
    assert state["train_state"]["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    nan_loss_at_steps(monkeypatch.setattr, [2, 3, 4])
    with pytest.raises(TrainingError, match="3 consecutive steps"):
        train(make_config(data, tmp_path / "b", epochs=1, max_nonfinite_steps=3, ckpt_save_every_step=1))
    # the checkpoints written before the failure hold finite weights only (steps 1-4: skipped steps do not update)
    for path in (tmp_path / "b" / "checkpoints").glob("*.pt"):
        assert all(torch.isfinite(v).all() for v in read_checkpoint(path)["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_output_folder_holding_a_run_is_refused_unless_overwrite(data: Path, tmp_path: Path) -> None:
    train(make_config(data, tmp_path / "run", epochs=1))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(make_config(data, tmp_path / "run", epochs=1))
    result = train(make_config(data, tmp_path / "run", epochs=1, overwrite=True, model_postfix="v2"))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert names == ["conformer_mini_test_v2_e0001_s00000006.pt"] and result.exit_code == 0
    assert len(list((tmp_path / "run" / "summary").glob("events.*"))) == 1
    assert RunManifest.read(tmp_path / "run").prefix == "conformer_mini_test_v2"


def test_run_directory_is_never_the_working_directory(tmp_path: Path) -> None:
    """The run's config.yaml and metrics.jsonl never land beside the user's files in the working
    directory: a checkpoint folder directly in it (or the working directory itself) is the run
    directory; deeper layouts keep the parent."""
    assert run_dir_for("runs/x/checkpoints", cwd=tmp_path) == tmp_path / "runs" / "x"
    assert run_dir_for("ckpt", cwd=tmp_path) == tmp_path / "ckpt"
    assert run_dir_for(".", cwd=tmp_path) == tmp_path
    assert run_dir_for(tmp_path.parent / "ck", cwd=tmp_path) == tmp_path.parent / "ck"
    assert run_dir_for("/ck", cwd=tmp_path) == Path("/ck")


def test_rotation_removes_only_files_the_run_wrote(tmp_path: Path) -> None:
    """Checkpoints of the same name pattern that another process wrote in a shared folder are
    neither rotated away nor ranked among the best, and are never overwritten."""
    model = build_model(make_config(tmp_path, tmp_path / "run", num_classes=3), 3)
    ckpt = ckpt_module.build_checkpoint(model, train_state={"epoch": 0})
    shared = tmp_path / "shared"
    other = CheckpointManager(shared, shared, prefix="m_0", keep=1, best_keep=1)
    theirs = [other.save_latest(ckpt, 1, 5), other.save_best(ckpt, 1, 0.99)]
    mine = CheckpointManager(shared, shared, prefix="m_0", keep=1, best_keep=1)
    for step in (6, 7, 8):
        mine.save_latest(ckpt, 2, step)
    assert mine.save_best(ckpt, 2, 0.5) is not None and mine.rank_of(mine.best_files()[0][1]) == 1
    assert [p.name for p in mine.latest_files()] == ["m_0_e0002_s00000008.pt"]
    assert all(p.exists() for p in theirs)  # the other run's checkpoints are all still there
    with pytest.raises(ckpt_module.CheckpointError, match="was not written by this run"):
        mine.save_latest(ckpt, 1, 5)  # the other run's file name


@pytest.mark.slow
def test_transfer_to_another_class_count(data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = train(make_config(data, tmp_path / "src", epochs=1)).last_checkpoint
    two = write_dataset(tmp_path / "two", classes=2)
    cfg = make_config(two, tmp_path / "dst", num_classes=2, epochs=1, pretrained=str(source))
    with caplog.at_level(logging.WARNING):
        model = build_model(cfg, 2)
    assert "re-initialised both heads" in caplog.text
    weights = read_checkpoint(source)["model"]
    assert torch.equal(model.conv1.weight, weights["conv1.weight"]) and model.trans_cls_head.weight.shape[0] == 2
    result = train(cfg)
    assert result.status == "completed" and read_checkpoint(result.last_checkpoint)["class_names"] == [
        "class0",
        "class1",
    ]
    with pytest.raises(ConfigError, match="exclude_epoch_state"):
        train(make_config(two, tmp_path / "dst2", num_classes=2, pretrained=str(source), exclude_epoch_state=False))


@pytest.mark.slow
def test_a_run_directory_from_before_manifests_is_resumed_and_adopted(data: Path, tmp_path: Path) -> None:
    """A run written before run manifests (no .conformer-run.json, epochs 0-based in metrics.jsonl):
    --checkpoint auto resumes it, lists its files in a new manifest and renumbers its metrics."""
    run = tmp_path / "run"
    train(make_config(data, run, epochs=1))
    (run / ".conformer-run.json").unlink()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps({**r, "epoch": r["epoch"] - 1}) + "\n" for r in lines))
    result = train(make_config(data, run, epochs=2, checkpoint="auto"))
    assert result.status == "completed" and result.step == 12
    manifest = RunManifest.read(run)
    assert {"config.yaml", "class_names.json", "metrics.jsonl"} <= {p.name for p in manifest.existing()}
    assert [p.name for p in manifest.existing_checkpoints() if p.parent.name == "checkpoints"] == [
        "conformer_mini_test_0_e0001_s00000006.pt",
        "conformer_mini_test_0_e0002_s00000012.pt",
    ]
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 1, 1, 1, 2, 2, 2, 2]  # 3 train lines and 1 val line per epoch, all 1-based


@pytest.mark.slow
def test_auto_starts_again_a_run_that_has_no_checkpoint_yet(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run stopped before its first checkpoint (here: its checkpoints are gone) is the same run
    started again by --checkpoint auto: its own files are reused, its metrics restart, nothing else
    in the folders is touched."""
    run = tmp_path / "run"
    train(make_config(data, run, epochs=1))
    for path in run.rglob("*.pt"):
        path.unlink()
    mine = run / "checkpoints" / "my_notes.pt"
    mine.write_bytes(b"not the run's")
    with caplog.at_level(logging.INFO, logger="conformer_vision.train"):
        result = train(make_config(data, run, epochs=1, checkpoint="auto"))
    assert (
        result.status == "completed"
        and "starting the run conformer_mini_test_0 again from the beginning" in caplog.text
    )
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 6] and mine.read_bytes() == b"not the run's"


@pytest.mark.slow
def test_validation_drops_an_unreadable_image_instead_of_counting_a_neighbour(data: Path, tmp_path: Path) -> None:
    """A broken file among the 12 val images: the epoch's metrics are those of the 12 readable
    images, none of them counted twice (training still replaces its own bad files)."""
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    (broken / "val" / "class0" / "zz_broken.png").write_bytes(b"not a png")
    result = train(make_config(broken, tmp_path / "run", epochs=1, max_bad_files_fraction=0.2))
    assert result.metrics["num_samples"] == 12


# ---- sharded data (data_format: webdataset) ------------------------------------------------------ #


@pytest.fixture(scope="module")
def shards(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's dataset as WebDataset shards of 4 images: 12 train shards, 3 val shards."""
    from conformer_vision.data.shards import write_shards

    out = tmp_path_factory.mktemp("shards") / "wds"
    write_shards(data, out, shard_size=4)
    return out


@pytest.mark.slow
def test_exact_resume_from_shards_after_sigterm(
    data: Path, shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training from shards with 2 loader workers, every augmentation on, interrupted mid-epoch and
    resumed: the weights equal an uninterrupted run's bit for bit (the resumed epoch reads the same
    shards in the same order, skipping the trained samples without decoding them). A mid-epoch
    resume with another number of loader workers is refused: its streams would be other images."""
    recipe = dict(
        data_format="webdataset",
        data_url=str(shards),
        augment=True,
        auto_augment="rand-m9-mstd0.5-inc1",
        re_prob=0.5,
        mixup=0.8,
        cutmix=1.0,
        drop_path=0.1,
        with_ema=True,
        ema_decay=0.9,
        num_parallel_workers=2,
        epochs=1,
    )
    reference = train(make_config(data, tmp_path / "a", **recipe))
    assert reference.step == 6  # 48 images / batch 8
    with monkeypatch.context() as fault:
        signal_at_step(fault.setattr, 3, signal.SIGTERM)
        stopped = train(make_config(data, tmp_path / "b", **recipe))
    assert (stopped.status, stopped.step) == ("interrupted", 3)
    with pytest.raises(
        ckpt_module.CheckpointError, match="2 loader stream.*this run has 1 x 1.*--num_parallel_workers 2"
    ):
        train(make_config(data, tmp_path / "b", checkpoint="auto", **{**recipe, "num_parallel_workers": 0}))
    resumed = final_state(train(make_config(data, tmp_path / "b", checkpoint="auto", **recipe)))
    expected = final_state(reference)
    for key in ("model", "ema"):
        assert all(torch.equal(expected[key][k], resumed[key][k]) for k in expected[key]), key
    assert resumed["metrics"]["num_samples"] == 12  # every val image once


# -- fine-tuning: starting from a hub folder, frozen stages, layer-wise lr decay ----------------------


@pytest.fixture(scope="module")
def hub_start(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class conformer_mini_test written as a hub folder (what `conformer export --file_format HF_HUB` writes)."""
    from conformer_vision.export import export_model
    from conformer_vision.models import create_model

    torch.manual_seed(1)
    model = create_model("conformer_mini_test", num_classes=3).eval()
    out = tmp_path_factory.mktemp("hub") / "start"
    return export_model(model, file_format="HF_HUB", output=out, class_names=["class0", "class1", "class2"])


def _hub_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_fine_tune_from_a_hub_folder_with_frozen_stages_and_layer_decay(
    data: Path, tmp_path: Path, hub_start: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pretrained: local-dir:DIR, freeze_stages 2, layer_decay 0.75, two steps: the stem and blocks
    1-4 (weights and BatchNorm statistics) are bit for bit the folder's, the later blocks and both
    heads have moved, and the start-up summary says what trains."""
    cfg = make_config(
        data,
        tmp_path / "run",
        epochs=1,
        train_num_samples=16,
        pretrained=f"local-dir:{hub_start}",
        freeze_stages=2,
        layer_decay=0.75,
    )
    with caplog.at_level(logging.INFO, logger="conformer_vision.train"):
        result = train(cfg)
    assert result.status == "completed" and result.step == 2
    assert f"weights from local-dir:{hub_start}" in caplog.text
    assert "fine-tuning: stages 0-1 frozen (the stem, blocks 1-4)" in caplog.text and "layer_decay 0.75" in caplog.text
    start, end = _hub_weights(hub_start), final_state(result)["model"]
    frozen = [
        k
        for k in start
        if k.split(".")[0]
        in (
            "conv1",
            "bn1",
            "conv_1",
            "trans_1",
            "trans_patch_conv",
            "cls_token",
            "conv_trans_2",
            "conv_trans_3",
            "conv_trans_4",
        )
    ]
    assert "conv_trans_4.cnn_block.bn1.running_var" in frozen and "bn1.num_batches_tracked" in frozen
    assert all(torch.equal(start[k], end[k]) for k in frozen)
    for key in (
        "conv_trans_5.cnn_block.conv1.weight",
        "conv_trans_5.cnn_block.bn1.running_mean",
        "conv_trans_12.trans_block.attn.qkv.weight",
        "trans_norm.weight",
        "conv_cls_head.weight",
        "trans_cls_head.bias",
    ):
        assert not torch.equal(start[key], end[key]), key
    # another class count from the same folder: new heads, everything else the folder's
    with caplog.at_level(logging.WARNING):
        two = build_model(make_config(data, tmp_path / "two", num_classes=2, pretrained=f"local-dir:{hub_start}"), 2)
    assert "re-initialised both heads" in caplog.text and two.num_classes == 2
    assert torch.equal(two.conv_trans_7.cnn_block.conv2.weight, start["conv_trans_7.cnn_block.conv2.weight"])


def test_linear_probe_trains_the_heads_only_with_frozen_batchnorm(data: Path, tmp_path: Path) -> None:
    """freeze_stages 5: the optimizer holds the two heads alone; the training module's train() keeps
    every BatchNorm in eval mode (also after evaluate() put the model back in train mode)."""
    t = components(data, tmp_path, freeze_stages=5, layer_decay=0.5, sync_bn=True)
    held = {id(p) for g in t.parts.optimizer.param_groups for p in g["params"]}
    heads = {id(p) for m in (t.model.conv_cls_head, t.model.trans_cls_head) for p in m.parameters()}
    assert held == heads and [g["lr_scale"] for g in t.parts.optimizer.param_groups] == [1.0, 1.0]
    norms = [m for m in t.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, GlooSyncBatchNorm) for m in norms)  # swapped, then frozen
    t.model.train()  # as evaluate() leaves it
    t.parts.model.train()  # as each epoch starts
    assert not any(m.training for m in norms) and t.model.conv_cls_head.training
    assert not any(p.requires_grad for m in norms for p in m.parameters())


@pytest.mark.slow
def test_resume_with_frozen_stages_and_layer_decay(
    data: Path, tmp_path: Path, hub_start: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted and resumed, a fine-tuning run ends with an uninterrupted run's weights bit for bit;
    resuming with other frozen stages (other parameter groups) is a one-line error."""
    recipe = dict(epochs=1, pretrained=f"local-dir:{hub_start}", freeze_stages=1, layer_decay=0.8)
    reference = final_state(train(make_config(data, tmp_path / "a", **recipe)))
    with monkeypatch.context() as fault:
        signal_at_step(fault.setattr, 3, signal.SIGTERM)
        stopped = train(make_config(data, tmp_path / "b", **recipe))
    assert (stopped.status, stopped.step) == ("interrupted", 3)
    with pytest.raises(
        ckpt_module.CheckpointError,
        match="written with layer_decay 0.8, freeze_stages 1, this run has layer_decay 0.8, freeze_stages 3",
    ):
        train(make_config(data, tmp_path / "b", checkpoint="auto", **{**recipe, "freeze_stages": 3}))
    resumed = final_state(train(make_config(data, tmp_path / "b", checkpoint="auto", **recipe)))
    assert all(torch.equal(reference["model"][k], resumed["model"][k]) for k in reference["model"])
