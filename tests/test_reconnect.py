"""Calls that survive the model connection, on the pure core: reconnect with backoff and context,
rollover before the session limit. Inputs in, commands out."""

from __future__ import annotations

import random

import pytest
from callkit import WALL, Driver, ThreeX, delta, done, error, links, media, sent, start, unwrap, updated

from service.core.call import CallConfig, Phase
from service.core.commands import CloseModel, EndCall, OpenModel, ToModel
from service.core.links import RolloverPolicy
from service.core.reconnect import ReconnectPolicy, Retry
from service.core.uplink import Utterance
from service.wire import realtime, twilio

MODEL = "gpt-realtime-2.1"


def converse(d: Driver, now: float = 1.0) -> None:
    """Caller turn 1 transcribed; agent turn 1 (the greeting item) generated and fully heard."""
    d.model(realtime.InputCommitted("item_u1"), now)
    d.model(realtime.CallerTranscript("item_u1", "Do you open on Sundays?"), now)
    d.model(realtime.ResponseCreated("resp_1"), now)
    d.model(realtime.OutputItemAdded("resp_1", "item_a1", "message", "assistant"), now)
    d.model(realtime.AgentTranscriptDelta("item_a1", "Yes, from ten "), now)
    out = d.model(delta(100, "item_a1"), now)
    d.model(realtime.AgentTranscript("resp_1", "item_a1", "Yes, from ten to four."), now)
    out += d.model(realtime.AudioDone("resp_1", "item_a1"), now)
    d.model(done("resp_1"), now)
    for mark in sent(out, twilio.SendMark):
        d.twilio(twilio.Mark(mark.stream_sid, mark.name), now + 0.2)


def items(commands: list) -> list[dict]:  # type: ignore[type-arg]
    return [c.item for c in sent(commands, realtime.CreateItem)]


def test_backoff_schedule_is_immediate_then_exponential_with_jitter_within_the_limit() -> None:
    policy = ReconnectPolicy(first_delay_s=0.25, max_delay_s=2.0, give_up_s=10.0, jitter=0.0)
    assert [policy.delay_s(n, random.Random(1)) for n in range(1, 8)] == [0, 0.25, 0.5, 1, 2, 2, 2]
    starts = policy.schedule_s(random.Random(1))
    assert starts == [0, 0.25, 0.75, 1.75, 3.75, 5.75, 7.75, 9.75]
    jittered = ReconnectPolicy(jitter=0.5)
    delays = [jittered.delay_s(3, random.Random(seed)) for seed in range(50)]
    assert all(0.25 <= d <= 0.5 for d in delays) and len(set(delays)) > 40


def test_retry_gives_up_when_the_next_attempt_would_start_too_late() -> None:
    policy = ReconnectPolicy(give_up_s=1.0, jitter=0.0)
    retry = Retry(lost_at=10.0)
    rng = random.Random(0)
    assert retry.next_delay(policy, rng, 10.0) == 0.0
    assert retry.next_delay(policy, rng, 10.1) == 0.25
    assert retry.next_delay(policy, rng, 10.4) == 0.5
    assert retry.next_delay(policy, rng, 10.9) is None


def test_drop_mid_answer_clears_twilio_reconnects_at_once_and_replays_what_was_heard() -> None:
    d = Driver().live()
    converse(d)
    d.model(realtime.InputCommitted("item_u2"), 2.0)
    d.model(realtime.CallerTranscript("item_u2", "And on Mondays?"), 2.0)
    d.model(realtime.ResponseCreated("resp_2"), 2.1)
    d.model(realtime.AgentTranscriptDelta("item_a2", "On Mondays we are closed all day long."), 2.1)
    out = d.model(delta(400, "item_a2", "resp_2"), 2.1)
    marks = sent(out, twilio.SendMark)
    for mark in marks[:3]:  # start mark + 2 chunks of 100 ms: 200 ms of 400 heard
        d.twilio(twilio.Mark(mark.stream_sid, mark.name), 2.3)
    lost = d.closed(1, 2.3, code=1011)
    assert lost == [twilio.SendClear(d.call.stream_sid or ""), OpenModel(2, MODEL)]  # first retry at once
    assert d.call.phase is Phase.RECONNECTING and d.audio.resets == 1
    # caller audio of the gap is dropped, and counted
    assert d.twilio(media(0), 2.35) == [] and d.call.uplink.stats.dropped_ms == 20
    reopened = d.opened(2, 2.5)
    assert links(reopened) == {2}
    plain = unwrap(reopened)
    assert isinstance(plain[0], realtime.UpdateSession)
    assert [(i["role"], i["content"][0]["text"]) for i in items(reopened)] == [
        ("user", "Do you open on Sundays?"),
        ("assistant", "Yes, from ten to four."),
        ("user", "And on Mondays?"),
        ("assistant", "On Mondays we are"),  # half of the audio was heard: half of the text, whole words
    ]
    assert plain[-1] == realtime.CreateResponse()  # it was mid-answer and the caller is not speaking
    assert sent(d.model(updated(), 2.6, link=2), object) == []
    assert d.call.phase is Phase.LIVE and d.call.stats.reconnect_ms == [300]
    assert links(d.twilio(media(20), 2.7)) == {2}  # the caller is heard by the new session
    assert d.model(realtime.SpeechStarted("x", 0), 2.8, link=1) == []  # the old socket is not listened to


def test_drop_while_the_caller_speaks_gives_the_new_session_their_utterance_and_lets_its_vad_decide() -> None:
    d = Driver().live()
    converse(d)
    ts = 0
    for _ in range(50):  # 1 s of silence before the caller speaks
        d.twilio(media(ts, b"\xff" * 160), 2.0 + ts / 1000)
        ts += 20
    d.model(realtime.SpeechStarted("item_u2", 700), 3.0)  # with its prefix padding, from 700 ms on
    for _ in range(40):  # 800 ms of speech reach the first session
        d.twilio(media(ts), 2.0 + ts / 1000)
        ts += 20
    d.closed(1, 3.8, code=None)  # TCP abort: no close frame
    reopened = d.opened(2, 3.9)
    plain = unwrap(reopened)
    assert not [c for c in plain if isinstance(c, realtime.CreateResponse)]  # its VAD takes the turn
    assert len(sent(reopened, realtime.CreateItem)) == 2
    again = sent(reopened, realtime.AppendAudio)
    assert len(again) == 15 + 40  # from the VAD's audio_start_ms on: 300 ms of padding, 800 ms of speech
    assert again[-1].audio == ThreeX().to_model(b"\x7f" * 160) and again[0].audio != again[-1].audio
    assert d.call.uplink.stats.replayed_ms == 1100
    assert d.opened(2, 3.9) == []  # configured once only


def test_the_utterance_kept_is_bounded_and_forgotten_when_the_caller_stops() -> None:
    utterance = Utterance(lead_ms=100, max_ms=1000)
    for n in range(20):
        utterance.add(bytes([n]), 20)
    assert utterance.audio() == [] and utterance.ms == 0  # not speaking: nothing to give
    utterance.started(audio_start_ms=340)  # the VAD says the speech began 60 ms ago
    assert utterance.audio() == [bytes([17]), bytes([18]), bytes([19])]
    for _ in range(200):
        utterance.add(b"s", 20)
    assert utterance.ms == 1000 and len(utterance.audio()) == 50
    utterance.new_session()  # the new session was given those 1000 ms: its clock starts there
    utterance.add(b"t", 20)
    assert utterance.ms == 1000 and utterance.audio()[-1] == b"t"
    utterance.stopped()
    assert utterance.audio() == []


def test_no_second_greeting_after_a_reconnect_and_none_lost_if_the_first_socket_never_confirmed() -> None:
    d = Driver()
    d.begin(0.0)
    d.opened(1, 0.1)
    d.twilio(twilio.parse('{"event":"connected","protocol":"Call","version":"1.0.0"}'), 0.1)

    d.twilio(start(), 0.2)
    d.authorize(0.2)
    assert d.closed(1, 0.25, code=1006)[-1] == OpenModel(2, MODEL)  # lost before session.updated
    d.opened(2, 0.4)
    greeting = sent(d.model(updated(), 0.5), object)
    assert [type(c) for c in unwrap(greeting)] == [realtime.CreateResponse]  # greeted once, now
    assert d.call.stats.reconnect_ms == [250]  # the session was configured: audio was flowing to it
    converse(d, 1.0)
    d.closed(2, 5.0)
    d.opened(3, 5.1)
    again = unwrap(d.model(updated(), 5.2, link=3))
    assert again == []


def test_refused_connects_back_off_then_succeed_and_a_dead_model_gives_up() -> None:
    policy = ReconnectPolicy(give_up_s=2.0, jitter=0.0)
    d = Driver(config=CallConfig(reconnect=policy, quiet_batch_ms=0)).live()
    assert d.closed(1, 10.0)[-1] == OpenModel(2, MODEL, 0.0)
    assert d.closed(2, 10.05, code=None, status=503) == [OpenModel(3, MODEL, 0.25)]
    assert d.closed(3, 10.35, code=None) == [OpenModel(4, MODEL, 0.5)]
    assert d.call.next_deadline() == pytest.approx(12.0)
    d.opened(4, 10.9)
    d.model(updated(), 11.0)
    assert d.call.stats.reconnect_ms == [1000] and d.call.phase is Phase.LIVE
    # the next loss starts a new run of attempts; a model that never comes back ends the call
    d.closed(4, 20.0)
    d.closed(5, 20.1)
    d.closed(6, 20.5)
    assert d.closed(7, 21.1) == [EndCall("model unreachable", 1000)]  # the next try would start at 22.1


def test_an_attempt_that_hangs_is_cut_off_by_the_give_up_deadline() -> None:
    d = Driver(config=CallConfig(reconnect=ReconnectPolicy(give_up_s=2.0), quiet_batch_ms=0)).live()
    d.closed(1, 10.0)
    assert d.call.next_deadline() == pytest.approx(12.0)
    assert d.timer(11.9) == []
    assert d.timer(12.0) == [EndCall("model unreachable", 1000)]


def test_fatal_errors_are_not_retried() -> None:
    d = Driver().live()
    assert d.model(error("insufficient_quota", "You exceeded your current quota"), 1.0) == [
        EndCall("model error insufficient_quota", 1000)
    ]
    d2 = Driver().live()
    assert d2.closed(1, 1.0, code=4000) == [EndCall("model socket closed (code 4000)", 1000)]


def rollover_call(margin_s: float = 300.0) -> Driver:
    policy = RolloverPolicy(margin_s=margin_s, force_s=15.0)
    d = Driver(config=CallConfig(rollover=policy, quiet_batch_ms=0)).live()
    # the session expires an hour after the socket opened (epoch seconds, whole: 3600.0 on the call clock)
    d.model(realtime.SessionCreated("sess_1", int(WALL + 0.1 + 3600)), 0.35)
    return d


def test_rollover_opens_a_spare_before_the_limit_and_switches_at_a_quiet_moment() -> None:
    d = rollover_call()
    converse(d)
    assert d.call.next_deadline() == pytest.approx(3600 - 300)
    d.model(realtime.SpeechStarted("item_u2", 9000), 3300.0)  # the caller is speaking
    assert d.timer(3300.1) == [OpenModel(2, MODEL)]
    configure = d.opened(2, 3300.2)
    assert links(configure) == {2} and isinstance(unwrap(configure)[0], realtime.UpdateSession)
    # the spare is ready, but the caller still speaks: audio keeps going to the live session
    assert d.model(updated(), 3300.3, link=2) == []
    assert links(d.twilio(media(0), 3300.31)) == {1}
    # the caller stops: switch, replay the conversation to the spare, close the old socket
    switch = d.model(realtime.SpeechStopped("item_u2", 10_000), 3301.0)
    assert [(i["role"], i["content"][0]["text"]) for i in items(switch)] == [
        ("user", "Do you open on Sundays?"),
        ("assistant", "Yes, from ten to four."),
    ]
    assert links(switch) == {2} and switch[-1] == CloseModel(1)
    assert not sent(switch, realtime.CreateResponse)
    assert links(d.twilio(media(20), 3301.01)) == {2}
    assert d.call.stats.rollovers == 1 and d.call.phase is Phase.LIVE
    # the new session has its own limit
    d.model(realtime.SessionCreated("sess_2", int(WALL + 3300.2 + 3600)), 3301.1)
    assert d.call.next_deadline() == pytest.approx(3300.2 + 3600 - 300, abs=1)


def test_rollover_is_forced_shortly_before_the_limit_when_no_quiet_moment_comes() -> None:
    d = rollover_call()
    d.model(realtime.ResponseCreated("resp_9"), 3300.0)  # a response that never ends
    d.timer(3300.1)
    d.opened(2, 3300.2)
    d.model(updated(), 3300.3, link=2)
    force_at = 3600 - 15
    assert d.call.next_deadline() == pytest.approx(force_at)
    assert d.timer(force_at - 1) == []
    forced = d.timer(force_at)
    assert forced[-1] == CloseModel(1) and d.call.stats.rollovers == 1


def test_a_1001_close_with_a_ready_spare_switches_to_it_without_a_gap() -> None:
    d = rollover_call()
    d.model(realtime.SpeechStarted("item_u2", 9000), 3300.0)
    d.timer(3300.1)
    d.opened(2, 3300.2)
    d.model(updated(), 3300.3, link=2)
    out = d.closed(1, 3500.0, code=1001)
    assert not [c for c in out if isinstance(c, OpenModel)]
    assert d.call.live_link == 2 and d.call.phase is Phase.LIVE
    assert links(d.twilio(media(0), 3500.1)) == {2}


def test_a_1001_close_without_a_spare_is_a_reconnect() -> None:
    d = rollover_call()
    assert d.closed(1, 3600.1, code=1001)[-1] == OpenModel(2, MODEL)
    assert d.call.phase is Phase.RECONNECTING


def test_a_spare_that_fails_is_tried_again_later() -> None:
    d = rollover_call()
    d.model(realtime.ResponseCreated("resp_9"), 3300.0)
    assert d.timer(3300.1) == [OpenModel(2, MODEL)]
    assert d.closed(2, 3300.2, code=None, status=503) == []
    assert d.call.live_link == 1 and d.call.next_deadline() == pytest.approx(3301.2)
    assert d.timer(3301.2) == [OpenModel(3, MODEL)]


def test_every_caller_byte_goes_to_exactly_one_session_across_a_rollover() -> None:
    d = rollover_call()
    per_link: dict[int, int] = {}
    ts = 0
    for step in range(400):
        now = 3299.0 + step * 0.02
        if step == 60:
            d.timer(now)  # opens the spare
        if step == 70:
            d.opened(2, now)
        if step == 80:
            d.model(updated(), now, link=2)
        for command in d.twilio(media(ts), now):
            if isinstance(command, ToModel) and isinstance(command.command, realtime.AppendAudio):
                per_link[command.link] = per_link.get(command.link, 0) + len(command.command.audio)
        ts += 20
    assert d.call.stats.rollovers == 1 and set(per_link) == {1, 2}
    assert sum(per_link.values()) == 400 * 160 * 6
