"""`etlora run --chat` and `etlora_runner --chat`: prompts and adapter switches from stdin in one
session, the answers equal to one-shot runs, and the resident budgets (count and bytes) applied.

Both tools read the same lines: a prompt per line, `/adapters a=1,b=0.5` to switch (alone: none),
`/quit` to end. A refused command is reported and the session goes on unchanged; exit status 1.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import etlora

PROMPT = "hello world"
NEW_TOKENS = 8
SCRIPT = f"""\
/adapters support=1
{PROMPT}
/adapters legal
{PROMPT}
/adapters support=1, legal=0.5
{PROMPT}
/adapters chat
/frobnicate
/adapters
{PROMPT}
/quit
{PROMPT}
"""
ACTIVE = [{"support": 1.0}, {"legal": 1.0}, {"support": 1.0, "legal": 0.5}, {}]


def _chat(command: list[str], script: str) -> subprocess.CompletedProcess:
    """stdout decoded as Python's stream decodes (the runner writes the model's bytes as they are)."""
    result = subprocess.run(command, input=script.encode(), capture_output=True, timeout=300)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(errors="replace"),
                                       result.stderr.decode(errors="replace"))


def _command(tool: str, bundle: Path) -> list[str]:
    if tool == "cli":
        return [sys.executable, "-m", "etlora.cli", "run", str(bundle), "--chat"]
    runner = shutil.which("etlora_runner") or str(Path(sysconfig.get_path("scripts")) / "etlora_runner")
    if not Path(runner).exists():
        pytest.skip("etlora_runner is not installed")
    return [runner, "--bundle", str(bundle), "--chat"]


@pytest.fixture(scope="module")
def expected_text(bundle) -> str:
    texts = [etlora.load(bundle, adapters=active).generate(PROMPT, max_new_tokens=NEW_TOKENS).text for active in ACTIVE]
    assert len(set(texts)) == len(texts), texts  # each switch shows in the answer
    return "".join(text + "\n" for text in texts)


@pytest.mark.parametrize("tool", ["cli", "runner"])
@pytest.mark.parametrize("budget", ["count", "bytes"])
def test_chat_switches_adapters_between_prompts_within_the_budget(bundle, expected_text, tool, budget):
    sizes = {name: (bundle / "adapters" / f"{name}.ptd").stat().st_size for name in ("support", "legal")}
    flag = (["--max-resident-adapters", "1"] if budget == "count"
            else ["--max-resident-adapter-bytes", str(max(sizes.values()))])
    result = _chat([*_command(tool, bundle), *flag, "--max-new-tokens", str(NEW_TOKENS)], SCRIPT)
    assert result.returncode == 1, result.stderr  # the two refused commands
    assert result.stdout == expected_text  # /quit: the last prompt is never answered
    resident = [int(n) for n in re.findall(r"^adapters: \d+ active \| resident: (\d+) adapter file", result.stderr, re.M)]
    assert resident == [1, 1, 2, 1], result.stderr  # both bound: above the budget; otherwise within it
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "chat" in errors[0] and "unknown command /frobnicate" in errors[1], result.stderr
    kept = [int(n) for n in re.findall(r"(\d+) kept from the cache", result.stderr)]
    assert len(kept) == 4 and kept[1:] == [0, 0, 0]  # ordinary adapters: every switch clears the cache


@pytest.mark.parametrize("tool", ["cli", "runner"])
def test_chat_keeps_the_cache_for_the_same_adapters(bundle, tool):
    """A repeated prompt with no switch keeps its whole prefix but the last token, same answer."""
    result = _chat([*_command(tool, bundle), "--max-new-tokens", str(NEW_TOKENS)], f"/adapters support\n{PROMPT}\n{PROMPT}\n")
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("\n")[:2]
    assert first == second and result.stdout == first + "\n" + second + "\n"
    kept = [int(n) for n in re.findall(r"(\d+) kept from the cache", result.stderr)]
    assert kept[0] == 0 and kept[1] > 0, result.stderr


def test_size_suffixes_and_bad_budgets(bundle):
    from etlora.cli.run_command import byte_size_argument as _size_argument

    assert _size_argument("64M") == 64 * 2**20 and _size_argument("0") == 0 and _size_argument("3k") == 3072
    for tool in ("cli", "runner"):
        result = _chat([*_command(tool, bundle), "--max-resident-adapter-bytes", "64M"], "/adapters support\n")
        assert result.returncode == 0 and "resident: 1 adapter file(s)" in result.stderr, result.stderr
        for bad in ("-1", " -1", "12X", "1.5M"):
            result = _chat([*_command(tool, bundle), "--max-resident-adapter-bytes", bad], "")
            assert result.returncode == 2 and "size in bytes >= 0" in result.stderr, (tool, bad, result.stderr)
