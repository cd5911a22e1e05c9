"""PEFT LoRA options: every one etlora does not implement is refused by name at export; the ones that
do not change inference pass; per-module ranks and alphas (rank_pattern, alpha_pattern) match PEFT;
activated LoRA (alora_invocation_tokens) is accepted (tests/test_alora_export.py).

export/adapters.py compares the adapter's LoraConfig with PEFT's default field by field, so an
option nobody listed (or one a newer PEFT adds) is refused rather than silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import etlora
from etlora.export import ExportOptions, export_bundle
from etlora.format.errors import AdapterError
from etlora.testing.fixtures import edit_config, make_lora_adapter, peft_logits

from conftest import TOKENS

TOLERANCE = 1e-4  # as tests/test_parity.py
HINT = "(hint: train the adapter without them: etlora runs plain LoRA and rsLoRA on decoder linear layers"


def make_adapter(model_dir: Path, out: Path, **options) -> Path:
    options.setdefault("rank", 4)
    options.setdefault("target_modules", ["q_proj", "v_proj"])
    return make_lora_adapter(model_dir, out, seed=21, **options)


def refusal(model_dir: Path, adapter: Path, tmp_path: Path) -> str:
    with pytest.raises(AdapterError) as error:
        export_bundle(model_dir, {"x": adapter}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    message = str(error.value)
    assert message.startswith(f"adapter 'x' ({adapter / 'adapter_config.json'}): unsupported PEFT options: ")
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "options, named",
    [
        (dict(use_dora=True), "use_dora=true (DoRA)"),
        (dict(lora_bias=True), "lora_bias=true (a trained bias on lora_B)"),
        (dict(use_qalora=True), "use_qalora=true (QA-LoRA, which pools lora_A's input)"),
        (dict(bias="lora_only"), 'bias="lora_only" (trained biases)'),
        (dict(modules_to_save=["lm_head"]), 'modules_to_save=["lm_head"] (fully trained modules)'),
        (dict(trainable_token_indices=[3, 4]), "trainable_token_indices=[3, 4] (trained token embeddings)"),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else "",
)
def test_peft_option_etlora_does_not_implement_is_refused_by_name(model_dir, tmp_path, options, named):
    adapter = make_adapter(model_dir, tmp_path / "adapter", **options)
    message = refusal(model_dir, adapter, tmp_path)
    assert named in message and HINT in message


def test_several_options_are_named_in_one_message(model_dir, tmp_path):
    adapter = make_adapter(model_dir, tmp_path / "adapter", use_qalora=True, lora_bias=True, bias="lora_only")
    message = refusal(model_dir, adapter, tmp_path)
    options = message.split("unsupported PEFT options: ", 1)[1].split(" (hint:", 1)[0]
    assert [option.split("=", 1)[0] for option in options.split("; ")] == ["bias", "lora_bias", "use_qalora"]


def test_activated_lora_is_no_longer_refused(model_dir, tmp_path):
    """alora_invocation_tokens is implemented (tests/test_alora_export.py): accepted, and named as
    an aLoRA only with another option that is refused."""
    adapter = make_adapter(model_dir, tmp_path / "adapter", alora_invocation_tokens=[5, 6])
    export_bundle(model_dir, {"x": adapter}, tmp_path / "ok", ExportOptions(max_seq_len=16))
    assert json.loads((tmp_path / "ok" / "manifest.json").read_text())["adapters"]["x"]["alora_invocation_tokens"] == [5, 6]
    edit_config(adapter, use_dora=True)
    message = refusal(model_dir, adapter, tmp_path)
    assert "use_dora=true (DoRA)" in message and "alora_invocation_tokens" not in message


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "loftq", "lora_ga"])
def test_initialisation_that_changes_the_base_weights_is_refused(model_dir, tmp_path, init):
    extra = dict(loftq_config={"loftq_bits": 4}) if init == "loftq" else {}  # PEFT requires it with loftq
    adapter = edit_config(make_adapter(model_dir, tmp_path / "adapter"), init_lora_weights=init, **extra)
    message = refusal(model_dir, adapter, tmp_path)
    assert f'init_lora_weights="{init}" (an initialisation that changes the base weights' in message


def test_option_unknown_to_the_installed_peft_is_refused_unless_off(model_dir, tmp_path):
    """A newer PEFT's option: PEFT drops it with a warning, etlora refuses it unless it is off."""
    adapter = edit_config(make_adapter(model_dir, tmp_path / "adapter"), use_future_trick=True, future_table={"a": 1},
                          future_flag=False, future_list=[], future_config=None)
    message = refusal(model_dir, adapter, tmp_path)
    assert 'future_table={"a": 1} (unknown to PEFT ' in message
    assert "use_future_trick=true (unknown to PEFT " in message
    assert "future_flag" not in message and "future_list" not in message and "future_config" not in message
    assert "(hint: upgrade peft (installed: " in message


def test_field_without_words_is_named_with_its_value(model_dir, tmp_path):
    """The rule is general: a LoraConfig field nobody wrote words for is still refused by name."""
    adapter = edit_config(make_adapter(model_dir, tmp_path / "adapter"), layer_replication=[[0, 2]],
                          target_parameters=["mlp.experts.gate_up_proj"])
    message = refusal(model_dir, adapter, tmp_path)
    assert "layer_replication=[[0, 2]] (duplicated layers)" in message
    assert 'target_parameters=["mlp.experts.gate_up_proj"]' in message


@pytest.fixture(scope="module")
def harmless_adapter(model_dir, tmp_path_factory) -> Path:
    """Non-default options that do not change inference: dropout, inference_mode, gaussian init,
    fan_in_fan_out (PEFT resets it on nn.Linear), bookkeeping, an unknown key that is off."""
    adapter = make_adapter(model_dir, tmp_path_factory.mktemp("harmless") / "adapter", lora_dropout=0.1,
                           inference_mode=True, revision="v1", task_type="CAUSAL_LM")
    return edit_config(adapter, init_lora_weights="gaussian", fan_in_fan_out=True, qalora_group_size=32,
                       use_future_trick=False)


def test_options_without_effect_on_inference_export_and_match_peft(model_dir, harmless_adapter, tmp_path):
    out = tmp_path / "bundle"
    export_bundle(model_dir, {"ok": harmless_adapter}, out, ExportOptions(max_seq_len=32))
    error = np.max(np.abs(etlora.load(out, adapters={"ok": 1.0}).logits(TOKENS)
                          - peft_logits(model_dir, harmless_adapter, TOKENS)))
    assert error < TOLERANCE


# --- which sites: target_modules, layers_to_transform, layers_pattern, exclude_modules ---------------


def test_layers_to_transform_consistent_with_the_weights_exports(model_dir, tmp_path):
    adapter = make_adapter(model_dir, tmp_path / "adapter", layers_to_transform=[1], layers_pattern="layers")
    out = tmp_path / "bundle"
    export_bundle(model_dir, {"x": adapter}, out, ExportOptions(max_seq_len=32))
    received = etlora.load(out, adapters={"x": 1.0}).logits(TOKENS)
    assert float(np.max(np.abs(received - peft_logits(model_dir, adapter, TOKENS)))) < TOLERANCE
    assert float(np.max(np.abs(received - peft_logits(model_dir, None, TOKENS)))) > 1e-2


@pytest.mark.parametrize(
    "fields, site",
    [
        (dict(layers_to_transform=[0]), "model.layers.1.self_attn.q_proj and 1 more"),
        (dict(target_modules=["q_proj"]), "model.layers.0.self_attn.v_proj and 1 more"),
        (dict(exclude_modules=["model.layers.0.self_attn.q_proj"]), "model.layers.0.self_attn.q_proj,"),
    ],
)
def test_weights_the_config_does_not_target_are_refused(model_dir, tmp_path, fields, site):
    """PEFT loads only the sites its config targets; etlora would apply the others too."""
    adapter = edit_config(make_adapter(model_dir, tmp_path / "adapter"), **fields)
    with pytest.raises(AdapterError) as error:
        export_bundle(model_dir, {"x": adapter}, tmp_path / "out")
    message = str(error.value)
    assert message.startswith(f"adapter 'x' ({adapter / 'adapter_model.safetensors'}): holds weights for {site}")
    assert "which its adapter_config.json does not target (" in message and "so PEFT would not load them" in message


# --- per-module ranks and alphas --------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        dict(rank_pattern={"q_proj": 2}, alpha_pattern={"v_proj": 3.0}),
        # A site above r: the adapter's rank is the largest site rank; rsLoRA scaling per site.
        dict(rank_pattern={"model.layers.1.self_attn.v_proj": 8}, alpha_pattern={"q_proj": 5.0}, use_rslora=True),
    ],
    ids=["lower-rank-and-alpha", "higher-rank-rslora"],
)
def test_rank_and_alpha_patterns_match_peft(model_dir, tmp_path, options):
    adapter = make_adapter(model_dir, tmp_path / "adapter", target_modules=["q_proj", "v_proj", "down_proj"], **options)
    out = tmp_path / "bundle"
    export_bundle(model_dir, {"x": adapter}, out, ExportOptions(max_seq_len=32))
    received = etlora.load(out, adapters={"x": 0.5}).logits(TOKENS)
    error = float(np.max(np.abs(received - peft_logits(model_dir, adapter, TOKENS, strength=0.5))))
    assert error < TOLERANCE
    assert float(np.max(np.abs(received - peft_logits(model_dir, None, TOKENS)))) > 1e-2
    expected_rank = max([4, *options["rank_pattern"].values()])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["adapters"]["x"]["rank"] == expected_rank


def test_rank_pattern_pads_and_alpha_pattern_folds_into_lora_b(model_dir, tmp_path):
    """rank 4, alpha 8: q_proj at rank 2 (scaling 8/2 = 4) is zero-padded to rank 4, v_proj at alpha 3
    (scaling 3/4) gets lora_B times 0.75 / 2, relative to the adapter's one scaling 8/4 = 2."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from etlora.export.adapters import load_adapter
    from etlora.export.families import DecoderShape

    adapter_dir = make_adapter(model_dir, tmp_path / "adapter", rank_pattern={"q_proj": 2}, alpha_pattern={"v_proj": 3.0})
    adapter = load_adapter("x", adapter_dir, DecoderShape.from_hf_config(AutoConfig.from_pretrained(model_dir)))
    raw = load_file(adapter_dir / "adapter_model.safetensors")
    assert (adapter.rank, adapter.alpha, adapter.scaling) == (4, 8.0, 2.0)
    prefix = "base_model.model.model.layers.0.self_attn"
    lora_a, lora_b = adapter.tensors["model.layers.0.self_attn.q_proj"]
    assert lora_a.shape == (4, 64) and lora_b.shape == (64, 4)
    torch.testing.assert_close(lora_a[:2], raw[f"{prefix}.q_proj.lora_A.weight"], rtol=0, atol=0)
    torch.testing.assert_close(lora_b[:, :2], raw[f"{prefix}.q_proj.lora_B.weight"] * 2.0, rtol=1e-7, atol=0)
    assert not lora_a[2:].any() and not lora_b[:, 2:].any()
    lora_a, lora_b = adapter.tensors["model.layers.0.self_attn.v_proj"]
    torch.testing.assert_close(lora_a, raw[f"{prefix}.v_proj.lora_A.weight"], rtol=0, atol=0)
    torch.testing.assert_close(lora_b, raw[f"{prefix}.v_proj.lora_B.weight"] * 0.375, rtol=1e-7, atol=0)
