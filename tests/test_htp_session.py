"""The C++ HtpSession (runtime_cpp/src/session/htp_session.cpp): an HTP-shaped program with the KV cache on the host.

On a phone it runs the QNN-compiled model_htp.pte; here the same layout lowered to XNNPACK
(lower_htp_shaped) stands in for it. Built from the bundle fixture's own spec, it reads the bundle's
foundation.ptd and the bundle's adapter files, so one adapter file drives both programs. Its
logits must equal the eager HtpDecoder driven by Python's HostKVCache, the same lowered program
driven from Python, and the XNNPACK Session of the bundle, through a chunked prefill (the last
chunk padded) and one-token decode steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MAX_SEQ_LEN, TOKENS

import etlora

CHUNK_LEN = 4
PROMPT = TOKENS + [5, 120, 33]  # 11 tokens: chunks of 4, 4, 3 (the last padded)
DECODE_STEPS = 5
EAGER_TOLERANCE = 1e-5
SESSION_TOLERANCE = 1e-4
CASES = {
    "no adapter": {},
    "support@1": {"support": 1.0},
    "support@1+legal@0.5": {"support": 1.0, "legal": 0.5},
}


@pytest.fixture(scope="module")
def htp(bundle, model_dir, tmp_path_factory):
    """The bundle's program spec, lowered HTP-shaped (T = 4, C = the bundle's max_seq_len)."""
    from etlora.testing.htp_stand_in import lower_bundle_htp_shaped

    path = tmp_path_factory.mktemp("htp_session") / "model_htp.pte"
    lowered = lower_bundle_htp_shaped(bundle, model_dir, CHUNK_LEN, path)
    program = lowered.manifest.program
    assert program.max_seq_len == MAX_SEQ_LEN and program.adapter_slots == 2
    return {"foundation": lowered.foundation, "spec": lowered.spec, "manifest": lowered.manifest,
            "path": path, "foundation_path": lowered.foundation_path}


def adapter_path(bundle, manifest, name: str) -> str:
    return str(bundle / manifest.adapters[name].file)


def method_inputs(bundle, htp, active: dict[str, float]):
    """adapter_scales and LoRA inputs from the bundle's adapter .ptd files, read back by Python."""
    from etlora.format.adapter_format import read_adapter_ptd
    from etlora.export.htp_model import adapter_method_inputs

    spec, manifest = htp["spec"], htp["manifest"]
    chosen = []
    for name, strength in active.items():
        contents = read_adapter_ptd(adapter_path(bundle, manifest, name))
        tensors = {key: torch.from_numpy(array.copy()) for key, array in contents.tensors.items()}
        chosen.append((tensors, strength * contents.scaling))
    slots = spec.slots(htp["foundation"])
    return adapter_method_inputs(spec.sites, slots.site_dims, spec.max_rank, spec.adapter_slots, chosen)


def max_diff(received, expected) -> float:
    received, expected = np.asarray(received), np.asarray(expected)
    assert received.shape == expected.shape
    return float(np.max(np.abs(received - expected)))


def test_properties(htp, bundle):
    from etlora import _runtime

    session = _runtime.HtpSession(str(htp["path"]), str(htp["foundation_path"]))
    program = htp["manifest"].program
    assert (session.chunk_len, session.cache_len) == (CHUNK_LEN, MAX_SEQ_LEN)
    assert session.sites == program.sites and session.max_rank == program.max_rank
    assert [list(d) for d in session.site_shapes] == program.site_dims
    assert session.adapter_slots == 2 and session.format_version == 2 and session.sliding_window == 0
    assert session.vocab_size == htp["foundation"].shape.vocab_size
    assert session.foundation_fingerprint == htp["manifest"].foundation.fingerprint


def test_logits_match_eager_and_the_xnnpack_session(htp, bundle):
    """One HtpSession and one XNNPACK Session, each case from position 0 on the same session (so a
    later case runs over the stale cache rows of the one before): prefill in chunks, then decode."""
    from etlora import _runtime
    from etlora.export.htp_model import HostKVCache
    from etlora.export.htp_program import HtpShape, build_htp_model
    from executorch.runtime import Runtime

    foundation, spec, manifest = htp["foundation"], htp["spec"], htp["manifest"]
    session = _runtime.HtpSession(str(htp["path"]), str(htp["foundation_path"]))
    cpu = etlora.load(bundle)
    eager_model = build_htp_model(foundation, spec, HtpShape(CHUNK_LEN, MAX_SEQ_LEN))
    method = Runtime.get().load_program(htp["path"], data_path=htp["foundation_path"]).load_method("forward")
    worst = {"eager": 0.0, "python-driven program": 0.0, "xnnpack session": 0.0}
    last_by_case = {}
    for case, active in CASES.items():
        session.set_adapters([(adapter_path(bundle, manifest, name), s) for name, s in active.items()])
        cpu.set_adapters(active)
        inputs = method_inputs(bundle, htp, active)
        eager = HostKVCache(foundation.shape, MAX_SEQ_LEN, eager_model, CHUNK_LEN, adapter_inputs=inputs)
        driven = HostKVCache(foundation.shape, MAX_SEQ_LEN, lambda *args: method.execute(list(args)), CHUNK_LEN,
                             adapter_inputs=inputs)
        tokens = list(PROMPT)
        rows = []
        for step in range(DECODE_STEPS + 1):
            new = tokens if step == 0 else tokens[-1:]
            start = 0 if step == 0 else len(tokens) - 1
            received = session.forward(new, start)
            assert session.last_chunks == (3 if step == 0 else 1)
            with torch.no_grad():
                expected = eager.forward(new)[-1].numpy()
            references = {"eager": expected, "python-driven program": driven.forward(new)[-1].numpy(),
                          "xnnpack session": cpu.forward(new, start)}
            for name, reference in references.items():
                worst[name] = max(worst[name], max_diff(received, reference))
            rows.append(received)
            tokens.append(int(np.argmax(expected)))
        print(f"{case}: generated {tokens[len(PROMPT):]}")
        last_by_case[case] = np.stack(rows)
    print("HtpSession max abs diff: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))
    assert worst["eager"] < EAGER_TOLERANCE
    assert worst["python-driven program"] < EAGER_TOLERANCE
    assert worst["xnnpack session"] < SESSION_TOLERANCE
    # The adapters change the answer, and so does the second slot, or the comparison proves little.
    assert max_diff(last_by_case["support@1"][0], last_by_case["no adapter"][0]) > 1e-2
    assert max_diff(last_by_case["support@1+legal@0.5"][0], last_by_case["support@1"][0]) > 1e-2


def test_split_calls_equal_one_call(htp, bundle):
    """The prompt in pieces not aligned to the chunk (5 then 6 tokens) gives the same logits."""
    from etlora import _runtime

    manifest = htp["manifest"]
    session = _runtime.HtpSession(str(htp["path"]), str(htp["foundation_path"]))
    session.set_adapters([(adapter_path(bundle, manifest, "legal"), 0.7)])
    whole = session.logits(PROMPT)
    session.forward(PROMPT[:5], 0)
    pieces = session.forward(PROMPT[5:], 5)
    assert max_diff(pieces, whole) < EAGER_TOLERANCE


def test_cpu_program_is_refused(bundle, htp):
    from etlora import _runtime

    manifest = htp["manifest"]
    with pytest.raises(ValueError, match="etlora_program_kind") as error:
        _runtime.HtpSession(str(bundle / manifest.program.file), str(htp["foundation_path"]))
    assert str(bundle / manifest.program.file) in str(error.value)


def test_positions_beyond_the_cache_are_refused(htp):
    from etlora import _runtime

    session = _runtime.HtpSession(str(htp["path"]), str(htp["foundation_path"]))
    for tokens, start in (([1], MAX_SEQ_LEN), ([1, 2], MAX_SEQ_LEN - 1), ([1], -1)):
        with pytest.raises(ValueError, match=rf"start_pos.*{MAX_SEQ_LEN} \(cache_len"):
            session.forward(tokens, start)
    with pytest.raises(ValueError, match=rf"expected 1 to {MAX_SEQ_LEN} tokens"):
        session.logits([1] * (MAX_SEQ_LEN + 1))
    with pytest.raises(ValueError, match="expected an id in"):
        session.logits([1, session.vocab_size])
    session.forward([1, 2], MAX_SEQ_LEN - 2)  # the last rows are usable


def test_adapter_refusals(htp, bundle, fixtures_dir, tmp_path):
    """Another foundation's adapter: refused with check_for_program's words (as the XNNPACK Session
    says them), leaving the adapters bound before active. Too many adapters, non-finite strength."""
    from etlora import _runtime
    from etlora.export.adapter_file import ProgramSlots, write_adapter_ptd
    from etlora.export.adapters import load_adapter
    from etlora.export.families import DecoderShape

    manifest = htp["manifest"]
    program = manifest.program
    foreign = ProgramSlots(tuple(program.sites), tuple(tuple(d) for d in program.site_dims), program.max_rank,
                           "f" * 64)
    shape = DecoderShape.from_summary(manifest.foundation.config)
    path = tmp_path / "foreign.ptd"
    write_adapter_ptd(load_adapter("support", fixtures_dir / "support", shape), foreign, path)

    session = _runtime.HtpSession(str(htp["path"]), str(htp["foundation_path"]))
    session.set_adapters([(adapter_path(bundle, manifest, "support"), 1.0)])
    before = session.logits(PROMPT)
    with pytest.raises(ValueError) as htp_error:
        session.set_adapters([(str(path), 1.0)])
    cpu = _runtime.Session(str(bundle / program.file), str(htp["foundation_path"]))
    with pytest.raises(ValueError) as cpu_error:
        cpu.set_adapters([(str(path), 1.0)])
    assert "is for foundation ffffffffffff" in str(htp_error.value)
    assert (str(htp_error.value).replace(str(htp["path"]), "<program>")
            == str(cpu_error.value).replace(str(bundle / program.file), "<program>"))
    assert session.active_adapters == [(adapter_path(bundle, manifest, "support"), 1.0)]
    assert max_diff(session.logits(PROMPT), before) == 0.0

    support, legal = adapter_path(bundle, manifest, "support"), adapter_path(bundle, manifest, "legal")
    with pytest.raises(ValueError, match="3 adapters given.*2 adapter slot"):
        session.set_adapters([(support, 1.0), (legal, 1.0), (str(path), 1.0)])
    with pytest.raises(ValueError, match="strength must be a finite number"):
        session.set_adapters([(support, float("nan"))])
    with pytest.raises(ValueError, match="given twice"):
        session.set_adapters([(support, 1.0), (support, 0.5)])
    with pytest.raises(FileNotFoundError):
        session.set_adapters([(str(tmp_path / "missing.ptd"), 1.0)])


def test_cpp_ctest_with_the_lowered_program(htp, bundle):
    """tests/cpp/htp_session_test: the same comparison in C++ alone (HtpSession vs Session)."""
    import os
    import subprocess
    from pathlib import Path

    found = sorted((Path(__file__).resolve().parent.parent / "build").glob("*/tests/cpp/htp_session_test"))
    if not found:
        pytest.skip("no CMake build tree with tests (install with pip install -e .)")
    result = subprocess.run([str(found[0])], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "ETLORA_TEST_BUNDLE": str(bundle),
                                 "ETLORA_TEST_HTP_PROGRAM": str(htp["path"])})
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HtpSession vs Session: max abs diff" in result.stdout and "PASSED" in result.stdout


# A device the probe would clear for an SM8650 program (faked: this machine has no NPU).
CLEARED_DEVICE = {"htp_library_loadable": True, "htp_library_error": "", "system_library_loadable": True,
                  "system_library_error": "", "dsp_device": "/dev/fastrpc-cdsp", "soc": "SM8650",
                  "soc_source": "ETLORA_SOC"}


def install_stand_in(bundle_dir, program: bytes) -> dict:
    """Make `bundle_dir` a two-program bundle: `program` (the XNNPACK stand-in: no QNN SDK here) as
    model_htp.pte, listed in the manifest's files and htp_program. Returns the manifest's data."""
    import json

    from etlora.format.manifest import FileRecord

    target = bundle_dir / "model_htp.pte"
    target.write_bytes(program)
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["files"]["model_htp.pte"] = FileRecord.of(target).__dict__
    data["htp_program"] = {"file": "model_htp.pte", "soc": "SM8650", "qnn_sdk_version": "2.37.0.250724",
                           "chunk_len": CHUNK_LEN, "cache_len": MAX_SEQ_LEN, "foundation_in_context_bytes": 0}
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    return data


def test_etlora_load_runs_the_htp_program_when_the_backend_is_htp(bundle_copy, htp):
    """A two-program bundle on a device the probe cleared (facts faked): etlora.load opens the HTP
    program in an HtpSession; logits and greedy text equal the XNNPACK program's with the same
    adapter files."""
    import json

    from etlora.backend import Backend, choose_backend

    data = install_stand_in(bundle_copy, htp["path"].read_bytes())
    device = dict(CLEARED_DEVICE)
    choice = choose_backend(bundle_copy, "htp", facts=device)
    assert choice.backend is Backend.HTP
    on_htp = etlora.load(bundle_copy, adapters={"support": 1.0, "legal": 0.5}, backend=choice)
    on_cpu = etlora.load(bundle_copy, adapters={"support": 1.0, "legal": 0.5}, backend="xnnpack")
    assert (on_htp.backend, on_cpu.backend) == ("htp", "xnnpack")
    assert on_htp.packed_cache.source == "off"
    assert max_diff(on_htp.logits(PROMPT), on_cpu.logits(PROMPT)) < SESSION_TOLERANCE
    on_htp.set_adapters({"legal": 1.0})
    on_cpu.set_adapters({"legal": 1.0})
    assert max_diff(on_htp.logits(PROMPT), on_cpu.logits(PROMPT)) < SESSION_TOLERANCE
    htp_text = on_htp.generate("hello there", max_new_tokens=8, stop_at_eos=False)
    cpu_text = on_cpu.generate("hello there", max_new_tokens=8, stop_at_eos=False)
    assert htp_text.token_ids == cpu_text.token_ids and len(htp_text.token_ids) == 8
    # A manifest whose chunk length disagrees with the program is refused by name.
    data["htp_program"]["chunk_len"] = CHUNK_LEN * 2
    (bundle_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(etlora.EtloraError, match=r"chunk_len 4, cache_len 64; manifest htp_program says 8, 64"):
        etlora.load(bundle_copy, backend=choose_backend(bundle_copy, "htp", facts=device))


# etlora_runner with the HTP session (runtime_cpp/src/runner/runner_main.cpp). On this machine the device
# facts are faked through the runner's test hook, ETLORA_TEST_HTP_FACTS (runtime_cpp/README.md).
TEST_FACTS = "ETLORA_TEST_HTP_FACTS"
RUNNER_ADAPTERS = ["--adapter", "support=1.0", "--adapter", "legal=0.5"]


def run_runner(*args: str, facts=None, timeout: int = 300, text: bool = True):
    """etlora_runner with `args`; facts: None (probe this machine) or a path for the test hook;
    text=False: stdout and stderr as bytes (sampled text need not be valid UTF-8)."""
    import os
    import shutil
    import subprocess
    import sysconfig
    from pathlib import Path

    runner = shutil.which("etlora_runner") or str(Path(sysconfig.get_path("scripts")) / "etlora_runner")
    if not Path(runner).exists():
        pytest.skip("etlora_runner is not installed")
    env = {k: v for k, v in os.environ.items() if k not in (TEST_FACTS, "ETLORA_SOC")}
    if facts is not None:
        env[TEST_FACTS] = str(facts)
    return subprocess.run([runner, *args], capture_output=True, text=text, timeout=timeout, env=env)


def printed_logits(stdout: str) -> np.ndarray:
    line = next(line for line in stdout.splitlines() if line.startswith("logits[:"))
    return np.array([float(value) for value in line.split("]:", 1)[1].split()], dtype=np.float32)


@pytest.fixture
def stand_in_bundle(bundle_copy, htp, tmp_path):
    """A two-program bundle (the stand-in as model_htp.pte) and a facts file clearing the device."""
    import json

    install_stand_in(bundle_copy, htp["path"].read_bytes())
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(CLEARED_DEVICE))
    return bundle_copy, facts


def test_the_runner_runs_the_htp_program_when_the_backend_is_htp(stand_in_bundle, htp):
    """--backend htp on a device the hook clears: model_htp.pte in the runner's HtpSession; with two
    adapters its logits equal the runner's XNNPACK program and Python's (both programs), and its
    greedy text equals the XNNPACK runner's."""
    from etlora.backend import choose_backend

    bundle_dir, facts = stand_in_bundle
    vocab = htp["foundation"].shape.vocab_size
    tokens = ["--tokens", ",".join(map(str, PROMPT)), "--show", str(vocab)]
    on_htp = run_runner("--bundle", str(bundle_dir), "--backend", "htp", *RUNNER_ADAPTERS, *tokens, facts=facts)
    assert on_htp.returncode == 0, on_htp.stderr
    program = bundle_dir / "model_htp.pte"
    assert f"warning: device facts from {TEST_FACTS}={facts} (test hook" in on_htp.stderr
    assert (f"backend: htp (HTP program for SM8650 ({program}), libQnnHtp.so and libQnnSystem.so loadable, "
            "/dev/fastrpc-cdsp, SoC SM8650 from ETLORA_SOC)\n") in on_htp.stderr
    assert (f"htp program: {program} (chunk_len {CHUNK_LEN}, cache_len {MAX_SEQ_LEN}, "
            f"foundation {bundle_dir / 'foundation.ptd'})\n") in on_htp.stderr
    assert f"run ({len(PROMPT)} tokens, 3 chunk(s) of {CHUNK_LEN})" in on_htp.stdout
    on_cpu = run_runner("--bundle", str(bundle_dir), "--backend", "xnnpack", *RUNNER_ADAPTERS, *tokens)
    assert on_cpu.returncode == 0, on_cpu.stderr
    assert "backend: xnnpack (xnnpack requested)\n" in on_cpu.stderr
    # auto takes the same branch when the (faked) device clears the program.
    auto = run_runner("--bundle", str(bundle_dir), *RUNNER_ADAPTERS, *tokens, facts=facts)
    assert auto.returncode == 0 and "backend: htp (HTP program for SM8650" in auto.stderr, auto.stderr

    active = {"support": 1.0, "legal": 0.5}
    python_cpu = etlora.load(bundle_dir, adapters=active, backend="xnnpack").logits(PROMPT)
    python_htp = etlora.load(bundle_dir, adapters=active,
                             backend=choose_backend(bundle_dir, "htp", facts=CLEARED_DEVICE)).logits(PROMPT)
    runner_htp, runner_cpu = printed_logits(on_htp.stdout), printed_logits(on_cpu.stdout)
    assert runner_htp.shape == (vocab,)
    diffs = {"runner htp vs runner xnnpack": max_diff(runner_htp, runner_cpu),
             "runner htp vs python xnnpack": max_diff(runner_htp, python_cpu),
             "runner htp vs python htp": max_diff(runner_htp, python_htp),
             "runner auto vs runner htp": max_diff(printed_logits(auto.stdout), runner_htp)}
    print("etlora_runner HtpSession max abs diff: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    assert all(diff < SESSION_TOLERANCE for diff in diffs.values()), diffs
    assert diffs["runner auto vs runner htp"] == 0.0
    assert int(on_htp.stdout.split("argmax: ")[1].split()[0]) == int(np.argmax(python_cpu))

    prompt = ["--prompt", "hello there", "--max-new-tokens", "8"]
    text_htp = run_runner("--bundle", str(bundle_dir), "--backend", "htp", *RUNNER_ADAPTERS, *prompt, facts=facts)
    text_cpu = run_runner("--bundle", str(bundle_dir), "--backend", "xnnpack", *RUNNER_ADAPTERS, *prompt)
    assert text_htp.returncode == 0, text_htp.stderr
    assert text_cpu.returncode == 0, text_cpu.stderr
    print(f"greedy text, htp: {text_htp.stdout!r}, xnnpack: {text_cpu.stdout!r}")
    assert text_htp.stdout == text_cpu.stdout and text_htp.stdout.strip()
    decode = [line.split("| decode: ")[1].split(" tokens")[0] for line in (text_htp.stderr, text_cpu.stderr)
              for line in line.splitlines() if line.startswith("prefill: ")]
    assert decode[0] == decode[1], decode
    python_text = etlora.load(bundle_dir, adapters=active, backend="xnnpack").generate("hello there",
                                                                                        max_new_tokens=8)
    assert text_htp.stdout == python_text.text + "\n"
    # Seeded sampling draws from the whole distribution: the same text again (a stronger check than
    # the tiny model's greedy text).
    sampled = ["--prompt", "hello there", "--max-new-tokens", "16", "--temperature", "1.0", "--seed", "7"]
    sampled_htp = run_runner("--bundle", str(bundle_dir), "--backend", "htp", *RUNNER_ADAPTERS, *sampled,
                             facts=facts, text=False)
    sampled_cpu = run_runner("--bundle", str(bundle_dir), "--backend", "xnnpack", *RUNNER_ADAPTERS, *sampled,
                             text=False)
    assert sampled_htp.returncode == 0 and sampled_cpu.returncode == 0, sampled_htp.stderr + sampled_cpu.stderr
    print(f"sampled text, htp: {sampled_htp.stdout!r}, xnnpack: {sampled_cpu.stdout!r}")
    assert sampled_htp.stdout == sampled_cpu.stdout and len(set(sampled_htp.stdout.strip())) > 3


def test_the_runner_without_the_hook_keeps_the_cpu_here(stand_in_bundle):
    """This machine, probed: auto runs model.pte and says what is missing; htp is an error naming it."""
    bundle_dir, _ = stand_in_bundle
    from etlora.backend import htp_facts

    if htp_facts()["htp_library_loadable"] or htp_facts()["dsp_device"]:
        pytest.skip("this machine has QNN libraries or a Hexagon DSP")
    auto = run_runner("--bundle", str(bundle_dir), "--tokens", "1,2,3")
    assert auto.returncode == 0, auto.stderr
    assert "backend: xnnpack (libQnnHtp.so not loadable: " in auto.stderr
    assert "htp program:" not in auto.stderr and "warning: device facts" not in auto.stderr
    htp = run_runner("--bundle", str(bundle_dir), "--backend", "htp", "--tokens", "1,2,3")
    assert htp.returncode == 1
    assert htp.stderr.startswith("error: backend htp: expected an HTP program this device can run, received: "
                                 "libQnnHtp.so not loadable: ")
    assert "no Hexagon DSP device node" in htp.stderr and htp.stdout == ""


def test_the_hook_refuses_a_qnn_program_and_malformed_facts(stand_in_bundle, htp, tmp_path):
    """Under faked facts a program that delegates to QnnBackend is refused before it is loaded (here the
    stand-in with its delegate id rewritten); a facts file that is missing, has another key or a wrong
    type is an error, never a silent probe; facts that lack something still decide as the probe's."""
    import json
    import struct

    bundle_dir, facts = stand_in_bundle
    program = htp["path"].read_bytes()
    old = struct.pack("<I", len(b"XnnpackBackend")) + b"XnnpackBackend\0"
    assert program.count(old) >= 1
    # A flatbuffer string in place: length 10, "QnnBackend", NUL, the rest padding.
    new = struct.pack("<I", len(b"QnnBackend")) + b"QnnBackend".ljust(len(b"XnnpackBackend") + 1, b"\0")
    install_stand_in(bundle_dir, program.replace(old, new))
    refused = run_runner("--bundle", str(bundle_dir), "--backend", "htp", "--tokens", "1,2,3", facts=facts)
    assert refused.returncode == 1
    assert (f"error: {TEST_FACTS}: expected a stand-in HTP program with faked device facts, received "
            f"{bundle_dir / 'model_htp.pte'}, which delegates to QnnBackend (hint: ") in refused.stderr
    assert "htp program:" not in refused.stderr

    args = ("--bundle", str(bundle_dir), "--backend", "auto", "--tokens", "1,2,3")
    missing = run_runner(*args, facts=tmp_path / "none.json")
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"error: {TEST_FACTS}={tmp_path / 'none.json'}: cannot be read")
    cases = {"extra key": ({**CLEARED_DEVICE, "dsp": ""}, "expected only the keys htp_library_loadable, "
                           "htp_library_error, system_library_loadable, system_library_error, dsp_device, soc, "
                           "soc_source, received 'dsp'"),
             "missing key": ({k: v for k, v in CLEARED_DEVICE.items() if k != "soc"},
                             "expected a 'soc' key, received none"),
             "wrong type": ({**CLEARED_DEVICE, "htp_library_loadable": 1},
                            "'htp_library_loadable' expected a boolean, received a number"),
             "not an object": ([], "expected a JSON object, received an array")}
    for what, (content, message) in cases.items():
        bad = tmp_path / f"{what.replace(' ', '_')}.json"
        bad.write_text(json.dumps(content))
        result = run_runner(*args, facts=bad)
        assert result.returncode == 2, (what, result.stderr)
        assert result.stderr == f"error: {TEST_FACTS}={bad}: {message}\n", what

    no_dsp = tmp_path / "no_dsp.json"
    no_dsp.write_text(json.dumps({**CLEARED_DEVICE, "dsp_device": ""}))
    auto = run_runner(*args, facts=no_dsp)
    assert auto.returncode == 0, auto.stderr
    assert "backend: xnnpack (no Hexagon DSP device node (/dev/fastrpc-cdsp, " in auto.stderr
    htp_run = run_runner("--bundle", str(bundle_dir), "--backend", "htp", "--tokens", "1,2,3", facts=no_dsp)
    assert htp_run.returncode == 1 and "received: no Hexagon DSP device node" in htp_run.stderr
