"""The deployment files: systemd unit, Kubernetes manifests, Dockerfile.

The capabilities the unit and the DaemonSet grant are not just written down:
the exporter is run here with exactly those (setpriv), as the unit's dynamic
user would run it, and must see another namespace's sockets and their owner;
without any one of them it must lose something.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import exporting
import kubernetes_validate
import pytest
import yaml

from conftest import NOBODY, Remote, Unprivileged, allow_stuck_sockets_in
from sockdoctor.lab.netlab import Lab
from sockdoctor.ports import EXPORTER_PORT
from sockdoctor.units import DOCUMENTED

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "systemd" / "sockdoctor-exporter.service"
PORT = 7611


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def unit_capabilities() -> list[str]:
    return unit()["Service"]["AmbientCapabilities"].split()


def daemonset() -> dict:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "daemonset.yaml").read_text()))
    return next(d for d in docs if d["kind"] == "DaemonSet")


def test_the_unit_is_hardened_and_systemd_accepts_it(tmp_path: Path) -> None:
    service = unit()["Service"]
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["DynamicUser"] == "yes"
    assert service["CapabilityBoundingSet"].split() == unit_capabilities()
    assert set(unit_capabilities()) == {"CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"}
    assert "~@debug" in UNIT.read_text()  # ptrace(2) and pidfd_getfd refused
    assert f":{EXPORTER_PORT}" in service["ExecStart"]
    assert_unit_verifies(UNIT, tmp_path)


def one_leak(lab: Lab) -> Remote:
    """A root program holding one CLOSE-WAIT socket on PORT, in the lab's namespace."""
    server = Remote(lab, lab.server, "sdt-leaker")
    server(f"""
        lst = socket.socket(); lst.bind(("127.0.0.1", {PORT})); lst.listen(8)
        peer = socket.create_connection(("127.0.0.1", {PORT})); conn = lst.accept()[0]
        peer.close()
    """)
    return server


def as_nobody_with(caps: list[str], python: str) -> list[str]:
    names = ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            f"--inh-caps=-all{',' + names if names else ''}",
            f"--ambient-caps=-all{',' + names if names else ''}",
            f"--bounding-set=-all{',' + names if names else ''}", python]


def as_root_with(caps: list[str], python: str) -> list[str]:
    names = ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    return ["setpriv", "--inh-caps=-all", f"--bounding-set=-all,{names}", python]


@pytest.mark.root
@pytest.mark.parametrize("drop", ["", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"])
def test_the_units_capabilities_are_enough_and_each_is_needed(
        unprivileged: Unprivileged, drop: str, request: pytest.FixtureRequest) -> None:
    with Lab(f"cap{os.getpid() % 10000}", pair=False) as lab:
        allow_stuck_sockets_in(request, lab)
        one_leak(lab)
        caps = [c for c in unit_capabilities() if c != drop]
        # the /proc owner walk (SOCKDOCTOR_ENGINE=c): what CAP_SYS_PTRACE and
        # CAP_DAC_READ_SEARCH are for. The BPF engine, when it runs, needs neither
        # (it reads the kernel's task list under CAP_SYS_ADMIN).
        done = subprocess.run([*as_nobody_with(caps, unprivileged.python), "-m", "sockdoctor",
                               "exporter", "--once", "--netns", lab.server.netns],
                              env={**unprivileged.env, "SOCKDOCTOR_ENGINE": "c"}, cwd="/",
                              capture_output=True, text=True, timeout=120)
    if drop == "CAP_SYS_ADMIN":  # cannot enter the namespace at all
        assert done.returncode == 4 and "CAP_SYS_ADMIN" in done.stderr, done.stderr
        return
    assert done.returncode == 0, done.stderr
    got = exporting.parse(done.stdout)
    owner = "sdt-leaker" if not drop else "unknown"  # without either, fds are unreadable
    assert exporting.value(got["sockdoctor_close_wait_sockets"], netns=lab.server.netns,
                           port=str(PORT), side="server") == 1
    assert exporting.value(got["sockdoctor_close_wait_sockets"], process=owner) == 1
    assert exporting.value(got["sockdoctor_scan_incomplete"],
                           reason="other_namespaces_not_scanned") == 0


@pytest.mark.root
def test_the_daemonsets_capabilities_are_enough_for_root_in_a_container(
        unprivileged: Unprivileged, request: pytest.FixtureRequest) -> None:
    container = daemonset()["spec"]["template"]["spec"]["containers"][0]
    caps = ["CAP_" + c for c in container["securityContext"]["capabilities"]["add"]]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    with Lab(f"cap{os.getpid() % 10000}", pair=False) as lab:
        allow_stuck_sockets_in(request, lab)
        one_leak(lab)
        env = dict(unprivileged.env)
        done = subprocess.run([*as_root_with(caps, unprivileged.python), "-m", "sockdoctor",
                               "exporter", "--once", "--netns", lab.server.netns],
                              env=env, cwd="/", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = exporting.parse(done.stdout)
    assert exporting.value(got["sockdoctor_close_wait_sockets"], process="sdt-leaker") == 1


def test_the_kubernetes_manifests_validate() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "daemonset.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "DaemonSet", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)  # raises on any error


def test_the_daemonsets_image_is_the_placeholder_the_docs_replace() -> None:
    """No image nobody can pull: the docs' sed line puts your registry's name in."""
    container = daemonset()["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/sockdoctor:0.1.0"
    docs = (DEPLOY.parent / "docs" / "exporter.md").read_text()
    block = re.search(r"<!-- deploy-kubernetes -->\n```sh\n(.*?)```", docs, re.S)
    assert block is not None
    sed = next(line for line in block.group(1).splitlines() if line.startswith("sed "))
    sed = sed.split(" | kubectl")[0].split(" > ")[0]
    done = subprocess.run(["bash", "-c", sed], cwd=DEPLOY.parent, capture_output=True,
                          text=True, timeout=30,
                          env={**os.environ, "REGISTRY": "registry.internal:5000/platform"})
    assert done.returncode == 0, done.stderr
    docs_out = list(yaml.safe_load_all(done.stdout))
    ds = next(d for d in docs_out if d["kind"] == "DaemonSet")
    image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.internal:5000/platform/sockdoctor:0.1.0"
    for doc in docs_out:
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_the_daemonset_is_read_only_and_bounded() -> None:
    ds = daemonset()
    pod = ds["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = container["securityContext"]
    assert pod["hostPID"] is True and not pod.get("hostNetwork")
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False and not security["privileged"]
    added = set(security["capabilities"]["add"])
    assert added == {"DAC_READ_SEARCH", "SYS_PTRACE", "SYS_ADMIN"}
    assert not added & {"NET_ADMIN", "NET_RAW", "SYS_MODULE"}
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": EXPORTER_PORT}
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(EXPORTER_PORT)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_podmonitor_selects_the_daemonsets_pods_by_the_metrics_port() -> None:
    monitor = yaml.safe_load((DEPLOY / "kubernetes" / "podmonitor.yaml").read_text())
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    labels = daemonset()["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert {"targetLabel": "job", "replacement": "sockdoctor"} in endpoint["relabelings"]


def test_the_dockerfile_builds_this_repository_and_runs_what_the_daemonset_asks() -> None:
    """The image itself is built and run by tests/image (.ci/image-checks)."""
    text = (DEPLOY / "Dockerfile").read_text()
    build, final = re.split(r"^FROM \$\{BASE\}.*$", text, flags=re.M)[1:]
    assert re.search(r"^COPY pyproject.toml setup.py README.md ./$", build, re.M)
    assert re.search(r"^COPY src \./src$", build, re.M) and "gcc" in build
    assert 'grep -q "C extension"' in build  # no silent pure-Python image
    assert "gcc" not in final and "COPY --from=build /opt/sockdoctor" in final
    assert f"EXPOSE {EXPORTER_PORT}" in final
    assert 'ENTRYPOINT ["sockdoctor"]' in final
    args = daemonset()["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "exporter"
    # the arguments the DaemonSet passes are accepted by this version's CLI
    check = subprocess.run([sys.executable, "-m", "sockdoctor", *args, "--help"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def assert_unit_verifies(unit: Path, tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say about the unit file."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    local = tmp_path / unit.name  # verify wants the ExecStart binary to exist
    sockdoctor = shutil.which("sockdoctor") or str(Path(sys.executable).parent / "sockdoctor")
    local.write_text(unit.read_text().replace(DOCUMENTED, sockdoctor))
    verify = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
