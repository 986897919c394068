"""A real MQTT broker for the tests and tools/bench_mqtt.py: Mosquitto on a free port of
127.0.0.1, with persistence (so a restart keeps the sessions and their queued messages) and
a queue long enough for a test's bursts."""
import os
import shutil
import signal
import socket
import subprocess
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


def why_no_broker():
    """None when Mosquitto can run here, else why not (the tests' skip reason)."""
    if shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto"):
        return None
    return "no MQTT broker: mosquitto is not installed (apt-get install mosquitto)"


class Mosquitto:
    """``start()``, ``stop(sig)`` and ``start()`` again on the same port and files."""

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

    def start(self, timeout=10.0):
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", self.config], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on port {self.port}")

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None
