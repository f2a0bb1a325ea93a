"""``python -m service.demo``, run in-process at 4x real time: the whole call (a tool call, a barge-in, the
agent's ``end_call`` and Dialtone's ``<Hangup/>``), with and without a dropped model socket, and a call
that strays from the script."""

from __future__ import annotations

import re
import wave
from pathlib import Path

import pytest

from service import demo
from service.core.cost import LINES, PRICES
from service.sim.script import ReplyScript, load_clip

pytestmark = pytest.mark.timeout(90)

DROP_ROW = re.compile(r"^\s+\d+\.\d\d s  model   socket dropped \((close 1011|TCP reset)\)", re.M)
RECONNECT_ROW = re.compile(
    r"^\s+(\d+\.\d\d) s  model   new socket accepted (\d+) ms after the drop, "
    r"session ready (\d+) ms after the loss",
    re.M,
)
REPLAY_ROW = re.compile(r"model   (\d+) turn\(s\) replayed .*, (asked|not asked) to continue")
TOOL_ROW = re.compile(
    r"^\s+(\d+\.\d\d) s  tool    check_availability\((\{.*\})\): POST /availability -> 200 \(accepted\), "
    r"ok in (\d+) ms \(real time\)$",
    re.M,
)
TOOL_ANSWER_ROW = re.compile(r"^\s+\d+\.\d\d s  tool    check_availability -> model: (.*)$", re.M)
END_CALL_ROW = re.compile(r"^\s+(\d+\.\d\d) s  tool    end_call\((\{.*\})\): ok in (\d+) ms", re.M)
ENDED_ROW = re.compile(
    r"^\s+(\d+\.\d\d) s  call    ended: server_closed \(close 1000: the service ended the stream\); "
    r"the service's record says: agent ended the call \(the caller has what they called for\)$",
    re.M,
)
HANGUP_ROW = re.compile(r"^\s+(\d+\.\d\d) s  twilio  <Connect action> POST -> 200: <Hangup/>$", re.M)
COST_LINE = re.compile(r"^  ([a-z ]+?) +\$(\d+\.\d{6})", re.M)
TIMELINE_ROW = re.compile(r"^\s+(\d+\.\d\d) s  (\w+) ", re.M)


def assert_stereo_wav(path: Path) -> None:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8_000)
        assert w.getnframes() > 8_000 * 10  # the call lasts some 20 s of stream time


def printed_cost(out: str) -> dict[str, float]:
    """The cost block's lines (``text in`` …, ``total``), in USD."""
    block = out.split("Cost of the call", 1)[1].split("\n\n", 1)[0]
    return {name: float(usd) for name, usd in COST_LINE.findall(block)}


def assert_tool_then_end_call(out: str) -> None:
    """The tool was called and answered, then the agent ended the call and Dialtone hung up, last."""
    tool = TOOL_ROW.search(out)
    assert tool is not None, out
    assert tool.group(2) == demo.TOOL_ARGUMENTS.replace(" ", "")  # the model's arguments reached the tool
    answer = TOOL_ANSWER_ROW.search(out)
    assert answer is not None and '"available":["18:00"' in answer.group(1), out  # the tool server's times
    end_call = END_CALL_ROW.search(out)
    assert end_call is not None and float(end_call.group(1)) > float(tool.group(1)), out
    ended, hangup = ENDED_ROW.search(out), HANGUP_ROW.search(out)
    assert ended is not None and hangup is not None, out
    # the goodbye was heard before the service closed the stream; the two end rows close the timeline
    assert float(ended.group(1)) >= float(end_call.group(1))
    rows = TIMELINE_ROW.findall(out.split("Service summary")[0])
    assert [kind for _, kind in rows[-2:]] == ["call", "twilio"]
    assert max(float(at) for at, _ in rows) == float(ended.group(1)) == float(hangup.group(1))


def assert_record_and_picture(out: str, picture: Path) -> None:
    """The record was read back: its transcript and its cost (the lines add up to a positive total);
    the picture was drawn from it."""
    assert re.search(r"Call record CA[0-9a-f]{32} \(read back from the service's DATABASE_URL\)", out), out
    # the long answer, cut where the caller interrupted it (the heard text is an estimate)
    cut = re.compile(
        r"^ +\d+\.\d\d s  agent   On Saturday [^\n]*  \[interrupted: the rest was not heard\]$", re.M
    )
    assert cut.search(out), out
    assert f"Cost of the call (model gpt-realtime-2.1, prices of {PRICES.date})" in out
    cost = printed_cost(out)
    total = cost.pop("total")
    assert total > 0
    assert set(cost) <= {line.replace("_", " ") for line in LINES} and cost["audio out"] > 0
    assert abs(sum(cost.values()) - total) < 1e-5 * (len(cost) + 1)
    assert f"Wrote {picture} (the call's timeline, drawn from its record)." in out
    svg = picture.read_text(encoding="utf-8")
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "check_availability" in svg and "end_call" in svg


@pytest.mark.parametrize(
    ("flags", "how"), [([], "close 1011"), (["--drop-abort"], "TCP reset")], ids=["close", "reset"]
)
def test_demo_goes_on_after_the_model_socket_is_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], how: str
) -> None:
    wav, picture = tmp_path / "call.wav", tmp_path / "call.svg"
    argv = ["--speed", "4", "--drop-model-at", "8", "--wav", str(wav), "--picture", str(picture), *flags]
    code = demo.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    drop = DROP_ROW.search(out)
    assert drop is not None and drop.group(1) == how, out
    reconnect = RECONNECT_ROW.search(out)
    assert reconnect is not None, out
    assert float(reconnect.group(1)) >= 8.0
    assert int(reconnect.group(3)) < 2_000  # the first attempt is immediate
    # At 8 s the agent is giving the tool's answer: the greeting, the question, the tool call and its
    # output and what was heard of the answer go to the new session, which is asked to go on.
    replay = REPLAY_ROW.search(out)
    assert replay is not None and int(replay.group(1)) >= 4 and replay.group(2) == "asked", out
    assert "twilio  clear (model lost)" in out
    assert re.search(r"1 reconnect\(s\) \(\d+ ms from loss to new session\)", out), out
    assert_tool_then_end_call(out)
    assert "did not go as scripted" not in out
    assert_stereo_wav(wav)
    assert_record_and_picture(out, picture)


def test_demo_without_a_drop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav, picture = tmp_path / "out" / "call.wav", tmp_path / "pictures" / "call.svg"
    code = demo.main(["--speed", "4", "--wav", str(wav), "--picture", str(picture)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert DROP_ROW.search(out) is None
    assert RECONNECT_ROW.search(out) is None
    assert "twilio  clear (barge-in)" in out
    assert "model   item truncated at" in out
    assert_tool_then_end_call(out)
    assert len(TOOL_ROW.findall(out)) == 1  # one look at the bookings, no retry
    assert "2 tool call(s) (0 failed), 0 reconnect(s), 0 rollover(s)" in out  # check_availability, end_call
    assert "did not go as scripted" not in out
    assert_stereo_wav(wav)
    assert_record_and_picture(out, picture)


async def test_a_call_the_agent_does_not_end_fails_the_demo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model answers without a tool and never calls end_call: the caller hangs up in the end."""
    plain = ReplyScript(
        load_clip("reply_greeting"), tuple(load_clip(n) for n in ("reply_short", "reply_long"))
    )
    wav, picture = tmp_path / "call.wav", tmp_path / "call.svg"
    code = await demo.run(4.0, wav, None, picture=picture, model_script=plain)
    out = capsys.readouterr().out
    assert code == 1, out
    assert TOOL_ROW.search(out) is None and END_CALL_ROW.search(out) is None
    assert "call    ended: caller_hangup; the service's record says: caller hung up" in out
    problems = out.split("The call did not go as scripted:\n", 1)[1].splitlines()
    assert problems == [
        "  - the model did not get an answer from check_availability",
        "  - the tool server did not answer a signed check_availability request",
        "  - the model did not call end_call",
        "  - the service did not end the stream (ended: caller_hangup)",
        "  - <Connect action> did not answer <Hangup/> (verbs: [])",
    ]
    assert printed_cost(out)["total"] > 0 and picture.stat().st_size > 0  # still recorded and drawn


def test_drop_abort_needs_a_drop_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        demo.main(["--drop-abort"])
    assert exc.value.code == 2
    assert "--drop-abort needs --drop-model-at" in capsys.readouterr().err


def test_the_outbound_demo_places_a_call_through_the_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = tmp_path / "outbound.wav"
    code = demo.main(["--outbound", "--speed", "4", "--wav", str(wav)])
    out = capsys.readouterr().out
    assert code == 0, out
    statuses = re.findall(r"^  status (\S+)\s+-> HTTP 204$", out, flags=re.M)
    assert statuses == ["initiated", "ringing", "in-progress", "completed"], out
    assert re.search(r"^  amd\s+human\s+-> HTTP 204$", out, flags=re.M), out
    assert "The model was told: You call Ada to confirm their dental appointment on Tuesday." in out
    assert "callee says" in out and "agent heard" in out
    assert_stereo_wav(wav)
