"""Local simulators of Dialtone's two peers, used by the demo and the end-to-end tests.

- :mod:`service.sim.realtime_server`: the OpenAI Realtime API (GA) over WebSocket; its parts are
  ``realtime_connection`` (one socket), ``realtime_schema`` (client-event validation, GA error wording),
  ``realtime_conversation`` (items, truncation, usage), ``realtime_response`` (a paced response stream),
  ``realtime_session`` (session config) and ``vad`` (energy-based server VAD).
- :mod:`service.sim.caller`: Twilio plus a human caller (voice webhook, Media Streams, the keypad,
  ``<Connect action>`` and ``<Dial action>`` requests).
- :mod:`service.sim.script`: the fixture clips, G.711 codecs and the scripts both of them follow
  (replies that are clips, preambles, function calls or MCP calls; caller steps).
- :mod:`service.sim.tools`: an HTTP tool server (a bookings API) that checks Dialtone's request
  signatures, with :func:`~service.sim.tools.verify_signature` for tool servers to copy.
- :mod:`service.sim.stack`: the simulator and the real server (hypercorn) together, on 127.0.0.1.
- :mod:`service.sim.replay_peers`: a recorded call played back over real sockets.
- :mod:`service.sim.signals`: deterministic test signals (tones, speech-like audio).
"""
