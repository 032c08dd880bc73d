"""Regenerate the result tables of docs/ and the README from the files the runs wrote, so the pages cannot drift from them.

A generated block in a page is

    <!-- generated: results/<name>.md (<the command that wrote it>) -->
    ...
    <!-- end generated -->

and its body is the file ``docs/results/<name>.md`` as the command wrote it (a gate report, a bench table).

    python scripts/docs_results.py                       # rewrite every block from docs/results/ (idempotent)
    python scripts/docs_results.py --check               # exit 1 when a page differs from its sources (CI)
    python scripts/docs_results.py --collect main_job_gate=artifacts/kfp/<run>/evaluation-gate/gate/gate.md \\
                                             query_half=artifacts/bench/query_half/query_half.md

``--collect name=FILE`` copies a run's output into docs/results/<name>.md first, then regenerates.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"(?P<head><!-- generated: results/(?P<name>[\w.-]+)\.md \((?P<cmd>.*?)\) -->\n)"
                   r"(?P<body>.*?)(?P<end><!-- end generated -->)", re.S)


def render(text: str, results: Path) -> str:
    """``text`` with every generated block's body replaced by its source file (fenced when it is a report)."""
    def body(m: re.Match) -> str:
        src = results / f"{m['name']}.md"
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing: run `{m['cmd']}` and collect its output with "
                                    f"`python scripts/docs_results.py --collect {m['name']}=FILE`")
        content = src.read_text().strip()
        if content.startswith("#"):           # a report with headings: shown as the command printed it
            content = "```\n" + content.replace("**", "") + "\n```"
        return m["head"] + content + "\n" + m["end"]
    return BLOCK.sub(body, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a page is stale")
    ap.add_argument("--collect", nargs="*", default=[], metavar="NAME=FILE", help="copy run outputs into docs/results/")
    ap.add_argument("--docs", default=str(DOCS), help="docs folder")
    args = ap.parse_args(argv)
    docs = Path(args.docs)
    for item in args.collect:
        name, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            print(f"--collect {item!r}: expected NAME=FILE with an existing file", file=sys.stderr)
            return 2
        (docs / "results").mkdir(exist_ok=True)
        shutil.copyfile(path, docs / "results" / f"{name}.md")
    stale = []
    readme = docs.parent / "README.md"
    for page in sorted(docs.glob("*.md")) + ([readme] if readme.is_file() else []):
        text = page.read_text()
        try:
            new = render(text, docs / "results")
        except FileNotFoundError as e:
            print(f"{page.name}: {e}", file=sys.stderr)
            return 2
        if new != text:
            stale.append(page.name)
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        print(f"stale generated blocks in {', '.join(stale)}: run `python scripts/docs_results.py`", file=sys.stderr)
        return 1
    print(("stale: " if args.check else "rewrote: ") + (", ".join(stale) or "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
