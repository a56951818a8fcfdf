"""Writing a contract v0.2 bundle: token metadata as NDJSON, routing as ``.npy`` array files.

``RunWriter`` streams: a capture adds one token at a time (its rows are appended to the array
files and its metadata line to raw_trace.ndjson, all inside a hidden staging folder), and
``close()`` writes the final array headers, the SHA-256 of every array file into the manifest,
validates the staged bundle with the reader every consumer uses and renames it into place in
one step. Killed at any point, nothing appears under the target name (the staging folder is
swept by the next writer once its process is gone).
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..arrays.npy import NpyAppender, contract_dtype, file_sha256, read_header_of
from ..jsonfmt import dumps_ndjson_line
from ..routing import PER_TOKEN_ROLES, PROMPT_ROLES, RoutingGroup, routing_of
from ..run_ids import run_dir_for
from ..versions import LAYOUT_FILE, MANIFEST_FILE, RAW_TRACE_FILE
from .errors import RunBundleError, bundle_error
from .reader import RunReader
from .writer import _fsync_dir, _make_parents, _refuse, _write_json, sweep_stale

ARRAYS_DIR = "arrays"


def index_dtype(num_experts: int) -> str:
    return "int16" if num_experts <= np.iinfo(np.int16).max else "int32"


def default_array_paths(group_name: str, *, prompt: bool = False, bias: bool = False) -> dict[str, str]:
    """``arrays/<group>.<role>.npy`` for every role a group records."""
    roles = list(PER_TOKEN_ROLES) + (list(PROMPT_ROLES) if prompt else []) + (["bias"] if bias else [])
    return {role: f"{ARRAYS_DIR}/{group_name}.{role}.npy" for role in roles}


class RunWriter:
    """A v0.2 bundle being written; use as a context manager or call ``close()`` / ``abort()``.

    ``manifest`` is complete except for ``arrays`` (filled in at close); its ``routing`` names
    the array file of every role a group records.
    """

    def __init__(
        self, root_dir: Path | str, manifest: Mapping[str, Any], *, tokens_expected: int | None = None
    ) -> None:
        """``tokens_expected``: the number of tokens a writer of a whole run (a twin) will add:
        its arrays are then hashed as they are written, and dropped from the page cache behind
        it (``arrays.drop_behind``)."""
        self.tokens_expected = tokens_expected
        routing = routing_of(manifest)
        if routing is None:
            raise ValueError("manifest routing is missing or malformed (see docs/contract-v0.2.md)")
        self.routing = routing
        self.manifest = dict(manifest)
        run_id = manifest.get("run_id")
        self.target = run_dir_for(root_dir, run_id, subject="manifest run_id")  # type: ignore[arg-type]
        if self.target.exists() or self.target.is_symlink():
            raise FileExistsError(f"run bundle target already exists: {self.target}")
        self._created = _make_parents(self.target.parent)
        sweep_stale(self.target.parent, f".{self.target.name}.staging-")
        self.staging = self.target.parent / f".{self.target.name}.staging-{os.getpid()}-{uuid.uuid4().hex}"
        self.staging.mkdir()
        self._closed = False
        try:
            (self.staging / ARRAYS_DIR).mkdir()
            self._raw: IO[bytes] = (self.staging / RAW_TRACE_FILE).open("xb")
            self._appenders: dict[tuple[str, str], NpyAppender] = {}
            for group in routing.groups:
                self._open_group(group)
        except BaseException:
            self.abort()
            raise
        self.tokens = 0
        self.prompt_rows = 0

    def _open_group(self, group: RoutingGroup) -> None:
        lg, e, k = len(group.layers), group.num_experts, group.top_k
        shapes = {"selected": (lg, k), "weights": (lg, k), "scores": (lg, e)}
        for role, relpath in group.arrays.items():
            if role == "bias":
                continue
            base = role.removeprefix("prompt_")
            dtype = index_dtype(e) if base == "selected" else self.routing.float_dtype
            bulk = self.tokens_expected is not None and base == role  # prompt rows: not counted ahead
            self._appenders[(group.name, role)] = NpyAppender(
                self.staging / relpath,
                dtype,
                shapes[base],
                rows_expected=self.tokens_expected if bulk else None,
                drop_behind=bulk,
            )

    def add_token(self, meta: Mapping[str, Any], routing: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """One generated token: its metadata line and, per group, ``selected`` / ``weights`` / ``scores``."""
        self.add_tokens([meta], routing)

    def add_tokens(
        self, metas: Sequence[Mapping[str, Any]], routing: Mapping[str, Mapping[str, np.ndarray]]
    ) -> None:
        """Several tokens at once: ``routing[group][role]`` holds one row per token."""
        lines: list[str] = []
        for offset, meta in enumerate(metas):
            try:
                lines.append(dumps_ndjson_line(meta))
            except (ValueError, TypeError) as exc:
                position = self.tokens + offset
                raise _refuse(f"raw_events[{position}]", RAW_TRACE_FILE, position + 1, exc) from None
        self._add_rows(routing, "", len(metas))
        self._raw.write("".join(lines).encode("ascii"))
        self.tokens += len(metas)

    def add_prompt(self, routing: Mapping[str, Mapping[str, np.ndarray]], rows: int) -> None:
        """Prompt positions (prefill): ``rows`` rows of each group's prompt arrays."""
        self._add_rows(routing, "prompt_", rows)
        self.prompt_rows += rows

    def _add_rows(self, routing: Mapping[str, Mapping[str, np.ndarray]], prefix: str, rows: int) -> None:
        for group in self.routing.groups:
            given = routing.get(group.name, {})
            for role in PER_TOKEN_ROLES:
                appender = self._appenders.get((group.name, prefix + role))
                if appender is None:
                    continue
                values = given.get(role)
                if values is None:
                    raise ValueError(f"group {group.name!r} records {role} but none was given")
                array = np.asarray(values)
                if array.ndim == len(appender.row_shape):
                    array = array[None]
                if array.shape[0] != rows:
                    raise ValueError(f"group {group.name!r} {role}: {array.shape[0]} rows, expected {rows}")
                appender.append(array)

    def close(
        self,
        layout: Mapping[str, Any],
        *,
        bias: Mapping[str, np.ndarray] | None = None,
        manifest_updates: Mapping[str, Any] | None = None,
        extra_files: Mapping[str, Path] | None = None,
        verify: Callable[[], None] | None = None,
    ) -> Path:
        """Finish the files, checksum them, validate the whole bundle and move it into place.

        ``extra_files`` (bundle file name -> source) are copied as they are: the derived
        artifacts, whose contract v0.2 keeps from v0.1.0. ``verify``: for a bundle made from a
        valid one by a transformation that keeps every rule (a scrambled twin), the check of the
        source (it raises if the source is not clean) instead of validating the result again.
        """
        try:
            for name, source in (extra_files or {}).items():
                shutil.copyfile(source, self.staging / name)
            self._raw.close()
            for appender in self._appenders.values():
                appender.close()
            for group in self.routing.groups:
                relpath = group.arrays.get("bias")
                if relpath is None:
                    continue
                values = (bias or {}).get(group.name)
                if values is None:
                    raise ValueError(f"group {group.name!r} selects with a bias but none was given")
                appender = NpyAppender(self.staging / relpath, "float32", (group.num_experts,))
                appender.append(np.asarray(values, dtype=np.float32).reshape(len(group.layers), -1))
                appender.close()
            manifest = dict(self.manifest)
            manifest.update(manifest_updates or {})
            manifest["arrays"] = self._declarations()
            _write_json(self.staging / MANIFEST_FILE, manifest, "manifest")
            _write_json(self.staging / LAYOUT_FILE, layout, "layout")
            if verify is not None:
                verify()
            else:
                report = RunReader(self.staging).validate(series=False)
                if not report.ok:
                    raise bundle_error(
                        f"refusing to write {manifest.get('run_id')!r}",
                        report.issues,
                        report.counts_by_code(),
                    )
            self._publish()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.target

    def _declarations(self) -> dict[str, Any]:
        declared: dict[str, Any] = {}
        for group in self.routing.groups:
            for _role, relpath in sorted(group.arrays.items()):
                path = self.staging / relpath
                header = read_header_of(path)
                appender = next((a for a in self._appenders.values() if a.path == path), None)
                hashed = appender.sha256 if appender is not None else None
                declared[relpath] = {
                    "dtype": contract_dtype(header.dtype),
                    "shape": list(header.shape),
                    "sha256": hashed or file_sha256(path),
                }
        return declared

    def _publish(self) -> None:
        if self.target.exists() or self.target.is_symlink():
            raise FileExistsError(f"run bundle target already exists: {self.target}")
        for path in (self.staging, self.staging / ARRAYS_DIR):
            _fsync_dir(path)
        try:
            os.rename(self.staging, self.target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                raise FileExistsError(f"run bundle target already exists: {self.target}") from None
            raise
        _fsync_dir(self.target.parent)

    def abort(self) -> None:
        """Remove everything this writer made; nothing is left under the target name."""
        if self._closed:
            return
        self._closed = True
        raw = getattr(self, "_raw", None)
        if raw is not None:
            raw.close()
        for appender in getattr(self, "_appenders", {}).values():
            appender.abort()
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is not None:
            self.abort()


def write_run_bundle_v02(
    root_dir: Path | str,
    manifest: Mapping[str, Any],
    raw_events: Iterable[Mapping[str, Any]],
    layout: Mapping[str, Any],
    routing: Mapping[str, Mapping[str, np.ndarray]],
    *,
    bias: Mapping[str, np.ndarray] | None = None,
    prompt_routing: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> Path:
    """A whole v0.2 bundle at once: ``routing[group][role]`` holds ``[tokens, layers, ...]`` arrays.

    Raises as ``write_run_bundle`` does (RunBundleError with every issue, FileExistsError);
    nothing is left on disk on failure.
    """
    writer = RunWriter(root_dir, manifest)
    try:
        writer.add_tokens(list(raw_events), routing)
        if prompt_routing:
            rows = _rows_of(prompt_routing)
            writer.add_prompt(prompt_routing, rows)
        return writer.close(layout, bias=bias)
    except BaseException:
        writer.abort()
        raise


def _rows_of(routing: Mapping[str, Mapping[str, np.ndarray]]) -> int:
    for roles in routing.values():
        for values in roles.values():
            return int(np.asarray(values).shape[0])
    return 0


__all__ = ["RunBundleError", "RunWriter", "default_array_paths", "index_dtype", "write_run_bundle_v02"]
