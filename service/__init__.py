"""Dialtone: an OpenAI Realtime voice agent on a Twilio phone number."""
