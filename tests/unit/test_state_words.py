"""The one state table: every name a TCP state goes by comes from model.STATE_WORDS."""

from sockdoctor import words
from sockdoctor.model import STATE_WORDS, TcpState
from sockdoctor.watch import metrics, trace


def test_every_kernel_state_has_one_row() -> None:
    assert set(STATE_WORDS) == set(TcpState)


def test_the_layers_speak_from_the_one_table() -> None:
    for st, w in STATE_WORDS.items():
        assert words.state_name(st) == w.column == TcpState(st).ss_name
        assert TcpState(st).filter_name == w.filter
        assert trace.STATE_NAMES[st] == w.event
        assert metrics.STATE_NAMES.get(st) == w.metric
    assert words.state_name(99) == "STATE-99"


def test_the_spellings_that_differ_on_purpose() -> None:
    # ss lists state 7 as UNCONN; a traced connection's end reads CLOSE
    assert words.state_name(TcpState.CLOSE) == "UNCONN"
    assert trace.STATE_NAMES[TcpState.CLOSE] == "CLOSE"
    # node_exporter's tcpstat labels, in kernel order, without the two newest states
    assert list(metrics.STATE_NAMES.values()) == [
        "established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait",
        "close", "close_wait", "last_ack", "listen", "closing"]
