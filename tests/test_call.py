"""The call state machine, driven like a transcript: inputs in, commands out."""

from __future__ import annotations

import base64

import pytest
from callkit import AGENT, CALL, SID, Driver, delta, error, links, media, sent, start, unwrap, updated

from service.core.agent import Agent, TurnDetection
from service.core.call import Phase
from service.core.commands import Authorize, CloseModel, EndCall, OpenModel, ToModel
from service.core.inputs import StartRejected
from service.wire import realtime, twilio


def live_call(agent: Agent = AGENT) -> Driver:
    return Driver(agent).live()


def test_prewarms_the_model_socket_and_configures_once_both_sides_are_ready() -> None:
    d = Driver()
    assert d.begin(0.0) == [OpenModel(1, "gpt-realtime-2.1")]
    assert d.call.phase is Phase.AWAITING_START
    assert d.twilio(twilio.Connected("Call", "1.0.0"), 0.01) == []
    assert d.twilio(start(), 0.02) == [Authorize(start())]
    assert d.call.phase is Phase.AUTHORIZING
    assert d.authorize(0.02) == []
    assert d.call.phase is Phase.CONNECTING
    held = d.twilio(media(0), 0.03)
    assert held == []  # the model socket is not open yet: audio is held, not lost
    opened = d.opened(1, 0.05)
    assert d.call.phase is Phase.CONFIGURING
    assert links(opened) == {1}
    opened = unwrap(opened)
    assert isinstance(opened[0], realtime.UpdateSession)
    session = opened[0].session
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert [type(c) for c in opened[1:]] == [realtime.AppendAudio]
    assert len(opened[1].audio) == 160 * 6


def test_greeting_is_requested_after_session_updated() -> None:
    d = Driver()
    d.begin(0.0)
    d.opened(1, 0.1)
    d.twilio(start(), 0.2)
    d.authorize(0.2)
    out = unwrap(d.model(updated(), 0.3))
    assert d.call.phase is Phase.LIVE
    assert len(out) == 1 and isinstance(out[0], realtime.CreateResponse)
    assert "Hello there." in (out[0].instructions or "")
    assert d.model(updated(), 0.4) == []  # only once


def test_no_greeting_means_the_model_waits_for_the_caller() -> None:
    d = Driver(Agent(key="default", instructions="x"))
    d.begin(0.0)
    d.opened(1, 0.1)
    d.twilio(start(), 0.2)
    d.authorize(0.2)
    assert d.model(updated(), 0.3) == []


def test_every_caller_millisecond_reaches_the_model_and_gaps_are_filled() -> None:
    d = live_call()
    total = 0
    for ts in (0, 20, 40, 120, 140):  # 60 ms missing between 40 and 120
        for c in sent(d.twilio(media(ts), 1.0), realtime.AppendAudio):
            total += len(c.audio)
    assert total == (5 * 160 + 60 * 8) * 6
    assert d.call.uplink.stats.media_gaps == 1 and d.call.uplink.stats.filled_ms == 60


def test_bad_twilio_input_is_skipped_and_the_call_goes_on() -> None:
    d = Driver()
    d.begin(0.0)
    assert d.twilio(media(0), 0.01) == []  # media before start
    assert d.twilio(twilio.parse("{nope"), 0.02) == []
    assert d.twilio(twilio.parse('{"event":"bogus"}'), 0.03) == []
    assert d.call.stats.invalid_twilio == 2
    assert not d.call.ended


def test_outbound_audio_goes_as_whole_20ms_frames_each_message_followed_by_a_mark() -> None:
    d = live_call()
    out = d.model(realtime.ResponseCreated("resp_1"), 1.0)
    out = d.model(delta(50), 1.0)
    assert isinstance(out[0], twilio.SendMark) and out[0].name.startswith("item_a:0:g0:")
    frames = sent(out, twilio.SendMedia)
    assert [len(f.payload) for f in frames] == [320]  # the whole frames of the delta, at once
    marks = [c.name for c in out[1:] if isinstance(c, twilio.SendMark)]
    assert [m.split(":")[1] for m in marks] == ["40"]
    finished = d.model(realtime.AudioDone("resp_1", "item_a"), 1.1)
    frames = sent(finished, twilio.SendMedia)
    assert len(frames) == 1 and frames[0].payload[80:] == b"\xff" * 80  # 10 ms left, padded
    assert sent(finished, twilio.SendMark)[0].name.split(":")[1] == "50"  # never past what was generated


def test_barge_in_clears_and_truncates_at_what_was_heard() -> None:
    d = live_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    out = d.model(delta(200), 1.0)
    marks = [c.name for c in out if isinstance(c, twilio.SendMark)]
    assert len(marks) == 3  # the start, then 200 ms in two messages of 100 ms
    for name in marks[:2]:  # start mark + the first 100 ms played
        d.twilio(twilio.Mark(SID, name), 1.1)
    barge = d.model(realtime.SpeechStarted("item_u", 900), 1.135)
    assert barge[0] == twilio.SendClear(SID)
    # 100 ms echoed + 35 ms of the next chunk playing since
    assert realtime.TruncateItem("item_a", 135) in unwrap(barge)
    assert not sent(barge, realtime.CancelResponse)  # interrupt_response: the server cancels itself
    assert d.audio.resets == 1
    # marks flushed by the clear echo back now: they must not count as played
    for name in marks[2:]:
        d.twilio(twilio.Mark(SID, name), 1.21)
    # late audio of the interrupted response is dropped
    assert d.model(delta(40), 1.3) == []
    assert d.call.stats.dropped_deltas == 1 and d.call.stats.barge_ins == 1


def test_barge_in_with_nothing_playing_sends_nothing() -> None:
    d = live_call()
    assert d.model(realtime.SpeechStarted("item_u", 100), 1.0) == []


def test_barge_in_before_anything_was_heard_clears_and_deletes_the_unheard_item() -> None:
    d = live_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(delta(100), 1.0)
    barge = d.model(realtime.SpeechStarted("item_u", 900), 1.01)
    # nothing of it was heard: no truncate, it leaves the model's conversation
    assert barge == [twilio.SendClear(SID), ToModel(1, realtime.DeleteItem("item_a"))]


def test_barge_in_after_all_audio_was_sent_but_still_playing() -> None:
    d = live_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    out = d.model(delta(300), 1.0)
    out += d.model(realtime.AudioDone("resp_1", "item_a"), 1.0)
    d.model(realtime.ResponseDone("resp_1", "completed", None, realtime.Usage()), 1.0)
    marks = [c.name for c in out if isinstance(c, twilio.SendMark)]
    assert [m.split(":")[1] for m in marks] == ["0", "100", "200", "300"]
    for name in marks[:3]:
        d.twilio(twilio.Mark(SID, name), 1.25)
    barge = d.model(realtime.SpeechStarted("item_u", 900), 1.25)
    assert unwrap(barge) == [twilio.SendClear(SID), realtime.TruncateItem("item_a", 200)]


def test_barge_in_cancels_itself_when_the_server_will_not() -> None:
    agent = Agent(key="default", instructions="x", turn_detection=TurnDetection(interrupt_response=False))
    d = live_call(agent)
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    d.model(delta(100), 1.0)
    barge = d.model(realtime.SpeechStarted("item_u", 900), 1.1)
    assert realtime.CancelResponse("resp_1") in unwrap(barge)


def test_fully_played_audio_is_not_truncated() -> None:
    d = live_call()
    d.model(realtime.ResponseCreated("resp_1"), 1.0)
    out = d.model(delta(40), 1.0) + d.model(realtime.AudioDone("resp_1", "item_a"), 1.0)
    for c in out:
        if isinstance(c, twilio.SendMark):
            d.twilio(twilio.Mark(SID, c.name), 1.1)
    assert d.model(realtime.SpeechStarted("item_u", 900), 1.2) == []


def test_first_audio_latency_is_measured_from_end_of_speech_to_played_start_mark() -> None:
    d = live_call()
    d.model(realtime.SpeechStopped("item_u", 2000), 2.0)
    d.model(realtime.ResponseCreated("resp_2"), 2.1)
    out = d.model(delta(20, item="item_b", response="resp_2"), 2.3)
    d.twilio(twilio.Mark(SID, out[0].name), 2.45)
    assert d.call.stats.first_audio_ms == [450]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (twilio.Stop(SID, CALL), "caller hung up"),
        (error("invalid_api_key", "bad key"), "model error"),
    ],
)
def test_the_call_ends_once(event: object, reason: str) -> None:
    d = live_call()
    out = d.twilio(event, 5.0) if isinstance(event, twilio.Stop) else d.model(event, 5.0)  # type: ignore[arg-type]
    assert len(out) == 1 and isinstance(out[0], EndCall) and reason in out[0].reason
    assert d.call.phase is Phase.ENDED
    assert d.hangup(5.1) == []
    assert d.twilio(media(0), 5.2) == []


def test_a_fatal_close_of_the_model_socket_ends_the_call_with_the_twiml_tail() -> None:
    d = live_call()
    assert d.closed(1, 3.0, code=3000) == [EndCall("model socket closed (code 3000)", 1000)]


def test_a_refused_upgrade_is_fatal_but_a_busy_one_is_retried() -> None:
    d = live_call()
    assert d.closed(1, 3.0, code=None, status=503)[-1] == OpenModel(2, "gpt-realtime-2.1")
    assert sent(d.closed(2, 3.1, code=None, status=401), EndCall)


def test_model_errors_are_handled_by_their_class() -> None:
    d = live_call()
    assert d.model(error(None, "Audio content of 100ms is already shorter than 120ms"), 1.0) == []
    assert d.call.stats.truncate_errors == 1
    codes = ("response_cancel_not_active", "conversation_already_has_active_response", "unknown_parameter")
    for code in codes:
        assert d.model(error(code), 1.1) == []
    assert d.model(error(None, "Only model output audio messages can be truncated"), 1.2) == []
    assert d.model(error("server_error", "The server had an error"), 1.3) == []
    assert not d.call.ended
    # a session the server says is over is replaced, not ended
    out = d.model(error("session_expired", "Your session has expired"), 2.0)
    assert out[0] == CloseModel(1) and OpenModel(2, "gpt-realtime-2.1") in out
    assert d.call.phase is Phase.RECONNECTING


def test_a_rejected_stream_is_closed_with_policy_violation() -> None:
    d = Driver()
    d.begin(0.0)
    assert d.twilio(start(), 0.1) == [Authorize(start())]
    out = d.call.handle(StartRejected("bad token"), 0.1)
    assert out == [EndCall("stream rejected: bad token", 1008)]


def test_an_authorization_nobody_asked_for_is_ignored() -> None:
    d = Driver()
    d.begin(0.0)
    assert d.authorize(0.1) == []
    assert d.call.agent is None and d.call.phase is Phase.AWAITING_START


def test_agent_with_another_model_reopens_the_model_socket() -> None:
    d = Driver(Agent(key="default", instructions="x", model="gpt-realtime-2"))
    d.begin(0.0)
    d.opened(1, 0.1)
    d.twilio(start(), 0.2)
    out = d.authorize(0.2)
    assert out == [CloseModel(1), OpenModel(2, "gpt-realtime-2")]
    assert d.model(updated(), 0.3, link=1) == []  # the replaced socket is not listened to
    assert isinstance(unwrap(d.opened(2, 0.5))[0], realtime.UpdateSession)


def test_no_start_in_time_ends_the_call() -> None:
    d = Driver()
    d.begin(0.0)
    deadline = d.call.next_deadline()
    assert deadline is not None
    assert d.timer(deadline - 0.01) == []
    assert d.timer(deadline) == [EndCall("no start message from Twilio", 1008)]


def test_silence_is_appended_when_media_stops_while_the_caller_speaks() -> None:
    d = live_call()
    d.twilio(media(0), 1.0)
    d.model(realtime.SpeechStarted("item_u", 0), 1.0)
    deadline = d.call.next_deadline()
    assert deadline == pytest.approx(1.75)
    out = unwrap(d.timer(1.8))
    assert len(out) == 1 and len(out[0].audio) == 1000 * 8 * 6


def test_wrong_session_format_ends_the_call() -> None:
    d = Driver()
    d.begin(0.0)
    d.opened(1, 0.1)
    d.twilio(start(), 0.2)
    d.authorize(0.2)
    out = d.model(updated("audio/pcmu"), 0.3)
    assert len(out) == 1 and isinstance(out[0], EndCall)


def test_usage_is_summed_per_call() -> None:
    d = live_call()
    u = realtime.Usage(input_tokens=10, output_tokens=5, cached_tokens=2)
    d.model(realtime.ResponseDone("r1", "completed", None, u), 1.0)
    d.model(realtime.ResponseDone("r2", "cancelled", "turn_detected", u), 2.0)
    summary = d.call.summary(3.0)
    assert summary["input_tokens"] == 20 and summary["output_tokens"] == 10 and summary["responses"] == 2


def test_keys_pressed_are_not_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    d = live_call()
    with caplog.at_level("INFO"):
        d.twilio(twilio.Dtmf(SID, "7"), 1.0)
    assert not [r for r in caplog.records if "7" in r.getMessage()]


def test_serialized_audio_is_base64_of_the_frame() -> None:
    text = twilio.serialize(twilio.SendMedia(SID, b"\x00\xff"))
    assert '"payload":"' + base64.b64encode(b"\x00\xff").decode() + '"' in text
