"""Engine traces at length: import-engine, replay and compare of a 10,000- and a 100,000-token
trace, each command in a fresh process, wall time and peak RSS side by side with ``validate`` of
the same run.

The trace: the shipped micro model (4 MoE layers x 16 experts, top-2), an SGLang ``/generate``
response of N positions written as SGLang writes it (base64 int32 ``[rows, layers, k]``), token ids
and expert rows seeded. Replay feeds the trace 512 positions at a time through the model's KV
cache and writes as it goes; the KV cache itself is the model's and grows with the length
(4 layers x 2 x 64 floats per position: 2 KiB), and is printed beside the numbers.

    python benchmarks/bench_engine.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "inferoscope" / "micro_model"


def write_trace(path: Path, positions: int, seed: int = 0) -> None:
    import numpy as np

    config = json.loads((MODEL / "config.json").read_text())
    layers, experts, k = config["num_hidden_layers"], config["num_experts"], config["num_experts_per_tok"]
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, config["vocab_size"], size=positions + 1).tolist()
    rows = np.argsort(rng.random((positions, layers, experts)), axis=-1)[..., :k].astype("<i4")
    prompt, output = ids[:16], ids[16:]
    response = {
        "output_ids": output,
        "meta_info": {"routed_experts": base64.b64encode(rows.tobytes()).decode("ascii")},
    }
    path.write_text(json.dumps({"input_ids": prompt, "response": response}))


def timed(*args: str) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one inferoscope command in a fresh process."""
    wrapper = (
        "import resource, runpy, sys, time\n"
        "sys.argv = ['inferoscope', *sys.argv[1:]]; t = time.perf_counter()\n"
        "try:\n    runpy.run_module('inferoscope', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec (this process's would show)
        "hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print('BENCH', time.perf_counter() - t, hwm / 1024, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, check=False)
    line = next((ln for ln in done.stderr.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"inferoscope {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    _tag, seconds, rss = line.split()
    return float(seconds), float(rss)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'positions':>10} {'command':<14}{'seconds':>9}{'peak RSS MiB':>14}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for size in sizes:
            trace = root / f"trace-{size}.json"
            write_trace(trace, size)
            runs = root / f"runs-{size}"
            rows = [
                ("import-engine", timed("import-engine", str(trace), "--format", "sglang", "--tokenizer",
                                        str(MODEL), "--out", str(runs), "--run-id", "engine")),
                ("replay", timed("replay", str(runs / "engine"), "--model", str(MODEL), "--out", str(runs),
                                 "--device", "cpu")),
                ("validate", timed("validate", str(runs / "engine-replay"))),
                ("compare", timed("compare", str(runs / "engine"), str(runs / "engine-replay"), "--json")),
            ]  # fmt: skip
            for name, (seconds, rss) in rows:
                print(f"{size:>10} {name:<14}{seconds:>9.2f}{rss:>14.0f}", flush=True)
            kv_mib = size * 4 * 2 * 64 * 4 / 2**20
            print(f"{size:>10} {'(KV cache)':<14}{'':>9}{kv_mib:>14.0f}", flush=True)


if __name__ == "__main__":
    main()
