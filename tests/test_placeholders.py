"""Per-call variables: ``{{name}}`` placeholders checked, filled, carried as stream parameters; and the
agents file's outbound keys (``max_call_s``, ``voicemail_message``)."""

from __future__ import annotations

import pytest

from service.agents import parse_agents
from service.core.agent import Agent
from service.core.placeholders import (
    MAX_VALUE_CHARS,
    check,
    fill,
    fill_agent,
    from_parameters,
    names_in,
    parse_assignments,
    placeholders_of,
    to_parameters,
    token_subject,
)
from service.errors import ConfigError

AGENT = Agent(
    key="+15551230001",
    instructions="You call {{customer}} about {{ day }}. Never say {{customer}}'s card number.",
    greeting="Hi {{customer}}!",
    voicemail_message="Hi {{customer}}, call us back about {{day}} or {{time}}.",
)
VALUES = {"customer": "Ada Lovelace", "day": "Tuesday", "time": "3 pm"}


def test_placeholders_are_found_in_the_instructions_greeting_and_voicemail_message() -> None:
    assert names_in("a {{x}} b {{ y_2 }} {{x}} {{not valid}} {x} {{9z}}") == {"x", "y_2"}
    assert placeholders_of(AGENT) == {"customer", "day", "time"}
    assert placeholders_of(Agent(key="default", instructions="No variables.")) == frozenset()


def test_matching_values_fill_every_text_of_the_agent() -> None:
    assert check(AGENT, VALUES) == []
    filled = fill_agent(AGENT, VALUES)
    assert filled.instructions == "You call Ada Lovelace about Tuesday. Never say Ada Lovelace's card number."
    assert filled.greeting == "Hi Ada Lovelace!"
    assert filled.voicemail_message == "Hi Ada Lovelace, call us back about Tuesday or 3 pm."
    assert filled.key == AGENT.key and filled.voice == AGENT.voice
    plain = Agent(key="default", instructions="Plain.")
    assert fill_agent(plain, {}) is plain


def test_unknown_missing_and_badly_named_values_are_each_one_problem_naming_no_value() -> None:
    problems = check(AGENT, {"customer": "Ada", "colour": "secret-blue", "bad-name": "x"})
    assert problems == [
        "param 'bad-name': not a valid name (letters, digits and _, at most 64)",
        "param colour: the agent +15551230001 has no {{colour}} (its placeholders: customer, day, time)",
        "param day: missing (the agent +15551230001 uses {{day}})",
        "param time: missing (the agent +15551230001 uses {{time}})",
    ]
    assert not any("secret-blue" in p or "Ada" in p for p in problems)


def test_values_are_limited_to_what_a_twilio_parameter_holds() -> None:
    long = "x" * (MAX_VALUE_CHARS + 1)
    assert check(AGENT, {**VALUES, "day": long}) == ["param day: 501 characters (at most 500)"]
    # Twilio counts the parameter's name ("var_day") too: 500 characters in all is already too many.
    just_over = "x" * (MAX_VALUE_CHARS - len("var_day"))
    (problem,) = check(AGENT, {**VALUES, "day": just_over})
    assert problem.startswith("param day: 493 characters (at most 492 for this name")
    assert check(AGENT, {**VALUES, "day": just_over[:-1]}) == []


def test_values_travel_as_stream_parameters_and_come_back() -> None:
    parameters = to_parameters(VALUES)
    assert parameters == {"var_customer": "Ada Lovelace", "var_day": "Tuesday", "var_time": "3 pm"}
    start = {"agent": "+15551230001", "token": "t", "nonce": "api.x", **parameters}
    assert from_parameters(start) == VALUES
    assert from_parameters({"agent": "default", "token": "t"}) == {}


def test_the_token_subject_binds_the_values_and_is_the_agent_key_without_any() -> None:
    assert token_subject("default", {}) == "default"  # an inbound call's token is unchanged
    one = token_subject("+15551230001", VALUES)
    assert one.startswith("+15551230001\n") and "Ada" not in one
    assert token_subject("+15551230001", {**VALUES, "day": "Wednesday"}) != one
    assert token_subject("+15551230001", dict(reversed(list(VALUES.items())))) == one


def test_fill_leaves_a_placeholder_without_a_value_empty() -> None:
    assert fill("Hi {{customer}}, {{ day }}!", {"customer": "Ada"}) == "Hi Ada, !"


def test_command_line_assignments() -> None:
    assert parse_assignments(["customer=Ada", "note=a=b", "empty="]) == (
        {"customer": "Ada", "note": "a=b", "empty": ""}, []
    )  # fmt: skip
    values, problems = parse_assignments(["customer", "=x", "day=1", "day=2"])
    assert values == {"day": "1"}
    assert problems == ["--param customer: expected name=value", "--param ?: expected name=value",
                        "--param day: given twice"]  # fmt: skip


def test_the_agents_file_takes_max_call_s_and_voicemail_message() -> None:
    book = parse_agents(
        """
        [default]
        instructions = "Hello."
        max_call_s = 600
        voicemail_message = "Please call {{who}} back."
        [numbers."+15551230001"]
        voicemail_message = ""
        """
    )
    assert book.default is not None
    assert book.default.max_call_s == 600 and book.default.voicemail_message == "Please call {{who}} back."
    assert book.numbers["+15551230001"].max_call_s == 600  # inherited
    assert book.numbers["+15551230001"].voicemail_message is None  # "" turns it off
    assert not book.default.voicemail_tool  # only an outbound call's stream turns the tool on


@pytest.mark.parametrize("value", ["0", "14401", "true", '"60"', "1.5"])
def test_max_call_s_must_be_whole_seconds_within_twilios_limit(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_agents(f'[default]\ninstructions = "x"\nmax_call_s = {value}\n')
    assert info.value.problems == ["default.max_call_s: must be a whole number of seconds from 1 to 14400"]


def test_an_http_tool_cannot_be_named_voicemail() -> None:
    text = """
    [default]
    instructions = "x"
    [[default.tools]]
    name = "voicemail"
    description = "d"
    url = "https://tools.example.com/x"
    parameters = { type = "object", properties = {} }
    """
    with pytest.raises(ConfigError) as info:
        parse_agents(text)
    assert "default.tools[0].name: voicemail is a built-in tool (see call_control)" in info.value.problems
