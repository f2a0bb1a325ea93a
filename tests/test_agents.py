from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from service.agents import Agent, AgentStore, TurnDetection, parse_agents
from service.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "agents.example.toml"


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_agents(text, "test.toml")
    assert info.value.source == "test.toml"
    return info.value.problems


def rewrite(path: Path, text: str) -> None:
    """Write ``text`` and move the mtime forward, so the change is seen even on a coarse clock."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    after = max(path.stat().st_mtime_ns, before + 1_000_000_000)
    os.utime(path, ns=(after, after))


def test_example_file_is_valid() -> None:
    book = parse_agents(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert book.default is not None and book.default.key == "default"
    assert set(book.numbers) == {"+15551230001", "+15551230002", "+15551230003"}
    assert len(book) == 4
    booking = book.numbers["+15551230001"]
    assert booking.call_control == frozenset({"end_call"}) and booking.transfers[0].name == "manager"
    reminder = book.numbers["+15551230003"]
    assert reminder.max_call_s == 300 and "{{customer}}" in (reminder.voicemail_message or "")


def test_numbers_inherit_unset_keys_from_default() -> None:
    book = parse_agents(
        """
        [default]
        instructions = "Default."
        voice = "marin"
        greeting = "Hi."
        model = "gpt-realtime-2.1-mini"
        transcription_model = "gpt-4o-transcribe"
        noise_reduction = "far_field"
        [default.turn_detection]
        threshold = 0.7
        prefix_padding_ms = 200
        silence_duration_ms = 600
        interrupt_response = false

        [numbers."+15551230001"]
        voice = "cedar"
        [numbers."+15551230001".turn_detection]
        silence_duration_ms = 900
        create_response = false

        [numbers."+442071234567"]
        instructions = "Own."
        greeting = ""
        noise_reduction = "off"
        """
    )
    first = book.numbers["+15551230001"]
    assert first == Agent(
        key="+15551230001",
        instructions="Default.",
        voice="cedar",
        greeting="Hi.",
        model="gpt-realtime-2.1-mini",
        turn_detection=TurnDetection(
            threshold=0.7,
            prefix_padding_ms=200,
            silence_duration_ms=900,
            create_response=False,
            interrupt_response=False,
        ),
        transcription_model="gpt-4o-transcribe",
        noise_reduction="far_field",
    )
    second = book.numbers["+442071234567"]
    assert (second.instructions, second.voice, second.greeting) == ("Own.", "marin", None)
    assert second.noise_reduction is None
    assert second.turn_detection.silence_duration_ms == 600
    assert book.default is not None and book.default.turn_detection.create_response is True


def test_defaults_when_nothing_is_set() -> None:
    book = parse_agents('[numbers."+15551230001"]\ninstructions = "Only this."\n')
    agent = book.numbers["+15551230001"]
    assert agent == Agent(key="+15551230001", instructions="Only this.")
    assert agent.voice == "marin" and agent.model is None and agent.greeting is None
    assert agent.turn_detection == TurnDetection("server_vad", 0.5, 300, 500, True, True, None)
    assert agent.transcription_model == "gpt-4o-mini-transcribe"
    assert agent.noise_reduction == "near_field"
    assert book.default is None


def test_lookup_falls_back_to_default() -> None:
    book = parse_agents(EXAMPLE.read_text(encoding="utf-8"))
    assert book.for_number("+15551230001").key == "+15551230001"  # type: ignore[union-attr]
    assert book.for_number("+19998887777") is book.default
    assert book.for_number("client:alice") is book.default
    assert book.by_key("default") is book.default
    assert book.by_key("+15551230002") is book.numbers["+15551230002"]
    assert book.by_key("+10000000000") is None


def test_lookup_without_default_finds_nothing_for_other_numbers() -> None:
    book = parse_agents('[numbers."+15551230001"]\ninstructions = "x"\n')
    assert book.for_number("+15551230009") is None
    assert book.by_key("default") is None


def test_every_problem_is_listed_with_its_path() -> None:
    problems = problems_of(
        """
        color = "blue"
        [default]
        instructions = ""
        voice = "robot"
        temperature = 0.8
        noise_reduction = "loud"
        model = 5
        [default.turn_detection]
        type = "semantic_vad"
        threshold = 1.5
        prefix_padding_ms = -1
        silence_duration_ms = 0
        create_response = "yes"
        idle_timeout_ms = 2.5
        eagerness = "high"

        [numbers."+15551230001".turn_detection]
        threshold = -0.1

        [numbers."5551230001"]
        instructions = "x"
        [numbers."+1555"]
        instructions = "y"
        """
    )
    assert problems == [
        'color: unknown key (expected [default] or [numbers."+E164"])',
        "default.instructions: must not be empty",
        "default.voice: must be a built-in voice (alloy, ash, ballad, cedar, coral, echo, marin, sage, "
        "shimmer, verse) or a custom voice_... id",
        "default.temperature: unknown key",
        "default.noise_reduction: must be near_field, far_field or off",
        "default.model: must be a string",
        "default.turn_detection.type: must be server_vad (the only mode supported)",
        "default.turn_detection.threshold: must be between 0 and 1",
        "default.turn_detection.prefix_padding_ms: must be 0 or more",
        "default.turn_detection.silence_duration_ms: must be more than 0",
        "default.turn_detection.create_response: must be true or false",
        "default.turn_detection.idle_timeout_ms: must be an integer (milliseconds)",
        "default.turn_detection.eagerness: unknown key",
        'numbers."+15551230001".turn_detection.threshold: must be between 0 and 1',
        'numbers."5551230001": not an E.164 number (+ and 8-15 digits, no spaces)',
        'numbers."+1555": not an E.164 number (+ and 8-15 digits, no spaces)',
    ]


def test_instructions_are_required_somewhere() -> None:
    assert problems_of('[numbers."+15551230001"]\nvoice = "ash"\n') == [
        'numbers."+15551230001".instructions: required (there is no [default] to inherit from)'
    ]
    assert problems_of('[default]\nvoice = "ash"\n') == ["default.instructions: required"]


def test_custom_voice_and_voice_param() -> None:
    book = parse_agents('[default]\ninstructions = "x"\nvoice = "voice_1234abcd"\n')
    assert book.default is not None
    assert book.default.voice_param == {"id": "voice_1234abcd"}
    assert parse_agents('[default]\ninstructions = "x"\nvoice = "ash"\n').default.voice_param == "ash"  # type: ignore[union-attr]


def test_syntax_error_and_empty_file() -> None:
    [problem] = problems_of("[default\ninstructions = 'x'\n")
    assert problem.startswith("not valid TOML:")
    assert problems_of("") == ['no agents: add a [default] table or a [numbers."+E164"] table']
    assert problems_of("numbers = 3\n") == ['numbers: must be a table of [numbers."+E164"] entries']
    assert problems_of("default = 3\n") == ["default: must be a table"]


# --- AgentStore: loading and hot reload ---------------------------------------------------------------


def test_store_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        AgentStore(tmp_path / "nope.toml")
    assert "nope.toml" in info.value.problems[0]


def test_store_invalid_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text('[default]\nvoice = "robot"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        AgentStore(path)
    assert len(info.value.problems) == 2


def test_store_hot_reload(agents_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = AgentStore(agents_path)
    assert store.for_number("+15551230001").voice == "cedar"  # type: ignore[union-attr]
    assert store.for_number("+15559990000").key == "default"  # type: ignore[union-attr]

    rewrite(agents_path, '[numbers."+15551230001"]\ninstructions = "New."\nvoice = "ash"\n')
    assert store.for_number("+15551230001").voice == "ash"  # type: ignore[union-attr]
    assert store.for_number("+15559990000") is None  # the default is gone too

    caplog.set_level(logging.WARNING, logger="service.agents")
    rewrite(agents_path, '[numbers."+15551230001"]\ninstructions = "Broken."\nvoice = "robot"\n')
    for _ in range(3):
        agent = store.for_number("+15551230001")
        assert agent is not None and agent.instructions == "New."  # last good book kept
    rejected = [r for r in caplog.records if "edit rejected" in r.getMessage()]
    assert len(rejected) == 1  # logged once per change, not once per lookup
    assert "voice" in rejected[0].getMessage()

    rewrite(agents_path, '[default]\ninstructions = "Fixed."\n')
    assert store.by_key("default").instructions == "Fixed."  # type: ignore[union-attr]
    assert store.by_key("+15551230001") is None


def test_store_keeps_last_book_when_file_disappears(agents_path: Path) -> None:
    store = AgentStore(agents_path)
    agents_path.unlink()
    assert store.for_number("+15551230001") is not None
    rewrite(agents_path, '[default]\ninstructions = "Back."\n')
    assert store.by_key("default").instructions == "Back."  # type: ignore[union-attr]


def test_store_stats_on_every_access_and_reads_only_on_change(agents_path: Path) -> None:
    calls: list[Path] = []

    def counting_stat(path: Path) -> os.stat_result:
        calls.append(path)
        return os.stat(path)

    store = AgentStore(agents_path, stat=counting_stat)
    book = store.book
    assert store.book is book and store.book is book  # unchanged stat: same object, no re-read
    assert len(calls) == 4  # one at start-up, one per access
    assert store.reload_if_changed() is False
    rewrite(agents_path, '[default]\ninstructions = "Changed."\n')
    assert store.reload_if_changed() is True
    assert store.book is not book


def test_store_sees_a_change_that_keeps_size_and_mtime_but_replaces_the_file(agents_path: Path) -> None:
    store = AgentStore(agents_path)
    stat = agents_path.stat()
    replacement = agents_path.with_suffix(".new")
    replacement.write_text(
        agents_path.read_text(encoding="utf-8").replace("marin", "coral"), encoding="utf-8"
    )
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, agents_path)  # atomic save: new inode, same size and mtime
    assert store.by_key("default").voice == "coral"  # type: ignore[union-attr]
