"""edgegru mqtt end to end through a local Mosquitto: readings per second, and the latency from
publish to result at a steady rate.

    python tools/bench_mqtt.py [--readings 40000] [--devices 1] [--rate 100] [--seconds 30]

Starts Mosquitto on a free port of 127.0.0.1 (tests/broker.py), `edgegru mqtt` in a child
process, a sensor (paho, QoS 1) and a results subscriber (QoS 1) in this one.

- throughput: --readings readings of examples/sensor.csv published as fast as the sensor can,
  round robin over --devices devices (one mosquitto_pub -l each, or paho without
  mosquitto-clients); readings/s = readings / (last result - first publish). The sensor alone
  (no edgegru, a subscriber reading the readings instead) gives the ceiling that the clients
  and the broker set on this machine.
- latency: --rate readings/s for --seconds; each reading carries its publish time
  (time.time()) as its timestamp, which the result echoes; latency = arrival of the result -
  that time: sensor -> broker -> edgegru -> broker -> subscriber, p50/p99/max.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from broker import Mosquitto  # noqa: E402  (Mosquitto only: the speed is its)

COLUMNS = ["temperature", "vibration", "current", "pressure"]


def rows(n):
    X = np.loadtxt(ROOT / "examples" / "sensor.csv", delimiter=",", skiprows=1,
                   usecols=(1, 2, 3, 4))
    return [dict(zip(COLUMNS, X[i % len(X)].tolist())) for i in range(n)]


class Subscriber:
    """Counts messages on a topic filter and keeps (arrival time, payload) of each."""

    def __init__(self, port, topic, client_id):
        self.arrivals = []
        self.done = threading.Event()
        self.expect = None
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        clean_session=True)
        subscribed = threading.Event()
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = self._message
        c.connect("127.0.0.1", port)
        c.subscribe(topic, 1)
        c.loop_start()
        subscribed.wait(10)
        self.client = c

    def _message(self, client, userdata, msg):
        self.arrivals.append((time.time(), msg.payload))
        if self.expect is not None and len(self.arrivals) >= self.expect:
            self.done.set()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def sensor(port):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sensor",
                    clean_session=False)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def flood(port, readings, devices, result_topic, tmp):
    """(messages, seconds) from the first publish to the last message on result_topic: with
    Mosquitto's C clients when they are installed (apt install mosquitto-clients: a Python
    sensor tops out below edgegru), else paho."""
    n = len(readings)
    if not shutil.which("mosquitto_pub"):
        return flood_paho(port, readings, devices, result_topic)
    files = []
    for k in range(devices):
        path = os.path.join(tmp, f"d{k}.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(dict(r, timestamp=i)) + "\n"
                         for i, r in enumerate(readings) if i % devices == k)
        files.append(path)
    where = ["-h", "127.0.0.1", "-p", str(port), "-q", "1"]
    sub = subprocess.Popen(["mosquitto_sub", *where, "-t", result_topic, "-C", str(n)],
                           stdout=subprocess.DEVNULL)
    time.sleep(0.5)                          # subscribed
    t0 = time.time()
    pubs = [subprocess.Popen(["mosquitto_pub", *where, "-t", f"bench/d{k}/telemetry", "-l"],
                             stdin=open(path)) for k, path in enumerate(files)]
    sub.wait(600)
    seconds = time.time() - t0
    for p in pubs:
        p.wait(60)
    return n, seconds


def flood_paho(port, readings, devices, result_topic):
    sub = Subscriber(port, result_topic, f"bench-results-{time.monotonic_ns()}")
    sub.expect = len(readings)
    pub = sensor(port)
    payloads = [json.dumps(dict(r, timestamp=i)) for i, r in enumerate(readings)]
    t0 = time.time()
    for i, p in enumerate(payloads):
        pub.publish(f"bench/d{i % devices}/telemetry", p, qos=1)
    sub.done.wait(600)
    seconds = sub.arrivals[-1][0] - t0
    got = len(sub.arrivals)
    pub.disconnect()
    pub.loop_stop()
    sub.close()
    return got, seconds


def steady(port, rate, seconds):
    """Latencies (ms) of results for readings published at ``rate`` per second."""
    sub = Subscriber(port, "bench/+/anomaly", "bench-latency")
    pub = sensor(port)
    n = int(rate * seconds)
    sub.expect = n
    row = rows(n)
    t_next = time.perf_counter()
    for i in range(n):
        t_next += 1.0 / rate
        while time.perf_counter() < t_next:
            time.sleep(min(0.0005, max(t_next - time.perf_counter(), 0)))
        pub.publish("bench/d0/telemetry", json.dumps(dict(row[i], timestamp=time.time())),
                    qos=1)
    sub.done.wait(60)
    lat = np.array([(t - json.loads(p)["timestamp"]) * 1e3 for t, p in sub.arrivals])
    pub.disconnect()
    pub.loop_stop()
    sub.close()
    return lat


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=40_000)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-inflight", type=int, default=20,
                    help="Mosquitto's max_inflight_messages (its default: 20)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    broker = Mosquitto(tmp, max_inflight=args.max_inflight).start()
    edgegru = None
    try:
        readings = rows(args.readings)
        got, s = flood(broker.port, readings, args.devices, "bench/+/telemetry", tmp)
        print(f"sensor -> broker -> subscriber alone: {got} readings in {s:.2f} s = "
              f"{got / s:,.0f}/s")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        edgegru = subprocess.Popen(
            [sys.executable, "-m", "edgegru", "mqtt", "--weights",
             str(ROOT / "weights" / "model.npz"), "--broker", broker.url, "--subscribe",
             "bench/+/telemetry", "--device-from-topic", "2", "--publish",
             "bench/{device}/anomaly", "--client-id", "bench-edgegru"],
            env=env, stderr=subprocess.PIPE, text=True)
        while "connected to" not in edgegru.stderr.readline():
            pass
        got, s = flood(broker.port, readings, args.devices, "bench/+/anomaly", tmp)
        print(f"sensor -> broker -> edgegru mqtt -> broker -> subscriber, {args.devices} "
              f"device(s), max_inflight_messages {args.max_inflight}: {got} results in "
              f"{s:.2f} s = {got / s:,.0f} readings/s")
        lat = steady(broker.port, args.rate, args.seconds)
        print(f"latency publish -> result at {args.rate:g} readings/s, {len(lat)} readings: "
              f"p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms, "
              f"max {lat.max():.2f} ms")
    finally:
        if edgegru is not None:
            edgegru.terminate()
            edgegru.wait(30)
        broker.stop()


if __name__ == "__main__":
    main()
