"""The naive baseline of `etlora report`: one merged full model per adapter, as its own bundle.

Each adapter's PEFT dir (manifest `source`) is merged into the foundation (PEFT merge_and_unload)
and exported foundation-only; the bundles are cached under <out>/naive_cache/<adapter>/ and
reused while their stamp (foundation weights id, adapter sha256, max_seq_len) matches. A quantized
bundle's naive models are quantized the same way (the fair comparison: one full model per adapter
as it would ship). A module of its own because it is the only part of the report that needs
the exporter, transformers and peft (imported inside the functions that use them).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Callable

from etlora.format.manifest import Manifest

CACHE_STAMP = "stamp.json"


def activated_note(manifest: Manifest, adapters: list[str]) -> str | None:
    names = [name for name in adapters if manifest.adapters[name].alora_invocation_tokens]
    if not names:
        return None
    return (f"naive model of {', '.join(names)}: an activated LoRA cannot be merged into the weights (PEFT "
            "applies it from its invocation tokens on), so the foundation alone stands in for it: the same "
            "shapes and dtypes, the memory a merged copy would take")


def naive_problem(manifest: Manifest, adapters: list[str]) -> str:
    if not Path(manifest.foundation.source).exists():
        return f"foundation source {manifest.foundation.source} not found; naive column skipped"
    for name in adapters:
        source = Path(manifest.adapters[name].source)
        if not (source / "adapter_config.json").is_file():
            return f"adapter {name}: PEFT dir {source} not found; naive column skipped"
    return ""


def _load_foundation_model(source: Path):
    """(LlamaForCausalLM, tokenizer or None) for an HF dir or a .gguf file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.is_file():
        from etlora.testing.real_model import smollm2_gguf_path

        try:
            if source.resolve() == smollm2_gguf_path().resolve():
                from etlora.testing.real_model import load_smollm2_hf

                return load_smollm2_hf()
        except FileNotFoundError:
            pass
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
        return model, AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source)
    try:
        return model, AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        return model, None


def _stamp(manifest: Manifest, name: str) -> dict:
    record = manifest.adapters[name]
    return {
        "foundation": manifest.foundation.weights_id,
        "adapter_sha256": manifest.files[record.file].sha256,
        "max_seq_len": manifest.program.max_seq_len,
    }


def _cached(target: Path, stamp: dict) -> bool:
    path = target / CACHE_STAMP
    return (target / "bundle" / "manifest.json").is_file() and path.is_file() and json.loads(path.read_text()) == stamp


def _export_merged(base, tokenizer, adapter_dir: Path, activated: bool, target: Path, max_seq_len: int,
                   quantization) -> None:
    from peft import PeftModel

    from etlora.export import ExportOptions, export_bundle

    if activated:
        # PEFT cannot merge an activated LoRA (it applies from its invocation tokens on): the
        # foundation alone stands in, the shapes and dtypes a merged copy would have.
        merged = copy.deepcopy(base)
    else:
        merged = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dir)).merge_and_unload()
    checkpoint = target / "checkpoint"
    merged.save_pretrained(checkpoint, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(checkpoint)
    del merged
    shutil.rmtree(target / "bundle", ignore_errors=True)
    export_bundle(checkpoint, {}, target / "bundle",
                  ExportOptions(target_modules="none", max_seq_len=max_seq_len, quantization=quantization))
    shutil.rmtree(checkpoint)


def prepare_naive(manifest: Manifest, adapters: list[str], cache: Path, log: Callable[[str], None]) -> list[Path]:
    """One foundation-only bundle per adapter, its weights merged; reused while the stamp matches."""
    from etlora.export.quantization import FoundationQuantization

    base = tokenizer = None
    bundles = []
    for name in adapters:
        target = cache / name
        stamp = _stamp(manifest, name)
        if not _cached(target, stamp):
            if base is None:
                log(f"loading foundation {manifest.foundation.source}")
                base, tokenizer = _load_foundation_model(Path(manifest.foundation.source))
            log(f"merging and exporting {name} -> {target / 'bundle'}")
            target.mkdir(parents=True, exist_ok=True)
            (target / CACHE_STAMP).unlink(missing_ok=True)
            record = manifest.adapters[name]
            _export_merged(base, tokenizer, Path(record.source), bool(record.alora_invocation_tokens), target,
                           stamp["max_seq_len"],
                           FoundationQuantization.from_record(manifest.foundation.quantization))
            (target / CACHE_STAMP).write_text(json.dumps(stamp))
        bundles.append(target / "bundle")
    return bundles
