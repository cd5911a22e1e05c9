"""Loading PEFT LoRA adapters and checking them against a foundation before any export work.

This is the one place that knows how a PEFT file names its tensors; everything after it speaks in
sites (`model.layers.0.self_attn.q_proj`) and foundation-shaped tensors.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from etlora.format.adapter_format import MAX_ALORA_TOKENS
from etlora.format.errors import AdapterError

from .families import FUSED_MODULES, LINEAR_MODULES, DecoderShape
from .model import site_path

_SITE_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<site>model\.layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\."
    r"(?P<module>\w+))\.(?P<kind>lora_A|lora_B)(?:\.[\w-]+)?\.weight$"
)
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class LoraAdapter:
    """One PEFT LoRA adapter, validated against a foundation shape.

    `tensors[site] = (lora_A [rank, in], lora_B [out, rank])`, as PEFT stores them; with PEFT's
    rank_pattern / alpha_pattern, padded to `rank` and with the site's scaling folded into lora_B.
    `alora_invocation_tokens`: PEFT's activated LoRA (the adapter applies from the start of the last
    occurrence of these tokens on, nowhere before or without them); None for an ordinary adapter.
    """

    name: str
    source: str
    rank: int
    alpha: float
    use_rslora: bool
    base_model: str
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    alora_invocation_tokens: tuple[int, ...] | None = None

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


# What etlora does with each field of PEFT's LoraConfig. A field in neither set must keep its
# default value, or the adapter is refused by name: a PEFT option nobody listed here (and every
# option a newer PEFT adds) is unsupported until someone decides otherwise.
_IMPLEMENTED_FIELDS = frozenset({
    "r", "lora_alpha", "use_rslora",
    "rank_pattern", "alpha_pattern",  # per-site rank and scaling (load_adapter pads and folds them)
    # Which sites the adapter adapts: the weights present decide, and load_adapter refuses weights
    # that these fields do not target (PEFT would not load them).
    "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
    "init_lora_weights",  # only values in _INIT_KEEPS_BASE (the others change the base weights)
    "alora_invocation_tokens",  # activated LoRA: written into the adapter file, gated by the runtime
})
_NO_INFERENCE_EFFECT_FIELDS = frozenset({
    "peft_type",  # checked to be LORA before anything else
    "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",  # bookkeeping
    "inference_mode", "lora_dropout",  # training only
    "runtime_config",  # device placement at run time (PEFT does not even save it)
    "fan_in_fan_out",  # PEFT sets it back to False on torch.nn.Linear, the only layers of a Llama it adapts
    "megatron_core",  # a module name PEFT reads only when megatron_config is set (refused)
    "qalora_group_size",  # read only when use_qalora is true (refused)
    "ensure_weight_tying",  # acts only on tied embedding / head modules, which etlora refuses
    # Initialisation only: init_lora_weights says whether it changed the base weights.
    "loftq_config", "eva_config", "corda_config", "lora_ga_config",
})
# Initialisations that leave the base weights as they are. PiSSA, OLoRA, CorDA, LoRA-GA and LoftQ
# change (or quantize) the base weights when the adapter is made, so the adapter only fits the
# changed model, and PEFT changes the base again when it loads one.
_INIT_KEEPS_BASE = (True, False, "gaussian", "eva", "orthogonal", "mica")
# Words for the options a user is likely to meet; any other field is named with its value alone.
_OPTION_WORDS = {
    "use_dora": "DoRA",
    "bias": "trained biases",
    "lora_bias": "a trained bias on lora_B",
    "modules_to_save": "fully trained modules",
    "trainable_token_indices": "trained token embeddings",
    "use_qalora": "QA-LoRA, which pools lora_A's input",
    "layer_replication": "duplicated layers",
    "target_parameters": "LoRA on parameters such as MoE experts",
    "megatron_config": "Megatron parallel layers",
    "init_lora_weights": "an initialisation that changes the base weights (PiSSA, OLoRA, CorDA, LoRA-GA, LoftQ)",
}


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
        saved = json.loads(config_path.read_text())
    except Exception as error:  # PEFT raises TypeError/ValueError/JSONDecodeError
        raise AdapterError(f"{config_path}: not a readable PEFT LoRA config ({error})") from None
    peft_type = str(getattr(config.peft_type, "value", config.peft_type))
    if peft_type != "LORA":
        raise AdapterError(f"{config_path}: expected peft_type LORA, received {peft_type}")
    options, unknown = unsupported_options(config, saved)
    if options:
        hint = ("upgrade peft (installed: " + _peft_version() + ") so that the options it does not know can be "
                "checked, or " if unknown else "")
        raise AdapterError(
            f"adapter {name!r} ({config_path}): unsupported PEFT options: " + "; ".join(options)
            + f" (hint: {hint}train the adapter without them: etlora runs plain LoRA and rsLoRA on decoder "
            "linear layers, with per-module ranks and alphas)"
        )
    return config


def _alora_tokens(config, vocab_size: int, config_path: Path, name: str) -> tuple[int, ...] | None:
    """PEFT's alora_invocation_tokens checked against the foundation: None for an ordinary adapter,
    else 1 to MAX_ALORA_TOKENS token ids of the foundation's vocabulary."""
    tokens = getattr(config, "alora_invocation_tokens", None)
    if tokens is None:
        return None
    where = f"adapter {name!r} ({config_path}): alora_invocation_tokens (activated LoRA)"
    hint = "(hint: the invocation string tokenized with the foundation's tokenizer, as PEFT expects)"
    task_type = str(getattr(config.task_type, "value", config.task_type))
    if task_type != "CAUSAL_LM":
        # PEFT computes the activation offsets only in its causal-LM model: elsewhere it never applies
        # the adapter, so gating it by position here would not be what PEFT runs.
        raise AdapterError(
            f"{where}: expected task_type CAUSAL_LM, received {task_type} (PEFT applies an activated "
            "LoRA only as a causal LM) (hint: save the adapter with LoraConfig(task_type='CAUSAL_LM'))"
        )
    if not isinstance(tokens, (list, tuple)) or not tokens:
        raise AdapterError(f"{where}: expected a non-empty list of token ids, received {_shown(tokens)} {hint}")
    if len(tokens) > MAX_ALORA_TOKENS:
        raise AdapterError(f"{where}: expected at most {MAX_ALORA_TOKENS} token ids, received {len(tokens)} "
                           "(hint: a shorter invocation sequence)")
    for index, token in enumerate(tokens):
        if isinstance(token, bool) or not isinstance(token, int):
            raise AdapterError(f"{where}: expected integer token ids, received {_shown(token)} at index {index} {hint}")
        if not 0 <= token < vocab_size:
            raise AdapterError(
                f"{where}: expected token ids in 0..{vocab_size - 1} (the foundation's vocabulary), received "
                f"{token} at index {index} (hint: invocation tokens from another tokenizer or base model?)"
            )
    return tuple(tokens)


def _peft_version() -> str:
    import peft

    return str(peft.__version__)


def _shown(value) -> str:
    text = json.dumps(_plain(value), sort_keys=True, default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


def unsupported_options(config, saved: dict) -> tuple[list[str], bool]:
    """The PEFT options in an adapter's config that etlora does not implement, as 'name=value (what)'.

    `config` is PEFT's LoraConfig read from the file, `saved` the file's own JSON (values are shown as
    written there). A field of LoraConfig is refused when it is neither implemented nor without
    effect on inference and differs from PEFT's default; a key the installed PEFT does not know is
    refused unless it is empty or false (PEFT itself would drop it with a warning). Also says whether
    any unknown key was refused.
    """
    import dataclasses

    from peft import LoraConfig

    default = LoraConfig()
    found = []
    fields = {field.name for field in dataclasses.fields(config)}
    for field in sorted(fields):
        if field in _NO_INFERENCE_EFFECT_FIELDS:
            continue
        value = getattr(config, field)
        if field == "init_lora_weights":
            keeps_base = value in _INIT_KEEPS_BASE or (isinstance(value, str) and value.lower() in _INIT_KEEPS_BASE)
            if keeps_base:
                continue
        elif field in _IMPLEMENTED_FIELDS or value == getattr(default, field):
            continue
        shown = _shown(saved[field]) if field in saved else _shown(value)
        words = _OPTION_WORDS.get(field)
        found.append(f"{field}={shown}" + (f" ({words})" if words else ""))
    unknown = [key for key in sorted(saved) if key not in fields and saved[key] not in (None, False, 0, "", [], {})]
    for key in unknown:
        found.append(f"{key}={_shown(saved[key])} (unknown to PEFT {_peft_version()}; the adapter was saved by "
                     f"PEFT {saved.get('peft_version', 'of unknown version')})")
    return found, bool(unknown)


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


def _site_rank_alpha(config, site: str) -> tuple[int, float]:
    """PEFT's rank and alpha for one site: rank_pattern / alpha_pattern matched by PEFT's own rule."""
    from peft.utils.other import get_pattern_key

    rank = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), site), config.r)
    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), site), config.lora_alpha)
    return int(rank), float(alpha)


def _check_targeted(config, sites: list[str], weights_path: Path, name: str, linear_modules) -> None:
    """Every site with weights is one the config targets; PEFT would not load the others' weights.

    Matched by PEFT's own rule (target_modules, exclude_modules, layers_to_transform, layers_pattern).
    A config without target_modules, or with the 'all-linear' shorthand, targets every linear layer.
    """
    from types import SimpleNamespace

    from peft.tuners.tuners_utils import check_target_module_exists

    targets = config.target_modules
    if targets is None or targets == "all-linear":
        targets = list(linear_modules)
    view = SimpleNamespace(target_modules=targets, exclude_modules=config.exclude_modules, modules_to_save=None,
                           target_parameters=None, layers_to_transform=config.layers_to_transform,
                           layers_pattern=config.layers_pattern)
    untargeted = [site for site in sorted(sites) if not check_target_module_exists(view, site)]
    if untargeted:
        more = f" and {len(untargeted) - 1} more" if len(untargeted) > 1 else ""
        fields = ", ".join(
            f"{field}={_shown(_plain(getattr(config, field)))}"
            for field in ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern")
            if getattr(config, field) is not None
        )
        raise AdapterError(
            f"adapter {name!r} ({weights_path}): holds weights for {untargeted[0]}{more}, which its "
            f"adapter_config.json does not target ({fields}), so PEFT would not load them "
            "(hint: save the adapter again with PEFT, or correct adapter_config.json)"
        )


def _plain(value):
    return sorted(value) if isinstance(value, (set, frozenset)) else value


def load_adapter(name: str, directory: str | Path, shape: DecoderShape) -> LoraAdapter:
    """Read a PEFT adapter and check every tensor against the foundation's shapes.

    With rank_pattern / alpha_pattern (per-site ranks and alphas) the adapter's rank is the largest
    site rank, smaller sites are zero-padded to it, and each site's PEFT scaling is folded into its
    lora_B relative to the adapter's one scaling (alpha over that rank), so that strength 1 is PEFT.
    """
    check_adapter_name(name)
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterError(f"adapter {name!r}: directory {directory} not found")
    config = _read_config(directory, name)
    alora_tokens = _alora_tokens(config, shape.vocab_size, directory / "adapter_config.json", name)
    weights = _read_weights(directory, name)
    weights_path = directory / "adapter_model.safetensors"
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    site_ranks: dict[str, tuple[int, float]] = {}
    for key, tensor in weights.items():
        site, layer, module, kind = _site_of(key, weights_path, name)
        if module not in shape.peft_modules or layer >= shape.num_layers:
            raise AdapterError(
                f"adapter {name!r} targets {site}, absent from the foundation "
                f"({shape.family.value}: {shape.num_layers} layers, linear modules "
                f"{', '.join(shape.peft_modules)}) (hint: wrong base checkpoint?)"
            )
        rank, alpha = site_ranks.setdefault(site, _site_rank_alpha(config, site))
        in_features, out_features = shape.peft_linear_dims(module)
        expected = (rank, in_features) if kind == "lora_A" else (out_features, rank)
        if tuple(tensor.shape) != expected:
            raise AdapterError(
                f"adapter {name!r} ({weights_path}): {key} has shape {list(tensor.shape)}, "
                f"expected {list(expected)} for rank {rank} on this foundation "
                "(hint: adapter made for another base model?)"
            )
        pairs.setdefault(site, {})[kind] = tensor.to(torch.float32)
    if not pairs:
        raise AdapterError(f"adapter {name!r} ({weights_path}): holds no LoRA weights")
    for site, kinds in pairs.items():
        if set(kinds) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(kinds)).pop()
            raise AdapterError(f"adapter {name!r} ({weights_path}): {site}.{missing} is missing")
    _check_targeted(config, list(pairs), weights_path, name, shape.peft_modules)
    use_rslora = bool(config.use_rslora)

    def scaling_of(rank: int, alpha: float) -> float:  # PEFT's rule, as LoraAdapter.scaling
        return alpha / (math.sqrt(rank) if use_rslora else rank)

    adapter_rank = max(rank for rank, _ in site_ranks.values())
    adapter_alpha = float(config.lora_alpha)
    adapter_scaling = scaling_of(adapter_rank, adapter_alpha)
    tensors = {}
    for site, kinds in pairs.items():
        lora_a, lora_b = kinds["lora_A"], kinds["lora_B"]
        rank, alpha = site_ranks[site]
        if rank < adapter_rank:  # zero rows of A and columns of B add nothing
            lora_a = torch.nn.functional.pad(lora_a, (0, 0, 0, adapter_rank - rank))
            lora_b = torch.nn.functional.pad(lora_b, (0, adapter_rank - rank))
        site_scaling = scaling_of(rank, alpha)
        if site_scaling != adapter_scaling:
            lora_b = (lora_b.double() * (site_scaling / adapter_scaling)).float()
        tensors.update(_program_sites(shape, site, lora_a, lora_b))
    return LoraAdapter(
        name=name,
        source=str(directory),
        rank=adapter_rank,
        alpha=adapter_alpha,
        use_rslora=use_rslora,
        base_model=str(config.base_model_name_or_path or ""),
        tensors=tensors,
        alora_invocation_tokens=alora_tokens,
    )


def _program_sites(shape: DecoderShape, site: str, lora_a: torch.Tensor, lora_b: torch.Tensor):
    """{program site: (lora_A, lora_B)}: a fused module's LoRA (Phi-3's qkv_proj, gate_up_proj) is
    one lora_A shared by the parts and lora_B's rows cut per part, which is exactly the fused update."""
    prefix, module = site.rsplit(".", 1)
    if module not in FUSED_MODULES:
        return {site: (lora_a, lora_b)}
    parts = FUSED_MODULES[module]
    rows = [shape.linear_dims(part)[1] for part in parts]
    return {f"{prefix}.{part}": (lora_a, rows_b.contiguous()) for part, rows_b in zip(parts, lora_b.split(rows))}


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
    requested = [part for m in requested for part in FUSED_MODULES.get(m, (m,))]  # Phi-3's fused names
    unknown = [m for m in requested if m not in LINEAR_MODULES]
    if unknown or not requested:
        raise AdapterError(
            f"--target-modules: expected a comma list of {', '.join(LINEAR_MODULES)}, "
            f"'all-linear' or 'none', received {spec!r}"
            + (" (embedding/lm_head LoRA is not supported)" if unknown else "")
        )
    return [m for m in LINEAR_MODULES if m in requested]


def program_sites(shape: DecoderShape, target_modules: list[str]) -> list[str]:
    """Every (layer, module) the program adapts, in the program's input order."""
    return [
        site_path(layer, module)
        for layer in range(shape.num_layers)
        for module in LINEAR_MODULES
        if module in target_modules
    ]
