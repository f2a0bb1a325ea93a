"""A local stand-in for OpenAI's Responses API (``POST /v1/responses``), for the post-call analysis.

    async with TextSimulator(api_key="sk-sim-test-key", success_keyword="booked") as sim:
        env = {"OPENAI_API_BASE_URL": sim.base_url}     # http://127.0.0.1:<port>/v1

What it checks, as the API does (``openai.types.responses.ResponseCreateParams``): the bearer key (else
401 ``invalid_api_key``); a JSON object with ``model`` (a string) and ``input`` (a string, or a list of
messages whose ``content`` is a string or a list of ``input_text`` parts); ``text.format`` of type
``json_schema`` with a ``name`` (``[A-Za-z0-9_-]``, 64 at most), a ``schema`` and ``strict: true``, the
schema one that strict mode accepts (every object ``additionalProperties: false`` with every property
``required``, every property typed). Anything else: 400 ``invalid_request_error`` with its ``param``.

What it answers: a Response object (``id`` ``resp_…``, ``object`` ``response``, ``status``
``completed``, ``model``, one ``message`` output item whose ``output_text`` is JSON matching the schema,
``usage`` with its details; about four characters a token). The answer is deterministic, from the
conversation's text (the ``input``): a property with an ``extract`` pattern is what the pattern
captures first (a number when it reads as one, and the type allows it), else null; a string property is
the text's first ``summary_words`` words; a boolean (or boolean-or-null) property is whether
``success_keyword`` appears in it (null when no keyword is set and null is allowed); any other: null.

Test hooks: ``fail_with`` (statuses answered to the next requests, one each: 401, 400, 429 or 5xx,
in OpenAI's error shape), ``delay_ms`` (before answering), ``cached_tokens``. Every request is kept in
``requests`` (its headers and JSON body).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from service.sim.lifecycle import Served

__all__ = ["API_KEY", "TextRequest", "TextSimulator"]

API_KEY = "sk-sim-test-key"
_FORMAT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ROLES = ("user", "assistant", "system", "developer")
_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    400: ("invalid_request_error", None, "Invalid request."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


@dataclass(slots=True)
class TextRequest:
    headers: dict[str, str]
    body: Any = field(repr=False)
    status: int = 0


class _Invalid(Exception):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class TextSimulator(Served):
    """The Responses endpoint on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        api_key: str = API_KEY,
        *,
        success_keyword: str | None = None,
        extract: Mapping[str, str] | None = None,
        summary_words: int = 12,
        delay_ms: int = 0,
        cached_tokens: int = 0,
    ) -> None:
        self.api_key = api_key
        self.success_keyword = success_keyword
        self.extract = {name: re.compile(pattern) for name, pattern in (extract or {}).items()}
        self.summary_words = summary_words
        self.delay_ms = delay_ms
        self.cached_tokens = cached_tokens
        self.fail_with: list[int] = []
        self.requests: list[TextRequest] = []
        self._runner: web.AppRunner | None = None
        self._base = ""
        self._stopping = asyncio.Event()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1`` (what ``OPENAI_API_BASE_URL`` should be)."""
        return self._base + "/v1"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._stopping.clear()
        app = web.Application()
        app.router.add_post("/v1/responses", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self._base = f"http://{bound[0]}:{bound[1]}"

    async def stop(self) -> None:
        self._stopping.set()  # delayed answers go out now
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the request ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        record = TextRequest(dict(request.headers), None)
        self.requests.append(record)
        if self.delay_ms:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.delay_ms / 1000)
        response = self._answer(request, raw, record)
        record.status = response.status
        return response

    def _answer(self, request: web.Request, raw: bytes, record: TextRequest) -> web.Response:
        if request.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            return _error(401)
        if self.fail_with:
            return _error(self.fail_with.pop(0))
        try:
            record.body = body = json.loads(raw)
        except (ValueError, RecursionError):
            return _error(400, "We could not parse the JSON body of your request.", None)
        try:
            schema, name = _check(body)
        except _Invalid as exc:
            return _error(400, exc.message, exc.param)
        conversation = _conversation(body["input"])
        answer = self._fill(schema, conversation)
        text = json.dumps(answer)
        input_tokens = _tokens(str(body.get("instructions") or "") + conversation + json.dumps(schema))
        output_tokens = _tokens(text)
        payload = {
            "id": "resp_" + secrets.token_hex(24),
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body["model"],
            "output": [
                {
                    "id": "msg_" + secrets.token_hex(24),
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
                }
            ],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {**body["text"]["format"], "name": name}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {
                    "cached_tokens": min(self.cached_tokens, input_tokens),
                    "cache_write_tokens": 0,
                },
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "user": None,
            "metadata": {},
        }
        return web.json_response(payload)

    def _fill(self, schema: Mapping[str, Any], text: str) -> Any:
        """A value for ``schema`` from the conversation's ``text`` (see the module docstring)."""
        return {name: self._value(name, prop, text) for name, prop in schema["properties"].items()}

    def _value(self, name: str, prop: Mapping[str, Any], text: str) -> Any:
        types = _types(prop)
        if "object" in types:
            return self._fill(prop, text)
        pattern = self.extract.get(name)
        if pattern is not None:
            found = pattern.search(text)
            value = found.group(1) if found and found.groups() else found.group(0) if found else None
            if value is not None and ({"integer", "number"} & types) and value.isdigit():
                return int(value)
            if value is not None and "string" in types:
                return value
            return None if "null" in types else value
        if types == {"string"} or (name == "summary" and "string" in types):
            return " ".join(text.replace("Caller:", " ").replace("Agent:", " ").split()[: self.summary_words])
        if types <= {"boolean", "null"}:
            if self.success_keyword is None and "null" in types:
                return None
            return self.success_keyword is not None and self.success_keyword.lower() in text.lower()
        return None if "null" in types else ""


def _check(body: Any) -> tuple[Mapping[str, Any], str]:
    """The schema and the format's name of a valid request (``_Invalid`` otherwise)."""
    if not isinstance(body, dict):
        raise _Invalid("The request body must be a JSON object.", None)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _Invalid("Missing required parameter: 'model'.", "model")
    given = body.get("input")
    if given is None:
        raise _Invalid("Missing required parameter: 'input'.", "input")
    if not isinstance(given, str):
        if not isinstance(given, list) or not given:
            raise _Invalid("Invalid type for 'input': expected a string or an array of items.", "input")
        for i, item in enumerate(given):
            if not isinstance(item, dict) or item.get("role") not in _ROLES:
                raise _Invalid(f"Invalid value for 'input[{i}].role'.", f"input[{i}].role")
            if item.get("type", "message") != "message":
                raise _Invalid(f"Invalid value for 'input[{i}].type'.", f"input[{i}].type")
            content = item.get("content")
            parts_ok = isinstance(content, list) and all(
                isinstance(p, dict) and p.get("type") == "input_text" and isinstance(p.get("text"), str)
                for p in content
            )
            if not isinstance(content, str) and not parts_ok:
                raise _Invalid(f"Invalid value for 'input[{i}].content'.", f"input[{i}].content")
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise _Invalid("This endpoint expects text.format of type json_schema here.", "text.format.type")
    name = fmt.get("name")
    if not isinstance(name, str) or not _FORMAT_NAME.fullmatch(name):
        raise _Invalid("Invalid 'text.format.name': a-z, A-Z, 0-9, _ and -, 64 at most.", "text.format.name")
    if fmt.get("strict") is not True:
        raise _Invalid("This simulator answers strict structured outputs only.", "text.format.strict")
    schema = fmt.get("schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise _Invalid("Invalid schema for response_format: the root must be an object.", "text.format")
    _check_strict(schema, "text.format.schema")
    return schema, name


def _check_strict(schema: Mapping[str, Any], path: str) -> None:
    types = _types(schema)
    if not types or not types <= _TYPES:
        raise _Invalid(f"Invalid schema for response_format: {path} must have a valid 'type'.", path)
    if "object" in types:
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            raise _Invalid(f"Invalid schema for response_format: {path} needs 'properties'.", path)
        if schema.get("additionalProperties") is not False:
            raise _Invalid(
                f"Invalid schema for response_format: 'additionalProperties' is required to be supplied and "
                f"to be false ({path}).",
                path,
            )
        if sorted(schema.get("required") or []) != sorted(properties):
            raise _Invalid(
                f"Invalid schema for response_format: 'required' must list every key of 'properties' "
                f"({path}).",
                path,
            )
        for key, sub in properties.items():
            if not isinstance(sub, dict):
                raise _Invalid(f"Invalid schema for response_format: {path}.properties.{key}.", path)
            _check_strict(sub, f"{path}.properties.{key}")


def _types(schema: Mapping[str, Any]) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list) and all(isinstance(k, str) for k in kind):
        return set(kind)
    return set()


def _conversation(given: Any) -> str:
    if isinstance(given, str):
        return given
    texts: list[str] = []
    for item in given:
        content = item["content"]
        texts += [content] if isinstance(content, str) else [p["text"] for p in content]
    text = "\n".join(texts)
    return text.split("\n\n", 1)[1] if text.startswith("The call's transcript:\n\n") else text


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _error(status: int, message: str | None = None, param: str | None = None) -> web.Response:
    kind, code, default = _ERRORS.get(status, ("server_error", None, "Simulated failure."))
    error = {"message": message or default, "type": kind, "param": param, "code": code}
    headers = {"Retry-After": "0"} if status == 429 else None
    return web.json_response({"error": error}, status=status, headers=headers)
