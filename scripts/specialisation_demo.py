"""A specialisation study on the shipped micro model, from text found on any machine.

Three sources, documents of 90 words cut to their first 128 tokens, read in sorted order (so the corpus is the
same wherever the Python version is the same):
  - docstring: docstrings of the Python standard library's modules (``ast``),
  - code: the same modules' source with docstrings and comments stripped,
  - license: the license texts under /usr/share/common-licenses (or the stdlib's LICENSE.txt).
The micro model was trained on stdlib docstrings, so its routers have seen the first source and
neither of the others. Writes the corpus as JSONL, routes it with ``inferoscope route`` and runs
``inferoscope specialise``.

    python scripts/specialisation_demo.py [--per-source 60] [--out .bench/specialise]
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = 90  # about 120 tokens of the micro model's tokenizer


def chunks(text: str, words: int = WORDS) -> list[str]:
    parts = text.split()
    return [" ".join(parts[i : i + words]) for i in range(0, len(parts) - words + 1, words)]


def stdlib_files() -> list[Path]:
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def docstrings(limit: int) -> list[str]:
    found: list[str] = []
    for path in stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        text = " ".join(
            ast.get_docstring(node) or ""
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
        )
        found += chunks(text)
        if len(found) >= limit:
            break
    return found[:limit]


def code(limit: int) -> list[str]:
    found: list[str] = []
    for path in stdlib_files()[::-1]:  # other modules than the docstrings' first ones
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            first = body[0] if isinstance(body, list) and body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                body.pop(0)  # type: ignore[union-attr]  # drop docstrings: code only
        found += chunks(ast.unparse(tree))
        if len(found) >= limit:
            break
    return found[:limit]


def licenses(limit: int) -> list[str]:
    folder = Path("/usr/share/common-licenses")
    paths = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    paths.append(Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt")
    found: list[str] = []
    for path in paths:
        try:
            found += chunks(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        if len(found) >= limit:
            break
    return found[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-source", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "specialise")
    parser.add_argument("--permutations", type=int, default=1000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.out / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as handle:
        for source, texts in (
            ("docstring", docstrings(args.per_source)),
            ("code", code(args.per_source)),
            ("license", licenses(args.per_source)),
        ):
            for text in texts:
                handle.write(json.dumps({"text": text, "source": source}) + "\n")
    model = ROOT / "inferoscope" / "micro_model"
    runs = args.out / "runs"
    command = [sys.executable, "-m", "inferoscope"]
    subprocess.run(
        [
            *command,
            "route",
            "--model",
            str(model),
            "--jsonl",
            str(corpus),
            "--source-field",
            "source",
            "--out",
            str(runs),
            "--device",
            "cpu",
            "--batch",
            "16",
            "--max-tokens-per-doc",
            "128",
        ],
        check=True,
    )
    subprocess.run(
        [*command, "specialise", str(runs), "--by", "source", "--permutations", str(args.permutations)],
        check=True,
    )


if __name__ == "__main__":
    main()
