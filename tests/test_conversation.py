"""The conversation as heard, and the context a new session is given."""

from __future__ import annotations

from callkit import SID, Driver, delta, done, sent

from service.core.conversation import Conversation, Turn
from service.core.session import context_items, estimate_tokens
from service.wire import realtime, twilio


def test_turns_keep_the_order_the_model_created_their_items() -> None:
    c = Conversation()
    c.caller_committed("u1", 1.0)
    c.agent_item("a1", 1.5)
    c.caller_transcript("u1", "  Hello?  ", 2.0)  # transcription arrives after the answer began
    c.agent_text("a1", "Hi, ", 1.6)
    c.agent_text("a1", "how can I help?", 1.7)
    assert [(t.role, t.text) for t in c] == [("caller", "Hello?"), ("agent", "Hi, how can I help?")]
    c.agent_transcript("a1", "Hi, how can I help you?", 1.8)
    c.agent_text("a1", " late delta", 1.9)  # the final transcript wins
    assert c.turn("a1") is not None and c.turn("a1").text == "Hi, how can I help you?"  # type: ignore[union-attr]


def test_an_interrupted_turn_is_cut_to_the_share_heard_at_a_word_boundary() -> None:
    turn = Turn("agent", "a", 0.0, text="one two three four five six", generated_ms=1000)
    assert turn.heard_text == turn.text
    turn.interrupted, turn.heard_ms = True, 500
    assert turn.heard_text == "one two three"  # 13 of 27 characters: "three" ends at 13
    turn.heard_ms = 300
    assert turn.heard_text == "one two"  # cut inside "three": the partial word is dropped
    turn.heard_ms = 0
    assert turn.heard_text == ""
    turn.heard_ms = 2000
    assert turn.heard_text == turn.text


def test_a_barge_in_cuts_the_agent_turn_to_what_was_heard() -> None:
    d = Driver().live()
    d.model(realtime.ResponseCreated("r1"), 1.0)
    d.model(realtime.OutputItemAdded("r1", "a1", "message", "assistant"), 1.0)
    d.model(realtime.AgentTranscriptDelta("a1", "abcd efgh ijkl mnop"), 1.0)
    out = d.model(delta(400, "a1", "r1"), 1.0)
    for mark in sent(out, twilio.SendMark)[:3]:  # 200 of 400 ms heard
        d.twilio(twilio.Mark(SID, mark.name), 1.3)
    d.model(realtime.SpeechStarted("u2", 0), 1.3)
    d.model(delta(400, "a1", "r1"), 1.31)  # the server's audio after the cut is not heard...
    d.model(realtime.AgentTranscriptDelta("a1", " qrst uvwx yzab cdef"), 1.31)  # ...nor its text
    d.model(done("r1", "cancelled"), 1.4)
    turn = d.call.conversation.turn("a1")
    assert turn is not None and turn.interrupted and turn.heard_ms == 200
    assert turn.heard_text == "abcd efgh"  # 200 of 800 ms generated: a quarter of the text


def test_an_item_not_yet_audible_counts_as_not_heard() -> None:
    d = Driver().live()
    d.model(realtime.ResponseCreated("r1"), 1.0)
    d.model(realtime.OutputItemAdded("r1", "a1", "message", "assistant"), 1.0)
    d.model(realtime.AgentTranscriptDelta("a1", "I was about to say"), 1.0)
    d.model(realtime.SpeechStarted("u2", 0), 1.1)
    turn = d.call.conversation.turn("a1")
    assert turn is not None and turn.heard_text == ""


def test_context_keeps_the_newest_turns_within_the_budget() -> None:
    c = Conversation()
    for n in range(10):
        c.caller_transcript(f"u{n}", f"question number {n} " + "x" * 40, float(n))
        c.agent_transcript(f"a{n}", f"answer number {n} " + "y" * 40, float(n))
    c.caller_committed("u10", 11.0)  # not transcribed (yet): left out
    every = context_items(c, 100_000)
    assert len(every) == 20 and every[0]["content"][0]["text"].startswith("question number 0")
    cost = estimate_tokens(c.turns[0].text)
    some = context_items(c, cost * 5)
    assert len(some) == 5 and some[-1]["content"][0]["text"].startswith("answer number 9")
    assert some[0]["role"] == "assistant"  # the oldest turns went first
    assert context_items(c, 0) == []


def test_context_items_are_ga_text_messages() -> None:
    c = Conversation()
    c.caller_transcript("u", "Hi", 0.0)
    c.agent_transcript("a", "Hello", 0.0)
    assert context_items(c, 100) == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
    ]
