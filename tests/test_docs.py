"""Every `rgalign ...` command README.md and docs/ show exists: its subcommands and its --flags are in `rgalign --help`."""
import argparse
import re
from pathlib import Path

from rgalign.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shown_commands(text: str) -> list[str]:
    """``rgalign ...`` invocations in code spans and code blocks (up to a comment, a pipe or the span's end)."""
    spans = re.findall(r"```.*?```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
    out = []
    for span in spans:
        for m in re.finditer(r"(?:^|\s|\()rgalign ((?:[a-z][\w-]*)(?: [^\n#|`)]*)?)", span):
            out.append("rgalign " + m.group(1).strip().rstrip("\\").strip())
    return out


def check(command: str, parser: argparse.ArgumentParser) -> str | None:
    """None when ``command`` names real subcommands and flags, else what is wrong."""
    words = command.split()[1:]
    p = parser
    while words and isinstance(getattr(p, "_subparsers", None), argparse._ArgumentGroup):
        subs = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        if subs is None or words[0].startswith("-"):
            break
        if words[0] not in subs.choices:
            return f"{command!r}: no subcommand {words[0]!r} (known: {', '.join(sorted(subs.choices))})"
        p, words = subs.choices[words.pop(0)], words
    known = {s for a in p._actions for s in a.option_strings}
    for w in words:
        flag = w.strip("[]").split("=")[0]
        if flag.startswith("--") and flag not in known:
            return f"{command!r}: no flag {flag} in `{p.prog} --help`"
    return None


def test_every_command_in_the_readme_and_docs_exists():
    commands = [c for doc in DOCS for c in shown_commands(doc.read_text())]
    assert len(commands) > 30 and any(c.startswith("rgalign pipeline run") for c in commands)
    parser = build_parser()
    assert [e for e in (check(c, parser) for c in commands) if e] == []


def test_the_check_catches_a_renamed_command_and_flag():
    parser = build_parser()
    assert "no subcommand 'pipelines'" in check("rgalign pipelines run", parser)
    assert "no flag --tolerance" in check("rgalign models promote --kind ranker --tolerance 0.01", parser)
    assert check("rgalign models promote --kind ranker --version 3 --to champion --margin 0.01", parser) is None


def test_every_relative_link_and_image_in_the_docs_exists():
    missing = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if "://" in target or target.startswith("#"):
                continue
            if not (doc.parent / target.split("#")[0]).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert missing == []


def test_user_docs_carry_no_development_history():
    """No issue numbers or work sessions in what users read: a claim names its command and machine instead."""
    pattern = re.compile(r"issue #\d|\bsession \d|\(session|an earlier session|scratch screen", re.I)
    hits = [f"{doc.relative_to(ROOT)}: {m.group(0)!r}" for doc in DOCS for m in pattern.finditer(doc.read_text())]
    assert hits == []


def test_generated_result_blocks_match_their_sources_and_go_stale_when_a_source_changes(tmp_path):
    import importlib.util
    import shutil
    spec = importlib.util.spec_from_file_location("docs_results", ROOT / "scripts" / "docs_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert len(mod.BLOCK.findall((ROOT / "docs" / "results.md").read_text())) >= 2
    assert mod.main(["--check"]) == 0                       # the committed pages are what their sources say
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    src = docs / "results" / "query_half.md"
    src.write_text(src.read_text().replace("| ltp |", "| LTP |", 1) + "\nanother row\n")
    assert mod.main(["--check", "--docs", str(docs)]) == 1
    assert mod.main(["--docs", str(docs)]) == 0 and "another row" in (docs / "results.md").read_text()
    assert mod.main(["--check", "--docs", str(docs)]) == 0
    (docs / "results" / "query_half.md").unlink()
    assert mod.main(["--check", "--docs", str(docs)]) == 2  # a missing source names the command that writes it
