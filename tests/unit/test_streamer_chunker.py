"""Token coalescing: first token alone, then by window or count, the rest at the end."""

from __future__ import annotations

from services.streamer.chunker import Chunker


def test_first_token_is_flushed_alone_at_once() -> None:
    c = Chunker(window_ms=30, max_tokens=16)
    chunk = c.add("Hello", 100.0)
    assert chunk is not None
    assert (chunk.seq, chunk.text, chunk.tokens) == (0, "Hello", 1)


def test_later_tokens_wait_for_the_count_bound() -> None:
    c = Chunker(window_ms=1000, max_tokens=4)
    c.add("a", 0.0)
    out = [c.add(t, 0.001 * i) for i, t in enumerate("bcde", start=1)]
    assert out[:3] == [None, None, None]
    assert out[3] is not None and (out[3].seq, out[3].text, out[3].tokens) == (1, "bcde", 4)


def test_later_tokens_leave_when_the_window_has_passed() -> None:
    c = Chunker(window_ms=30, max_tokens=16)
    c.add("a", 0.0)
    assert c.add("b", 1.000) is None
    assert c.deadline() == 1.030
    assert c.due(1.020) is None
    chunk = c.due(1.031)
    assert chunk is not None and chunk.text == "b" and chunk.first_token_at == 1.0


def test_a_token_arriving_after_the_window_flushes_with_the_pending_ones() -> None:
    c = Chunker(window_ms=30, max_tokens=16)
    c.add("a", 0.0)
    c.add("b", 1.0)
    chunk = c.add("c", 1.05)
    assert chunk is not None and chunk.text == "bc" and chunk.tokens == 2


def test_flush_at_stream_end_returns_the_rest_and_then_nothing() -> None:
    c = Chunker(window_ms=30, max_tokens=16)
    c.add("a", 0.0)
    c.add("b", 0.001)
    rest = c.flush(0.002)
    assert rest is not None and rest.text == "b"
    assert c.flush(0.003) is None
    assert c.deadline() is None


def test_seq_has_no_gaps_and_response_is_the_concatenation() -> None:
    c = Chunker(window_ms=5, max_tokens=3)
    seqs = []
    words = [f"w{i} " for i in range(50)]
    for i, w in enumerate(words):
        chunk = c.add(w, i * 0.002)
        if chunk:
            seqs.append(chunk.seq)
    end = c.flush(1.0)
    if end:
        seqs.append(end.seq)
    assert seqs == list(range(len(seqs)))
    assert c.last_seq == seqs[-1]
    assert c.response() == "".join(words)


def test_an_empty_stream_has_last_seq_minus_one() -> None:
    c = Chunker()
    assert c.flush(0.0) is None
    assert c.last_seq == -1
    assert c.response() == ""


def test_the_chunker_counts_the_tokens_of_every_flushed_chunk() -> None:
    c = Chunker(window_ms=1000, max_tokens=4)
    for i, t in enumerate("abcdefg"):
        c.add(t, 0.001 * i)
    assert c.tokens == 5  # "a" alone, then "bcde"; "fg" still pending
    c.flush(1.0)
    assert c.tokens == 7 and c.last_seq == 2


def delta(index: int, arguments: str, **first: str) -> dict[str, object]:
    function = {"name": first.get("name"), "arguments": arguments}
    return {"index": index, "id": first.get("id"), "type": first.get("type"), "function": function}


def test_tool_call_deltas_coalesce_like_tokens_and_merge_per_call() -> None:
    c = Chunker(window_ms=1000, max_tokens=4)
    first = c.add_tool_calls([delta(0, "", id="call_1", type="function", name="f")], 0.0)
    assert first is not None and first.seq == 0 and first.text == "" and first.tokens == 1
    assert first.tool_calls == [delta(0, "", id="call_1", type="function", name="f")]
    out = [c.add_tool_calls([delta(0, piece)], 0.001) for piece in ('{"a"', ": 1", "}")]
    assert out == [None, None, None]
    rest = c.add("done", 0.002)
    assert rest is not None and rest.seq == 1 and rest.tokens == 4 and rest.text == "done"
    # Three argument pieces of one call travel as one delta, as text tokens travel as one text.
    assert rest.tool_calls == [delta(0, '{"a": 1}')]
    assert c.calls == [*first.tool_calls, *rest.tool_calls] and c.tokens == 5


def test_deltas_of_two_calls_stay_apart_and_in_order() -> None:
    c = Chunker(window_ms=1000, max_tokens=16)
    c.add("x", 0.0)
    c.add_tool_calls([delta(0, "", id="a", type="function", name="f")], 0.001)
    c.add_tool_calls([delta(0, "{}")], 0.002)
    c.add_tool_calls([delta(1, "", id="b", type="function", name="g")], 0.003)
    c.add_tool_calls([delta(1, "{}")], 0.004)
    chunk = c.flush(0.005)
    assert chunk is not None and chunk.tokens == 4
    assert chunk.tool_calls == [
        delta(0, "{}", id="a", type="function", name="f"),
        delta(1, "{}", id="b", type="function", name="g"),
    ]


def test_a_text_only_chunk_carries_no_tool_calls() -> None:
    c = Chunker()
    chunk = c.add("a", 0.0)
    assert chunk is not None and chunk.tool_calls is None
