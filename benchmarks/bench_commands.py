"""Every command at the size of a real run, side by side with ``validate`` of the same bundle.

Scramble is timed through ``scramble_bundle`` (the twin alone; ``derive --scramble`` also derives
the twin's motifs, see bench_derive.py); derive with the capped matcher (``--cap 1024``): these
runs are the structureless worst case, where the exact matcher is quadratic.

Bundles: OLMoE-shaped (16 layers x 64 experts, top-8), generated seeded by the shipped
generators and never checked in: 5,000 and 50,000 tokens as v0.1.0 NDJSON
(``bench_validate.generate``, under .bench/), 500,000 tokens as contract v0.2
(``inferoscope.synthetic.write_synthetic_v02``, opt in with ``--sizes``). Run B of ``compare`` is
a second run of the same shape and length (another seed). Each command runs in a fresh process;
the table gives its wall time, the ratio to ``validate`` of run A in the same table, and the peak
RSS of the command's own process and of its largest worker process. Before each command the
files written so far are synced to disk, so no command pays for an earlier one's writeback (a
twin is 1.4 GB at 50,000 tokens).

    python benchmarks/bench_commands.py [--sizes 5000,50000] [--commands validate,compare,export]
    python benchmarks/bench_commands.py --sizes 500000   # v0.2, about 4.5 GB on disk
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_validate import ROOT, generate

V02_FROM = 100_000  # sizes from here on are written as contract v0.2
COMMANDS = ("validate", "compare", "export", "scramble", "derive")


def bundle(size: int, seed: int) -> Path:
    """Run A (seed 7) or run B (seed 8) of ``size`` tokens, made once under .bench/."""
    name = f"olmoe-{size}" if seed == 7 else f"olmoe-{size}-seed{seed}"
    if size < V02_FROM:
        return generate(ROOT / ".bench" / name, size, seed=seed)
    root = ROOT / ".bench" / f"{name}-v02"
    if not (root / name / "manifest.json").exists():
        from inferoscope.synthetic import write_synthetic_v02

        write_synthetic_v02(root, name, size, seed=seed)
    return root / name


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a command would inherit the
# high-water mark of this (larger) benchmark process
HWM = """
def _hwm():
    with open('/proc/self/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith('VmHWM')) / 1024
"""

WRAPPER = (
    HWM
    + """
import resource, runpy, sys, time
sys.argv = ['inferoscope', *sys.argv[1:]]
start = time.perf_counter()
code = 0
try:
    runpy.run_module('inferoscope', run_name='__main__')
except SystemExit as exc:
    code = exc.code
self_mb = _hwm()
child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print('BENCH', time.perf_counter() - start, self_mb, child_mb, code, file=sys.stderr)
"""
)


SCRAMBLE = (
    HWM
    + """
import resource, sys, time
start = time.perf_counter()
from inferoscope.scramble import scramble_bundle
scramble_bundle(sys.argv[1], sys.argv[2], sys.argv[3], seed=0)
self_mb = _hwm()
child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print('BENCH', time.perf_counter() - start, self_mb, child_mb, 0, file=sys.stderr)
"""
)


def timed(*args: str, code: str = WRAPPER) -> tuple[float, float, float]:
    """(seconds, peak RSS MiB of the command's process, of its largest worker) of one command."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    line = next((ln for ln in done.stderr.splitlines() if ln.startswith("BENCH ")), None)
    if line is None or line.split()[4] not in ("0", "None"):
        raise SystemExit(
            f"inferoscope {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    _tag, seconds, own, child, _code = line.split()
    return float(seconds), float(own), float(child)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5000,50000")
    parser.add_argument("--commands", default=",".join(COMMANDS))
    args = parser.parse_args()
    commands = args.commands.split(",")
    header = f"{'tokens':>8} {'contract':<8} {'command':<22}{'seconds':>9}{'x validate':>11}"
    print(header + f"{'RSS MiB':>9}{'worker':>8}")
    for size in (int(s) for s in args.sizes.split(",")):
        a, b = bundle(size, 7), bundle(size, 8)
        contract = "v0.2" if size >= V02_FROM else "v0.1.0"
        with tempfile.TemporaryDirectory(dir=ROOT / ".bench") as scratch:
            work = Path(scratch)
            plans: list[tuple[str, list[str]]] = [("validate", ["validate", str(a)])]
            if "compare" in commands:
                plans.append(("compare A B", ["compare", str(a), str(b), "--json"]))
                plans.append(("compare A A", ["compare", str(a), str(a), "--json"]))
            if "export" in commands:
                plans.append(("export --parquet", ["export", str(a), "--parquet", str(work / "a.parquet")]))
            if "scramble" in commands:
                for variant in ("tokens", "experts"):
                    plans.append((f"scramble {variant}", [SCRAMBLE, str(a), str(work / variant), variant]))
            if "derive" in commands:
                copy = work / "derive" / a.name
                shutil.copytree(a, copy)
                plans.append(("derive --cap 1024", ["derive", str(copy), "--cap", "1024"]))
            base = None
            for label, command in plans:
                os.sync()  # the last command's written files go to disk before this one is timed
                if command[0] == SCRAMBLE:
                    seconds, own, child = timed(*command[1:], code=SCRAMBLE)
                else:
                    seconds, own, child = timed(*command)
                base = base or seconds
                print(
                    f"{size:>8} {contract:<8} {label:<22}{seconds:>9.2f}{seconds / base:>11.2f}"
                    f"{own:>9.0f}{child:>8.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
