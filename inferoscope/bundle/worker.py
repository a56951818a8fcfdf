"""A validation worker started as ``python -m inferoscope.bundle.worker``.

Used when validation runs from a thread (forking a threaded process is unsafe) instead of
multiprocessing's spawn, which would re-run the caller's main script. Protocol on the
pipes: one pickled SegmentJob on stdin; length-prefixed pickled messages on stdout —
``("progress", bytes_done)`` any number of times, then ``("result", SegmentResult)`` or
``("error", text)``. The caller owns both ends; nothing from a bundle is unpickled here.
"""

from __future__ import annotations

import pickle
import sys

from .pipe import send
from .scan import scan_segment


def main() -> None:
    job = pickle.load(sys.stdin.buffer)
    out = sys.stdout.buffer
    last = [0]

    def progress(done: int, _total: int) -> None:
        if done - last[0] >= 1 << 20:
            last[0] = done
            send(out, ("progress", done - job.start))

    try:
        result = scan_segment(job, progress)
    except Exception as exc:  # reported to the caller, which then does this part itself
        send(out, ("error", f"{type(exc).__name__}: {exc}"))
        return
    send(out, ("result", result))


if __name__ == "__main__":
    main()
