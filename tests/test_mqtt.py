"""edgegru mqtt against a real broker: Mosquitto (else amqtt) over TCP on 127.0.0.1
(tests/broker.py).

One edgegru process serves the module's tests (each on devices of its own); the restart test
has a broker and processes of its own, since it kills them."""
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edgegru
from edgegru.errors import EdgeGRUError
from edgegru.mqtt import BadPayload, MqttOptions, Readings, _Bridge, parse_broker
from edgegru.stream import score_stream

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed "
                           "(pip install 'edgegru[mqtt]')")
from broker import broker as make_broker, free_port, why_no_broker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = str(ROOT / "weights" / "model.npz")
EXAMPLE = ROOT / "examples" / "sensor.csv"
needs_broker = pytest.mark.skipif(why_no_broker() is not None, reason=str(why_no_broker()))


def example_rows(n=None):
    lines = EXAMPLE.read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:n and n + 1]]
    for r in rows:
        for k in header[1:]:
            r[k] = float(r[k])
    return header, rows


def run_scores(csv_text):
    """What `edgegru run --format jsonl --precision 17` gives for csv_text."""
    out = io.BytesIO()
    score_stream(edgegru.AnomalyScorer.load(WEIGHTS), io.BytesIO(csv_text.encode()), out,
                 fmt="jsonl", precision=17, handle_signals=False, log=lambda m: None)
    return [json.loads(line)["score"] for line in out.getvalue().decode().splitlines()]


class Edgegru:
    """`python -m edgegru mqtt ...` in a child process, stderr in a file."""

    def __init__(self, broker, tmp_path, *args, name="edgegru"):
        self.log = tmp_path / f"{name}.log"
        self.args = ["--weights", WEIGHTS, "--broker", broker.url, *args]

    def start(self, timeout=60):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "edgegru", "mqtt", *self.args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"), env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        starts = self.stderr().count("edgegru mqtt: connected to")
        while self.stderr().count("edgegru mqtt: connected to") == starts:
            assert self.proc.poll() is None, self.stderr()
            assert time.monotonic() < deadline, "edgegru mqtt did not connect"
            time.sleep(0.05)
        return self

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def stderr(self):
        return self.log.read_text() if self.log.exists() else ""


class Client:
    """A paho client with a persistent session: publishes readings, collects results."""

    def __init__(self, broker, client_id, subscribe=None):
        self.messages = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.max_inflight_messages_set(100)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: (
            c.subscribe(subscribe, 1) if subscribe else None)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if subscribe:
            assert self.subscribed.wait(10)

    def publish(self, topic, payload):
        return self.client.publish(topic, payload, qos=1)

    def results(self):
        return [json.loads(p) for _, p in list(self.messages)]

    def wait_for(self, n, timeout=60):
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.results()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def start_broker(directory, **options):
    try:
        return make_broker(directory, **options).start()
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"no MQTT broker could start: {exc}")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = start_broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.stop()


@pytest.fixture(scope="module")
def server(broker, tmp_path_factory):
    """One edgegru mqtt for the module: device = topic level 2, results under results/."""
    e = Edgegru(broker, tmp_path_factory.mktemp("edgegru"), "--subscribe", "plant/+/telemetry",
                "--device-from-topic", "2", "--publish", "results/{device}",
                "--client-id", "edgegru-test", "--explain").start()
    yield e
    assert e.stop() == 128 + signal.SIGTERM
    assert "readings scored" in e.stderr()


# -- against the broker ------------------------------------------------------------------------

@needs_broker
def test_round_trip_equals_edgegru_run(broker, server):
    header, rows = example_rows()
    results = Client(broker, "results-rt", "results/pump-1")
    sensor = Client(broker, "sensor-rt")
    for r in rows:
        info = sensor.publish("plant/pump-1/telemetry", json.dumps(r))
    info.wait_for_publish(30)
    got = results.wait_for(len(rows))
    assert len(got) == len(rows)
    assert [g["timestamp"] for g in got] == [r["timestamp"] for r in rows]
    assert [g["score"] for g in got] == run_scores(EXAMPLE.read_text())
    assert set(got[0]["contrib"]) == set(header[1:])
    assert all(g["anomaly"] == (g["score"] > edgegru.AnomalyScorer.load(WEIGHTS).threshold)
               for g in got[:50])
    sensor.close()
    results.close()


@needs_broker
def test_two_interleaved_devices_keep_separate_states(broker, server):
    header, rows = example_rows(600)
    a, b = rows[:300], rows[300:]          # device b's stream is another stretch of the file
    results = Client(broker, "results-2", "results/+")
    sensor = Client(broker, "sensor-2")
    for ra, rb in zip(a, b):
        sensor.publish("plant/dev-a/telemetry", json.dumps(ra))
        info = sensor.publish("plant/dev-b/telemetry", ",".join(str(rb[k]) for k in header[1:]))
    info.wait_for_publish(30)
    got = results.wait_for(600)
    scorer = edgegru.AnomalyScorer.load(WEIGHTS)
    for device, part in (("dev-a", a), ("dev-b", b)):
        mine = [g["score"] for g in got if g["device"] == device]
        scorer.reset()
        assert mine == scorer.score_many([[r[k] for k in header[1:]] for r in part]).tolist()
    sensor.close()
    results.close()


@needs_broker
def test_10000_malformed_payloads_no_crash_valid_ones_scored(broker, server):
    header, rows = example_rows(200)
    junk = [b"", b"not json", b"{", b"[1, 2]", b'{"temperature": "hot"}',
            b'{"temperature": true}', b'{"timestamp": {"a": 1}}', b"1,2", b"\x00\xff\xfe",
            b"a,b,c,d", b'"', b"{" * 100_000]
    results = Client(broker, "results-bad", "results/bad-dev")
    sensor = Client(broker, "sensor-bad")
    sent = 0
    for i, r in enumerate(rows):
        for j in range(50):
            sensor.publish("plant/bad-dev/telemetry", junk[(i + j) % len(junk)])
            sent += 1
        info = sensor.publish("plant/bad-dev/telemetry", json.dumps(r))
    sensor.publish("badtopic", b"{}")             # no level 2 to name the device
    info.wait_for_publish(60)
    got = results.wait_for(len(rows))
    assert sent == 10_000
    assert server.proc.poll() is None
    scorer = edgegru.AnomalyScorer.load(WEIGHTS)
    assert [g["score"] for g in got] == scorer.score_many(
        [[r[k] for k in header[1:]] for r in rows]).tolist()
    notes = server.stderr()
    assert "plant/bad-dev/telemetry: not JSON" in notes
    assert "is \"hot\", not a number" in notes
    sensor.close()
    results.close()


def distinct(results, n, timeout=60):
    """{timestamp: score} of the results, once at least n distinct timestamps came (a result
    published twice, QoS 1, counts once)."""
    deadline = time.monotonic() + timeout
    while True:
        by_time = {}
        for g in results.results():
            by_time.setdefault(g["timestamp"], g["score"])
        if len(by_time) >= n or time.monotonic() > deadline:
            return by_time
        time.sleep(0.05)


@needs_broker
def test_broker_and_edgegru_restarts_lose_and_repeat_nothing(tmp_path):
    """The broker stopped (SIGTERM) with readings in flight and started again, then edgegru
    stopped mid-stream and started again: every reading is scored once, with the scores of one
    unbroken run, and the saved state has seen every reading once."""
    if not make_broker(tmp_path).keeps_sessions:
        pytest.skip("amqtt keeps no sessions across its restarts: this needs Mosquitto")
    broker = start_broker(tmp_path)
    header, rows = example_rows(3000)
    state = tmp_path / "mqtt.state"
    e = Edgegru(broker, tmp_path, "--subscribe", "site/+/telemetry", "--device-from-topic", "2",
                "--publish", "out/{device}", "--client-id", "edgegru-restart",
                "--state", str(state), "--checkpoint-every", "500")
    clients = []
    try:
        e.start()
        results = Client(broker, "results-restart", "out/+")
        sensor = Client(broker, "sensor-restart")
        clients += [results, sensor]

        def publish(part, pause=0.0):
            for r in part:
                sensor.publish("site/p1/telemetry", json.dumps(r))
                time.sleep(pause)

        publish(rows[:1000])               # at full speed: many still in flight at the stop
        broker.stop()                      # Mosquitto saves its sessions and queues
        publish(rows[1000:1500])           # queued in the sensor's client meanwhile
        broker.start()
        # edgegru resumes its session before new readings come: Mosquitto 2.0 can deliver one
        # that arrives as a session resumes before the queued ones (docs/mqtt.md)
        assert len(distinct(results, 1500)) == 1500
        live = threading.Thread(target=publish, args=(rows[1500:2500], 0.0005))
        live.start()
        time.sleep(0.2)
        assert e.stop() == 128 + signal.SIGTERM        # mid-stream: state saved
        live.join()                        # the rest queued by the broker for edgegru
        e.start()
        assert len(distinct(results, 2500)) == 2500
        publish(rows[2500:], 0.0005)
        by_time = distinct(results, len(rows))
        assert sorted(by_time) == [r["timestamp"] for r in rows]
        scorer = edgegru.AnomalyScorer.load(WEIGHTS)
        assert [by_time[r["timestamp"]] for r in rows] == scorer.score_many(
            [[r[k] for k in header[1:]] for r in rows]).tolist()
        assert e.stop(signal.SIGHUP) == 128 + signal.SIGHUP   # saves as SIGTERM does
        assert e.stderr().count(" 0 late") == 2          # in order, in both runs
        with np.load(state) as saved:
            assert saved["state.rows_seen"].tolist() == [len(rows)]
            assert int(saved["rows"]) == len(rows)
    finally:
        for c in clients:
            c.close()
        if e.proc.poll() is None:
            e.proc.kill()
        broker.stop()


# -- without a broker ---------------------------------------------------------------------------

def readings(**options):
    return Readings(["temperature", "vibration"], MqttOptions(**options))


def test_payloads_json_and_csv():
    r = readings(device_from_topic=2)
    device, x, stamp = r.parse("plant/p3/telemetry", b'{"temperature": 71.5, "vibration": null,'
                                                     b' "timestamp": "2026-01-01T00:00:00"}')
    assert (device, stamp) == ("p3", "2026-01-01T00:00:00")
    assert x[0] == 71.5 and np.isnan(x[1])
    assert np.isnan(r.parse("plant/p3/t", b"{}")[1]).all()       # every key missing
    assert r.parse("plant/p3/t", b'{"temperature": 1e999, "vibration": 10}')[1][0] == np.inf
    device, x, stamp = readings(columns=["timestamp", "device", "vibration", "temperature"],
                                device_key="device").parse("any", b"t1,pump-9,2.5,70\r\n")
    assert (device, x.tolist(), stamp) == ("pump-9", [70.0, 2.5], "t1")
    assert readings().parse("a/b", b"1,2")[0] == "a/b"             # default: the topic


@pytest.mark.parametrize("payload, why", [
    (b"nope", "as a CSV line: 'vibration': 1 field where the model has 2"),
    (b"{", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"temperature": "hot"}', "'temperature' is \"hot\", not a number"),
    (b'{"vibration": false}', "'vibration' is false, not a number"),
    (b'{"timestamp": [1]}', "'timestamp' is [1], not a time"),
    (b"1,abc", "'abc' is not a number"),
    (b"\xff\xfe,1", "not UTF-8"),
    (b"", "empty"),
])
def test_bad_payloads_say_why(payload, why):
    with pytest.raises(BadPayload) as bad:
        readings().parse("t", payload)
    assert why in str(bad.value)


def test_device_from_topic_and_key_must_exist():
    with pytest.raises(BadPayload, match="no level 3"):
        readings(device_from_topic=3).parse("a/b", b"{}")
    with pytest.raises(BadPayload, match="no device 'id'"):
        readings(device_key="id").parse("a/b", b"{}")


def test_broker_urls():
    assert parse_broker("mqtt://h") == (False, "h", 1883)
    assert parse_broker("mqtts://h:1") == (True, "h", 1)
    assert parse_broker("h:7") == (False, "h", 7)
    for bad in ("http://h", "mqtt://", "mqtt://h:x"):
        with pytest.raises(EdgeGRUError, match="--broker"):
            parse_broker(bad)


def test_max_devices_and_second_copies():
    bridge = _Bridge(edgegru.AnomalyScorer.load(WEIGHTS),
                     MqttOptions(subscribe=["t"], max_devices=2), log=lambda m: None)
    bridge._check_new("a", "t1")
    bridge._check_new("b", None)
    bridge._check_new("b", None)                 # no timestamp: never a copy
    with pytest.raises(BadPayload, match="one more than --max-devices 2"):
        bridge._check_new("c", "t1")
    from edgegru.mqtt import Repeat
    with pytest.raises(Repeat):
        bridge._check_new("a", "t1")
    bridge._check_new("a", "t2")
    bridge._check_new("b", "t1")                 # timestamps are per device


def test_publishing_onto_a_subscription_is_refused():
    from edgegru.mqtt import Results
    results = Results(["x"], MqttOptions(publish="plant/{device}/anomaly"), ["plant/#"],
                      mqtt.topic_matches_sub)
    with pytest.raises(EdgeGRUError, match="score its own results"):
        results.topic("p1", "plant/p1/telemetry")


def test_on_change_publishes_alarms_and_all_clears_only():
    from edgegru.mqtt import Results
    results = Results(["x"], MqttOptions(publish="r/{device}", on_change=True), ["s/#"],
                      mqtt.topic_matches_sub)
    out = results.messages([("d", "s/d", t) for t in "abcde"], [0.1, 5, 6, 0.2, 0.3],
                           [False, True, True, False, False], None)
    assert [json.loads(p)["timestamp"] for _, p in out] == ["b", "d"]


def test_help_has_an_example():
    from click.testing import CliRunner
    from edgegru.cli import main
    result = CliRunner().invoke(main, ["mqtt", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "--subscribe" in result.output


def test_without_paho_the_error_names_the_extra():
    code = ("import sys; sys.modules['paho'] = None\n"
            "from click.testing import CliRunner\nfrom edgegru.cli import main\n"
            "r = CliRunner().invoke(main, ['mqtt', '--weights', 'w', '--subscribe', 't'])\n"
            "print(r.exit_code, r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    assert out.startswith("1 Error: edgegru mqtt needs paho-mqtt 2: pip install "
                          "'edgegru[mqtt]'")


@needs_broker
def test_no_broker_or_a_refusal_is_a_one_line_error(tmp_path):
    from click.testing import CliRunner
    from edgegru.cli import main
    args = ["mqtt", "--weights", WEIGHTS, "--subscribe", "t", "-q", "--broker"]
    result = CliRunner().invoke(main, args + [f"mqtt://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "cannot connect to mqtt://127.0.0.1:" in result.output
    assert "Connection refused" in result.output
    broker = start_broker(tmp_path, anonymous=False)
    try:
        result = CliRunner().invoke(main, args + [broker.url])
        assert result.exit_code == 1
        assert result.output.startswith(f"Error: {broker.url}: the broker did not accept the "
                                        f"connection: ")
        assert len(result.output.strip().splitlines()) == 1
    finally:
        broker.stop()


def test_late_readings_are_scored_and_counted():
    bridge = _Bridge(edgegru.AnomalyScorer.load(WEIGHTS), MqttOptions(subscribe=["t"]),
                     log=lambda m: None)
    for stamp in ("t3", "t1", "t2", "t4"):
        bridge._check_new("a", stamp)
    assert bridge.result.late == 2            # t1 and t2 after t3
    for stamp in (5, 7.5):
        bridge._check_new("a", stamp)         # text then numbers: no order between them
    assert bridge.result.late == 2
    bridge._check_new("a", 6)
    assert bridge.result.late == 3


class StubClient:
    """What _Bridge asks of paho's client once connected: publish and ack, recorded."""

    def __init__(self):
        self.published, self.acked = [], []

    def publish(self, topic, payload, qos):
        self.published.append((topic, json.loads(payload)))

    def ack(self, mid, qos):
        self.acked.append(mid)


def test_retained_messages_are_acknowledged_not_scored():
    """A retained message comes on every subscription (the broker's copy of an old value):
    scoring it would score that reading again at each reconnect."""
    bridge = _Bridge(edgegru.AnomalyScorer.load(WEIGHTS),
                     MqttOptions(subscribe=["p/+"], device_from_topic=2, publish="r/{device}"),
                     log=lambda m: None)
    bridge.client = StubClient()
    reading = b'{"temperature": 20, "timestamp": 1}'
    bridge._handle([("p/a", reading, 1, 1, None), ("p/a", b"junk", 2, 1, 1e9),
                    ("p/a", reading.replace(b"1}", b"2}"), 3, 1, 1e9)])
    assert bridge.client.acked == [1, 2, 3]
    assert [(t, r["timestamp"]) for t, r in bridge.client.published] == [("r/a", 2)]
    assert (bridge.result.retained, bridge.result.bad, bridge.result.scored) == (1, 1, 1)
