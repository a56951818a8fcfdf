"""Large derived artifacts written a piece at a time are the bytes of the standard encoder."""

from __future__ import annotations

import json

import numpy as np

from inferoscope.derive import _named_entries
from inferoscope.json_stream import Streamed, materialised, write_json_file
from inferoscope.jsonfmt import dumps_json_file


def _written(obj: object) -> str:
    pieces: list[str] = []
    write_json_file(obj, pieces.append)
    return "".join(pieces)


def test_every_kind_of_value_is_written_as_dumps_json_file_writes_it() -> None:
    obj = {
        "b": [1, 2.5, -0.0, 1e-07, 3.0e20, True, None, "x"],
        "a": {"z": {}, 'é\u2028\x00"': [], "nested": [[1, 2], {"k": [0.1]}]},
        "empty": [],
        "num": 123456789012345678901234567890,
        "s": 'tab\tquote" back\\ and \U0001f600',
    }
    assert _written(obj) == dumps_json_file(obj)


def test_streamed_members_are_written_in_key_order_without_being_built() -> None:
    counts = list(range(1205))  # ids past 999: g_1000 sorts between g_100 and g_101
    founders = [n * 3 for n in range(1205)]
    obj = {
        "payload": {
            "counts": Streamed(lambda: _named_entries("g_", counts)),
            "founders": Streamed(lambda: _named_entries("g_", founders)),
            "none": Streamed(lambda: iter(())),
        }
    }
    plain = materialised(obj)
    assert list(plain["payload"]["counts"]) == sorted(plain["payload"]["counts"])
    assert _written(obj) == dumps_json_file(plain) == json.dumps(plain, indent=2, sort_keys=True) + "\n"
    assert plain["payload"]["counts"]["g_1000"] == 1000 and plain["payload"]["none"] == {}
    assert np.argsort([f"{n:03d}" for n in range(12)]).tolist() == list(range(12))
