"""The call state machine, driven like a transcript: events in, commands out."""

from __future__ import annotations

import base64

import pytest

from service.agents import Agent, TurnDetection
from service.core.call import Call, ConnectRealtime, EndCall, Rejected
from service.wire import realtime, twilio

SID = "MZ" + "0" * 32
CALL = "CA" + "1" * 32


class ThreeX:
    """Test transcoder: mu-law byte b -> three PCM samples of value b; PCM back -> every third sample."""

    def __init__(self) -> None:
        self.resets = 0
        self._carry = b""

    def to_model(self, mulaw_8k: bytes) -> bytes:
        return b"".join(bytes([b, 0]) * 3 for b in mulaw_8k)

    def to_caller(self, pcm16_24k: bytes) -> bytes:
        data = self._carry + pcm16_24k
        whole = len(data) // 6 * 6
        self._carry = data[whole:]
        return bytes(data[i] for i in range(0, whole, 6))

    def reset_to_caller(self) -> None:
        self.resets += 1
        self._carry = b""

    def flush_to_caller(self) -> bytes:
        self._carry = b""
        return b""


AGENT = Agent(key="default", instructions="Be brief.", voice="marin", greeting="Hello there.")


def make_call(agent: Agent = AGENT, verdict: Agent | Rejected | None = None) -> tuple[Call, ThreeX]:
    audio = ThreeX()
    call = Call(
        authorize=lambda start, now: verdict if verdict is not None else agent,
        transcoder=audio,
        default_model="gpt-realtime-2.1",
    )
    return call, audio


def start(params: dict[str, str] | None = None) -> twilio.Start:
    return twilio.Start(
        stream_sid=SID,
        account_sid="AC" + "2" * 32,
        call_sid=CALL,
        tracks=("inbound",),
        custom_parameters=params or {"agent": "default", "token": "x"},
        media_format=twilio.MediaFormat("audio/x-mulaw", 8000, 1),
    )


def media(ts: int, payload: bytes = b"\x7f" * 160) -> twilio.Media:
    return twilio.Media(SID, "inbound", ts // 20 + 1, ts, payload)


def live_call(agent: Agent = AGENT) -> tuple[Call, ThreeX]:
    call, audio = make_call(agent)
    call.begin(0.0)
    call.realtime_opened(0.1)
    call.receive_twilio(start(), 0.2)
    call.receive_realtime(updated(), 0.3)
    return call, audio


def updated() -> realtime.SessionUpdated:
    return realtime.SessionUpdated("audio/pcm", "audio/pcm", 24000, 24000)


def delta(ms: int, item: str = "item_a", response: str = "resp_1") -> realtime.AudioDelta:
    return realtime.AudioDelta(response, item, b"\x01\x00" * 24 * ms)


def sent(commands: list, kind: type) -> list:
    return [c for c in commands if isinstance(c, kind)]


def test_prewarms_the_model_socket_and_configures_once_both_sides_are_ready() -> None:
    call, _ = make_call()
    assert call.begin(0.0) == [ConnectRealtime("gpt-realtime-2.1")]
    assert call.receive_twilio(twilio.Connected("Call", "1.0.0"), 0.01) == []
    assert call.receive_twilio(start(), 0.02) == []
    held = call.receive_twilio(media(0), 0.03)
    assert held == []  # the model socket is not open yet: audio is held, not lost
    opened = call.realtime_opened(0.05)
    assert isinstance(opened[0], realtime.UpdateSession)
    session = opened[0].session
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert [type(c) for c in opened[1:]] == [realtime.AppendAudio]
    assert len(opened[1].audio) == 160 * 6


def test_greeting_is_requested_after_session_updated() -> None:
    call, _ = make_call()
    call.begin(0.0)
    call.realtime_opened(0.1)
    call.receive_twilio(start(), 0.2)
    out = call.receive_realtime(updated(), 0.3)
    assert len(out) == 1 and isinstance(out[0], realtime.CreateResponse)
    assert "Hello there." in (out[0].instructions or "")
    assert call.receive_realtime(updated(), 0.4) == []  # only once


def test_no_greeting_means_the_model_waits_for_the_caller() -> None:
    call, _ = make_call(Agent(key="default", instructions="x"))
    call.begin(0.0)
    call.realtime_opened(0.1)
    call.receive_twilio(start(), 0.2)
    assert call.receive_realtime(updated(), 0.3) == []


def test_every_caller_millisecond_reaches_the_model_and_gaps_are_filled() -> None:
    call, _ = live_call()
    total = 0
    for ts in (0, 20, 40, 120, 140):  # 60 ms missing between 40 and 120
        for c in call.receive_twilio(media(ts), 1.0):
            total += len(c.audio)
    assert total == (5 * 160 + 60 * 8) * 6
    assert call.stats.media_gaps == 1 and call.stats.filled_ms == 60


def test_bad_twilio_input_is_skipped_and_the_call_goes_on() -> None:
    call, _ = make_call()
    call.begin(0.0)
    assert call.receive_twilio(media(0), 0.01) == []  # media before start
    assert call.receive_twilio(twilio.parse("{nope"), 0.02) == []
    assert call.receive_twilio(twilio.parse('{"event":"bogus"}'), 0.03) == []
    assert call.stats.invalid_twilio == 2
    assert not call.ended


def test_outbound_audio_goes_as_20ms_frames_each_followed_by_a_mark() -> None:
    call, _ = live_call()
    out = call.receive_realtime(realtime.ResponseCreated("resp_1"), 1.0)
    out = call.receive_realtime(delta(50), 1.0)
    assert isinstance(out[0], twilio.SendMark) and out[0].name.startswith("item_a:0:g0:")
    frames = sent(out, twilio.SendMedia)
    assert [len(f.payload) for f in frames] == [160, 160]
    marks = [c.name for c in out[1:] if isinstance(c, twilio.SendMark)]
    assert [m.split(":")[1] for m in marks] == ["20", "40"]
    done = call.receive_realtime(realtime.AudioDone("resp_1", "item_a"), 1.1)
    frames = sent(done, twilio.SendMedia)
    assert len(frames) == 1 and frames[0].payload[80:] == b"\xff" * 80  # 10 ms left, padded
    assert sent(done, twilio.SendMark)[0].name.split(":")[1] == "50"  # never past what was generated


def test_barge_in_clears_and_truncates_at_what_was_heard() -> None:
    call, audio = live_call()
    call.receive_realtime(realtime.ResponseCreated("resp_1"), 1.0)
    out = call.receive_realtime(delta(200), 1.0)
    marks = [c.name for c in out if isinstance(c, twilio.SendMark)]
    for name in marks[:4]:  # start mark + 3 frames played (60 ms)
        call.receive_twilio(twilio.Mark(SID, name), 1.1)
    barge = call.receive_realtime(realtime.SpeechStarted("item_u", 900), 1.105)
    assert barge[0] == twilio.SendClear(SID)
    assert realtime.TruncateItem("item_a", 65) in barge  # 60 ms echoed + 5 ms of the frame playing since
    assert not sent(barge, realtime.CancelResponse)  # interrupt_response: the server cancels itself
    assert audio.resets == 1
    # marks flushed by the clear echo back now: they must not count as played
    for name in marks[4:]:
        call.receive_twilio(twilio.Mark(SID, name), 1.21)
    # late audio of the interrupted response is dropped
    assert call.receive_realtime(delta(40), 1.3) == []
    assert call.stats.dropped_deltas == 1 and call.stats.barge_ins == 1


def test_barge_in_with_nothing_playing_sends_nothing() -> None:
    call, _ = live_call()
    assert call.receive_realtime(realtime.SpeechStarted("item_u", 100), 1.0) == []


def test_barge_in_before_anything_was_heard_clears_but_does_not_truncate() -> None:
    call, _ = live_call()
    call.receive_realtime(realtime.ResponseCreated("resp_1"), 1.0)
    call.receive_realtime(delta(100), 1.0)
    barge = call.receive_realtime(realtime.SpeechStarted("item_u", 900), 1.01)
    assert barge == [twilio.SendClear(SID)]


def test_barge_in_after_all_audio_was_sent_but_still_playing() -> None:
    call, _ = live_call()
    call.receive_realtime(realtime.ResponseCreated("resp_1"), 1.0)
    out = call.receive_realtime(delta(100), 1.0)
    out += call.receive_realtime(realtime.AudioDone("resp_1", "item_a"), 1.0)
    call.receive_realtime(realtime.ResponseDone("resp_1", "completed", None, realtime.Usage()), 1.0)
    marks = [c.name for c in out if isinstance(c, twilio.SendMark)]
    for name in marks[:3]:
        call.receive_twilio(twilio.Mark(SID, name), 1.05)
    barge = call.receive_realtime(realtime.SpeechStarted("item_u", 900), 1.05)
    assert barge == [twilio.SendClear(SID), realtime.TruncateItem("item_a", 40)]


def test_barge_in_cancels_itself_when_the_server_will_not() -> None:
    agent = Agent(key="default", instructions="x", turn_detection=TurnDetection(interrupt_response=False))
    call, _ = live_call(agent)
    call.receive_realtime(realtime.ResponseCreated("resp_1"), 1.0)
    call.receive_realtime(delta(100), 1.0)
    barge = call.receive_realtime(realtime.SpeechStarted("item_u", 900), 1.1)
    assert realtime.CancelResponse("resp_1") in barge


def test_fully_played_audio_is_not_truncated() -> None:
    call, _ = live_call()
    call.receive_realtime(realtime.ResponseCreated("resp_1"), 1.0)
    out = call.receive_realtime(delta(40), 1.0) + call.receive_realtime(
        realtime.AudioDone("resp_1", "item_a"), 1.0
    )
    for c in out:
        if isinstance(c, twilio.SendMark):
            call.receive_twilio(twilio.Mark(SID, c.name), 1.1)
    assert call.receive_realtime(realtime.SpeechStarted("item_u", 900), 1.2) == []


def test_first_audio_latency_is_measured_from_end_of_speech_to_played_start_mark() -> None:
    call, _ = live_call()
    call.receive_realtime(realtime.SpeechStopped("item_u", 2000), 2.0)
    call.receive_realtime(realtime.ResponseCreated("resp_2"), 2.1)
    out = call.receive_realtime(delta(20, item="item_b", response="resp_2"), 2.3)
    call.receive_twilio(twilio.Mark(SID, out[0].name), 2.45)
    assert call.stats.first_audio_ms == [450]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (twilio.Stop(SID, CALL), "caller hung up"),
        (realtime.Error("invalid_request_error", "invalid_api_key", "bad key", None, None), "model error"),
    ],
)
def test_the_call_ends_once(event: object, reason: str) -> None:
    call, _ = live_call()
    if isinstance(event, twilio.Stop):
        out = call.receive_twilio(event, 5.0)
    else:
        out = call.receive_realtime(event, 5.0)  # type: ignore[arg-type]
    assert len(out) == 1 and isinstance(out[0], EndCall) and reason in out[0].reason
    assert call.twilio_closed(5.1) == []
    assert call.receive_twilio(media(0), 5.2) == []


def test_model_socket_closing_ends_the_call_with_the_twiml_tail() -> None:
    call, _ = live_call()
    out = call.realtime_closed(3.0, "code 1011")
    assert out == [EndCall("model socket closed (code 1011)", 1000)]


def test_benign_model_errors_do_not_end_the_call() -> None:
    call, _ = live_call()
    err = realtime.Error(
        "invalid_request_error", None, "Audio content of 100ms is already shorter than 120ms", None, None
    )
    assert call.receive_realtime(err, 1.0) == []
    assert call.stats.truncate_errors == 1 and not call.ended


def test_a_rejected_stream_is_closed_with_policy_violation() -> None:
    call, _ = make_call(verdict=Rejected("bad token"))
    call.begin(0.0)
    out = call.receive_twilio(start(), 0.1)
    assert out == [EndCall("stream rejected: bad token", 1008)]


def test_agent_with_another_model_reopens_the_model_socket() -> None:
    call, _ = make_call(Agent(key="default", instructions="x", model="gpt-realtime-2"))
    call.begin(0.0)
    call.realtime_opened(0.1)
    out = call.receive_twilio(start(), 0.2)
    assert out == [ConnectRealtime("gpt-realtime-2")]
    assert isinstance(call.realtime_opened(0.5)[0], realtime.UpdateSession)


def test_no_start_in_time_ends_the_call() -> None:
    call, _ = make_call()
    call.begin(0.0)
    deadline = call.next_deadline()
    assert deadline is not None
    assert call.receive_timeout(deadline - 0.01) == []
    assert call.receive_timeout(deadline) == [EndCall("no start message from Twilio", 1008)]


def test_silence_is_appended_when_media_stops_while_the_caller_speaks() -> None:
    call, _ = live_call()
    call.receive_twilio(media(0), 1.0)
    call.receive_realtime(realtime.SpeechStarted("item_u", 0), 1.0)
    deadline = call.next_deadline()
    assert deadline == pytest.approx(1.75)
    out = call.receive_timeout(1.8)
    assert len(out) == 1 and len(out[0].audio) == 1000 * 8 * 6


def test_wrong_session_format_ends_the_call() -> None:
    call, _ = make_call()
    call.begin(0.0)
    call.realtime_opened(0.1)
    call.receive_twilio(start(), 0.2)
    out = call.receive_realtime(realtime.SessionUpdated("audio/pcmu", "audio/pcm", None, 24000), 0.3)
    assert len(out) == 1 and isinstance(out[0], EndCall)


def test_usage_is_summed_per_call() -> None:
    call, _ = live_call()
    u = realtime.Usage(input_tokens=10, output_tokens=5, cached_tokens=2)
    call.receive_realtime(realtime.ResponseDone("r1", "completed", None, u), 1.0)
    call.receive_realtime(realtime.ResponseDone("r2", "cancelled", "turn_detected", u), 2.0)
    summary = call.summary(3.0)
    assert summary["input_tokens"] == 20 and summary["output_tokens"] == 10 and summary["responses"] == 2


def test_serialized_audio_is_base64_of_the_frame() -> None:
    text = twilio.serialize(twilio.SendMedia(SID, b"\x00\xff"))
    assert '"payload":"' + base64.b64encode(b"\x00\xff").decode() + '"' in text
