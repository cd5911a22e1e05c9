"""etlora: one foundation model, many LoRA adapters, on the stock ExecuTorch runtime.

    import etlora
    session = etlora.load("bundle/", adapters={"support": 1.0})
    logits = session.logits([1, 2, 3])
    session.set_adapters({"legal": 0.5})
"""

import logging

# torchao (pulled in by executorch) logs missing CUDA kernels and torch logs a pytree deprecation at
# import time; on a CPU machine both are noise in every command's output.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

from etlora.format.errors import AdapterError, BundleError, EtloraError
from etlora.kernel_path import KernelPath, kernel_path, kernel_paths, select_kernel_path
from etlora.packed_cache import PackedCacheResidency
from etlora.session import Session, load
from etlora.thread_pool import ThreadPoolState, configure_thread_pool, thread_pool_state

__all__ = [
    "AdapterError", "BundleError", "EtloraError", "KernelPath", "PackedCacheResidency", "Session",
    "ThreadPoolState", "configure_thread_pool", "kernel_path", "kernel_paths", "load",
    "select_kernel_path", "thread_pool_state",
]
