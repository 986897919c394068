"""A real MQTT broker for the tests and tools/bench_mqtt.py: Mosquitto on a free port of
127.0.0.1, with persistence (so a restart keeps the sessions and their queued messages) and
a queue long enough for a test's bursts; where there is no Mosquitto, the pure-Python amqtt
broker (``pip install amqtt``; it keeps no sessions across its restarts), also chosen with
EDGEGRU_TEST_BROKER=amqtt."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous {anonymous}
user {user}
persistence true
persistence_location {dir}/
autosave_interval 600
max_queued_messages {max_queued}
max_inflight_messages {max_inflight}
log_dest file {dir}/mosquitto.log
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


AMQTT_CONFIG = """\
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: {anonymous}
"""


def mosquitto():
    """Mosquitto's executable, or None (also when EDGEGRU_TEST_BROKER=amqtt)."""
    if os.environ.get("EDGEGRU_TEST_BROKER") == "amqtt":
        return None
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)


def amqtt():
    """amqtt's broker script, or None."""
    return shutil.which("amqtt") or shutil.which("amqtt", path=os.path.dirname(sys.executable))


def why_no_broker():
    """None when a broker can run here, else why not (the tests' skip reason)."""
    if mosquitto() or amqtt():
        return None
    return ("no MQTT broker: neither mosquitto (apt-get install mosquitto) nor amqtt "
            "(pip install amqtt) is installed")


def broker(directory, **options):
    """Mosquitto, or else amqtt, not started yet."""
    return Mosquitto(directory, **options) if mosquitto() else Amqtt(directory, **options)


class Mosquitto:
    """``start()``, ``stop(sig)`` and ``start()`` again on the same port and files."""
    name = "mosquitto"
    keeps_sessions = True                   # across its own restarts (persistence)

    def __init__(self, directory, max_queued=1_000_000, max_inflight=20, anonymous=True):
        self.dir = os.fspath(directory)
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.proc = None
        self.config = os.path.join(self.dir, "mosquitto.conf")
        import getpass
        with open(self.config, "w") as f:
            f.write(CONFIG.format(port=self.port, dir=self.dir, user=getpass.getuser(),
                                  max_queued=max_queued, max_inflight=max_inflight,
                                  anonymous=str(anonymous).lower()))

    def command(self):
        return [mosquitto(), "-c", self.config]

    def start(self, timeout=10.0):
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not listen on port {self.port}")

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None


class Amqtt(Mosquitto):
    """amqtt on a free port; sessions live in its memory only."""
    name = "amqtt"
    keeps_sessions = False

    def __init__(self, directory, anonymous=True, **ignored):
        self.dir = os.fspath(directory)
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.proc = None
        self.config = os.path.join(self.dir, "amqtt.yaml")
        with open(self.config, "w") as f:
            f.write(AMQTT_CONFIG.format(port=self.port, anonymous=str(anonymous).lower()))

    def command(self):
        return [amqtt(), "-c", self.config]
