"""Property tests for the transcoder: any chunking, any bytes, any order of reset and flush."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core import audio
from service.core.audio import Transcoder

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import audioop

SETTINGS = settings(max_examples=150, deadline=None)

chunk_lists = st.lists(st.binary(max_size=700), max_size=25)
even_chunk_lists = st.lists(st.binary(max_size=1400).map(lambda b: b[: len(b) & ~1]), max_size=25)


def samples(pcm16: bytes) -> np.ndarray:
    return np.frombuffer(pcm16, "<i2").astype(np.int64)


@SETTINGS
@given(chunk_lists)
def test_to_model_any_chunking(chunks: list[bytes]) -> None:
    t = Transcoder()
    outputs = [t.to_model(chunk) for chunk in chunks]
    assert [len(out) for out in outputs] == [6 * len(chunk) for chunk in chunks]
    whole = samples(Transcoder().to_model(b"".join(chunks)))
    assert np.abs(samples(b"".join(outputs)) - whole).max(initial=0) <= 1


@SETTINGS
@given(even_chunk_lists)
def test_to_caller_any_chunking(chunks: list[bytes]) -> None:
    t, pcm = Transcoder(), Transcoder()
    seen = emitted = 0
    outputs, pcm_outputs = [], []
    for chunk in chunks:
        out = t.to_caller(chunk)
        pcm_outputs.append(pcm.to_caller_pcm16(chunk))
        seen += len(chunk) // 2
        emitted += len(out)
        assert emitted == seen // 3  # nothing held back beyond the carry, nothing duplicated
        outputs.append(out)
    data = b"".join(chunks)
    whole = samples(Transcoder().to_caller_pcm16(data))
    streamed = b"".join(pcm_outputs)
    assert np.abs(samples(streamed) - whole).max(initial=0) <= 1
    assert b"".join(outputs) == audioop.lin2ulaw(streamed, 2)


@SETTINGS
@given(st.lists(st.binary(max_size=1001), max_size=10))
def test_any_bytes_either_convert_or_raise_value_error(chunks: list[bytes]) -> None:
    t = Transcoder()
    for chunk in chunks:
        assert len(t.to_model(chunk)) == 6 * len(chunk)
        if len(chunk) % 2:
            try:
                t.to_caller(chunk)
            except ValueError:
                continue
            raise AssertionError("an odd byte count must be a ValueError")
        assert isinstance(t.to_caller(chunk), bytes)


operations = st.lists(
    st.one_of(
        st.binary(min_size=0, max_size=1200).map(lambda b: ("audio", b[: len(b) & ~1])),
        st.just(("reset", b"")),
        st.just(("flush", b"")),
    ),
    max_size=20,
)


@SETTINGS
@given(operations)
def test_reset_and_flush_cut_the_stream_into_independent_responses(ops: list[tuple[str, bytes]]) -> None:
    """Reference: each response (audio between resets/flushes) converted whole by a fresh transcoder; a
    flush appends FILTER_TAPS - 1 zero samples to its response, a reset drops what was not yet emitted."""
    t = Transcoder()
    got = []
    expected = []
    response = b""
    for kind, data in ops:
        if kind == "audio":
            got.append(t.to_caller(data))
            response += data
        elif kind == "reset":
            t.reset_to_caller()
            expected.append(Transcoder().to_caller(response))
            response = b""
        else:
            got.append(t.flush_to_caller())
            padding = bytes(2 * (audio.FILTER_TAPS - 1)) if response else b""
            expected.append(Transcoder().to_caller(response + padding))
            response = b""
    expected.append(Transcoder().to_caller(response))
    assert b"".join(got) == b"".join(expected)
