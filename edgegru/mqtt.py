"""MQTT readings in, one scored result out per reading: ``edgegru mqtt`` as a library.

>>> import edgegru
>>> from edgegru.mqtt import MqttOptions, serve
>>> scorer = edgegru.AnomalyScorer.load("weights/model.npz")          # doctest: +SKIP
>>> serve(scorer, MqttOptions(broker="mqtt://localhost:1883",
...                           subscribe=["plant/+/telemetry"], device_from_topic=2,
...                           publish="plant/{device}/anomaly"))       # doctest: +SKIP

A reading is one MQTT message: a JSON object whose keys are the model's columns
(``{"temperature": 71.2, "vibration": 1.5, ...}``; a missing key or ``null`` is a missing
value) or one CSV line whose fields ``columns`` names in order. Each device (a topic level, a
field of the reading, or else the whole topic) is its own stream, with its own state, in one
:class:`~edgegru.scoring.GroupScorer`. The readings that arrive together are scored together
(``score_many``), so a burst costs one kernel call and a lone reading is scored at once.

Delivery. Subscriptions and results are QoS 1 and the session is persistent (a fixed client
id, clean_session false): while edgegru restarts or the network is down the broker queues the
readings and delivers them when it reconnects. A reading is acknowledged to the broker only
after it has been scored and its result handed to the client, so one that edgegru received
but had not scored when it stopped is delivered again. QoS 1 delivers at least once: a reading
with the timestamp of one of its device's last ``RECENT`` readings is a second copy, and is
dropped (counted, and noted on stderr), so that no reading moves a state twice. Readings
without a timestamp cannot be told from their copies: they are all scored. The order is the
broker's: Mosquitto 2.0 can deliver a reading that arrives just as a session resumes before
the readings it had queued (docs/mqtt.md); such a reading is scored where it arrives, and the
readings after it that are older are counted as late and noted.

Stopping. SIGTERM, SIGHUP and SIGINT stop the reading, score and publish what was received,
save the state, acknowledge, and disconnect (the session stays on the broker). A SIGKILL loses
the state changes since the last checkpoint (``checkpoint_every``), as ``edgegru run`` does.

Bad payloads (not JSON, not a number, wrong field count, a new device beyond
``max_devices``) are counted and noted on stderr with their topic (the first
``MAX_REPORTED`` one by one, then a count a minute); they never stop the loop.
"""
import dataclasses
import hashlib
import json
import queue
import socket
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timezone

import numpy as np

from edgegru.errors import EdgeGRUError, WriteError
from edgegru.scoring import GroupScorer, valid_threshold
from edgegru.csvio import BadRow, Layout, parse_line
from edgegru.stream import Position, StateFile, _Signals

QOS = 1
MAX_REPORTED = 20            # bad payloads noted one by one; later ones are counted
REPORT_EVERY = 60.0          # seconds between counts of the bad payloads not noted
RECENT = 1024                # timestamps per device kept to tell a second copy of a reading
MAX_BATCH = 4096             # readings scored in one call at most
CONNECT_TIMEOUT = 15.0       # seconds for the broker to accept the first connection
PUBLISH_TIMEOUT = 10.0       # seconds, at the end, for the broker to take the last results
STATE_MARK = "mqtt"          # StateFile's group_by: a state of `edgegru run` is refused


@dataclasses.dataclass
class MqttOptions:
    """What ``edgegru mqtt`` is told; the defaults are the command's."""
    broker: str = "mqtt://localhost:1883"
    subscribe: list = dataclasses.field(default_factory=list)    # topic filters
    publish: str = "{topic}/anomaly"        # {device}, {topic}: those of the reading
    client_id: str = None                   # default: edgegru-<hostname>
    device_from_topic: int = None           # 1-based topic level naming the device
    device_key: str = None                  # or a field of the reading
    timestamp_key: str = "timestamp"
    columns: list = None                    # the fields of a CSV payload, in order
    explain: bool = False
    on_change: bool = False                 # publish only alarms and all-clears
    threshold: float = None
    state: str = None
    checkpoint_every: int = 0
    max_devices: int = 10_000
    cafile: str = None
    username: str = None
    password: str = None
    keepalive: int = 30


@dataclasses.dataclass
class MqttResult:
    """What one :func:`serve` call did."""
    scored: int = 0
    published: int = 0
    bad: int = 0                 # bad payloads, dropped
    repeats: int = 0             # second copies (a recent timestamp of the device again)
    late: int = 0                # readings older than one scored before them (scored)
    retained: int = 0            # retained messages (sent on subscribing), not scored
    signal: int = None           # the signal that stopped it


class BadPayload(Exception):
    """A message that is not a reading: the message says why."""


class Repeat(BadPayload):
    """A second copy of a reading already scored (QoS 1 delivers at least once)."""


def paho():
    """The paho-mqtt client module, or an error naming the extra that installs it."""
    try:
        import paho.mqtt.client as client
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: F401 (paho-mqtt >= 2)
    except ImportError:
        raise EdgeGRUError("edgegru mqtt needs paho-mqtt 2: pip install 'edgegru[mqtt]'") \
            from None
    return client


def parse_broker(url):
    """``mqtt://host:1883`` or ``mqtts://host:8883`` -> (tls, host, port)."""
    parts = urllib.parse.urlsplit(url if "://" in url else "mqtt://" + url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise EdgeGRUError(f"--broker {url}: the scheme must be mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise EdgeGRUError(f"--broker {url}: bad port") from None
    if not parts.hostname:
        raise EdgeGRUError(f"--broker {url}: no host")
    return tls, parts.hostname, port


class Readings:
    """Messages to readings: (device, values (C,) float64 with NaN for missing, timestamp)."""

    def __init__(self, model_columns, options):
        self.columns = list(model_columns)
        self.level = options.device_from_topic
        self.device_key = options.device_key
        self.timestamp_key = options.timestamp_key
        names = list(options.columns or model_columns)
        keep = [options.timestamp_key] if options.timestamp_key in names else []
        group = options.device_key if options.device_key in names else None
        self.layout = Layout.without_header(self.columns, options.columns, keep=keep,
                                            group_by=group)
        self._time_slot = self.layout.kept_slots[0] if keep else None

    def parse(self, topic, payload):
        """The reading in one message; BadPayload says why there is none."""
        text = payload.lstrip()
        if text[:1] == b"{":
            values, stamp, field = self._json(payload)
        else:
            values, stamp, field = self._csv(payload)
        return self._device(topic, field), values, stamp

    def _json(self, payload):
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise BadPayload(f"not JSON ({str(exc).split(':')[0]})") from None
        if not isinstance(obj, dict):
            raise BadPayload("not a JSON object")
        values = np.empty(len(self.columns), np.float64)
        for i, name in enumerate(self.columns):
            v = obj.get(name)
            if v is None:
                values[i] = np.nan
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                values[i] = _float(v)
            else:
                raise BadPayload(f"{name!r} is {_short(v)}, not a number")
        stamp = obj.get(self.timestamp_key)
        if not (stamp is None or isinstance(stamp, (str, int, float))) or isinstance(stamp, bool):
            raise BadPayload(f"{self.timestamp_key!r} is {_short(stamp)}, not a time")
        field = obj.get(self.device_key) if self.device_key else None
        return values, stamp, field

    def _csv(self, payload):
        try:
            parsed = parse_line(payload.rstrip(b"\r\n"), self.layout)
        except BadRow as bad:
            where = self.layout.column(bad.field)
            raise BadPayload(f"not a JSON object, and as a CSV line: "
                             f"{where + ': ' if where else ''}{bad.message}") from None
        if parsed is None:
            raise BadPayload("empty, or a CSV header line")
        values, spans = parsed
        stamp = spans[self._time_slot].strip() if self._time_slot is not None else None
        field = spans[self.layout.group_slot].strip() if self.layout.group is not None else None
        return np.array(values, np.float64), stamp or None, field

    def _device(self, topic, field):
        if self.level is not None:
            levels = topic.split("/")
            if self.level > len(levels):
                raise BadPayload(f"the topic has {len(levels)} levels, no level {self.level} "
                                 f"to name the device (--device-from-topic)")
            return levels[self.level - 1]
        if self.device_key is not None:
            if field is None or isinstance(field, (dict, list)) or field == "":
                raise BadPayload(f"no device {self.device_key!r} (--device-key)")
            return str(field)
        return topic


def _float(v):
    try:
        return float(v)
    except OverflowError:                # an integer beyond float64: a missing value, as inf
        return np.inf


def _short(value, n=40):
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= n else text[:n] + "..."


class _Recent:
    """Digests of the timestamps of a device's last ``RECENT`` readings: a reading with one of
    them is a second copy (QoS 1 delivers at least once: the broker redelivers what edgegru
    had not acknowledged, a publisher resends what the broker had not). 8 bytes a reading, so
    that 10,000 devices hold 80 MB."""

    def __init__(self, ring=None, filled=0, at=0):
        self.ring = np.zeros(RECENT, np.uint64) if ring is None else np.array(ring, np.uint64)
        self.filled = int(filled)
        self.at = int(at)
        self.newest = None                  # the latest timestamp taken (not saved)

    def late(self, stamp):
        """The newest timestamp when ``stamp`` comes before it (both text, or both numbers:
        ISO 8601 in one format sorts as text), else None."""
        newest = self.newest
        if newest is None or type(newest) is not type(stamp) and not (
                isinstance(stamp, (int, float)) and isinstance(newest, (int, float))):
            self.newest = stamp
            return None
        if stamp < newest:
            return newest
        self.newest = stamp
        return None

    def add(self, stamp):
        """False (and nothing changes) when ``stamp`` is a recent reading's."""
        d = np.uint64(int.from_bytes(hashlib.blake2b(repr(stamp).encode(), digest_size=8)
                                     .digest(), "little"))
        if (self.ring[:self.filled] == d).any():
            return False
        self.ring[self.at] = d
        self.at = (self.at + 1) % RECENT
        self.filled = min(self.filled + 1, RECENT)
        return True


class Results:
    """Scores to MQTT messages: (topic, JSON payload) per reading to publish."""

    def __init__(self, columns, options, subscriptions, topic_matches):
        self.columns = list(columns)
        self.template = options.publish
        self.explain = options.explain
        self.on_change = options.on_change
        self.alarm = {}                          # device -> last anomaly flag (--on-change)
        self._topics = {}                        # (device, topic) -> result topic
        self._subscriptions = subscriptions
        self._matches = topic_matches

    def topic(self, device, topic):
        key = (device, topic)
        result = self._topics.get(key)
        if result is None:
            result = self.template.format(device=device, topic=topic)
            loop = [s for s in self._subscriptions if self._matches(s, result)]
            if loop:
                raise EdgeGRUError(f"--publish {self.template!r} gives {result!r}, which "
                                   f"--subscribe {loop[0]!r} reads: edgegru would score its own "
                                   f"results; publish elsewhere")
            if len(self._topics) < 100_000:
                self._topics[key] = result
        return result

    def messages(self, readings, scores, anomaly, contrib):
        """(topic, payload) for each reading (device, topic, stamp) to publish."""
        out = []
        for j, (device, topic, stamp) in enumerate(readings):
            flag = bool(anomaly[j])
            if self.on_change:
                if self.alarm.get(device, False) == flag:
                    continue
                self.alarm[device] = flag
            body = {"device": device, "timestamp": stamp, "score": float(scores[j]),
                    "anomaly": flag}
            if self.explain:
                body["contrib"] = dict(zip(self.columns, contrib[j].tolist()))
            out.append((self.topic(device, topic), json.dumps(body, allow_nan=True)))
        return out


def _iso(seconds):
    """A time.time() as ISO 8601 UTC to the millisecond (a reading's arrival time)."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


class _Notes:
    """Bad payloads and repeats on stderr: the first few one by one, then a count a minute."""

    def __init__(self, log):
        self.log = log
        self.reported = 0
        self.unreported = 0
        self.last = None
        self.next_count = 0.0

    def __call__(self, topic, why):
        if self.reported < MAX_REPORTED:
            self.reported += 1
            tail = " (later ones are counted once a minute)" if self.reported == MAX_REPORTED \
                else ""
            self.log(f"edgegru mqtt: {topic}: {why}{tail}")
        else:
            self.unreported += 1
            self.last = f"{topic}: {why}"
            if self.next_count == 0.0:
                self.next_count = time.monotonic() + REPORT_EVERY

    def flush(self, force=False):
        if self.unreported and (force or time.monotonic() >= self.next_count):
            self.log(f"edgegru mqtt: {self.unreported} more dropped message(s), the last: "
                     f"{self.last}")
            self.unreported, self.next_count = 0, 0.0


def compile_scoring(scorer):
    """Compile (or load from numba's cache) the kernels :func:`serve` runs, before it
    subscribes: a first reading that waits seconds for them lets the broker's queue overflow.
    Both paths of GroupScorer run: a batch of devices, and one with a missing value."""
    X = np.tile(scorer.mean, (4, 1))
    X[3, 0] = np.nan
    group = GroupScorer(scorer)
    group.score_many(["a", "b", "a", "b"], X, explain=True)
    group.score_many(["a"], X[:1])
    scorer.reset()


def serve(scorer, options, log=None, handle_signals=True):
    """Score the readings of ``options.subscribe`` and publish a result for each (see the
    module doc) until SIGTERM, SIGHUP or SIGINT; returns an :class:`MqttResult`. Raises
    EdgeGRUError when the broker cannot be reached or refuses the first connection."""
    bridge = _Bridge(scorer, options, log or _stderr)
    bridge.resume()
    compile_scoring(scorer)
    with _Signals(handle_signals) as signals:
        bridge.connect()
        try:
            bridge.loop(signals)
        finally:
            bridge.close()
    bridge.result.signal = signals.received
    return bridge.result


def _stderr(line):
    print(line, file=sys.stderr, flush=True)


class _Bridge:
    """One client, one GroupScorer: messages in (paho's thread) to results out (this one)."""

    def __init__(self, scorer, options, log):
        mqtt = paho()
        if not options.subscribe:
            raise EdgeGRUError("nothing to subscribe to: give a topic filter (--subscribe)")
        self.mqtt = mqtt
        self.options = options
        self.log = log
        self.threshold = scorer.threshold if options.threshold is None else \
            valid_threshold(options.threshold, "--threshold")
        self.readings = Readings(scorer.columns, options)
        self.results = Results(scorer.columns, options, list(options.subscribe),
                               mqtt.topic_matches_sub)
        self.group = GroupScorer(scorer)
        self.recent = {}                     # device -> _Recent (its readings' timestamps)
        self.state = StateFile(options.state, scorer.fingerprint, STATE_MARK) \
            if options.state else None
        self.rows = 0                        # scored over all runs of this state
        self.since_checkpoint = 0
        self.inbox = queue.Queue()           # (topic, payload, mid, qos, arrival time or
        #                                      None for a retained message)
        self.notes = _Notes(log)
        self.result = MqttResult()
        self.accepting = True
        self.connected = threading.Event()
        self.refused = None
        self.ever_connected = False
        self.last_publish = None

    # -- state ----------------------------------------------------------------------------
    def resume(self):
        if self.state is None:
            return
        self.state.check()
        loaded = self.state.load()
        if loaded is None:
            return
        state, pos = loaded
        try:
            recent, at, alarms = state.pop("recent"), state.pop("recent_at"), state.pop("alarms")
            self.group.state = state
            if recent.shape != (len(self.group.keys), RECENT):
                raise ValueError(f"recent has shape {recent.shape}")
        except (KeyError, ValueError) as exc:
            raise EdgeGRUError(f"{self.state.path}: not an edgegru mqtt state file ({exc})") \
                from None
        self.recent = {k: _Recent(r, *a) for k, r, a in zip(self.group.keys, recent, at)}
        self.results.alarm = {k: bool(a) for k, a in zip(self.group.keys, alarms) if a >= 0}
        self.rows = pos.rows

    def save(self):
        state = self.group.state
        keys = self.group.keys
        state["recent"] = np.array([self.recent[k].ring for k in keys], np.uint64).reshape(
            len(keys), RECENT)
        state["recent_at"] = np.array([(self.recent[k].filled, self.recent[k].at) for k in keys],
                                      np.int64).reshape(len(keys), 2)
        state["alarms"] = np.array([int(self.results.alarm.get(k, -1)) for k in keys], np.int8)
        self.state.save(state, Position(rows=self.rows))
        self.since_checkpoint = 0

    def _checkpoint(self):
        """A periodic save; one that fails is a note, the scoring goes on (as in edgegru run)."""
        try:
            self.save()
        except WriteError as exc:
            self.log(f"edgegru mqtt: checkpoint failed, scoring goes on: {exc}")
            self.since_checkpoint = 0

    # -- the connection -------------------------------------------------------------------
    def connect(self):
        o = self.options
        tls, host, port = parse_broker(o.broker)
        self.client_id = o.client_id or f"edgegru-{socket.gethostname()}"
        client = self.mqtt.Client(self.mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=self.client_id,
                                  clean_session=False, protocol=self.mqtt.MQTTv311,
                                  manual_ack=True)
        if tls:
            client.tls_set(ca_certs=o.cafile)
        if o.username is not None:
            client.username_pw_set(o.username, o.password)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client
        try:
            client.connect(host, port, keepalive=o.keepalive)
        except (OSError, ValueError) as exc:
            raise EdgeGRUError(f"cannot connect to {o.broker}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
        client.loop_start()
        if not self.connected.wait(CONNECT_TIMEOUT) or self.refused:
            client.loop_stop()
            why = self.refused or f"no answer in {CONNECT_TIMEOUT:.0f} s"
            raise EdgeGRUError(f"{o.broker}: the broker did not accept the connection: {why}")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.refused = str(reason_code)
            if self.ever_connected:
                self.log(f"edgegru mqtt: the broker refused to reconnect: {reason_code}")
            else:
                client.disconnect()
            self.connected.set()
            return
        if not self.ever_connected:
            self.log(f"edgegru mqtt: connected to {self.options.broker} as "
                     f"{self.client_id}, reading {', '.join(self.options.subscribe)}")
        else:
            self.log("edgegru mqtt: reconnected" + (
                "" if flags.session_present else ", but the broker kept no session: readings "
                "published while disconnected are lost (does it persist sessions?)"))
        self.ever_connected = True
        client.subscribe([(topic, QOS) for topic in self.options.subscribe])
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.accepting and self.ever_connected:
            self.log(f"edgegru mqtt: disconnected ({reason_code}); reconnecting")

    def _on_message(self, client, userdata, msg):
        if not self.accepting:  # after a stop signal, left unacknowledged: delivered again
            return
        # a retained message comes on subscribing: the broker's copy of a value published
        # before, not a new reading (on every reconnect, it would be scored again)
        arrived = None if msg.retain else time.time()
        self.inbox.put((msg.topic, msg.payload, msg.mid, msg.qos, arrived))

    # -- the loop -------------------------------------------------------------------------
    def loop(self, signals):
        every = self.options.checkpoint_every
        while signals.received is None:
            batch = self._take()
            if batch:
                self._handle(batch)
                if self.state is not None and every and self.since_checkpoint >= every:
                    self._checkpoint()
            self.notes.flush()

    def _take(self, wait=0.25):
        try:
            batch = [self.inbox.get(timeout=wait)]
        except queue.Empty:
            return []
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _handle(self, batch, ack=True):
        """Score the readings in ``batch`` and publish their results; then acknowledge them
        (or return the acknowledgements, to send after a save)."""
        keys, rows, readings = [], [], []
        for topic, payload, _, _, arrived in batch:
            if arrived is None:
                self.result.retained += 1
                continue
            try:
                device, values, stamp = self.readings.parse(topic, payload)
                self._check_new(device, stamp)
            except BadPayload as bad:
                if isinstance(bad, Repeat):
                    self.result.repeats += 1
                else:
                    self.result.bad += 1
                self.notes(topic, bad)
                continue
            keys.append(device)
            rows.append(values)
            readings.append((device, topic, _iso(arrived) if stamp is None else stamp))
        if keys:
            self._score(keys, rows, readings)
        acks = [(mid, qos) for _, _, mid, qos, _ in batch]
        if not ack:
            return acks
        self._ack(acks)

    def _check_new(self, device, stamp):
        """BadPayload for a device past --max-devices, Repeat for a second copy of a reading;
        else the reading is taken (its timestamp remembered)."""
        recent = self.recent.get(device)
        if recent is None:
            if len(self.recent) >= self.options.max_devices:
                raise BadPayload(f"device {device!r} is one more than --max-devices "
                                 f"{self.options.max_devices}")
            recent = self.recent[device] = _Recent()
        if stamp is not None and not recent.add(stamp):
            raise Repeat(f"a second copy of the reading at {stamp} of {device!r}, dropped")
        newer = None if stamp is None else recent.late(stamp)
        if newer is not None:
            self.result.late += 1
            self.notes(device, f"the reading at {stamp} came after the one at {newer}: the "
                               f"broker delivered out of order; scored as it came")

    def _ack(self, acks):
        for mid, qos in acks:
            self.client.ack(mid, qos)

    def _score(self, keys, rows, readings):
        explain = self.options.explain
        scored = self.group.score_many(keys, np.array(rows), explain=explain)
        scores, contrib = scored if explain else (scored, None)
        for topic, payload in self.results.messages(readings, scores, scores > self.threshold,
                                                    contrib):
            self.last_publish = self.client.publish(topic, payload, qos=QOS)
            self.result.published += 1
        self.result.scored += len(keys)
        self.rows += len(keys)
        self.since_checkpoint += len(keys)

    def close(self):
        """Score what was received, save, acknowledge, let the broker take the results,
        disconnect (the session stays)."""
        self.accepting = False
        try:
            acks = []
            while True:
                batch = self._take(wait=0)
                if not batch:
                    break
                acks += self._handle(batch, ack=False)
            if self.state is not None:
                self.save()
            self._ack(acks)
            if self.last_publish is not None and self.client.is_connected():
                self.last_publish.wait_for_publish(PUBLISH_TIMEOUT)
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            self.notes.flush(force=True)
