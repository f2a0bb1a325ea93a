"""Local simulators of Dialtone's two peers, used by the demo and the end-to-end tests.

- :mod:`service.sim.realtime_server`: the OpenAI Realtime API (GA) over WebSocket.
- :mod:`service.sim.caller`: Twilio plus a human caller (voice webhook, Media Streams).
- :mod:`service.sim.script`: the fixture clips, G.711 codecs and the scripts both of them follow.
"""
