"""Activated LoRA (PEFT's alora_invocation_tokens), export side: the adapter exports, its .ptd carries
etlora.alora_invocation_tokens (int64 [n]), the manifest (version 5) records the tokens, `etlora
inspect` shows them; bad token lists and damaged keys are refused by name. The reference helper
(etlora.testing.fixtures.peft_reference_logits) gates each aLoRA as PEFT does.

Running an aLoRA (gating by position in the session) is tested with the runtime, not here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from etlora.export import ExportOptions, add_adapter, export_bundle
from etlora.format.adapter_format import ALORA_TOKENS_KEY, MAX_ALORA_TOKENS, read_adapter_ptd
from etlora.format.errors import AdapterError, BundleError
from etlora.format.manifest import FORMAT_VERSION, _parse, read_manifest
from etlora.format.ptd_reader import read_ptd
from etlora.testing.fixtures import alora_start, edit_config, make_lora_adapter, peft_reference_logits

INVOCATION = [5, 6]
PROMPT = [1, 5, 6, 17, 5, 6, 42, 99, 3]  # the invocation twice: the last occurrence (index 4) counts


@pytest.fixture(scope="module")
def alora_dir(model_dir, tmp_path_factory) -> Path:
    return make_lora_adapter(model_dir, tmp_path_factory.mktemp("alora") / "alora", rank=4,
                             target_modules=["q_proj", "v_proj", "down_proj"], seed=31,
                             alora_invocation_tokens=INVOCATION)


@pytest.fixture(scope="module")
def alora_bundle(model_dir, fixtures_dir, alora_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("alora_bundle") / "bundle"
    export_bundle(model_dir, {"invoked": alora_dir, "support": fixtures_dir / "support"}, out,
                  ExportOptions(max_seq_len=32))
    return out


def test_peft_config_holds_the_tokens(alora_dir):
    config = json.loads((alora_dir / "adapter_config.json").read_text())
    assert config["alora_invocation_tokens"] == INVOCATION and config["task_type"] == "CAUSAL_LM"


def test_adapter_file_holds_the_invocation_tokens(alora_bundle):
    path = alora_bundle / "adapters" / "invoked.ptd"
    raw = path.read_bytes()
    entry = read_ptd(raw)[ALORA_TOKENS_KEY]
    assert entry.dtype == np.dtype(np.int64) and entry.sizes == (len(INVOCATION),)
    assert entry.array(raw).tolist() == INVOCATION
    contents = read_adapter_ptd(path)
    assert contents.alora_invocation_tokens == tuple(INVOCATION)
    assert ALORA_TOKENS_KEY not in contents.tensors
    # An ordinary adapter's file has no such key.
    ordinary = alora_bundle / "adapters" / "support.ptd"
    assert ALORA_TOKENS_KEY not in read_ptd(ordinary.read_bytes())
    assert read_adapter_ptd(ordinary).alora_invocation_tokens is None


def test_manifest_records_the_tokens_in_version_5(alora_bundle):
    data = json.loads((alora_bundle / "manifest.json").read_text())
    assert data["format_version"] == FORMAT_VERSION == 7
    assert data["adapters"]["invoked"]["alora_invocation_tokens"] == INVOCATION
    assert data["adapters"]["support"]["alora_invocation_tokens"] is None
    manifest = read_manifest(alora_bundle)
    assert manifest.adapters["invoked"].alora_invocation_tokens == INVOCATION
    assert manifest.adapters["support"].alora_invocation_tokens is None


def test_add_adapter_writes_an_alora_too(bundle_copy, alora_dir):
    updated = add_adapter(bundle_copy, "invoked", alora_dir)
    assert updated.adapters["invoked"].alora_invocation_tokens == INVOCATION
    assert read_adapter_ptd(bundle_copy / updated.adapters["invoked"].file).alora_invocation_tokens == tuple(INVOCATION)
    assert read_manifest(bundle_copy).adapters["support"].alora_invocation_tokens is None


def test_a_version_4_manifest_reads_as_ordinary_adapters(alora_bundle, tmp_path):
    data = json.loads((alora_bundle / "manifest.json").read_text())
    data["format_version"] = 4
    for record in data["adapters"].values():
        del record["alora_invocation_tokens"]
    manifest = _parse(data, tmp_path / "manifest.json")
    assert manifest.format_version == 4
    assert all(record.alora_invocation_tokens is None for record in manifest.adapters.values())


@pytest.mark.parametrize(
    "value, words",
    [
        ([], ": expected null or an array of 1 to 64 token ids, got 0 entries"),
        (list(range(65)), ": expected null or an array of 1 to 64 token ids, got 65 entries"),
        ("5,6", ": expected null or an array of 1 to 64 token ids, got a string"),
        ([5, -1], "[1]: expected an integer >= 0 and < 2^31, got -1"),
        ([5, 2**31], "[1]: expected an integer >= 0 and < 2^31, got 2147483648"),
        ([5.5], "[0]: expected an integer >= 0 and < 2^31, got a number that is not a whole number within 2^53"),
        ([True], "[0]: expected an integer >= 0 and < 2^31, got a boolean"),
    ],
)
def test_manifest_with_bad_tokens_is_refused_naming_the_member(alora_bundle, tmp_path, value, words):
    data = json.loads((alora_bundle / "manifest.json").read_text())
    data["adapters"]["invoked"]["alora_invocation_tokens"] = value
    path = tmp_path / "manifest.json"
    with pytest.raises(BundleError) as error:
        _parse(data, path)
    assert str(error.value) == f"{path}: adapters['invoked'].alora_invocation_tokens{words}"


def test_inspect_shows_the_invocation_tokens(alora_bundle):
    from etlora.inspect_bundle import inspect_bundle

    report = inspect_bundle(alora_bundle)
    assert report.problems == []
    rows = {row.name: row for row in report.adapters}
    assert rows["invoked"].alora_invocation_tokens == INVOCATION
    assert rows["invoked"].describe_alora() == "aLoRA: invocation tokens [5, 6]"
    assert rows["support"].describe_alora() is None
    text = subprocess.run([sys.executable, "-m", "etlora.cli", "inspect", str(alora_bundle)], capture_output=True,
                          text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    assert "invoked: aLoRA: invocation tokens [5, 6]" in text.stdout
    assert "support: aLoRA" not in text.stdout
    as_json = subprocess.run([sys.executable, "-m", "etlora.cli", "inspect", str(alora_bundle), "--json"],
                             capture_output=True, text=True, timeout=300)
    adapters = {row["name"]: row for row in json.loads(as_json.stdout)["adapters"]}
    assert adapters["invoked"]["alora_invocation_tokens"] == INVOCATION
    assert adapters["support"]["alora_invocation_tokens"] is None


def test_inspect_reports_a_manifest_that_disagrees_with_the_file(alora_bundle, tmp_path):
    import shutil

    from etlora.inspect_bundle import inspect_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(alora_bundle, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["adapters"]["invoked"]["alora_invocation_tokens"] = None
    (copy / "manifest.json").write_text(json.dumps(data))
    problems = inspect_bundle(copy).problems
    assert problems == [f"{copy / 'adapters' / 'invoked.ptd'}: manifest says an ordinary adapter, the file holds "
                        "aLoRA invocation tokens [5, 6] (the runtime follows the file)"]


# --- bad invocation token lists in adapter_config.json -------------------------------------------


@pytest.mark.parametrize(
    "tokens, words",
    [
        ([], "expected a non-empty list of token ids, received []"),
        (list(range(MAX_ALORA_TOKENS + 1)), "expected at most 64 token ids, received 65"),
        ([5, "6"], 'expected integer token ids, received "6" at index 1'),
        ([5, 6.5], "expected integer token ids, received 6.5 at index 1"),
        ([True], "expected integer token ids, received true at index 0"),
        ([5, -1], "expected token ids in 0..{last} (the foundation's vocabulary), received -1 at index 1"),
        ([5, 100000], "expected token ids in 0..{last} (the foundation's vocabulary), received 100000 at index 1"),
    ],
    ids=["empty", "too-long", "text", "fraction", "boolean", "negative", "beyond-vocabulary"],
)
def test_bad_invocation_tokens_are_refused_by_name(model_dir, alora_dir, tmp_path, tokens, words):
    import shutil

    from transformers import AutoConfig

    adapter = tmp_path / "adapter"
    shutil.copytree(alora_dir, adapter)
    edit_config(adapter, alora_invocation_tokens=tokens)
    with pytest.raises(AdapterError) as error:
        export_bundle(model_dir, {"x": adapter}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    last = AutoConfig.from_pretrained(model_dir).vocab_size - 1
    expected = (f"adapter 'x' ({adapter / 'adapter_config.json'}): alora_invocation_tokens (activated LoRA): "
                + words.format(last=last))
    message = str(error.value)
    assert message.startswith(expected), message
    assert "(hint: " in message and "\n" not in message


# --- damaged etlora.alora_invocation_tokens in an adapter .ptd -----------------------------------


def rewrite_with_tokens(source: Path, target: Path, tokens: np.ndarray) -> Path:
    """The adapter file `source` with its alora entry replaced by `tokens` (any dtype and shape)."""
    import torch
    from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
    from executorch.exir.tensor_layout import TensorLayout
    from executorch.exir.tensor import scalar_type_enum
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorConfig, FlatTensorSerializer

    raw = source.read_bytes()
    entries = {key: torch.from_numpy(entry.array(raw).copy()) for key, entry in read_ptd(raw).items()}
    entries[ALORA_TOKENS_KEY] = torch.from_numpy(np.ascontiguousarray(tokens))
    buffers, named = [], {}
    for key in sorted(entries):
        tensor = entries[key]  # the layout by hand: ExecuTorch's from_tensor refuses the [0] tensor's stride 0
        layout = TensorLayout(scalar_type_enum(tensor.dtype), list(tensor.shape), list(range(tensor.dim())))
        named[key] = DataEntry(buffer_index=len(buffers), alignment=4096, tensor_layout=layout)
        buffers.append(entries[key].numpy().tobytes())
    data = FlatTensorSerializer(FlatTensorConfig(segment_alignment=4096)).serialize(
        DataPayload(buffers=buffers, named_data=named))
    target.write_bytes(bytes(data))
    return target


SHAPE_WORDS = f"{ALORA_TOKENS_KEY} is expected to be int64 [n], 1 <= n <= 64, got "


@pytest.mark.parametrize(
    "tokens, words",
    [
        (np.array([5, 6], dtype=np.int32), SHAPE_WORDS + "int32 [2]"),
        (np.array([5.0, 6.0], dtype=np.float32), SHAPE_WORDS + "float32 [2]"),
        (np.zeros(0, dtype=np.int64), SHAPE_WORDS + "int64 [0]"),
        (np.arange(65, dtype=np.int64), SHAPE_WORDS + "int64 [65]"),
        (np.array([[5, 6]], dtype=np.int64), SHAPE_WORDS + "int64 [1, 2]"),
        (np.array([5, -3], dtype=np.int64), f"{ALORA_TOKENS_KEY}[1] is expected to be a token id >= 0 and < 2^31, got -3"),
        (np.array([2**31], dtype=np.int64),
         f"{ALORA_TOKENS_KEY}[0] is expected to be a token id >= 0 and < 2^31, got 2147483648"),
    ],
    ids=["int32", "float32", "empty", "too-long", "two-dims", "negative", "beyond-int32"],
)
def test_damaged_invocation_key_is_refused_naming_file_and_key(alora_bundle, tmp_path, tokens, words):
    path = rewrite_with_tokens(alora_bundle / "adapters" / "invoked.ptd", tmp_path / "invoked.ptd", tokens)
    with pytest.raises(BundleError) as error:
        read_adapter_ptd(path)
    assert str(error.value).startswith(f"{path}: {words}"), str(error.value)
    assert "hint: the file is damaged, re-export it" in str(error.value)


def test_rewritten_file_with_good_tokens_reads_back(alora_bundle, tmp_path):
    """The damage helper itself writes a readable file when the tokens are right."""
    path = rewrite_with_tokens(alora_bundle / "adapters" / "invoked.ptd", tmp_path / "ok.ptd",
                               np.array([7, 8, 9], dtype=np.int64))
    assert read_adapter_ptd(path).alora_invocation_tokens == (7, 8, 9)


# --- the PEFT reference for aLoRA ---------------------------------------------------------------


def test_alora_start_is_the_last_occurrence():
    assert alora_start(PROMPT, INVOCATION) == 4
    assert alora_start([5, 6], INVOCATION) == 0
    assert alora_start([1, 5, 2, 6], INVOCATION) is None
    assert alora_start([5], INVOCATION) is None


def test_reference_is_gated_at_the_last_invocation(model_dir, alora_dir):
    """The reference is the foundation before the invocation start, the adapter from it on
    (peft_reference_logits checks this itself; here it is checked row by row)."""
    start = alora_start(PROMPT, INVOCATION)
    reference = peft_reference_logits(model_dir, alora_dir, PROMPT)
    foundation = peft_reference_logits(model_dir, None, PROMPT)
    assert reference.shape == foundation.shape == (len(PROMPT), foundation.shape[1])
    np.testing.assert_array_equal(reference[:start], foundation[:start])
    assert all(float(np.max(np.abs(reference[i] - foundation[i]))) > 1e-3 for i in range(start, len(PROMPT)))
    # Without the invocation the adapter applies nowhere.
    absent = [1, 5, 17, 6, 42]
    np.testing.assert_array_equal(peft_reference_logits(model_dir, alora_dir, absent),
                                  peft_reference_logits(model_dir, None, absent))


def test_reference_equals_peft_own_forward(model_dir, alora_dir):
    """PeftModelForCausalLM computes alora_offsets itself from input_ids: the same last row."""
    from etlora.testing.fixtures import peft_logits

    np.testing.assert_array_equal(peft_reference_logits(model_dir, alora_dir, PROMPT)[-1],
                                  peft_logits(model_dir, alora_dir, PROMPT))


def test_reference_gates_each_alora_by_its_own_sequence(model_dir, alora_dir, tmp_path):
    """Two aLoRAs at once: each from its own invocation on (PEFT's one alora_offsets could not)."""
    other = make_lora_adapter(model_dir, tmp_path / "other", rank=4, target_modules=["q_proj", "o_proj"], seed=32,
                              alora_invocation_tokens=[9])
    prompt = [1, 9, 2, 5, 6, 7, 8]  # other from index 1, alora_dir from index 3
    both = peft_reference_logits(model_dir, {alora_dir: 1.0, other: 0.5}, prompt)
    only_other = peft_reference_logits(model_dir, {other: 0.5}, prompt)
    np.testing.assert_allclose(both[:3], only_other[:3], atol=1e-6, rtol=0)
    assert float(np.max(np.abs(both[-1] - only_other[-1]))) > 1e-3
    foundation = peft_reference_logits(model_dir, None, prompt)
    np.testing.assert_array_equal(both[0], foundation[0])


def test_reference_check_catches_an_alora_that_never_applies(model_dir, alora_dir, monkeypatch):
    """If PEFT got no offsets (the aLoRA silently off), the helper says so instead of returning
    foundation logits as the reference."""
    import etlora.testing.fixtures as testing

    monkeypatch.setattr(testing._OwnAloraOffsets, "forward",
                        lambda self, module, active_adapter, x, result, **kwargs: result)
    with pytest.raises(AssertionError, match=re.escape("aLoRA reference equals the foundation at the last position")):
        peft_reference_logits(model_dir, alora_dir, PROMPT)


def test_an_alora_that_is_not_a_causal_lm_is_refused(model_dir, alora_dir, tmp_path):
    """PEFT gates an activated LoRA only in its causal-LM model (elsewhere it never applies it)."""
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(alora_dir, adapter)
    edit_config(adapter, task_type=None)
    with pytest.raises(AdapterError, match=r"alora_invocation_tokens \(activated LoRA\): expected task_type "
                                           r"CAUSAL_LM, received None"):
        export_bundle(model_dir, {"x": adapter}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
