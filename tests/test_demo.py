"""``python -m service.demo``, run in-process at 4x real time: the whole call, with and without a dropped
model socket."""

from __future__ import annotations

import re
import wave
from pathlib import Path

import pytest

from service import demo

pytestmark = pytest.mark.timeout(90)

DROP_ROW = re.compile(r"^\s+\d+\.\d\d s  model   socket dropped \((close 1011|TCP reset)\)", re.M)
RECONNECT_ROW = re.compile(
    r"^\s+(\d+\.\d\d) s  model   new socket accepted (\d+) ms after the drop, "
    r"session ready (\d+) ms after the loss",
    re.M,
)
REPLAY_ROW = re.compile(r"model   (\d+) turn\(s\) replayed .*, (asked|not asked) to continue")


def assert_stereo_wav(path: Path) -> None:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8_000)
        assert w.getnframes() > 8_000 * 10  # the call lasts some 20 s of stream time


@pytest.mark.parametrize(
    ("flags", "how"), [([], "close 1011"), (["--drop-abort"], "TCP reset")], ids=["close", "reset"]
)
def test_demo_goes_on_after_the_model_socket_is_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], how: str
) -> None:
    wav = tmp_path / "call.wav"
    code = demo.main(["--speed", "4", "--drop-model-at", "8", "--wav", str(wav), *flags])
    out = capsys.readouterr().out
    assert code == 0, out
    drop = DROP_ROW.search(out)
    assert drop is not None and drop.group(1) == how, out
    reconnect = RECONNECT_ROW.search(out)
    assert reconnect is not None, out
    assert float(reconnect.group(1)) >= 8.0
    assert int(reconnect.group(3)) < 2_000  # the first attempt is immediate
    # At 8 s the agent is answering the first question: the greeting, the question and what was heard
    # of the answer go to the new session, which is asked to go on.
    replay = REPLAY_ROW.search(out)
    assert replay is not None and int(replay.group(1)) >= 2 and replay.group(2) == "asked", out
    assert "twilio  clear (model lost)" in out
    assert "call    ended: caller_hangup" in out
    assert re.search(r"1 reconnect\(s\) \(\d+ ms from loss to new session\)", out), out
    assert "Protocol problems" not in out
    assert_stereo_wav(wav)


def test_demo_without_a_drop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "out" / "call.wav"
    code = demo.main(["--speed", "4", "--wav", str(wav)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert DROP_ROW.search(out) is None
    assert RECONNECT_ROW.search(out) is None
    assert "twilio  clear (barge-in)" in out
    assert "call    ended: caller_hangup" in out
    assert "0 reconnect(s), 0 rollover(s)" in out
    assert_stereo_wav(wav)


def test_drop_abort_needs_a_drop_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        demo.main(["--drop-abort"])
    assert exc.value.code == 2
    assert "--drop-abort needs --drop-model-at" in capsys.readouterr().err
