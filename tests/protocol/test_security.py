"""CURVE on the agent's tcp links, the exposure rule, key files, demographics and message caps.

Real ZeroMQ sockets on random 127.0.0.1 ports (or ipc in tmp_path), real hubs, real agent and
worker processes; nothing under test is replaced.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from zmq.utils.monitor import recv_monitor_message

from edge_agent.clients.subscriber import Subscriber
from edge_agent.config import ConfigError
from edge_agent.live.agent import Agent, load_agent_config
from edge_agent.live.hub import Hub, HubConfig
from edge_agent.protocol import security, wire
from edge_agent.protocol.transport import MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES, TransportConfig, socket

ROOT = Path(__file__).resolve().parents[2]
DEMO = {"age_years": 61.0, "sex_male": 1.0, "weight_kg": 80.0, "height_cm": 178.0}


@dataclass(frozen=True)
class Keys:
    """A server pair, an allowed client pair (its public key in ``allow``) and a stranger's pair."""

    dir: Path
    allow: Path
    server_public: Path
    server_secret: Path
    client_public: Path
    client_secret: Path
    stranger_secret: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    d = tmp_path / "keys"
    server_public, server_secret = security.make_key_pair(d, "hub")
    client_public, client_secret = security.make_key_pair(d, "monitor1")
    _, stranger_secret = security.make_key_pair(d, "stranger")
    allow = tmp_path / "allow"
    allow.mkdir()
    shutil.copy(client_public, allow / client_public.name)
    return Keys(d, allow, server_public, server_secret, client_public, client_secret, stranger_secret)


def _free_port() -> int:
    with zmq.Context() as ctx, ctx.socket(zmq.REP) as probe:
        port = probe.bind_to_random_port("tcp://127.0.0.1")
        probe.unbind(f"tcp://127.0.0.1:{port}")
    return port


def _pump(hub: Hub, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hub.process(0.01)


def _eventually(check, seconds: float = 5.0) -> bool:
    """True once ``check()`` is (handshake watches count on their own thread)."""
    end = time.monotonic() + seconds
    while not check() and time.monotonic() < end:
        time.sleep(0.05)
    return bool(check())


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _window(stream: str, seq: int, shape: tuple[int, int, int] = (32, 112, 112)) -> wire.Window:
    return wire.Window(
        stream=stream,
        seq=seq,
        frame_seq=(seq * 50, seq * 50 + 49),
        t=(time.monotonic() - 1.0, time.monotonic()),
        t_sent=time.monotonic(),
        fps=50.0,
        hr_bpm=61.0,
        beat="ed_ed",
        frames=np.random.default_rng(seq).integers(0, 255, shape, dtype=np.uint8),
        demo=dict(DEMO),
    )


# ---------------------------------------------------------------- key files


def test_key_pair_files_modes_and_reload(tmp_path: Path) -> None:
    out = tmp_path / "new" / "keys"
    public, secret = security.make_key_pair(out, "edge-01")
    assert (public.name, secret.name) == ("edge-01.key", "edge-01.key_secret")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert stat.S_IMODE(out.stat().st_mode) == 0o700  # made by make_key_pair
    assert sorted(p.name for p in out.iterdir()) == ["edge-01.key", "edge-01.key_secret"]  # no staging left
    pair = security.load_secret_certificate(secret)
    assert pair.public == security.load_public_key(public) and len(pair.secret) == 40
    assert "secret-key" not in public.read_text()

    with pytest.raises(security.SecurityError, match=r"edge-01\.key.*already exists.*--force"):
        security.make_key_pair(out, "edge-01")
    assert security.load_secret_certificate(secret) == pair  # untouched
    security.make_key_pair(out, "edge-01", force=True)
    again = security.load_secret_certificate(secret)
    assert again.public != pair.public and stat.S_IMODE(secret.stat().st_mode) == 0o600
    with pytest.raises(security.SecurityError, match="key name"):
        security.make_key_pair(out, "../escape")


def test_key_loading_errors_name_the_file_and_the_fix(keys: Keys, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(
        security.SecurityError, match=rf"server key: {missing}: no such key file.*edge-agent keys"
    ):
        security.client_keys_from_files(missing, keys.client_secret)
    junk = tmp_path / "junk.key"
    junk.write_text("hello\n")
    with pytest.raises(security.SecurityError, match=rf"{junk}: not a ZeroMQ certificate"):
        security.load_public_key(junk)
    with pytest.raises(security.SecurityError, match=rf"{keys.client_public}: holds no secret key"):
        security.load_secret_certificate(keys.client_public)
    short = tmp_path / "short.key"
    short.write_text('curve\n    public-key = "abc"\n')
    with pytest.raises(security.SecurityError, match="not a 40-character Z85"):
        security.load_public_key(short)
    empty = tmp_path / "empty_allow"
    empty.mkdir()
    with pytest.raises(security.SecurityError, match=r"no \*\.key files"):
        security.load_allow_list(empty, "transport.curve_allow")
    with pytest.raises(security.SecurityError, match=r"transport.curve_allow: .*no such directory"):
        security.load_allow_list(tmp_path / "absent", "transport.curve_allow")
    assert set(security.load_allow_list(keys.allow)) == {security.load_public_key(keys.client_public)}


def test_client_key_resolution(keys: Keys) -> None:
    assert security.client_keys(TransportConfig()) is None
    own = security.client_keys(TransportConfig(curve_secret=str(keys.server_secret)))
    server_public = security.load_public_key(keys.server_public)
    assert own is not None and own.public == own.server_public == server_public  # the agent's own workers
    remote = security.client_keys(
        TransportConfig(curve_server_key=str(keys.server_public), curve_client_secret=str(keys.client_secret))
    )
    assert remote is not None and remote.server_public == server_public
    assert remote.public == security.load_public_key(keys.client_public)
    with pytest.raises(security.SecurityError, match="curve_server_key is not"):
        security.client_keys(TransportConfig(curve_client_secret=str(keys.client_secret)))
    with pytest.raises(security.SecurityError, match="curve_client_secret is not"):
        security.client_keys(TransportConfig(curve_server_key=str(keys.server_public)))


def test_missing_curve_support_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # zmq.has reports the libzmq build; one without CURVE must be named, not fail obscurely.
    monkeypatch.setattr(zmq, "has", lambda capability: capability != "curve")
    with pytest.raises(security.SecurityError, match="without CURVE"):
        security.make_key_pair(tmp_path, "x")


def test_keys_verb_and_cli_key_errors(tmp_path: Path) -> None:
    out = tmp_path / "k"
    made = _cli("keys", "--out", str(out), "--name", "monitor1")
    assert made.returncode == 0, made.stderr
    public, secret = out / "monitor1.key", out / "monitor1.key_secret"
    assert str(public) in made.stdout and str(secret) in made.stdout and "curve_allow" in made.stdout
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert security.load_secret_certificate(secret).public == security.load_public_key(public)
    again = _cli("keys", "--out", str(out), "--name", "monitor1")
    assert again.returncode == 2 and str(public) in again.stderr and "--force" in again.stderr
    assert security.load_public_key(public) == security.load_secret_certificate(secret).public

    missing = tmp_path / "hub.key"
    port = _free_port()
    sub = _cli(
        "subscribe",
        "--connect",
        f"tcp://127.0.0.1:{port}",
        "--timeout",
        "0.2",
        "--curve-server-key",
        str(missing),
        "--curve-client-key",
        str(secret),
    )
    assert sub.returncode == 2 and str(missing) in sub.stderr and "no such key file" in sub.stderr
    half = _cli("monitor", "--connect", f"tcp://127.0.0.1:{port}", "--curve-client-key", str(secret))
    assert half.returncode == 2 and "--curve-server-key" in half.stderr


# ---------------------------------------------------------------- exposure rule


@pytest.mark.parametrize(
    ("endpoint", "exposed"),
    [
        ("tcp://0.0.0.0:5556", True),
        ("tcp://*:5556", True),
        ("tcp://[::]:5556", True),
        ("tcp://::ffff:0.0.0.0:5556", True),
        ("tcp://192.168.1.20:5556", True),
        ("tcp://eth0:5556", True),
        ("tcp://edge-01.example.org:5556", True),
        ("tcp://127.0.0.1:5556", False),
        ("tcp://127.0.0.2:*", False),
        ("tcp://localhost:5556", False),
        ("tcp://LOCALHOST:5556", False),
        ("tcp://lo:5556", False),
        ("tcp://[::1]:5556", False),
        ("tcp://[::ffff:127.0.0.1]:5556", False),
        ("ipc://{run}/publish", False),
        ("ipc:///tmp/x/publish", False),
        ("inproc://hub", False),
        ("ws://127.0.0.1:5556", True),
    ],
)
def test_exposed_endpoints(endpoint: str, exposed: bool) -> None:
    cfg = TransportConfig(publish=endpoint)
    assert security.exposed_endpoints(cfg) == ([("publish", endpoint)] if exposed else [])


@settings(max_examples=300, deadline=None)
@given(
    address=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    port=st.integers(1, 65535),
)
def test_exposure_of_any_ip_address_is_exactly_not_loopback(address, port: int) -> None:
    host = f"[{address}]" if address.version == 6 else str(address)
    endpoint = f"tcp://{host}:{port}"
    mapped = getattr(address, "ipv4_mapped", None)
    loopback = (mapped or address).is_loopback
    got = security.exposed_endpoints(TransportConfig(), {"workers": endpoint})
    assert got == ([] if loopback else [("workers", endpoint)])


@settings(max_examples=200, deadline=None)
@given(name=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True))
def test_every_host_name_but_localhost_counts_as_exposed(name: str) -> None:
    endpoint = f"tcp://{name}:5556"
    got = security.exposed_endpoints(TransportConfig(), {"publish": endpoint})
    try:
        ipaddress.ip_address(name)
        return  # not a name
    except ValueError:
        pass
    assert got == ([] if name in ("localhost", "lo") else [("publish", endpoint)])


def test_binding_beyond_loopback_needs_curve_or_consent(keys: Keys) -> None:
    for key, port in (("publish", 5556), ("workers", 5557)):
        with pytest.raises(
            ConfigError, match=rf"transport\.{key}: tcp://0\.0\.0\.0:{port} binds beyond loopback"
        ):
            load_agent_config(None, [f"transport.{key}=tcp://0.0.0.0:{port}"])
    with pytest.raises(ConfigError, match=r"transport\.curve_secret.*transport\.allow_insecure: true"):
        load_agent_config(None, ["transport.publish=tcp://*:5556"])
    ok = load_agent_config(None, ["transport.publish=tcp://0.0.0.0:5556", "transport.allow_insecure=true"])
    assert ok.transport.allow_insecure
    curve = load_agent_config(
        None,
        [
            "transport.publish=tcp://0.0.0.0:5556",
            f"transport.curve_secret={keys.server_secret}",
            f"transport.curve_allow={keys.allow}",
        ],
    )
    assert curve.transport.curve_secret == str(keys.server_secret)
    for fine in ("tcp://127.0.0.1:5556", "tcp://localhost:5556", "tcp://[::1]:5556", "ipc://{run}/publish"):
        assert load_agent_config(None, [f"transport.publish={fine}"]).transport.publish == fine
    # The shipped defaults stay on ipc and loopback.
    assert security.exposed_endpoints(load_agent_config(ROOT / "configs" / "default.yaml").transport) == []
    assert security.exposed_endpoints(TransportConfig()) == []
    with pytest.raises(ConfigError, match=r"transport\.windows: .*windowers do not speak CURVE"):
        load_agent_config(
            None, ["transport.windows=tcp://127.0.0.1:5555", f"transport.curve_secret={keys.server_secret}"]
        )
    with pytest.raises(ConfigError, match=r"transport\.publish: 'udp://.*not a tcp:// or ipc://"):
        load_agent_config(None, ["transport.publish=udp://127.0.0.1:5556"])


def test_run_command_refuses_an_exposed_bind_before_starting_anything() -> None:
    done = _cli("run", "--seconds", "1", "--set", "transport.publish=tcp://0.0.0.0:5556", timeout=60)
    assert done.returncode == 2
    assert "transport.publish" in done.stderr and "allow_insecure" in done.stderr
    assert "publishing on" not in done.stderr  # refused before the agent was made


def test_insecure_exposure_is_accepted_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    endpoints = {
        "windows": f"ipc://{tmp_path}/windows",
        "workers": f"ipc://{tmp_path}/workers",
        "publish": f"tcp://0.0.0.0:{port}",
    }
    transport = TransportConfig(publish=endpoints["publish"], allow_insecure=True, linger_ms=0)
    assert security.check_exposure(transport) == [("publish", endpoints["publish"])]
    hub = Hub(HubConfig(), transport, endpoints)
    with caplog.at_level(logging.WARNING, logger="edge_agent.protocol.security"):
        hub.start()
        hub.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"tcp://0.0.0.0:{port} accepts unencrypted" in w and "curve_secret" in w for w in warnings)


def test_agent_run_dir_is_private(tmp_path: Path) -> None:
    agent = Agent(load_agent_config(None, ["transport.publish=ipc://{run}/publish"]))
    try:
        assert stat.S_IMODE(agent.run_dir.stat().st_mode) == 0o700
        assert agent.endpoints["windows"].startswith(f"ipc://{agent.run_dir}/")
    finally:
        agent.stop()
    assert not agent.run_dir.exists()


# ---------------------------------------------------------------- CURVE end to end


def test_agent_publishes_only_to_allowed_curve_clients_with_demographics(keys: Keys) -> None:
    """A real agent (capture, windower, worker, hub processes) publishing on tcp with CURVE: the
    allowed subscriber gets estimates, status and heartbeats (with the stream's demographics, since
    publish_demographics is on); one without keys and one with a key not on the allow-list get
    nothing in the same time, and each says why instead of staying silent."""
    port = _free_port()
    cfg = load_agent_config(
        None,
        [
            f"transport.publish=tcp://127.0.0.1:{port}",
            f"transport.curve_secret={keys.server_secret}",
            f"transport.curve_allow={keys.allow}",
            "hub.publish_demographics=true",
            "streams.0.demographics={age_years: 61, sex_male: 1, weight_kg: 80, height_cm: 178}",
            "supervisor.log_level=WARNING",
            "worker.threads=1",
        ],
        sources=["synthetic://?seed=1&fps=50&ecg=1"],
    )
    agent = Agent(cfg)
    agent.start()
    endpoint = agent.endpoints["publish"]
    got: dict[str, list[dict]] = {"allowed": [], "no_keys": [], "stranger": []}
    try:
        with (
            Subscriber(
                endpoint, curve_server_key=str(keys.server_public), curve_client_key=str(keys.client_secret)
            ) as allowed,
            Subscriber(endpoint) as no_keys,
            Subscriber(
                endpoint, curve_server_key=str(keys.server_public), curve_client_key=str(keys.stranger_secret)
            ) as stranger,
        ):
            subs = {"allowed": allowed, "no_keys": no_keys, "stranger": stranger}
            end = time.monotonic() + 40.0
            while time.monotonic() < end:
                agent.check()
                for name, sub in subs.items():
                    msg = sub.recv(0.05)
                    if msg is not None:
                        got[name].append(msg)
                kinds = [m["kind"] for m in got["allowed"]]
                if kinds.count("estimate") >= 3 and "status" in kinds and "heartbeat" in kinds:
                    break
            watches = {name: sub.handshakes for name, sub in subs.items()}
    finally:
        agent.stop()
    assert agent.leftovers() == {"processes": [], "rings": []}
    estimates = [m for m in got["allowed"] if m["kind"] == "estimate"]
    assert len(estimates) >= 3, [m["kind"] for m in got["allowed"]]
    assert {"status", "heartbeat"} <= {m["kind"] for m in got["allowed"]}
    assert all(e["demo"] == DEMO for e in estimates)
    assert got["no_keys"] == [] and got["stranger"] == []
    assert _eventually(lambda: watches["allowed"].succeeded >= 1) and watches["allowed"].failed == 0
    assert _eventually(lambda: watches["no_keys"].failed >= 1)
    assert "requires CURVE" in watches["no_keys"].last_failure
    assert _eventually(lambda: watches["stranger"].failed >= 1)
    assert "refused this client's key" in watches["stranger"].last_failure


def test_remote_workers_over_curve_only_the_allowed_key_is_served(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An in-process hub with its workers socket on tcp + CURVE and two `edge-agent worker`
    processes: the one whose key is on the allow-list computes every window; the stranger's
    READY never reaches the hub. publish_demographics is off: no estimate carries ``demo``."""
    port = _free_port()
    endpoints = {
        "windows": f"ipc://{tmp_path}/windows",
        "workers": f"tcp://127.0.0.1:{port}",
        "publish": f"ipc://{tmp_path}/publish",
    }
    transport = TransportConfig(
        workers=endpoints["workers"],
        curve_secret=str(keys.server_secret),
        curve_allow=str(keys.allow),
        linger_ms=0,
    )
    hub = Hub(HubConfig(), transport, endpoints)
    procs: dict[str, subprocess.Popen] = {}
    logs = {name: tmp_path / f"{name}.log" for name in ("allowed", "stranger")}
    ctx = zmq.Context()
    with caplog.at_level(logging.WARNING, logger="edge_agent.protocol.security"):
        hub.start()
        try:
            for name, secret in (("allowed", keys.client_secret), ("stranger", keys.stranger_secret)):
                with logs[name].open("w") as err:
                    procs[name] = subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "edge_agent",
                            "worker",
                            "--connect",
                            endpoints["workers"],
                            "--set",
                            f"transport.curve_server_key={keys.server_public}",
                            "--set",
                            f"transport.curve_client_secret={secret}",
                            "--set",
                            "worker.threads=1",
                        ],
                        cwd=ROOT,
                        stderr=err,
                        env={**os.environ, "OMP_NUM_THREADS": "1"},
                    )
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(endpoints["windows"])
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"lvef.")
            sub.connect(endpoints["publish"])
            identities: set[bytes] = set()
            estimates: list[dict] = []
            seq = 0
            end = time.monotonic() + 60.0
            while time.monotonic() < end:
                if not any(st.queue for st in hub.streams.values()) and seq < 40:
                    push.send_multipart(wire.encode_window(_window("bed1", seq)), copy=False)
                    seq += 1
                hub.process(0.02)
                identities |= set(hub.ready) | set(hub.in_flight)
                while sub.poll(0):
                    estimates.append(wire.decode_estimate(sub.recv_multipart()))
                refused = "refused this client's key" in logs["stranger"].read_text()
                if len(estimates) >= 3 and refused:
                    break
            _pump(hub, 0.5)  # time for a late READY from the stranger, were it admitted
            identities |= set(hub.ready) | set(hub.in_flight)
        finally:
            for proc in procs.values():
                proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            ctx.destroy(linger=0)
            hub.stop()
    stranger_log = logs["stranger"].read_text()
    assert len(estimates) >= 3, (logs["allowed"].read_text()[-2000:], stranger_log[-2000:])
    assert len(identities) == 1, "a worker whose key is not on the allow-list reached the hub"
    assert all("demo" not in e for e in estimates)
    assert "refused this client's key" in stranger_log  # the refused worker says so
    assert any("CURVE client refused" in r.getMessage() for r in caplog.records)  # and so does the hub
    assert procs["allowed"].returncode == 0 and procs["stranger"].returncode == 0


def test_local_workers_use_the_agents_own_key_and_curve_needs_an_allow_list(
    keys: Keys, tmp_path: Path
) -> None:
    """With transport.workers on tcp + CURVE, the agent's own workers (same transport section, no
    client key of their own) get through with the agent's certificate; a socket without CURVE
    does not. curve_secret without curve_allow is refused when the hub starts."""
    port = _free_port()
    endpoints = {
        "windows": f"ipc://{tmp_path}/windows",
        "workers": f"tcp://127.0.0.1:{port}",
        "publish": f"ipc://{tmp_path}/publish",
    }
    transport = TransportConfig(
        workers=endpoints["workers"], curve_secret=str(keys.server_secret), curve_allow=str(keys.allow)
    )
    hub = Hub(HubConfig(), transport, endpoints)
    hub.start()
    ctx = zmq.Context()
    try:
        local = socket(ctx, zmq.DEALER, transport)
        watch = security.secure_client(local, endpoints["workers"], transport)
        local.connect(endpoints["workers"])
        plain = socket(ctx, zmq.DEALER, TransportConfig())
        assert security.secure_client(plain, endpoints["workers"], TransportConfig()) is not None
        plain.connect(endpoints["workers"])
        local.send(b"READY")
        plain.send(b"READY")
        _pump(hub, 1.0)
        assert len(hub.ready) == 1  # the local worker's; the plain socket never got through
        assert watch is not None and _eventually(lambda: watch.succeeded == 1) and watch.failed == 0
    finally:
        ctx.destroy(linger=0)
        hub.stop()
    no_allow = Hub(HubConfig(), TransportConfig(curve_secret=str(keys.server_secret)), endpoints)
    with pytest.raises(security.SecurityError, match=r"curve_allow is not: set it to a directory"):
        no_allow.start()
    no_allow.stop()


# ---------------------------------------------------------------- message size cap


def test_max_message_bytes_default_and_bounds() -> None:
    assert TransportConfig().max_message_bytes == MAX_MESSAGE_BYTES == int(np.prod(wire.MAX_SHAPE))
    assert MIN_MESSAGE_BYTES == 32 * 112 * 112
    with pytest.raises(
        ConfigError, match=r"transport: max_message_bytes: 1000 is out of range; use at least"
    ):
        load_agent_config(None, ["transport.max_message_bytes=1000"])
    with zmq.Context() as ctx:
        sock = socket(ctx, zmq.PULL, TransportConfig(max_message_bytes=1 << 20))
        assert sock.getsockopt(zmq.MAXMSGSIZE) == 1 << 20
        sock.close(linger=0)


def test_oversize_message_is_dropped_and_the_hub_keeps_serving(tmp_path: Path) -> None:
    endpoints = {k: f"ipc://{tmp_path}/{k}" for k in ("windows", "workers", "publish")}
    transport = TransportConfig(max_message_bytes=MIN_MESSAGE_BYTES, linger_ms=0)
    hub = Hub(HubConfig(queue_per_stream=4), transport, endpoints)
    hub.start()
    ctx = zmq.Context()
    try:
        bad = ctx.socket(zmq.PUSH)
        bad.setsockopt(zmq.LINGER, 0)
        events = bad.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        bad.connect(endpoints["windows"])
        good = ctx.socket(zmq.PUSH)
        good.setsockopt(zmq.LINGER, 0)
        good.connect(endpoints["windows"])
        worker = ctx.socket(zmq.DEALER)
        worker.setsockopt(zmq.LINGER, 0)
        worker.connect(endpoints["workers"])

        # One frame more than the cap (33 x 112 x 112: a window wire.py would accept): ZeroMQ
        # disconnects the sender and the message never reaches the hub's code.
        bad.send_multipart(wire.encode_window(_window("big", 0, shape=(33, 112, 112))), copy=False)
        seen = []
        deadline = time.monotonic() + 5.0
        while zmq.EVENT_DISCONNECTED not in seen and time.monotonic() < deadline:
            hub.process(0.01)
            if events.poll(0):
                seen.append(recv_monitor_message(events)["event"])
        assert zmq.EVENT_DISCONNECTED in seen, seen
        for seq in range(3):  # a full-size window (exactly the cap) from a well-behaved peer
            good.send_multipart(wire.encode_window(_window("bed1", seq)), copy=False)
        _pump(hub, 0.3)
        assert "big" not in hub.streams and hub.invalid == 0
        served = []
        for _ in range(3):
            worker.send(b"READY")
            _pump(hub, 0.2)
            assert worker.poll(1000), "the hub stopped serving after the oversize message"
            window = wire.decode_window(worker.recv_multipart())
            served.append(window.seq)
            samples = np.full(40, 50.0, np.float32)
            worker.send_multipart([b"RESULT", *wire.encode_result(window, samples, "torch", 1.0, 1.0)])
        _pump(hub, 0.2)
        assert served == [0, 1, 2] and hub.streams["bed1"].estimates == 3
        events.close(linger=0)
    finally:
        ctx.destroy(linger=0)
        hub.stop()
