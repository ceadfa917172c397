"""What --netns and --process name: one selector for live hosts and snapshots."""

from __future__ import annotations

import pytest

from sockdoctor.errors import UsageError
from sockdoctor.model import Netns
from sockdoctor.selectors import (
    process_matcher,
    select_netns,
    unknown_netns,
    unknown_process,
)

NAMESPACES = [
    Netns(inode=1, name="host", kind="host", pid=1),
    Netns(inode=2, name="web", kind="named"),
    Netns(inode=3, name="container:0123456789ab", kind="container", pid=300),
    Netns(inode=4, name="container:0123ffffffff", kind="container", pid=400),
    Netns(inode=5, name="pid:500(worker)", kind="process", pid=500),
]
PIDS = {300: 3, 500: 5, 77: 2}


def names(wanted: str, own: int | None = 1) -> list[str]:
    return [ns.name for ns in select_netns(NAMESPACES, wanted, own=own,
                                           netns_of_pid=PIDS.get)]


@pytest.mark.parametrize("wanted, expected", [
    ("all", ["host", "web", "container:0123456789ab", "container:0123ffffffff",
             "pid:500(worker)"]),
    ("", ["host", "web", "container:0123456789ab", "container:0123ffffffff",
          "pid:500(worker)"]),
    ("host", ["host"]),
    ("self", ["host"]),
    ("web", ["web"]),
    ("2", ["web"]),  # an inode
    ("net:[2]", ["web"]),  # as readlink /proc/PID/ns/net shows it
    ("77", ["web"]),  # a pid inside it
    ("container:0123456789ab", ["container:0123456789ab"]),
    ("0123456789abcdef0123", ["container:0123456789ab"]),  # a full id, docker-style
    ("container:012345", ["container:0123456789ab"]),  # a unique prefix
    ("pid:500(worker)", ["pid:500(worker)"]),
    ("500", ["pid:500(worker)"]),
    ("nosuch", []),
    ("999", []),
])
def test_one_selection_for_every_spelling(wanted: str, expected: list[str]) -> None:
    assert names(wanted) == expected


def test_an_ambiguous_container_prefix_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="matches 2 containers"):
        names("container:0123")


def test_self_cannot_be_known_in_a_snapshot() -> None:
    with pytest.raises(UsageError, match="--netns self"):
        names("self", own=None)


def test_the_unknown_netns_error_names_the_known_ones_and_the_nearest() -> None:
    err = unknown_netns("wbe", NAMESPACES)
    assert err.exit_code == 3
    assert str(err).startswith("--netns: no network namespace 'wbe' (known: host, ")
    assert str(err).endswith("did you mean web?")
    # the message keeps names exact: the command line escapes it as a whole
    hostile = unknown_netns("\x1b[2J", [Netns(inode=9, name="a\nb", kind="named")])
    assert "'\x1b[2J'" in str(hostile) and "a\nb" in str(hostile)


@pytest.mark.parametrize("pattern, comm, cmdline, expected", [
    ("python3", "python3", ["/usr/bin/python3", "app.py"], True),
    ("python", "python3", ["/usr/bin/python3"], False),  # exact: python is not python3
    ("python*", "python3", [], True),
    ("python*", "python3.11", [], True),
    ("py?hon3", "python3", [], True),
    ("[pj]ava", "java", [], True),
    ("nginx", "nginx: worker", [], False),
    ("nginx", "whatever", ["nginx: worker process"], True),  # the program's argv[0]
    ("gunicorn", "gunicorn: work", ["gunicorn: worker [app]"], True),
    ("my-very-long-service", "my-very-long-se", [], True),  # the kernel's 15 bytes
    ("my-very-long-servicX", "my-very-long-se", [], True),
    ("my-very-long-se", "my-very-long-service-2", [], False),
    ("node", "node", [], True),
    ("node", "nodejs", ["/usr/bin/nodejs"], False),
])
def test_process_names_match_exactly_or_as_globs(pattern: str, comm: str,
                                                 cmdline: list[str], expected: bool) -> None:
    assert process_matcher(pattern)(comm, cmdline) is expected


def test_the_unknown_process_error_suggests_names_and_a_glob() -> None:
    err = unknown_process("python", ["python3", "python3.11", "sshd"])
    assert err.exit_code == 3
    assert str(err) == ("--process: no process named 'python'; did you mean python3 or "
                        "python3.11? (--process takes a name or a glob: 'python*')")
    assert "did you mean sshd?" in str(unknown_process("shd", ["sshd", "bash"]))
    assert "a glob" not in str(unknown_process("zz*", ["bash"]))
