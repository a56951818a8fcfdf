"""Contract v0.2 against v0.1.0 on the same run: size on disk, validation speed and memory.

Takes the OLMoE-shaped v0.1.0 bundles of bench_validate.py (16 layers x 64 experts, top-8,
seeded; generated under .bench/ if missing), converts each with ``inferoscope convert`` to
v0.2 at float32 and at float16 (the same tokens, the same selections), then measures, each in
a fresh subprocess so peak RSS is its own: ``RunReader.validate()`` (and the whole
``inferoscope validate`` command) on all three. Prints one table, side by side.

    python benchmarks/bench_v02.py [--sizes 5000,50000] [--out .bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_validate import ROOT, _peak_rss_mb, generate


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def converted(source: Path, dtype: str) -> Path:
    target_root = source.parent / f"{source.name}-v02-{dtype}"
    target = target_root / source.name
    if not target.exists():
        from inferoscope.convert import convert_run

        convert_run(source, target_root, to="v0.2", dtype=dtype)
    return target


def measure(kind: str, folder: Path) -> dict[str, float]:
    if kind == "validate":
        from inferoscope import RunReader

        start = time.perf_counter()
        reader = RunReader(folder)
        report = reader.validate()
        elapsed = time.perf_counter() - start
        tokens = report.aggregates.events
        assert report.ok, report.counts_by_code()
        return {"tokens": tokens, "seconds": elapsed, "peak_rss_mb": _peak_rss_mb()}
    raise SystemExit(f"unknown measurement {kind}")


def run_child(kind: str, folder: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(folder)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def run_cli(folder: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "inferoscope", "validate", str(folder)], check=True, capture_output=True
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5000,50000")
    parser.add_argument("--out", default=str(ROOT / ".bench"))
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]))))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        v01 = generate(Path(args.out) / f"olmoe-{size}", size)
        bundles = {"v0.1.0 NDJSON": v01}
        for dtype in ("float32", "float16"):
            start = time.perf_counter()
            bundles[f"v0.2 {dtype}"] = converted(v01, dtype)
            print(f"{size} tokens -> v0.2 {dtype} ready in {time.perf_counter() - start:.1f} s", flush=True)
        base_size = folder_bytes(v01)
        base = None
        for name, folder in bundles.items():
            result = run_child("validate", folder)
            cli = run_cli(folder)
            rate = result["tokens"] / result["seconds"]
            base = base or rate
            rows.append(
                (
                    size,
                    name,
                    folder_bytes(folder),
                    base_size,
                    result["seconds"],
                    rate,
                    rate / base,
                    cli,
                    result["peak_rss_mb"],
                )
            )
    print()
    print(
        f"{'tokens':>7}  {'bundle':<15}{'MiB':>9}{'x v0.1':>8}{'validate s':>12}{'tokens/s':>11}"
        f"{'x v0.1':>8}{'CLI s':>8}{'peak RSS MiB':>14}"
    )
    for size, name, nbytes, base_size, seconds, rate, speedup, cli, rss in rows:
        print(
            f"{size:>7}  {name:<15}{nbytes / 2**20:>9.1f}{nbytes / base_size:>8.3f}{seconds:>12.3f}"
            f"{rate:>11.0f}{speedup:>8.1f}{cli:>8.2f}{rss:>14.0f}"
        )


if __name__ == "__main__":
    main()
