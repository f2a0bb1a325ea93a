"""Validate Realtime GA events against the ``openai`` package's models (test-only dependency).

The SDK's unions are ``Annotated[Union[...], PropertyInfo(discriminator="type")]``, which pydantic does
not treat as a discriminator, and its models allow extra keys. So (realtime-ga.md §12) the unions are
rebuilt with a real pydantic discriminator, and every ``model_extra`` is walked to find unknown keys.

Usage::

    from tests.openai_schema import check_client_event, check_server_event
    check_server_event({"type": "response.output_audio.delta", ...})   # raises AssertionError

Known gaps of the SDK models, allowed explicitly (``SERVER_EXTRA_KEYS``): the live GA server's
``session.created`` / ``session.updated`` carry ``session.id``, ``session.object`` and
``session.expires_at``, but the SDK types ``session`` as ``RealtimeSessionCreateRequest``, which has
none of them. Nothing else is tolerated.
"""

from __future__ import annotations

from typing import Annotated, Any, Union, get_args

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import BaseModel, Field, TypeAdapter, ValidationError


def discriminated(alias: Any) -> TypeAdapter[Any]:
    members = get_args(get_args(alias)[0])  # Annotated[Union[...], PropertyInfo] -> the members
    return TypeAdapter(Annotated[Union[members], Field(discriminator="type")])  # noqa: UP007


CLIENT = discriminated(RealtimeClientEvent)
SERVER = discriminated(RealtimeServerEvent)

#: event type -> extra key paths that the live server sends and the SDK does not model.
SERVER_EXTRA_KEYS: dict[str, frozenset[str]] = {
    kind: frozenset({"$.session.id", "$.session.object", "$.session.expires_at"})
    for kind in ("session.created", "session.updated")
}


def unknown_keys(model: Any, path: str = "$") -> list[str]:
    """Paths of every key that no model field declares."""
    out: list[str] = []
    if isinstance(model, BaseModel):
        out += [f"{path}.{key}" for key in model.model_extra or {}]
        for name in type(model).model_fields:
            out += unknown_keys(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, (list, tuple)):
        for i, value in enumerate(model):
            out += unknown_keys(value, f"{path}[{i}]")
    elif isinstance(model, dict):
        for key, value in model.items():
            out += unknown_keys(value, f"{path}.{key}")
    return out


def _check(adapter: TypeAdapter[Any], event: dict[str, Any], allowed: frozenset[str]) -> BaseModel:
    try:
        model = adapter.validate_python(event)
    except ValidationError as exc:
        raise AssertionError(f"{event.get('type')!r} does not validate:\n{exc}") from None
    extra = [key for key in unknown_keys(model) if key not in allowed]
    assert not extra, f"{event.get('type')!r} has keys the GA schema does not know: {extra}"
    assert isinstance(model, BaseModel)
    return model


def check_client_event(event: dict[str, Any]) -> BaseModel:
    """The SDK model of a client event; AssertionError if invalid or if it has unknown keys."""
    return _check(CLIENT, event, frozenset())


def check_server_event(event: dict[str, Any]) -> BaseModel:
    """The SDK model of a server event; AssertionError if invalid or if it has unknown keys."""
    return _check(SERVER, event, SERVER_EXTRA_KEYS.get(str(event.get("type")), frozenset()))
