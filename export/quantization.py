"""Foundation quantization: which foundation weights are stored as integers, and how.

Adapters always stay float (QLoRA-style deployment: float LoRA math on top of an integer
foundation), so a quantized bundle accepts the adapter files of the fp32 bundle of the same model:
the foundation fingerprint is that of the float checkpoint in both. The linears are quantized with
torchao's `Int8DynamicActivationIntxWeightConfig`, as ExecuTorch's own LLM export does for
XNNPACK: 8-bit activations quantized per token at run time, weights 4-bit per group (8da4w) or
8-bit per output channel (8da8w), which the XNNPACK partitioner lowers into its qd8 GEMM kernels.
"""

from __future__ import annotations

import contextlib
import io
import hashlib
import re
from dataclasses import dataclass

from etlora.format.errors import EtloraError
from etlora.format.quantization import QuantScheme

DEFAULT_GROUP_SIZE = 32  # llama.cpp's Q4 block: the like-for-like comparison


EMBEDDING_BITS = (4, 8)


def _check_group_size(option: str, group_size: int | None) -> None:
    if group_size is not None and (group_size < 2 or group_size % 2):
        raise EtloraError(f"{option}: expected an even number >= 2, received {group_size}")


@dataclass(frozen=True)
class FoundationQuantization:
    scheme: QuantScheme = QuantScheme.FP32
    group_size: int | None = None  # weights per scale; None: per output channel (8da8w)
    embedding_bits: int | None = None  # the token embedding's integer width; None: float32
    embedding_group_size: int | None = None  # embedding values per scale; None: per row
    head_bits: int | None = None  # the output head's integer width (8 keeps it per row, as llama.cpp's Q4 files do)

    @staticmethod
    def from_options(scheme: str, group_size: int | None, embedding_bits: int | None = None,
                     embedding_group_size: int | None = None,
                     head_bits: int | None = None) -> "FoundationQuantization":
        try:
            parsed = QuantScheme(scheme)
        except ValueError:
            known = ", ".join(member.value for member in QuantScheme)
            raise EtloraError(f"--quantize: expected one of {known}, received {scheme!r}") from None
        if parsed is QuantScheme.FP32:
            if group_size is not None:
                raise EtloraError("--group-size: only applies with --quantize 8da4w or 8da8w, "
                                  "received it with fp32 (hint: add --quantize 8da4w)")
            if head_bits is not None:
                raise EtloraError("--head-bits: only applies with --quantize 8da4w or 8da8w, received it "
                                  "with fp32 (hint: add --quantize 8da4w)")
            if embedding_bits is not None:
                raise EtloraError("--quantize-embedding: expected a quantized foundation (--quantize 8da4w "
                                  "or 8da8w), received fp32: an integer embedding beside float linears saves "
                                  "little and costs accuracy (hint: add --quantize 8da4w)")
            return FoundationQuantization()
        if group_size is None and parsed is QuantScheme.INT8_DYNAMIC_INT4:
            group_size = DEFAULT_GROUP_SIZE
        _check_group_size("--group-size", group_size)
        if embedding_bits is not None and embedding_bits not in EMBEDDING_BITS:
            raise EtloraError(f"--quantize-embedding: expected 4 or 8 (bits), received {embedding_bits}")
        if embedding_bits is None and embedding_group_size is not None:
            raise EtloraError("--embedding-group-size: only applies with --quantize-embedding 4|8")
        if embedding_bits == 4 and embedding_group_size is None:
            embedding_group_size = DEFAULT_GROUP_SIZE
        _check_group_size("--embedding-group-size", embedding_group_size)
        if head_bits is None:
            # The head decides every logit: 8 bits per row for 4-bit foundations (perplexity 32.6
            # against 36.8 with a 4-bit head on SmolLM2, +12 MB), as llama.cpp's Q4 files keep it.
            head_bits = 8
        if head_bits not in (4, 8) or (parsed is QuantScheme.INT8_DYNAMIC_INT8 and head_bits != 8):
            raise EtloraError(f"--head-bits: expected 8, or 4 with --quantize 8da4w, received {head_bits}")
        return FoundationQuantization(parsed, group_size, embedding_bits, embedding_group_size, head_bits)

    @staticmethod
    def from_record(record) -> "FoundationQuantization":
        """From a manifest's foundation.quantization (manifest.QuantizationRecord)."""
        return FoundationQuantization.from_options(record.scheme, record.group_size, record.embedding_bits,
                                                   record.embedding_group_size, record.head_bits)

    @property
    def quantized(self) -> bool:
        return self.scheme is not QuantScheme.FP32

    @property
    def label(self) -> str:
        """'fp32', '8da4w-g32-head8-emb4g32', '8da8w-pc': part of the packed cache file's identity."""
        if not self.quantized:
            return self.scheme.value
        label = f"{self.scheme.value}-{'g' + str(self.group_size) if self.group_size else 'pc'}"
        if self.head_bits != self.bits:
            label += f"-head{self.head_bits}"
        if self.embedding_bits:
            group = f"g{self.embedding_group_size}" if self.embedding_group_size else "pc"
            label += f"-emb{self.embedding_bits}{group}"
        return label

    def check(self, shape) -> None:
        """Every quantized row must be a whole number of groups (shape: DecoderShape); names the layer."""
        from .model import LINEAR_MODULES, site_path

        if self.group_size:
            widths = {site_path("*", module): shape.linear_dims(module)[0] for module in LINEAR_MODULES}
            widths["lm_head"] = shape.hidden_size
            for layer, width in widths.items():
                if width % self.group_size:
                    raise EtloraError(
                        f"--group-size {self.group_size} does not divide {layer}'s input width {width} "
                        f"(hint: use a divisor of {width}, e.g. 32)"
                    )
        if self.embedding_group_size and shape.hidden_size % self.embedding_group_size:
            raise EtloraError(
                f"--embedding-group-size {self.embedding_group_size} does not divide "
                f"model.embed_tokens's row width {shape.hidden_size} (hint: use a divisor of it, e.g. 32)"
            )

    def apply(self, model) -> list[str]:
        """Quantizes the model's foundation linears (and embedding) in place; returns their module paths."""
        if not self.quantized:
            return []
        quantized = self._quantize_embedding(model) if self.embedding_bits else []
        return quantized + self._quantize_linears(model)

    def _quantize_embedding(self, model) -> list[str]:
        """The token embedding as ExecuTorch's quantized embedding op (kernels_quantized), through
        upstream's own handler: integer rows ([vocab, dim / 2] packed nibbles for 4 bits) and fp16
        scales, buffers `model.embed_tokens.weight` / `.scales`. A tied output head keeps its own
        copy: the head is an XNNPACK linear, the embedding a gather, and neither reads the other's
        layout."""
        import torch
        from executorch.examples.models.llama.source_transformation.quantize import EmbeddingQuantHandler
        from executorch.exir.passes import _quant_patterns_and_replacements  # noqa: F401 (registers the ops)

        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # the handler prints per module
            EmbeddingQuantHandler(model.model, bitwidth=self.embedding_bits, group_size=self.embedding_group_size,
                                  packed=self.embedding_bits == 4, quantize_with_hqq=True).quantized_model()
            embedding = model.model.embed_tokens
            embedding.scales = embedding.scales.to(torch.float16)  # the handler leaves them float32
        return ["model.embed_tokens"]

    def _quantize_linears(self, model) -> list[str]:
        import torch
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
        from torchao.quantization.granularity import PerAxis, PerGroup
        from torchao.quantization.quant_primitives import MappingType
        from torchao.utils import unwrap_tensor_subclass

        def config(bits: int, group_size: int | None):
            return Int8DynamicActivationIntxWeightConfig(
                weight_dtype=torch.int4 if bits == 4 else torch.int8,
                weight_granularity=PerGroup(group_size) if group_size else PerAxis(0),
                # Symmetric (XNNPACK's integer weights have no zero point), with the scale chosen so
                # that neither end of a group clips. SmolLM2 8da4w (4-bit head, float embedding), in
                # PyTorch on the eval text: perplexity 36.3, against 40.3 with HQQ's optimised scales
                # and 44.6 with plain absmax ones (fp32: 22.0).
                weight_mapping_type=MappingType.SYMMETRIC_NO_CLIPPING_ERR,
            )

        quantized = []

        def is_block_linear(module, path: str) -> bool:
            chosen = isinstance(module, torch.nn.Linear) and path != "lm_head"
            if chosen:
                quantized.append(path)
            return chosen

        with torch.no_grad():
            quantize_(model, config(self.bits, self.group_size), filter_fn=is_block_linear)
            head_group = self.group_size if self.head_bits == self.bits else None  # 8-bit head: per row
            quantize_(model.lm_head, config(self.head_bits, head_group))
            # Plain tensors (integers, scales) registered as parametrizations of each weight:
            # torch.export then sees constants that can be tagged for foundation.ptd
            # (foundation_path), instead of a subclass flattened after tagging into the program.
            unwrap_tensor_subclass(model)
        return quantized + ["lm_head"]

    @property
    def bits(self) -> int:
        return 4 if self.scheme is QuantScheme.INT8_DYNAMIC_INT4 else 8

    def weights_id(self, foundation_fingerprint: str) -> str:
        """Identity of the foundation as stored (names the packed cache file): the float
        fingerprint for fp32, else a hash of it with this quantization."""
        if not self.quantized:
            return foundation_fingerprint
        return hashlib.sha256(f"{foundation_fingerprint}|{self.label}".encode()).hexdigest()


def _layer_pattern(path: str) -> str:
    return re.sub(r"\.layers\.\d+\.", ".layers.*.", path)


def module_patterns(module_paths: list[str]) -> list[str]:
    """model.layers.0.mlp.up_proj, model.layers.1.mlp.up_proj -> model.layers.*.mlp.up_proj."""
    return sorted({_layer_pattern(path) for path in module_paths})


def sizes_by_pattern(sizes: dict[str, int]) -> dict[str, int]:
    """Per-layer weight sizes summed over the layers: {"model.layers.*.input_layernorm.weight": bytes}."""
    summed: dict[str, int] = {}
    for name, size in sizes.items():
        summed[_layer_pattern(name)] = summed.get(_layer_pattern(name), 0) + size
    return dict(sorted(summed.items()))


def foundation_path(constant_path: str) -> str:
    """The foundation weight a constant stores: a quantized linear's parts
    (`<module>.parametrizations.weight.original<N>`) and a quantized embedding's scales
    (`model.embed_tokens.scales`) belong to `<module>.weight`."""
    path = re.sub(r"\.parametrizations\.(\w+)\.original\d+$", r".\1", constant_path)
    return re.sub(r"^model\.embed_tokens\.scales$", "model.embed_tokens.weight", path)
