"""tcp_info as `ss -i` prints it: the same fields, order, units and rules.

Rules from ss (iproute2 misc/ss.c, tcp_show_info/tcp_stats_print): a field
prints only when non-zero; times come in microseconds and print as
milliseconds with %g; rates print in bits per second, numeric as `ss -n`
(sockdoctor never resolves names); the TCP options (ts, sack, ...) print only
with -o or -e, as in ss.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..linux import ccinfo, tcpinfo
from ..model import Socket, TcpInfo, TcpState

_OPTIONS = ((1, "ts"), (64, "usec_ts"), (2, "sack"), (8, "ecn"), (16, "ecnseen"),
            (32, "fastopen"))
_UNSET32, _UNSET64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF

# Plain `label:value` fields, in ss's order, by the group they print in.
_SIZES = (("snd_mss", "mss"), ("pmtu", "pmtu"), ("rcv_mss", "rcvmss"), ("advmss", "advmss"),
          ("snd_cwnd", "cwnd"))
_COUNTS = (("bytes_sent", "bytes_sent"), ("bytes_retrans", "bytes_retrans"),
           ("bytes_acked", "bytes_acked"), ("bytes_received", "bytes_received"),
           ("segs_out", "segs_out"), ("segs_in", "segs_in"),
           ("data_segs_out", "data_segs_out"), ("data_segs_in", "data_segs_in"))
_LAST = (("last_data_sent", "lastsnd"), ("last_data_recv", "lastrcv"),
         ("last_ack_recv", "lastack"))
_LOSS = (("lost", "lost"), ("sacked", "sacked"), ("dsack_dups", "dsack_dups"),
         ("fackets", "fackets"))
_WINDOWS = (("rcv_space", "rcv_space"), ("rcv_ssthresh", "rcv_ssthresh"),
            ("notsent_bytes", "notsent"))
_TAIL = (("rcv_ooopack", "rcv_ooopack"), ("snd_wnd", "snd_wnd"), ("rcv_wnd", "rcv_wnd"),
         ("rehash", "rehash"))


def bps(value: float) -> str:
    """A rate as `ss -n` prints it: whole bits per second."""
    return f"{value:.0f}bps"


def ms(us: int) -> str:
    """Microseconds as ss's milliseconds (%g)."""
    return f"{us / 1000:g}"


def _plain(i: TcpInfo, fields: tuple[tuple[str, str], ...]) -> Iterator[str]:
    for key, label in fields:
        v = getattr(i, key)
        if v:
            yield f"{label}:{v}"


def _head(i: TcpInfo, cong: str | None, options: bool) -> Iterator[str]:
    if options:
        yield from (name for bit, name in _OPTIONS if (i.options or 0) & bit)
    if cong:
        yield cong
    if (i.options or 0) & 4:  # TCPI_OPT_WSCALE
        yield f"wscale:{i.snd_wscale or 0},{i.rcv_wscale or 0}"
    if i.rto and i.rto != 3_000_000:  # 3 s is the initial RTO: ss hides it
        yield f"rto:{ms(i.rto)}"
    if i.backoff:
        yield f"backoff:{i.backoff}"
    if i.rtt:
        yield f"rtt:{ms(i.rtt)}/{ms(i.rttvar or 0)}"
    if i.ato:
        yield f"ato:{ms(i.ato)}"
    yield from _plain(i, _SIZES)
    if i.snd_ssthresh and i.snd_ssthresh < 0xFFFF:  # larger means "infinite"
        yield f"ssthresh:{i.snd_ssthresh}"
    yield from _plain(i, _COUNTS)


def _cc(cc: ccinfo.Vegas | ccinfo.Dctcp | ccinfo.Bbr | None) -> Iterator[str]:
    if isinstance(cc, ccinfo.Dctcp):
        yield (f"dctcp:(ce_state:{cc.ce_state},alpha:{cc.alpha},ab_ecn:{cc.ab_ecn},"
               f"ab_tot:{cc.ab_tot})" if cc.enabled else "dctcp:fallback_mode")
    elif isinstance(cc, ccinfo.Bbr):
        text = f"bbr:(bw:{bps(cc.bw_bytes * 8.0)},mrtt:{ms(cc.min_rtt_us)}"
        if cc.pacing_gain:
            text += f",pacing_gain:{cc.pacing_gain / 256:g}"
        if cc.cwnd_gain:
            text += f",cwnd_gain:{cc.cwnd_gain / 256:g}"
        yield text + ")"


def _send_rate(i: TcpInfo, cc: object) -> float:
    """cwnd * mss / rtt, with vegas's own rtt when it measures one (as ss)."""
    rtt = float(i.rtt or 0)
    if isinstance(cc, ccinfo.Vegas) and cc.enabled and cc.rtt_us not in (0, 0x7FFFFFFF):
        rtt = cc.rtt_us
    if rtt > 0 and i.snd_mss and i.snd_cwnd:
        return i.snd_cwnd * i.snd_mss * 8_000_000.0 / rtt
    return 0.0


def _rates(i: TcpInfo, cc: object) -> Iterator[str]:
    send = _send_rate(i, cc)
    if send:
        yield f"send {bps(send)}"
    yield from _plain(i, _LAST)
    if i.pacing_rate and i.pacing_rate != _UNSET64:
        text = f"pacing_rate {bps(i.pacing_rate * 8.0)}"
        if i.max_pacing_rate and i.max_pacing_rate != _UNSET64:
            text += f"/{bps(i.max_pacing_rate * 8.0)}"
        yield text
    if i.delivery_rate:
        yield f"delivery_rate {bps(i.delivery_rate * 8.0)}"
    yield from _plain(i, (("delivered", "delivered"), ("delivered_ce", "delivered_ce")))
    if i.delivery_rate_app_limited:
        yield "app_limited"


def _busy(i: TcpInfo) -> Iterator[str]:
    busy = i.busy_time
    if not busy:
        return
    yield f"busy:{busy // 1000}ms"
    for key in ("rwnd_limited", "sndbuf_limited"):
        v = getattr(i, key)
        if v:
            yield f"{key}:{v // 1000}ms({100.0 * v / busy:.1f}%)"


def _state(i: TcpInfo, listening: bool) -> Iterator[str]:
    if i.unacked:
        yield f"unacked:{i.unacked}"
    if i.retrans or i.total_retrans:
        yield f"retrans:{i.retrans or 0}/{i.total_retrans or 0}"
    # a listener's `sacked` is its backlog: ss leaves it out
    yield from _plain(i, _LOSS[:1] + (() if listening else _LOSS[1:2]) + _LOSS[2:])
    if i.reordering is not None and i.reordering != 3:  # 3 is the default
        yield f"reordering:{i.reordering}"
    if i.reord_seen:
        yield f"reord_seen:{i.reord_seen}"
    if i.rcv_rtt:
        yield f"rcv_rtt:{ms(i.rcv_rtt)}"
    yield from _plain(i, _WINDOWS)
    if i.min_rtt and i.min_rtt != _UNSET32:
        yield f"minrtt:{ms(i.min_rtt)}"
    yield from _plain(i, _TAIL)


def info_text(sk: Socket, options: bool = False) -> str:
    """The socket's tcp_info as one `ss -i` line; `options` as ss -o/-e (ts, sack...)."""
    i = tcpinfo.of(sk)
    if i is None:
        return sk.cong or ""
    cc = ccinfo.decode(sk.cc_info)
    parts = [*_head(i, sk.cong, options), *_cc(cc), *_rates(i, cc), *_busy(i),
             *_state(i, sk.state == TcpState.LISTEN)]
    return " ".join(parts)
