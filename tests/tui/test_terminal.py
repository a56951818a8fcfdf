"""End to end in a real terminal: tmux runs the installed command, keys go in, the pane is read."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import VALID
from .helpers import hostile_bundle

INFEROSCOPE = Path(sys.executable).parent / "inferoscope"


class Tmux:
    def __init__(self, term: str) -> None:
        if shutil.which("tmux") is None:
            pytest.fail("tmux is required for the terminal test (.ci/run installs it)")
        self.socket = f"inferoscope-test-{uuid.uuid4().hex[:8]}"
        self.term = term

    def run(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True, timeout=30
        )
        return result.stdout

    def start(self, command: str) -> None:
        self.run(
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "app",
            "-x",
            "80",
            "-y",
            "24",
            f"env TERM={self.term} TEXTUAL_ANIMATIONS=none {command}; sleep 30",
        )

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "app")

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; the screen was:\n{screen}")

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.run("send-keys", "-t", "app", key)
            time.sleep(0.15)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


@pytest.fixture(params=["xterm-256color", "screen-256color"])
def tmux(request: pytest.FixtureRequest) -> Iterator[Tmux]:
    session = Tmux(request.param)
    yield session
    session.close()


def test_a_person_steps_through_a_run_in_tmux(tmux: Tmux) -> None:
    tmux.start(f"{INFEROSCOPE} tui {VALID / 'b_olmoe_64tok_16x64_top8'}")
    screen = tmux.wait_for("clean")
    assert "token #0 of 64" in screen and "L15" in screen and "The quick brown fox" in screen
    # 64 experts at 80 columns: every layer row ends with its top-8 expert ids in rank order
    first = json.loads((VALID / "b_olmoe_64tok_16x64_top8" / "raw_trace.ndjson").read_text().splitlines()[0])
    for layer in first["layers"]:
        row = next(line for line in screen.splitlines() if line.startswith(f"L{layer['layer_index']} "))
        assert [int(x) for x in row.split()[-8:]] == layer["topk_indices"], row
        assert len(row) <= 80
    tmux.keys("l", "l", "Right")
    screen = tmux.wait_for("token #3 of 64")
    assert '" tok3"  id ' in screen
    tmux.keys(":", "4", "0", "Enter")
    tmux.wait_for("token #40 of 64")
    tmux.keys("G")
    tmux.wait_for("token #63 of 64")
    tmux.keys("?")
    tmux.wait_for("inferoscope keys")
    tmux.keys("Escape", "q")
    deadline = time.monotonic() + 10
    while "L15" in tmux.screen() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "L15" not in tmux.screen()


def test_hostile_text_never_reaches_the_terminal(tmux: Tmux, tmp_path: Path) -> None:
    tmux.start(f"{INFEROSCOPE} tui {hostile_bundle(tmp_path / 'b')}")
    screen = tmux.wait_for("clean")
    assert "[bold red]x[/]" in screen and "\\x1b[2J" in screen
    assert "\x1b" not in screen


def test_a_wrong_path_gets_one_line_and_exit_2_before_any_screen(tmux: Tmux, tmp_path: Path) -> None:
    tmux.start(f"{INFEROSCOPE} tui {tmp_path / 'missing'}; echo EXIT=$?")
    screen = tmux.wait_for("EXIT=2")
    assert "inferoscope: cannot open run bundle:" in screen and "no such directory" in screen
    assert "keys" not in screen  # no app was drawn: the shell prompt is still there


def test_without_a_terminal_it_refuses_at_once_and_names_ssh_t(tmux: Tmux, tmp_path: Path) -> None:
    # as `ssh host inferoscope tui RUN` without -t: stdin and stdout are not a terminal
    out = tmp_path / "out.txt"
    tmux.start(f"{INFEROSCOPE} tui < /dev/null > {out} 2>&1; echo EXIT=$?")
    tmux.wait_for("EXIT=2")
    lines = out.read_text().splitlines()
    assert len(lines) == 1 and "needs a terminal" in lines[0] and "ssh -t" in lines[0]
    assert "\x1b" not in out.read_text()


def test_run_view_scramble_and_compare_in_tmux(tmux: Tmux, tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "inferoscope" / "examples" / "demo-run"
    tmux.start(f"env XDG_CACHE_HOME={tmp_path / 'cache'} {INFEROSCOPE} tui {example}")
    tmux.wait_for("clean")
    tmux.keys("v")
    screen = tmux.wait_for("RUN VIEW")
    assert "expert load" in screen and "co-activation" in screen and "text by top-1 expert" in screen
    tmux.keys("Enter")
    tmux.wait_for("tokens that picked expert")
    tmux.keys("Enter")
    tmux.wait_for("token ")
    tmux.keys("s")
    screen = tmux.wait_for("SCRAMBLED: tokens")
    header = screen.splitlines()[0]  # at 80x24 the header keeps what matters most
    for part in ("SCRAMBLED: tokens", "token #", "of 200", "clean", "paused 4 tok/s"):
        assert part in header, header
    tmux.keys("s")
    tmux.wait_for("SCRAMBLED: experts")
    tmux.keys("s")
    deadline = time.monotonic() + 10
    while "SCRAMBLED" in tmux.screen() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "SCRAMBLED" not in tmux.screen()
    tmux.keys("q")
    tmux.close()
    other = Tmux(tmux.term)
    try:
        other.start(f"{INFEROSCOPE} tui {example} --compare {example}")
        screen = other.wait_for("here 1.00")
        assert "A↔B" in screen and screen.count("demo-run") >= 2
    finally:
        other.close()


def test_a_16_colour_terminal_gets_the_16_colour_palette_sent_as_is(tmp_path: Path) -> None:
    session = Tmux("xterm")  # TERM=xterm: 16 colours, as the Linux console
    try:
        session.start(f"env -u COLORTERM {INFEROSCOPE} tui {VALID / 'b_olmoe_64tok_16x64_top8'}")
        session.wait_for("clean")
        coloured = session.run("capture-pane", "-e", "-p", "-t", "app").splitlines()[
            3:19
        ]  # the 16 layer rows
        codes = {
            int(c)
            for line in coloured
            for seq in re.findall(r"\x1b\[([0-9;]*)m", line)
            for c in seq.split(";")
            if c
        }
        backgrounds = {c for c in codes if 40 <= c <= 47 or 100 <= c <= 107}
        assert backgrounds and backgrounds <= {
            40,
            44,
            46,
            42,
            43,
            107,
        }  # black blue cyan green yellow bright white
        assert not any(c in (38, 48) for c in codes)  # no 256-colour or RGB sequences at all
    finally:
        session.close()


@pytest.mark.parametrize("term", ["xterm", "xterm-256color"])
def test_no_color_text_is_never_drawn_in_the_colour_of_its_background(term: str) -> None:
    """NO_COLOR on a 16-colour terminal: every text cell keeps a foreground apart from its
    background (once, the token strip and the detail pane came out black on black)."""
    import re

    session = Tmux(term)
    try:
        session.start(f"env NO_COLOR=1 {INFEROSCOPE} tui {VALID / 'b_olmoe_64tok_16x64_top8'}")
        session.wait_for("clean")
        screen = session.run("capture-pane", "-e", "-p", "-t", "app")
    finally:
        session.close()
    black_on_black = re.compile(r"\x1b\[(?:[0-9;]*;)?40m(?:\x1b\[[0-9;]*m)*\x1b\[30m[^\x1b\s]")
    for line in screen.splitlines():
        assert not black_on_black.search(line), repr(line)
        for fg, bg in re.findall(r"\x1b\[(3[0-7]|9[0-7])m\x1b\[(4[0-7]|10[0-7])m(?=[A-Za-z0-9])", line):
            assert int(fg) % 10 != int(bg) % 10 or (int(fg) >= 90) != (int(bg) >= 100), repr(line)
