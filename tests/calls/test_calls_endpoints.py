"""The media map: claims, releases, the per-call index and the packed journal."""

from agent.calls.call import Call
from agent.calls.endpoints import EndpointMap, packed_endpoint


def test_release_call_drops_exactly_that_calls_endpoints():
    m = EndpointMap()
    a, b = Call("a", 0), Call("b", 0)
    m.claim(("10.0.0.1", 4000), a, 0)
    m.claim(("10.0.0.2", 5000), a, 1)
    m.claim(("10.0.0.3", 6000), b, 0)
    assert m.holds_any(a) and m.of_call(a) == [("10.0.0.1", 4000), ("10.0.0.2", 5000)]
    m.release_call(a)
    assert not m.holds_any(a) and m.of_call(a) == []
    assert list(m) == [("10.0.0.3", 6000)]
    assert m.packed == {packed_endpoint(("10.0.0.3", 6000)): (b, 0)}


def test_a_claim_moves_the_endpoint_out_of_the_previous_holders_index():
    m = EndpointMap()
    a, b = Call("a", 0), Call("b", 0)
    m.claim(("10.0.0.1", 4000), a, 0)
    assert m.claim(("10.0.0.1", 4000), b, 1) == (a, 0)
    assert not m.holds_any(a)
    assert m[("10.0.0.1", 4000)] == (b, 1)
    m.release(("10.0.0.1", 4000))
    assert len(m) == 0 and not m.holds_any(b) and m.packed == {}


def test_the_journal_names_each_changed_packed_key_once_and_gives_up_when_long():
    m = EndpointMap()
    a = Call("a", 0)
    m.take_changed()
    m.claim(("10.0.0.1", 4000), a, 0)
    m.claim(("10.0.0.1", 4000), a, 1)
    m.claim(("not-an-address", 4000), a, 1)        # no packed key: nothing for the fast path
    assert m.take_changed() == {packed_endpoint(("10.0.0.1", 4000))}
    assert m.take_changed() == set()
    for port in range(70_000 // 2):
        m.claim(("10.0.0.1", port), a, 0)
        m.claim(("10.0.0.2", port), a, 0)
    assert m.take_changed() is None                  # too many: the reader reads the whole map
    assert m.take_changed() == set()
