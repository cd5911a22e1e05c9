"""The Python session: etlora.load over the C++ owner of an opened bundle (etlora._runtime.LoadedBundle).

The runtime reads the manifest, chooses the backend, checks the files, the fingerprint and the
tokenizer and maps adapter names to files, as it does for etlora_runner; this module turns Python
arguments into its options and its errors into EtloraError / BundleError.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from etlora.backend import BackendChoice
from etlora.format.backends import BackendRequest
from etlora.format.errors import BundleError, EtloraError
from etlora.format.manifest import Manifest, read_manifest
from etlora.packed_cache import PackedCacheInfo, PackedCacheResidency, log


@dataclass(frozen=True)
class Generation:
    """What `Session.generate` produced, with the C++ generator's own timings."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    prefill_tokens_per_second: float
    decode_tokens_per_second: float
    stop_reason: str  # eos | max_new_tokens | max_seq_len | callback
    # Prompt tokens kept from the KV cache instead of prefilled: the foundation's positions before
    # every active adapter's activation start (an activated LoRA's invocation tokens); 0 when the
    # prompt was computed from scratch (always, after a switch between ordinary adapters).
    reused_tokens: int = 0


def _residency(value: PackedCacheResidency | str) -> PackedCacheResidency:
    try:
        return PackedCacheResidency(value)
    except ValueError:
        choices = ", ".join(repr(r.value) for r in PackedCacheResidency)
        raise EtloraError(f"packed_cache_residency: expected one of {choices}, got {value!r}") from None


def _count(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EtloraError(f"{what}: expected an int >= 0 (0 = no limit), got {value!r}")
    return value


class Session:
    """One loaded program with its foundation; adapters switch without reloading either."""

    def __init__(self, bundle_dir: str | Path, manifest: Manifest, packed_cache: bool = True,
                 cache_dir: str | Path | None = None,
                 packed_cache_residency: PackedCacheResidency | str = PackedCacheResidency.COPY,
                 max_resident_adapters: int = 0, max_resident_adapter_bytes: int = 0,
                 backend: BackendRequest | str | BackendChoice = BackendRequest.AUTO):
        from etlora import _runtime

        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        # A BackendChoice is a decision the caller already made with choose_backend (etlora.backend).
        decided = (backend.backend.value, backend.reason) if isinstance(backend, BackendChoice) else None
        requested = BackendRequest.AUTO if decided else BackendRequest.parse(backend)
        try:
            self._runtime = _runtime.LoadedBundle(
                str(self.bundle_dir), backend=requested.value, decided=decided, packed_cache=packed_cache,
                packed_cache_dir=str(cache_dir or ""),
                packed_cache_residency=_residency(packed_cache_residency).value,
                max_resident_adapters=_count("max_resident_adapters", max_resident_adapters),
                max_resident_adapter_bytes=_count("max_resident_adapter_bytes", max_resident_adapter_bytes),
            )
        except (ValueError, RuntimeError) as error:
            raise BundleError(str(error)) from None
        self.backend: str = self._runtime.backend  # "xnnpack" or "htp"
        self.backend_reason: str = self._runtime.backend_reason
        if self._runtime.packed_cache_warning:
            log.warning("etlora: %s", self._runtime.packed_cache_warning)
        self.packed_cache = PackedCacheInfo(**self._runtime.packed_cache)
        info = self.packed_cache
        if info.note:
            log.warning("etlora: packed cache: %s", info.note)
        elif info.source != "off":
            log.info("etlora: packed cache %s: %s (%d entries, %.1f MiB), load %.3f s", info.source,
                     info.path, info.file_entries, info.file_bytes / 2**20, info.load_seconds)

    @property
    def active_adapters(self) -> dict[str, float]:
        return dict(self._runtime.active_adapters)

    @property
    def vocab_size(self) -> int:
        return self._runtime.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self._runtime.max_seq_len

    def set_adapters(self, adapters: Mapping[str, float] | None) -> None:
        """Activate adapters by name with their strengths; {} or None runs the foundation alone.

        An adapter's file is opened and checked the first time it is named; switching back to it
        later only re-binds (SessionOptions in session.h). A failure leaves the active set unchanged.
        """
        adapters = dict(adapters or {})
        for name, strength in adapters.items():
            if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
                raise EtloraError(f"adapter {name!r}: strength must be a finite number, got {strength!r}")
        try:
            self._runtime.set_adapters([(name, float(strength)) for name, strength in adapters.items()])
        except (ValueError, RuntimeError) as error:
            raise BundleError(str(error)) from None

    def release_adapters(self) -> int:
        """Close the files of adapters no slot uses (their pages are unmapped); returns how many."""
        return self._runtime.release_unbound_adapters()

    @property
    def resident_adapters(self) -> list[str]:
        """Names of the adapters whose files the runtime holds open, most recently bound first."""
        return self._runtime.resident_adapters

    @property
    def resident_adapter_bytes(self) -> int:
        """The resident adapters' file sizes together (what max_resident_adapter_bytes bounds)."""
        return self._runtime.resident_adapter_bytes

    def forward(self, token_ids: Sequence[int], start_pos: int) -> np.ndarray:
        """Append tokens at `start_pos` to the KV cache; logits of the last one, float32 [vocab]."""
        tokens = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        try:
            return self._runtime.forward(tokens, int(start_pos))
        except ValueError as error:
            raise EtloraError(str(error)) from None

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Prefill `token_ids` from an empty cache; the last position's logits, float32 [vocab]."""
        return self.forward(token_ids, 0)

    @property
    def tokenizer(self):
        """The bundle's tokenizer in the C++ runtime (etlora._runtime.Tokenizer), checked against
        the program's vocabulary."""
        try:
            return self._runtime.tokenizer
        except (ValueError, RuntimeError) as error:
            raise BundleError(str(error)) from None

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        chat: bool = True,
        on_text: Callable[[str], None] | None = None,
        stop_at_eos: bool = True,
        keep_prefix: bool = True,
    ) -> Generation:
        """Generate text after `prompt` (greedy by default) with the active adapters.

        The chat template is applied when the tokenizer has one and `chat` is true; `on_text`
        receives the text as it streams. `stop_at_eos=False` always produces max_new_tokens
        tokens (benchmarks compare equal lengths that way). `keep_prefix` keeps the KV cache's
        positions that are exact for this prompt (computed with the adapters bound now, or, with an
        activated LoRA, the foundation's before its activation start: a shared system prompt before
        the invocation tokens) and prefills only the rest; `Generation.reused_tokens` says how many
        were kept. After a switch to other adapters or strengths, nothing they touched is kept.
        """
        tokenizer = self.tokenizer
        prompt_ids = tokenizer.encode_prompt(prompt, chat)  # one rule, shared with etlora_runner
        stream = tokenizer.stream()

        def on_token(token: int) -> bool:
            if on_text is not None:
                on_text(stream.push(token))
            return True

        try:
            ids, stats = self._runtime.generate(
                prompt_ids, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                on_token=on_token, eos_ids=list(tokenizer.eos_ids) if stop_at_eos else [],
                reuse_prefix=keep_prefix,
            )
        except (ValueError, RuntimeError) as error:
            raise EtloraError(str(error)) from None
        if on_text is not None:
            on_text(stream.finish())
        return Generation(
            text=tokenizer.decode(ids),
            token_ids=list(ids),
            prompt_tokens=stats["prompt_tokens"],
            prefill_tokens_per_second=stats["prefill_tokens_per_second"],
            decode_tokens_per_second=stats["decode_tokens_per_second"],
            stop_reason=stats["stop_reason"],
            reused_tokens=stats["reused_tokens"],
        )


def load(bundle_dir: str | Path, adapters: Mapping[str, float] | None = None, *,
         packed_cache: bool = True, cache_dir: str | Path | None = None,
         packed_cache_residency: PackedCacheResidency | str = PackedCacheResidency.COPY,
         max_resident_adapters: int = 0, max_resident_adapter_bytes: int = 0,
         backend: BackendRequest | str | BackendChoice = BackendRequest.AUTO) -> Session:
    """Open a bundle in the C++ runtime, e.g. `etlora.load("bundle", adapters={"support": 1.0})`.

    packed_cache: keep XNNPACK's packed foundation weights in a file so that later starts map them
    instead of packing again; the file lives in `cache_dir` (default `<bundle>/.etlora-cache/`).
    An unwritable folder turns it off with one warning. `session.packed_cache` says what happened.
    packed_cache_residency: "copy" (default) moves the weights into private memory after the load,
    "map" keeps the file mapped (see PackedCacheResidency).
    max_resident_adapters: how many adapter files stay open (mapped, checked) for a fast switch
    back; beyond it the least recently used ones are closed and their pages unmapped. 0 = no limit.
    max_resident_adapter_bytes: the same budget in bytes of adapter files (the active adapters
    always stay open, even above it); 0 = no limit. Both budgets apply.
    backend: "auto" (default), "xnnpack" or "htp", decided before loading (etlora.backend), or a
    BackendChoice already made; `session.backend` says which runs and `session.backend_reason` why.
    "htp" where the HTP program cannot run raises EtloraError naming what is missing.
    """
    session = Session(bundle_dir, read_manifest(bundle_dir), packed_cache=packed_cache,
                      cache_dir=cache_dir, packed_cache_residency=packed_cache_residency,
                      max_resident_adapters=max_resident_adapters,
                      max_resident_adapter_bytes=max_resident_adapter_bytes, backend=backend)
    session.set_adapters(adapters)
    return session
