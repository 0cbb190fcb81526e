"""The strict run configuration: YAML + command line merging, coercion, validation, help, docs."""

from __future__ import annotations

import dataclasses
import json
import pickle
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conformer_vision.config import EXTRA_OPTIONS, OPTION_ALIASES, SPEC_OPTIONS, Config, load_config
from conformer_vision.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))
FIELDS = [f.name for f in dataclasses.fields(Config)]

# The keys of the specification's "Script Parameters" YAML, in its order.
SPEC_KEYS = """dataset data_url train_dir val_dir train_num_samples val_num_samples auto_augment aa_interpolation
re_mode re_prob re_count cutmix mixup mixup_prob mixup_mode mixup_off_epoch switch_prob label_smoothing min_crop
crop_pct optimizer beta eps base_lr min_lr lr_scheduler lr_adjust lr_gamma momentum weight_decay epochs batch_size
is_dynamic_loss_scale loss_scale num_parallel_workers start_epoch warmup_length warmup_lr use_clip_grad_norm
clip_grad_norm exclude_epoch_state seed with_ema ema_decay pynative_mode arch amp_level file_format pretrained
image_size num_classes drop drop_block drop_path disable_approximate_gelu use_pytorch_maxpool device_id device_num
device_target summary_root_dir ckpt_root_dir best_ckpt_root_dir ckpt_keep_num best_ckpt_num ckpt_save_every_step
ckpt_save_every_seconds print_loss_every summary_loss_collect_freq model_postfix collect_input_data
dump_graph""".split()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return str(info.value)


def test_fields_are_the_spec_options_plus_extras():
    assert list(SPEC_OPTIONS) == SPEC_KEYS
    assert set(EXTRA_OPTIONS) >= {
        "checkpoint",
        "overwrite",
        "sync_bn",
        "augment",
        "interpolation",
        "color_jitter",
        "hflip",
        "eval_every",
        "max_bad_files_fraction",
        "max_nonfinite_steps",
        "compile",
        "channels_last",
        "use_ema",
    }
    assert all(f.metadata["help"] for f in dataclasses.fields(Config))


def test_defaults_validate_and_follow_the_spec():
    cfg = Config()
    assert (cfg.base_lr, cfg.batch_size, cfg.crop_pct, cfg.beta, cfg.lr_scheduler) == (
        0.001,
        100,
        0.96,
        [0.9, 0.999],
        "cosine_lr",
    )
    assert cfg.disable_approximate_gelu and cfg.use_pytorch_maxpool  # reference numerics by default


# ---------------------------------------------------------------- unknown keys


def test_unknown_yaml_key_suggests_and_names_file_and_line(tmp_path):
    path = write(tmp_path, "epochs: 3\nweight_decy: 0.1\n")
    msg = error_of(path)
    assert "did you mean 'weight_decay'" in msg
    assert f"{path}:2" in msg
    assert "valid options:" in msg and "base_lr" in msg


def test_unknown_override_dict_key_and_from_dict_key():
    assert "did you mean 'epochs'" in error_of(None, {"epoch": 3})
    assert "did you mean 'lr_scheduler'" in error_of(None, {"sched": "cosine"})  # another codebase's name
    assert "did you mean 'freeze_stages'" in error_of(None, {"frozen_stages": 1})
    with pytest.raises(ConfigError, match="did you mean 'seed'"):
        Config.from_dict({"sed": 1})
    assert Config.from_dict({"sed": 1, "seed": 2}, strict=False).seed == 2


@pytest.mark.parametrize(
    "alias, option, value",
    [("lr", "base_lr", 0.05), ("learning_rate", "base_lr", 0.05), ("warmup_epochs", "warmup_length", 1)],
)
def test_aliases_are_accepted_alike_in_yaml_and_dicts_and_stored_canonical(tmp_path, alias, option, value):
    assert OPTION_ALIASES[alias] == option
    from_yaml = load_config(write(tmp_path, f"{alias}: {value}\n"))
    from_dict = load_config(None, {alias: value})
    for cfg in (from_yaml, from_dict, Config.from_dict({alias: value})):
        assert getattr(cfg, option) == value
        assert alias not in cfg.to_dict()
    msg = error_of(write(tmp_path, f"{alias}: -1\n"))  # a bad value names the option and the spelling used
    assert f"{option}: " in msg and f"run.yaml:1 as '{alias}'" in msg


def test_an_alias_and_its_option_together_are_an_error(tmp_path):
    msg = error_of(write(tmp_path, "base_lr: 0.1\nepochs: 3\nlr: 0.2\n"))
    assert "option 'base_lr' is given twice, as 'base_lr' [" in msg and "run.yaml:3]" in msg
    assert "'lr' is an alias of 'base_lr'" in msg
    assert load_config(write(tmp_path, "lr: 0.1\n"), {"base_lr": 0.3}).base_lr == 0.3  # overrides win, any spelling


@pytest.mark.parametrize(
    "policy",
    [
        "rand-m9-mstd0.5-inc1",
        "rand-m9-n3-mstd0.5",
        "rand-mstd1-tweights",
        "augmix-m5-w4-d2",
        "original",
        "original-mstd0.5",
        "originalr",
        "v0",
        "v0r",
        "3a",
    ],
)
def test_timm_policy_strings_are_accepted(policy):
    assert Config(auto_augment=policy).auto_augment == policy


@pytest.mark.parametrize(
    "policy, why",
    [
        ("rand-bogus", "section 'bogus' holds no value, so timm would ignore it"),
        ("original-", "section '' holds no value"),
        ("rand-tbogus", "timm knows no RandAugment op set 'bogus'"),
        ("rand-m9x", "timm refuses it (ValueError"),
        ("augmix-q3", "timm refuses it (AssertionError: Unknown AugMix config section)"),
        ("v1", "timm refuses it (AssertionError: Unknown AA policy v1)"),
        ("randaugment", "timm refuses it (AssertionError)"),
    ],
)
def test_policy_strings_timm_would_refuse_or_ignore_are_errors(policy, why):
    msg = error_of(None, {"auto_augment": policy})
    assert f"auto_augment: {policy!r} is not a timm auto-augment policy: {why}" in msg
    assert "e.g. rand-m9-mstd0.5-inc1" in msg


def test_docs_list_every_alias():
    text = (ROOT / "docs" / "options.md").read_text()
    assert all(f"`{alias}` -> `{option}`" in text for alias, option in OPTION_ALIASES.items())


# ---------------------------------------------------------------- types, ranges, choices


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("epochs: ten", "epochs", "expected an integer"),
        ("epochs: 2.5", "epochs", "expected an integer"),
        ("with_ema: maybe", "with_ema", "expected true/false"),
        ("beta: 0.9", "beta", "expected a list"),
        ("data_url: [a, b]", "data_url", "expected a string"),
        ("val_dir: 2012", "val_dir", "quote it"),
        ("base_lr: .nan", "base_lr", "finite"),
    ],
)
def test_wrong_type(tmp_path, text, key, expected):
    msg = error_of(write(tmp_path, text + "\n"))
    assert f"{key}:" in msg and expected in msg and "run.yaml:1" in msg


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"re_prob": "1.5"}, "re_prob: 1.5 is out of range; it must be in [0, 1]"),
        ({"base_lr": "-1"}, "base_lr: -1.0 is out of range; it must be > 0"),
        ({"crop_pct": "0"}, "crop_pct: 0.0 is out of range; it must be in (0, 1]"),
        ({"batch_size": "0"}, "must be >= 1"),
        ({"beta": "0.9,1.0"}, "beta: 1.0 is out of range"),
        ({"beta": "0.9"}, "expected 2 values"),
        ({"image_size": "224,224,3"}, "expected 2 values"),
        ({"train_num_samples": "0"}, "-1 (all) or a positive count"),
        ({"min_lr": "0.1"}, "above base_lr"),
        ({"start_epoch": "300"}, "must be below epochs"),
        ({"compile": "true", "pynative_mode": "true"}, "contradicts"),
        ({"auto_augment": "randaug-m9"}, "not a timm auto-augment policy"),
    ],
)
def test_out_of_range(overrides, expected):
    assert expected in error_of(None, overrides)


def test_all_problems_reported_at_once():
    msg = error_of(None, {"re_prob": "2", "epochs": "x", "amp_level": "O9"})
    assert "re_prob" in msg and "epochs" in msg and "amp_level" in msg


@pytest.mark.parametrize(
    "key, value, listed",
    [
        ("amp_level", "O4", "O0, O1, O2, O3, bf16"),
        ("optimizer", "lamb", "adamw, sgd"),
        ("lr_scheduler", "poly_lr", "cosine_lr, step_lr, multistep_lr, exp_lr, constant_lr"),
        ("mixup_mode", "row", "batch, pair, elem"),
        ("re_mode", "zero", "const, rand, pixel"),
        ("file_format", "TFLITE", "ONNX, TORCHSCRIPT, EXPORTED_PROGRAM, SAFETENSORS"),
        ("device_target", "tpu", "auto, cpu, cuda"),
        ("interpolation", "random", "nearest, bilinear, bicubic, box, hamming, lanczos"),  # no random at eval
    ],
)
def test_bad_choice_lists_valid_choices(key, value, listed):
    msg = error_of(None, {key: value})
    assert f"{key}: {value!r} is not a valid choice" in msg and listed in msg


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("device_target", "Ascend", "MindSpore"),
        ("file_format", "MINDIR", "MindSpore format"),
        ("file_format", "AIR", "MindSpore"),
    ],
)
def test_mindspore_only_values_are_explained(key, value, why):
    msg = error_of(None, {key: value})
    assert why in msg and "valid choices" in msg


def test_unknown_arch_suggests_and_lists_names():
    msg = error_of(None, {"arch": "conformer_tiny_patch61"})
    assert "did you mean" in msg and "conformer_small_patch32" in msg


@pytest.mark.parametrize(
    "key, value, canonical",
    [
        ("device_target", "GPU", "cuda"),
        ("device_target", "CPU", "cpu"),
        ("optimizer", "Momentum", "sgd"),
        ("lr_scheduler", "exponential_lr", "exp_lr"),
        ("amp_level", "o2", "O2"),
        ("amp_level", "BF16", "bf16"),
        ("file_format", "onnx", "ONNX"),
        ("arch", "conformer_tiny", "conformer_tiny_patch16"),
        ("arch", "conformer_base", "conformer_base_patch16"),
        ("auto_augment", "", None),
        ("auto_augment", "none", None),
    ],
)
def test_spellings_are_normalised(key, value, canonical):
    assert getattr(load_config(None, {key: value}), key) == canonical


# ---------------------------------------------------------------- merging and coercion


def test_overrides_win_over_yaml(tmp_path):
    path = write(tmp_path, "epochs: 7\nbatch_size: 16\nseed: 5\n")
    cfg = load_config(path, {"batch_size": "48", "seed": 9})
    assert (cfg.epochs, cfg.batch_size, cfg.seed) == (7, 48, 9)


@pytest.mark.parametrize(
    "text, expected",
    [("true", True), ("False", False), ("1", True), ("0", False), ("yes", True), ("no", False), ("on", True)],
)
def test_bool_coercion(text, expected):
    assert load_config(None, {"with_ema": text}).with_ema is expected


@pytest.mark.parametrize("value", ["0.8,0.99", "[0.8, 0.99]", "0.8 0.99", "0.8, 0.99", [0.8, 0.99], ["0.8", "0.99"]])
def test_list_coercion(value):
    assert load_config(None, {"beta": value}).beta == [0.8, 0.99]


def test_image_size_int_or_pair_and_negative_numbers_from_strings():
    assert load_config(None, {"image_size": "160"}).image_hw == (160, 160)
    assert load_config(None, {"image_size": "[192, 256]"}).image_hw == (192, 256)
    assert load_config(None, {"val_num_samples": "-1"}).val_num_samples == -1


def test_yaml_numbers_pyyaml_reads_as_strings(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-8 without a dot as a string; it is still a number here.
    assert load_config(write(tmp_path, "eps: 1e-8\nloss_scale: 512\n")).eps == 1e-8


def test_null_only_where_optional():
    assert load_config(None, {"auto_augment": "null"}).auto_augment is None
    assert "expected a string" in error_of(None, {"data_url": None})


def test_model_postfix_int_or_string():
    assert load_config(None, {"model_postfix": "3"}).model_postfix == 3
    assert load_config(None, {"model_postfix": "ft"}).model_postfix == "ft"


# ---------------------------------------------------------------- YAML file problems


@pytest.mark.parametrize(
    "text, expected",
    [
        ("epochs: 3\nbatch_size: [1, 2\n", "YAML syntax error"),
        ("- epochs\n- 3\n", "expected a mapping"),
        ("", "the file is empty"),
        ("just a string\n", "expected a mapping"),
        ("epochs: 3\nseed: 1\nepochs: 4\n", "duplicate key 'epochs' (first on line 1)"),
    ],
)
def test_bad_yaml_files(tmp_path, text, expected):
    msg = error_of(write(tmp_path, text))
    assert expected in msg and "run.yaml" in msg


def test_yaml_syntax_error_has_line(tmp_path):
    msg = error_of(write(tmp_path, "epochs: 3\nseed: 1\n  bad: 2\n"))
    assert "run.yaml:3:" in msg and "mapping values are not allowed" in msg


def test_missing_file(tmp_path):
    assert "does not exist" in error_of(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- (de)serialisation


def test_to_dict_from_dict_round_trip():
    overrides = {"arch": "conformer_small", "beta": "0.8,0.9", "image_size": "192,256", "auto_augment": "none"}
    cfg = load_config(None, overrides | {"model_postfix": "x"})
    d = cfg.to_dict()
    assert list(d) == FIELDS
    assert json.loads(json.dumps(d)) == d
    assert yaml.safe_load(cfg.to_yaml()) == d
    again = Config.from_dict(json.loads(json.dumps(d)))
    assert again == cfg and again.to_dict() == d


def test_from_dict_is_strict_about_values():
    with pytest.raises(ConfigError, match="epochs"):
        Config.from_dict({"epochs": -1})
    with pytest.raises(ConfigError, match="mapping"):
        Config.from_dict(["epochs"])  # type: ignore[arg-type]


def test_direct_construction_validates():
    with pytest.raises(ConfigError, match="mixup_mode"):
        Config(mixup_mode="rows")
    assert Config(epochs="5").epochs == 5  # type: ignore[arg-type]


def test_error_pickles_as_config_error():
    with pytest.raises(ConfigError) as info:
        Config(re_prob=3.0)
    again = pickle.loads(pickle.dumps(info.value))
    assert isinstance(again, ConfigError) and str(again) == str(info.value)


# ---------------------------------------------------------------- shipped configs, docs, help


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_yaml_holds_every_option_and_validates(path):
    with open(path) as fh:
        keys = set(yaml.safe_load(fh))
    assert not set(FIELDS) - keys, f"{path.name} lacks options"
    assert not keys - set(FIELDS)
    load_config(path)


def test_shipped_configs_exist():
    assert {p.name for p in SHIPPED} >= {
        "conformer_tiny.yaml",
        "conformer_small.yaml",
        "conformer_base.yaml",
        "quickstart_fashion_mnist.yaml",
    }


def test_reference_recipe_in_shipped_tiny():
    cfg = load_config(ROOT / "configs" / "conformer_tiny.yaml")
    assert cfg.batch_size * cfg.device_num == 1024
    assert (cfg.base_lr, cfg.weight_decay, cfg.min_lr, cfg.warmup_length, cfg.warmup_lr) == (1e-3, 0.05, 1e-5, 5, 1e-6)
    assert (cfg.mixup, cfg.cutmix, cfg.switch_prob, cfg.label_smoothing, cfg.re_prob) == (0.8, 1.0, 0.5, 0.1, 0.25)
    assert (cfg.ema_decay, cfg.crop_pct, cfg.epochs, cfg.interpolation) == (0.99996, 0.875, 300, "bicubic")


def test_docs_describe_every_option():
    text = (ROOT / "docs" / "options.md").read_text()
    missing = [name for name in FIELDS if f"`{name}`" not in text]
    assert not missing


# ---------------------------------------------------------------- derived values


def test_derived_values():
    from conformer_vision.runtime import AMP_DTYPES

    assert AMP_DTYPES[Config(amp_level="O0").amp_level] is None
    assert AMP_DTYPES[Config(amp_level="o3").amp_level] is torch.float16
    assert AMP_DTYPES[Config(amp_level="BF16").amp_level] is torch.bfloat16
    assert Config(arch="conformer_small").arch == "conformer_small_patch16"
    assert Config(image_size=[192, 256]).image_hw == (192, 256)


def test_arch_names_are_the_model_registry():
    from conformer_vision.models import ALIASES, list_models

    for name in [*list_models(), *ALIASES]:
        assert Config(arch=name).arch == ALIASES.get(name, name)


def test_config_module_imports_no_torch():
    """config.py itself is torch-free (its tables come from torch-free modules; the rest is imported
    lazily where a value is checked): a fresh interpreter that imports it alone has no torch."""
    code = (
        "import importlib.util, sys; spec = importlib.util.find_spec('conformer_vision'); "
        "sys.modules['conformer_vision'] = type(sys)('conformer_vision'); "
        "sys.modules['conformer_vision'].__path__ = spec.submodule_search_locations; "
        "import conformer_vision.config; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_mixup_needs_an_even_batch_before_any_data_is_read(tmp_path, monkeypatch):
    from conformer_vision.train import train

    monkeypatch.chdir(tmp_path)  # the default output folders, which must not even be created
    cfg = load_config(None, {"batch_size": 7, "data_url": str(tmp_path / "no-data-here")})
    with pytest.raises(ConfigError, match=r"batch_size 7 must be even with mixup/cutmix \(timm pairs samples\)"):
        train(cfg)
    assert not list(tmp_path.iterdir())
    Config(batch_size=7, mixup=0.0, cutmix=0.0).check_training()  # no mixing, or no augmentation: any size
    Config(batch_size=7, augment=False).check_training()


def test_options_md_is_generated_from_the_fields():
    render = runpy.run_path(str(ROOT / "scripts" / "options_docs.py"))["render"]
    assert (ROOT / "docs" / "options.md").read_text(encoding="utf-8") == render(), (
        "docs/options.md is stale: python scripts/options_docs.py --write"
    )


def test_options_md_generator_refuses_a_page_without_its_hand_written_part(tmp_path):
    render = runpy.run_path(str(ROOT / "scripts" / "options_docs.py"))["render"]
    page = tmp_path / "options.md"
    page.write_text("")  # what `python scripts/options_docs.py > docs/options.md` leaves before the script reads it
    render.__globals__["DOCS"] = page
    with pytest.raises(SystemExit, match="lost its hand-written section"):
        render()


# ---------------------------------------------------------------- fine-tuning options and the hub format


def test_fine_tuning_options_default_off_and_validate(tmp_path):
    cfg = Config()
    assert cfg.layer_decay is None and cfg.freeze_stages == 0
    cfg = load_config(write(tmp_path, "layer_decay: 0.75\nfreeze_stages: 5\n"), {"layer_decay": "0.65"})
    assert (cfg.layer_decay, cfg.freeze_stages) == (0.65, 5)
    assert load_config(None, {"layer_decay": "null"}).layer_decay is None
    assert load_config(None, {"layer_decay": "1"}).layer_decay == 1.0  # in (0, 1]: 1 = every layer alike
    for overrides, expected in (
        ({"layer_decay": "0"}, "layer_decay: 0 is out of range; it must be in (0, 1]"),
        ({"layer_decay": 1.2}, "layer_decay: 1.2 is out of range"),
        ({"layer_decay": "fast"}, "layer_decay: expected a number or null"),
        ({"freeze_stages": "6"}, "freeze_stages: 6 is out of range; it must be in [0, 5]"),
        ({"freeze_stages": -1}, "freeze_stages: -1 is out of range"),
    ):
        assert expected in error_of(None, overrides)


@pytest.mark.parametrize("value", ["HF_HUB", "hf", "hub", "hf-hub", "HuggingFace"])
def test_hub_export_format_and_its_spellings(value):
    assert load_config(None, {"file_format": value}).file_format == "HF_HUB"


def test_pretrained_takes_hub_names():
    assert load_config(None, {"pretrained": "local-dir:exports/tiny"}).pretrained == "local-dir:exports/tiny"
    assert "hf-hub:user/repo" in next(f.metadata["help"] for f in dataclasses.fields(Config) if f.name == "pretrained")
