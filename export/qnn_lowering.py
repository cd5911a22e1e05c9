"""ExecuTorch's Qualcomm (QNN) backend as a Lowering for program.lower_exported: the only code that
imports executorch.backends.qualcomm.

It follows ExecuTorch's own `to_edge_transform_and_lower_to_qnn` (backends/qualcomm/utils/utils.py):
HTP compiler specs for the SoC, the QNN pass manager's export and edge passes, the QnnPartitioner,
and the QNN manager held open while the partitions compile into context binaries. The graph runs
in fp16 on the HTP (`use_fp16`: SM8550 and newer), so no calibration data is needed; the weights
go into the context binaries, which therefore carry their own copy of the foundation.

Not run here: no QNN SDK exists on this machine (tests fake one and check the refusal).
"""

from __future__ import annotations

from contextlib import contextmanager

from etlora.format.backends import Backend, Soc
from etlora.format.errors import EtloraError

from .program import Lowering
from .qnn_sdk import QnnSdkCheck


def qnn_htp_lowering(soc: Soc, sdk: QnnSdkCheck) -> Lowering:
    """The Lowering that compiles for the HTP of `soc` with the SDK `sdk` found (qnn_sdk.check_qnn_sdk).

    Refuses an SDK the check did not pass, before ExecuTorch's setup could download one; a
    failure of the compiler itself (libraries that do not load, a device it cannot create) is
    raised as an EtloraError naming the SDK, never left to crash the export.
    """
    if not sdk.found:
        raise EtloraError(f"--backend htp: {sdk.message()}")
    try:
        from executorch.backends.qualcomm._passes.qnn_pass_manager import get_qnn_pass_manager_cls
        from executorch.backends.qualcomm.partition.qnn_partitioner import QnnPartitioner
        from executorch.backends.qualcomm.utils.qnn_manager_lifecycle import QnnManagerContext
        from executorch.backends.qualcomm.utils.utils import (
            generate_htp_compiler_spec,
            generate_qnn_executorch_compiler_spec,
            get_soc_to_chipset_map,
        )
    except ImportError as error:
        raise EtloraError(
            f"--backend htp: expected executorch.backends.qualcomm in the executorch wheel, received "
            f"ImportError ({error}); hint: install an executorch wheel built with the Qualcomm backend"
        ) from None

    compiler_specs = generate_qnn_executorch_compiler_spec(
        soc_model=get_soc_to_chipset_map()[soc.value],
        backend_options=generate_htp_compiler_spec(use_fp16=True),
    )
    pass_manager = get_qnn_pass_manager_cls()()

    def prepare(exported):
        # In the order of ExecuTorch's own entry point: the export passes (which rewrite the
        # graph in place), then the edge passes chosen on that program.
        prepared = pass_manager.transform_for_export_pipeline(exported)
        return prepared, pass_manager.get_to_edge_transform_passes(exported, compiler_specs=compiler_specs)

    @contextmanager
    def compiler():
        try:
            with QnnManagerContext({"forward": compiler_specs}):
                yield
        except (RuntimeError, AssertionError) as error:
            raise EtloraError(
                f"{sdk.root}: ExecuTorch's QNN compiler failed for {soc.value} "
                f"({' '.join(str(error).split())}); expected the x86-64 QNN {sdk.version_expected} "
                f"libraries, loadable (with libc++.so.1 on the loader path); hint: {sdk.hint}; or "
                "--backend xnnpack for a bundle without an HTP program"
            ) from error

    return Lowering(
        Backend.HTP, (QnnPartitioner(compiler_specs),), shares_foundation=False, prepare=prepare, context=compiler
    )
