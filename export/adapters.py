"""Loading PEFT LoRA adapters and checking them against a foundation before any export work.

This is the one place that knows how a PEFT file names its tensors; everything after it speaks in
sites (`model.layers.0.self_attn.q_proj`) and foundation-shaped tensors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import AdapterError
from .model import LINEAR_MODULES, LlamaShape, site_path

_SITE_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<site>model\.layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\."
    r"(?P<module>\w+))\.(?P<kind>lora_A|lora_B)(?:\.[\w-]+)?\.weight$"
)
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class LoraAdapter:
    """One PEFT LoRA adapter, validated against a foundation shape.

    `tensors[site] = (lora_A [rank, in], lora_B [out, rank])`, exactly as PEFT stores them.
    """

    name: str
    source: str
    rank: int
    alpha: float
    use_rslora: bool
    base_model: str
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def scaling(self) -> float:
        """PEFT's own scaling, so that strength 1 reproduces PEFT exactly."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def target_modules(self) -> list[str]:
        return sorted({site.rsplit(".", 1)[1] for site in self.tensors})

    @property
    def sites(self) -> list[str]:
        return sorted(self.tensors)


def check_adapter_name(name: str) -> None:
    if not ADAPTER_NAME.match(name):
        raise AdapterError(
            f"adapter name {name!r}: expected letters, digits, '_', '-', '.' (at most 64, "
            "not starting with a symbol), since it becomes a file name"
        )


def _read_config(directory: Path, name: str):
    from peft import LoraConfig

    config_path = directory / "adapter_config.json"
    if not config_path.is_file():
        raise AdapterError(
            f"adapter {name!r}: expected a PEFT adapter directory with adapter_config.json, "
            f"not found in {directory}"
        )
    try:
        config = LoraConfig.from_pretrained(str(directory))
    except Exception as error:  # PEFT raises TypeError/ValueError/JSONDecodeError
        raise AdapterError(f"{config_path}: not a readable PEFT LoRA config ({error})") from None
    peft_type = str(getattr(config.peft_type, "value", config.peft_type))
    if peft_type != "LORA":
        raise AdapterError(f"{config_path}: expected peft_type LORA, received {peft_type}")
    unsupported = []
    if getattr(config, "use_dora", False):
        unsupported.append("DoRA (use_dora=true)")
    if config.rank_pattern:
        unsupported.append(f"per-module ranks (rank_pattern {dict(config.rank_pattern)})")
    if config.alpha_pattern:
        unsupported.append(f"per-module alphas (alpha_pattern {dict(config.alpha_pattern)})")
    if config.bias != "none":
        unsupported.append(f"trained biases (bias={config.bias!r})")
    if config.modules_to_save:
        unsupported.append(f"fully trained modules (modules_to_save {list(config.modules_to_save)})")
    if unsupported:
        raise AdapterError(
            f"adapter {name!r} ({config_path}): unsupported LoRA features: "
            + "; ".join(unsupported)
            + " (hint: etlora supports plain LoRA and rsLoRA on linear layers)"
        )
    return config


def _read_weights(directory: Path, name: str) -> dict[str, torch.Tensor]:
    weights_path = directory / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise AdapterError(
            f"adapter {name!r}: expected {weights_path} (PEFT's safetensors weights), not found "
            "(hint: save the adapter with safe_serialization=True)"
        )
    try:
        return load_file(weights_path)
    except (SafetensorError, OSError) as error:
        raise AdapterError(f"{weights_path}: corrupt or truncated safetensors ({error})") from None


def _site_of(key: str, weights_path: Path, name: str) -> tuple[str, int, str, str]:
    match = _SITE_KEY.match(key)
    if match:
        return match["site"], int(match["layer"]), match["module"], match["kind"]
    if "lora_embedding" in key or "embed_tokens" in key or "lm_head" in key:
        what = "LoRA on the embedding or output head"
    elif "lora_magnitude_vector" in key:
        what = "DoRA magnitude vectors"
    else:
        what = "a tensor that is not a LoRA A/B weight of a decoder linear layer"
    raise AdapterError(
        f"adapter {name!r} ({weights_path}): tensor {key} is {what}, which etlora does not "
        "support (hint: target q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
    )


def load_adapter(name: str, directory: str | Path, shape: LlamaShape) -> LoraAdapter:
    """Read a PEFT adapter and check every tensor against the foundation's shapes."""
    check_adapter_name(name)
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterError(f"adapter {name!r}: directory {directory} not found")
    config = _read_config(directory, name)
    weights = _read_weights(directory, name)
    weights_path = directory / "adapter_model.safetensors"
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        site, layer, module, kind = _site_of(key, weights_path, name)
        if module not in LINEAR_MODULES or layer >= shape.num_layers:
            raise AdapterError(
                f"adapter {name!r} targets {site}, absent from the foundation "
                f"({shape.num_layers} layers, linear modules {', '.join(LINEAR_MODULES)}) "
                "(hint: wrong base checkpoint?)"
            )
        in_features, out_features = shape.linear_dims(module)
        expected = (config.r, in_features) if kind == "lora_A" else (out_features, config.r)
        if tuple(tensor.shape) != expected:
            raise AdapterError(
                f"adapter {name!r} ({weights_path}): {key} has shape {list(tensor.shape)}, "
                f"expected {list(expected)} for rank {config.r} on this foundation "
                "(hint: adapter made for another base model?)"
            )
        pairs.setdefault(site, {})[kind] = tensor.to(torch.float32)
    if not pairs:
        raise AdapterError(f"adapter {name!r} ({weights_path}): holds no LoRA weights")
    for site, kinds in pairs.items():
        if set(kinds) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(kinds)).pop()
            raise AdapterError(f"adapter {name!r} ({weights_path}): {site}.{missing} is missing")
    return LoraAdapter(
        name=name,
        source=str(directory),
        rank=int(config.r),
        alpha=float(config.lora_alpha),
        use_rslora=bool(config.use_rslora),
        base_model=str(config.base_model_name_or_path or ""),
        tensors={site: (kinds["lora_A"], kinds["lora_B"]) for site, kinds in pairs.items()},
    )


def resolve_target_modules(spec: str | None, adapters: list[LoraAdapter]) -> list[str]:
    """Short module names the program gets adapter slots for (default: union over adapters)."""
    if spec is None:
        modules = {module for adapter in adapters for module in adapter.target_modules}
        if not modules:
            raise AdapterError("no adapters given: pass --target-modules to size the program")
        return [m for m in LINEAR_MODULES if m in modules]
    if spec.strip() == "all-linear":
        return list(LINEAR_MODULES)
    if spec.strip() == "none":
        if adapters:
            raise AdapterError("--target-modules none builds a foundation-only program: pass no --adapter")
        return []
    requested = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in requested if m not in LINEAR_MODULES]
    if unknown or not requested:
        raise AdapterError(
            f"--target-modules: expected a comma list of {', '.join(LINEAR_MODULES)}, "
            f"'all-linear' or 'none', received {spec!r}"
            + (" (embedding/lm_head LoRA is not supported)" if unknown else "")
        )
    return [m for m in LINEAR_MODULES if m in requested]


def program_sites(shape: LlamaShape, target_modules: list[str]) -> list[str]:
    """Every (layer, module) the program adapts, in the program's input order."""
    return [
        site_path(layer, module)
        for layer in range(shape.num_layers)
        for module in LINEAR_MODULES
        if module in target_modules
    ]
