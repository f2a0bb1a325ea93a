"""``python -m service.demo --outbound``: an outbound call, placed through the calls API, answered by a
simulated person, with no Twilio or OpenAI account.

The Twilio REST simulator (:mod:`service.sim.twilio_rest`) stands in for ``api.twilio.com``; the service
is pointed at it with ``TWILIO_API_BASE_URL``. ``POST /calls`` places the call with two variables and
answering-machine detection; the simulator rings the callee, sends the signed status callbacks and the
detection's verdict (``human``), and runs the call's TwiML: the agent greets the callee by name, the
callee asks a question, hears the answer and hangs up. Prints what happened and writes a stereo WAV
(callee left, agent right, as heard).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from service.sim.script import AfterAgentSilent, HangUp, Say, load_clip
from service.sim.stack import ACCOUNT_SID, AUTH_TOKEN, DEFAULT_AGENTS_FILE, LocalStack
from service.sim.twilio_rest import Human, SimCall, TwilioRestSimulator

AGENT = "+15551230070"
CALLEE = "+15557650001"
API_KEY = "demo-dialtone-api-key-0123456789"
OUTBOUND_AGENT = f"""
[numbers."{AGENT}"]
instructions = "You call {{{{customer}}}} to confirm their dental appointment on {{{{day}}}}. Be brief."
greeting = "Hi {{{{customer}}}}, this is Dialtone Dental calling about your appointment on {{{{day}}}}."
voicemail_message = "Hi {{{{customer}}}}, Dialtone Dental here about {{{{day}}}}. Please call us back."
max_call_s = 300
"""
PARAMS = {"customer": "Ada", "day": "Tuesday"}
CALL_TIMEOUT_S = 120.0


def _request(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {API_KEY}")
    request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


def callee_script() -> tuple[Say | HangUp, ...]:
    return (Say(load_clip("caller_question"), AfterAgentSilent(600)), HangUp(AfterAgentSilent(800)))


async def run_outbound(speed: float, wav: Path) -> int:
    out = sys.stdout
    folder = Path(tempfile.mkdtemp(prefix="dialtone-demo-"))
    agents = folder / "agents.toml"
    agents.write_text(DEFAULT_AGENTS_FILE.read_text(encoding="utf-8") + OUTBOUND_AGENT, encoding="utf-8")
    callee = Human(script=callee_script())
    async with TwilioRestSimulator(
        account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, numbers=[AGENT], callees={CALLEE: callee}, speed=speed
    ) as twilio:
        env = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_API_BASE_URL": twilio.url,
               "DIALTONE_API_KEY": API_KEY}  # fmt: skip
        async with LocalStack(agents_file=agents, env=env) as stack:
            twilio.server_http_base = stack.http_base
            out.write(f"Dialtone demo (outbound): server on {stack.http_base}, Twilio REST simulator on "
                      f"{twilio.url}, Realtime simulator on {stack.sim.url}\n")  # fmt: skip
            body = {"to": CALLEE, "agent": AGENT, "params": PARAMS, "amd": True}
            out.write(f"POST /calls {json.dumps(body)}\n")
            status, answer = await asyncio.to_thread(_request, "POST", stack.http_base + "/calls", body)
            out.write(f"  -> {status} {json.dumps(answer)}\n")
            if status != 201:
                return 1
            call = await twilio.wait_call(answer["call_sid"], CALL_TIMEOUT_S)
            status, seen = await asyncio.to_thread(
                _request, "GET", f"{stack.http_base}/calls/{answer['call_sid']}"
            )
            out.write(f"GET /calls/{answer['call_sid']}\n  -> {status} {json.dumps(seen)}\n\n")
            sessions = [c.session for c in stack.sim.connections]
            instructions = sessions[0].get("instructions") if sessions else None
    return _report(call, instructions, wav)


def _report(call: SimCall, instructions: str | None, wav: Path) -> int:
    out = sys.stdout
    out.write("What the simulated Twilio sent to the service:\n")
    for callback in call.callbacks:
        what = callback.params.get("CallStatus") or callback.params.get("AnsweredBy", "")
        out.write(f"  {callback.kind:<6} {what:<12} -> HTTP {callback.status}\n")
    record = call.record
    if instructions is not None:
        out.write(f"\nThe model was told: {instructions}\n")
    problems = list(call.errors)
    if record is not None:
        out.write("\nOn the line (stream time):\n")
        events = [(ms, f"callee says {name}") for ms, name in record.says]
        events += [(start, f"agent heard ({(end - start) / 1000:.2f} s)") for start, end in record.heard_runs]
        for ms, what in sorted(events):
            out.write(f"  {ms / 1000:7.2f} s  {what}\n")
        out.write(f"  ended: {record.end_reason}\n")
        wav.parent.mkdir(parents=True, exist_ok=True)
        record.write_stereo_wav(wav)
        out.write(f"\nWrote {wav} (left: callee, right: agent as heard).\n")
        problems += record.protocol_errors
    if call.statuses[-1:] != ["completed"]:
        problems.append(f"the call did not complete (statuses: {', '.join(call.statuses)})")
    if problems:
        out.write("Problems seen:\n" + "".join(f"  - {p}\n" for p in problems))
        return 1
    return 0
