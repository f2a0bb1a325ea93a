"""Post-call analysis: the Responses request and its answer (pure), the agents' ``analysis`` tables, its
cost, the simulator, and a call over real sockets whose record and webhook carry the analysis."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hookkit import WebhookReceiver
from openai.types.responses import Response

from service.agents import parse_agents
from service.config import DEFAULT_OPENAI_API_BASE_URL, Settings
from service.core.agent import AnalysisConfig
from service.core.analysis import (
    Analysis,
    AnalysisError,
    AnalysisFailed,
    TextUsage,
    failure_of,
    parse_response,
    request_body,
    transcript_text,
)
from service.core.cost import PRICES, cost_usd, text_cost_usd
from service.core.record import CallRecord, TurnRecord
from service.errors import ConfigError
from service.records.db import Database
from service.records.pricing import Pricing
from service.records.shape import doc_to_row, record_to_json, row_to_doc
from service.runtime.analysis import Analyst
from service.sim.caller import place_call
from service.sim.openai_text import TextSimulator
from service.sim.script import AfterAgentSilent, Say, load_clip
from service.sim.stack import API_KEY, DEFAULT_AGENTS_FILE, TOOLS_SECRET, LocalStack
from service.sim.tools import verify_signature
from service.wire.realtime import Usage

pytestmark = pytest.mark.timeout(90)

BOOKING = AnalysisConfig(
    model="gpt-4.1-mini",
    success="The caller booked a table.",
    fields={"party_size": "the number of guests, an integer or null", "date": "YYYY-MM-DD or null"},
)


def make_record(*turns: TurnRecord) -> CallRecord:
    return CallRecord(
        call_sid="CA" + "7" * 32, direction="inbound", caller="+15550001111", called="+15551230001",
        agent="+15551230001", model="gpt-realtime-2.1", duration_s=30.0, end_reason="caller hung up",
        transcript=turns, timeline=(), tool_calls=(), barge_ins=0, reconnect_ms=(), rollovers=0,
        first_audio_ms=(), usage=Usage(1_000, 200, 300, 700, 0, 100, 100), transcription_seconds=0.0,
        transcription_tokens=0, summary={"turns": len(turns)},
    )  # fmt: skip


RECORD = make_record(
    TurnRecord("agent", "Trattoria Sole, how can I help?", 0.5),
    TurnRecord("caller", "A table for 4 on Friday, please.", 2.0),
    TurnRecord("tool", '{"date": "2026-12-04"}', 3.0),
    TurnRecord("agent", "Booked for four at eight. Anything else?", 4.0, True, "Booked for four"),
)


def completed(text: str, **changes: Any) -> dict[str, Any]:
    """A Responses object as the API answers it."""
    body = {
        "id": "resp_abc",
        "object": "response",
        "created_at": 1_767_225_600,
        "status": "completed",
        "model": "gpt-4.1-mini-2025-04-14",
        "output": [
            {"id": "rs_1", "type": "reasoning", "summary": []},
            {
                "id": "msg_1",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            },
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 1_000,
            "input_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 0},
            "output_tokens": 50,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 1_050,
        },
    }
    return {**body, **changes}


# --- the request ------------------------------------------------------------------------------------


def test_the_transcript_is_what_the_caller_heard() -> None:
    assert transcript_text(RECORD) == (
        "Agent: Trattoria Sole, how can I help?\n"
        "Caller: A table for 4 on Friday, please.\n"
        "Agent: Booked for four [interrupted]"
    )
    long = make_record(*(TurnRecord("caller", "word " * 100, float(i)) for i in range(100)))
    cut = transcript_text(long, max_chars=1_000)
    assert len(cut) < 1_100 and "characters left out" in cut
    assert cut.startswith("Caller: word") and cut.endswith("word")


def test_the_request_is_a_strict_json_schema_responses_request() -> None:
    body = request_body(RECORD, BOOKING)
    assert body["model"] == "gpt-4.1-mini" and body["store"] is False
    assert "The caller booked a table." in body["instructions"]
    assert "party_size: the number of guests" in body["instructions"]
    [message] = body["input"]
    assert message["type"] == "message" and message["role"] == "user"
    assert "Caller: A table for 4 on Friday, please." in message["content"]
    assert '{"date"' not in message["content"]  # tool turns are left out
    fmt = body["text"]["format"]
    assert fmt["type"] == "json_schema" and fmt["name"] == "call_analysis" and fmt["strict"] is True
    schema = fmt["schema"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == ["summary", "success", "fields"]
    assert schema["properties"]["summary"]["type"] == "string"
    assert schema["properties"]["success"]["type"] == ["boolean", "null"]
    fields = schema["properties"]["fields"]
    assert fields["required"] == ["party_size", "date"] and fields["additionalProperties"] is False
    assert fields["properties"]["date"] == {"type": ["string", "number", "boolean", "null"],
                                           "description": "YYYY-MM-DD or null"}  # fmt: skip
    json.dumps(body)  # JSON as it is


def test_without_a_criterion_or_fields_only_a_summary_is_asked() -> None:
    schema = request_body(RECORD, AnalysisConfig())["text"]["format"]["schema"]
    assert list(schema["properties"]) == ["summary"] and schema["required"] == ["summary"]
    result = parse_response(completed('{"summary": "A booking."}'), AnalysisConfig())
    assert result.success is None and result.fields == {}


# --- the answer --------------------------------------------------------------------------------------


def test_an_answer_becomes_an_analysis_with_its_usage() -> None:
    text = '{"summary": " A table for four. ", "success": true, "fields": {"party_size": 4, "date": null}}'
    body = completed(text)
    result = parse_response(body, BOOKING)
    assert result == Analysis(
        model="gpt-4.1-mini", summary="A table for four.", success=True,
        fields={"party_size": 4, "date": None}, usage=TextUsage(1_000, 200, 50, 0), response_id="resp_abc",
    )  # fmt: skip
    assert Response.model_validate(body).output_text == text  # the SDK reads the same answer


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"object": "list"}, "not a response object"),
        (completed("{}", status="incomplete", incomplete_details={"reason": "max_output_tokens"}),
         "the response is incomplete (max_output_tokens)"),
        (completed("{}", output=[{"type": "message", "content": [{"type": "refusal", "refusal": "no"}]}]),
         "the model refused"),
        (completed("{}", output=[]), "no output_text"),
        (completed("not json"), "not JSON"),
        (completed('{"summary": 3}'), "no summary"),
        (completed('{"summary": "s", "success": "yes", "fields": {}}'), "success is not a boolean"),
        (completed('{"summary": "s", "success": true}'), "no fields"),
        (completed('{"summary": "s", "success": true, "fields": {"party_size": [4]}}'), "field party_size"),
    ],
)  # fmt: skip
def test_an_answer_that_cannot_be_used_is_a_clear_error(body: Any, reason: str) -> None:
    with pytest.raises(AnalysisError) as caught:
        parse_response(body, BOOKING)
    assert reason in caught.value.reason
    assert "Trattoria" not in str(caught.value)


def test_an_error_answer_is_its_status_and_code_never_its_message() -> None:
    error = {"message": "Incorrect API key provided: sk-abc***xyz", "type": "invalid_request_error",
             "param": None, "code": "invalid_api_key"}  # fmt: skip
    key_echo = {"error": error}
    assert failure_of(401, key_echo) == "HTTP 401 invalid_api_key"
    assert failure_of(500, {"error": {"message": "boom", "type": "server_error", "code": None}}) == (
        "HTTP 500 server_error"
    )
    assert failure_of(502, None) == "HTTP 502"


# --- cost ----------------------------------------------------------------------------------------------


def test_the_analysis_cost_is_priced_from_the_dated_text_table() -> None:
    cost = text_cost_usd("gpt-4.1-mini", 1_000_000, 200_000, 100_000)
    assert (cost.input, cost.cached_input, cost.output) == (0.32, 0.02, 0.16)
    assert cost.total == 0.5 and cost.prices_date == PRICES.text_date
    assert text_cost_usd("gpt-4.1-mini-2025-04-14", 1_000_000, 0, 0).total == 0.4  # a dated snapshot
    unknown = text_cost_usd("gpt-9-turbo", 1_000, 0, 10)
    assert unknown.total is None and unknown.input is None  # never guessed


def test_the_call_cost_has_the_analysis_as_a_line_of_its_own() -> None:
    base = cost_usd("gpt-realtime-2.1", RECORD.usage, duration_s=30.0)
    analysis = Analysis("gpt-4.1-mini", "s", None, {}, TextUsage(1_000_000, 0, 0, 0))
    cost = Pricing().cost(RECORD, None, analysis)
    assert cost.analysis == 0.4 and cost.total == round((base.total or 0) + 0.4, 6)
    assert cost.to_json()["analysis"] == 0.4 and "analysis" not in cost.unknown
    unpriced = Pricing().cost(RECORD, None, Analysis("gpt-9", "s", None, {}, TextUsage(10, 0, 10, 0)))
    assert unpriced.analysis is None and unpriced.unknown == ("analysis",) and unpriced.total == base.total
    failed = Pricing().cost(RECORD, None, AnalysisFailed("gpt-4.1-mini", "HTTP 500"))
    assert failed == base  # nothing known to be billed: no line


def test_the_record_document_carries_the_analysis_and_keeps_it_through_a_row() -> None:
    analysis = Analysis("gpt-4.1-mini", "A booking.", True, {"party_size": 4, "date": None},
                        TextUsage(2_000, 0, 100, 0), "resp_1")  # fmt: skip
    pricing = Pricing()
    doc = record_to_json(RECORD, 1_767_225_600.0, 1_767_225_630.0, cost=pricing.cost(RECORD, None, analysis),
                         analysis=analysis, analysis_price=pricing.analysis_cost(analysis))  # fmt: skip
    assert doc["analysis"] == {
        "model": "gpt-4.1-mini", "summary": "A booking.", "success": True,
        "fields": {"party_size": 4, "date": None},
        "usage": {"input_tokens": 2_000, "cached_tokens": 0, "output_tokens": 100, "reasoning_tokens": 0},
        "cost_usd": 0.00096, "response_id": "resp_1",
    }  # fmt: skip
    assert doc["cost"]["analysis"] == 0.00096
    assert doc == row_to_doc(doc_to_row(doc, "test"))
    plain = record_to_json(RECORD, 1_767_225_600.0, 1_767_225_630.0)
    assert plain["analysis"] is None and plain["cost"]["analysis"] is None
    assert plain == row_to_doc(doc_to_row(plain, "test"))
    failed = record_to_json(RECORD, 0.0, 30.0, analysis=AnalysisFailed("gpt-4.1-mini", "HTTP 500"))
    assert failed["analysis"] == {"model": "gpt-4.1-mini", "error": "HTTP 500", "usage": None,
                                  "cost_usd": None}  # fmt: skip


# --- configuration --------------------------------------------------------------------------------------


AGENTS = """
[default]
instructions = "You take bookings."
[default.analysis]
model = "gpt-4.1"
success = "The caller booked a table."
fields = { party_size = "the number of guests" }

[numbers."+15551230001"]
instructions = "Bookings."
analysis = { fields = { date = "the date booked, YYYY-MM-DD or null" } }

[numbers."+15551230002"]
instructions = "Support."
analysis = false

[numbers."+15551230003"]
instructions = "Inherits everything."
"""


def test_analysis_tables_are_inherited_key_by_key_and_off_by_default() -> None:
    book = parse_agents(AGENTS)
    assert book.default is not None and book.default.analysis == AnalysisConfig(
        "gpt-4.1", "The caller booked a table.", {"party_size": "the number of guests"}
    )
    own = book.numbers["+15551230001"].analysis
    fields = {"date": "the date booked, YYYY-MM-DD or null"}
    assert own == AnalysisConfig("gpt-4.1", "The caller booked a table.", fields)
    assert book.numbers["+15551230002"].analysis is None
    assert book.numbers["+15551230003"].analysis == book.default.analysis
    plain = parse_agents('[default]\ninstructions = "x"\n[numbers."+15551230001"]\nanalysis = {}\n')
    assert plain.default is not None and plain.default.analysis is None
    assert plain.numbers["+15551230001"].analysis == AnalysisConfig()  # the defaults: gpt-4.1-mini
    assert AnalysisConfig().model == "gpt-4.1-mini"


def test_every_problem_of_an_analysis_table_is_listed() -> None:
    text = """
[default]
instructions = "x"
[default.analysis]
model = "gpt-realtime-2.1"
succes = "typo"
success = ""
fields = { "party size" = "n", 2x = "y", ok = "", fine = 3 }
[numbers."+15551230001"]
analysis = "yes"
[numbers."+15551230002"]
analysis = { model = "bad model!", fields = "party_size" }
"""
    with pytest.raises(ConfigError) as caught:
        parse_agents(text)
    problems = "\n".join(caught.value.problems)
    assert "default.analysis.model: must be a text model of the Responses API" in problems
    assert "default.analysis.succes: unknown key" in problems
    assert "default.analysis.success: must be a non-empty text" in problems
    assert 'default.analysis.fields."party size": a field name must be an identifier' in problems
    assert "default.analysis.fields.2x: a field name must be an identifier" in problems
    assert "default.analysis.fields.ok: must be a non-empty description" in problems
    assert "default.analysis.fields.fine: must be a non-empty description" in problems
    assert 'numbers."+15551230001".analysis: must be a table (model, success, fields) or false' in problems
    assert 'numbers."+15551230002".analysis.model: must be a model name' in problems
    assert 'numbers."+15551230002".analysis.fields: must be a table of name = description' in problems
    assert len(caught.value.problems) == 10


BASE_ENV = {"OPENAI_API_KEY": "sk-test", "TWILIO_AUTH_TOKEN": "t" * 32, "PUBLIC_BASE_URL": "https://x.example"}


def test_the_api_base_url_is_a_setting_checked_with_the_others() -> None:
    settings = Settings.from_env(BASE_ENV)
    assert settings.openai_api_base_url == DEFAULT_OPENAI_API_BASE_URL == "https://api.openai.com/v1"
    assert settings.openai_api_headers == {"Authorization": "Bearer sk-test"}
    assert "sk-test" not in repr(settings)
    custom = Settings.from_env({**BASE_ENV, "OPENAI_API_BASE_URL": "http://127.0.0.1:9000/v1/"})
    assert custom.openai_api_base_url == "http://127.0.0.1:9000/v1"
    azure = Settings.from_env({**BASE_ENV, "OPENAI_API_BASE_URL": "https://r.openai.azure.com/openai/v1"})
    assert azure.openai_api_headers == {"api-key": "sk-test"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE_ENV, "OPENAI_API_BASE_URL": "ftp://x/v1?a=1", "PORT": "0"})
    assert len(caught.value.problems) == 2
    wanted = "OPENAI_API_BASE_URL: must be an http:// or https:// URL"
    assert any(p.startswith(wanted) for p in caught.value.problems)


# --- the simulator and the client, over a socket ----------------------------------------------------------


async def test_the_simulator_answers_a_valid_request_with_a_response_the_sdk_reads() -> None:
    async with TextSimulator(success_keyword="booked", extract={"party_size": r"for (\d+)"}) as sim:
        analyst = Analyst(sim.base_url, {"Authorization": f"Bearer {API_KEY}"})
        result = await analyst.analyse(RECORD, BOOKING)
        await analyst.close()
        [request] = sim.requests
    assert isinstance(result, Analysis)
    assert result.summary == "Trattoria Sole, how can I help? A table for 4 on Friday,"  # 12 words
    assert result.success is True  # "Booked for four" was heard (the keyword, whatever its case)
    assert result.fields == {"party_size": 4, "date": None}
    assert result.usage is not None and result.usage.input_tokens > 100 and result.usage.output_tokens > 10
    assert request.headers["Authorization"] == f"Bearer {API_KEY}" and request.status == 200
    assert request.body == request_body(RECORD, BOOKING)


async def test_the_simulator_refuses_what_the_api_refuses() -> None:
    async with TextSimulator() as sim, aiohttp.ClientSession() as http:
        url = sim.base_url + "/responses"
        good = request_body(RECORD, BOOKING)
        async with http.post(url, json=good, headers={"Authorization": "Bearer sk-wrong"}) as reply:
            assert reply.status == 401
            assert (await reply.json())["error"]["code"] == "invalid_api_key"
        auth = {"Authorization": f"Bearer {API_KEY}"}
        loose = json.loads(json.dumps(good))
        loose["text"]["format"]["schema"]["properties"]["fields"]["additionalProperties"] = True
        not_strict = json.loads(json.dumps(good))
        not_strict["text"]["format"]["strict"] = False
        robot = {**good, "input": [{"role": "robot", "content": "x"}]}
        for body, param in ((loose, "text.format.schema.properties.fields"),
                            (not_strict, "text.format.strict"), ({"input": "hi"}, "model"),
                            (robot, "input[0].role")):  # fmt: skip
            async with http.post(url, json=body, headers=auth) as reply:
                error = (await reply.json())["error"]
                assert (reply.status, error["type"], error["param"]) == (400, "invalid_request_error", param)
        sim.fail_with = [429]
        async with http.post(url, json=good, headers=auth) as reply:
            assert reply.status == 429 and (await reply.json())["error"]["code"] == "rate_limit_exceeded"
        async with http.post(url, json=good, headers=auth) as reply:
            Response.model_validate(await reply.json())  # every field the SDK requires


async def test_the_client_retries_once_on_429_and_5xx_and_gives_up_cleanly() -> None:
    async with TextSimulator() as sim:
        analyst = Analyst(sim.base_url, {"Authorization": f"Bearer {API_KEY}"}, retry_delay_s=0.01)
        sim.fail_with = [429]
        assert isinstance(await analyst.analyse(RECORD, BOOKING), Analysis)
        sim.fail_with = [500, 503]
        failed = await analyst.analyse(RECORD, BOOKING)
        assert failed == AnalysisFailed("gpt-4.1-mini", "HTTP 503 server_error (after a retry)")
        sim.fail_with = [401]
        refused = await analyst.analyse(RECORD, BOOKING)
        assert refused == AnalysisFailed("gpt-4.1-mini", "HTTP 401 invalid_api_key")
        sim.delay_ms = 500
        slow = Analyst(sim.base_url, {"Authorization": f"Bearer {API_KEY}"}, timeout_s=0.2)
        assert await slow.analyse(RECORD, BOOKING) == AnalysisFailed("gpt-4.1-mini", "timeout after 0.2 s")
        await analyst.close()
        await slow.close()
        assert len(sim.requests) == 6  # 429 then ok, 500 then 503, 401, the slow one
    nobody = Analyst("http://127.0.0.1:9/v1", {}, retry_delay_s=0.01)
    unreachable = await nobody.analyse(RECORD, BOOKING)
    assert isinstance(unreachable, AnalysisFailed) and unreachable.error.startswith("no answer (")
    await nobody.close()


# --- a call, end to end ---------------------------------------------------------------------------------


QUESTION = load_clip("caller_question")
SCRIPT = [Say(QUESTION, AfterAgentSilent(400))]


def agents_with_analysis(path: Path, success: str = "The caller was greeted.") -> Path:
    text = DEFAULT_AGENTS_FILE.read_text(encoding="utf-8")
    path.write_text(
        text + f'\n[default.analysis]\nmodel = "gpt-4.1-mini"\nsuccess = "{success}"\n'
        'fields = { reason = "why the caller called, or null" }\n',
        encoding="utf-8",
    )
    return path


async def run_call(tmp_path: Path, sim: TextSimulator) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """One call to the default agent (with an analysis); its record read back and its webhook."""
    url = f"sqlite:///{tmp_path / 'records.db'}"
    async with WebhookReceiver() as hook:
        env = {"DATABASE_URL": url, "OPENAI_API_BASE_URL": sim.base_url, "POST_CALL_WEBHOOK_URL": hook.url}
        async with LocalStack(agents_file=agents_with_analysis(tmp_path / "agents.toml"), env=env) as stack:
            record = await place_call(
                stack.http_base,
                **stack.call_kwargs(to="+15551239999", script=SCRIPT, speed=4.0),
            )
            await hook.wait_for(1)
    received = hook.received
    db = Database(url, must_exist=True)
    doc = db.get_call(record.call_sid)
    db.dispose()
    assert doc is not None and len(received) == 1
    headers, body = received[0]
    timestamp, signature = headers["X-Dialtone-Timestamp"], headers["X-Dialtone-Signature"]
    assert verify_signature(TOOLS_SECRET, timestamp, body, signature, float(timestamp))
    return record.call_sid, doc, json.loads(body)


async def test_a_call_is_analysed_and_its_record_and_webhook_carry_the_analysis_and_its_cost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with TextSimulator(success_keyword="Dialtone") as sim:
        call_sid, doc, hook = await run_call(tmp_path, sim)
        [request] = sim.requests
    assert request.body["model"] == "gpt-4.1-mini"
    assert "Agent: Thanks for calling Dialtone." in request.body["input"][0]["content"]
    for got in (doc, hook):
        assert got["call_sid"] == call_sid
        analysis = got["analysis"]
        assert analysis["model"] == "gpt-4.1-mini" and analysis["success"] is True
        assert analysis["summary"].startswith("Thanks for calling Dialtone.")
        assert analysis["fields"] == {"reason": None}
        assert analysis["usage"]["input_tokens"] > 0 and analysis["response_id"].startswith("resp_")
        assert analysis["cost_usd"] > 0 and got["cost"]["analysis"] == analysis["cost_usd"]
        lines = [got["cost"][k] for k in ("text_in", "cached_text_in", "audio_in", "cached_audio_in",
                                          "text_out", "audio_out", "transcription", "analysis")]  # fmt: skip
        assert got["cost_usd"] == pytest.approx(sum(v for v in lines if v is not None), abs=1e-5)
    assert hook["analysis"] == doc["analysis"] and hook["cost_usd"] == doc["cost_usd"]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("service.")]
    assert ours and not [m for m in ours if API_KEY in m]  # the key is never logged


async def test_a_failing_analysis_endpoint_leaves_an_error_and_the_record_is_stored(tmp_path: Path) -> None:
    async with TextSimulator() as sim:
        sim.fail_with = [500, 500]
        call_sid, doc, hook = await run_call(tmp_path, sim)
        assert len(sim.requests) == 2  # one retry
    for got in (doc, hook):
        assert got["call_sid"] == call_sid and got["end_reason"] == "caller hung up"
        assert got["analysis"] == {"model": "gpt-4.1-mini", "error": "HTTP 500 server_error (after a retry)",
                                   "usage": None, "cost_usd": None}  # fmt: skip
        assert got["cost"]["analysis"] is None and "analysis" not in got["cost"]["unknown"]
        assert got["transcript"] and got["cost_usd"] is not None


async def test_the_drain_waits_for_a_running_analysis_and_a_cut_one_is_still_recorded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    async with TextSimulator(delay_ms=60_000) as sim:
        env = {"DATABASE_URL": url, "OPENAI_API_BASE_URL": sim.base_url}
        stack = LocalStack(agents_file=agents_with_analysis(tmp_path / "agents.toml"), env=env)
        await stack.start()
        try:
            record = await place_call(
                stack.http_base,
                **stack.call_kwargs(to="+15551239999", script=SCRIPT, speed=4.0),
            )
            ops = stack.service.ops  # type: ignore[union-attr]
            for _ in range(200):
                if ops.analyses_pending:
                    break
                await asyncio.sleep(0.02)
            assert ops.analyses_pending == 1
            stopping = asyncio.create_task(stack.stop())
            await asyncio.sleep(0.3)
            assert not stopping.done()  # the drain waits for the analysis
            stack.service.drain_cut.set()  # type: ignore[union-attr]  # a second SIGTERM
            await asyncio.wait_for(stopping, 15)
        finally:
            await stack.stop()
    db = Database(url, must_exist=True)
    doc = db.get_call(record.call_sid)
    db.dispose()
    assert doc is not None
    assert doc["analysis"] == {"model": "gpt-4.1-mini", "error": "not finished: the service shut down",
                               "usage": None, "cost_usd": None}  # fmt: skip
