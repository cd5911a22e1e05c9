"""The HTP-shaped program of a bundle, lowered to XNNPACK: how an HtpSession is tested off-device.

A phone runs the QNN-compiled model_htp.pte; this machine has no QNN SDK, so the tests lower the
same layout (export/htp_program.py lower_htp_shaped) from the bundle's own program spec. It reads the
bundle's foundation.ptd and adapter files, so one adapter file drives both programs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HtpStandIn:
    path: Path  # the lowered model_htp.pte
    foundation_path: Path  # the bundle's foundation.ptd, which it reads
    foundation: object  # etlora.export.foundation.Foundation
    spec: object  # etlora.export.program.ProgramSpec
    manifest: object  # the bundle's Manifest


def lower_bundle_htp_shaped(bundle: Path, model_dir: Path, chunk_len: int, out_path: Path) -> HtpStandIn:
    """Lower `bundle`'s program spec HTP-shaped (T = chunk_len, C = its max_seq_len) to `out_path`."""
    from etlora.export.foundation import load_foundation
    from etlora.export.htp_program import HtpShape, lower_htp_shaped
    from etlora.export.program import ProgramSpec
    from etlora.format.backends import Backend
    from etlora.format.manifest import read_manifest

    manifest = read_manifest(bundle)
    program = manifest.program
    foundation = load_foundation(model_dir)
    spec = ProgramSpec(tuple(program.sites), tuple(program.target_modules), max_rank=program.max_rank,
                       adapter_slots=program.adapter_slots, max_seq_len=program.max_seq_len,
                       backend=Backend.XNNPACK)
    if [list(d) for d in spec.slots(foundation).site_dims] != program.site_dims:
        raise AssertionError(f"{bundle}: site dims {program.site_dims} differ from the checkpoint's")
    result = lower_htp_shaped(foundation, spec, HtpShape(chunk_len, program.max_seq_len))
    foundation_path = bundle / manifest.foundation.file
    # The same foundation bytes: the HTP-shaped program runs on the bundle's own foundation.ptd.
    if result.lowered.foundation_bytes != foundation_path.read_bytes():
        raise AssertionError(f"{bundle}: the HTP-shaped program's foundation differs from {foundation_path}")
    out_path.write_bytes(result.lowered.program_bytes)
    return HtpStandIn(out_path, foundation_path, foundation, spec, manifest)
