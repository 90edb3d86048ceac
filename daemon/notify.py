"""The systemd notify protocol: READY, STATUS, WATCHDOG and STOPPING datagrams to ``$NOTIFY_SOCKET``.

A no-op when the variable is unset (not started by systemd with Type=notify).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self.address = address
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        mine = pid is None or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() and int(usec) > 0 and mine else None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        """Send one datagram; a failure is logged, never raised (systemd may be restarting)."""
        if not self.address:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.warning("could not notify systemd at %s: %s", self.address, exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def start_watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping WATCHDOG=1 at half the interval systemd asked for, only while ``healthy()`` says so."""
        if not self.address or self.watchdog_s is None:
            return
        interval = self.watchdog_s / 2

        def loop() -> None:
            while not self._stop.wait(interval):
                if healthy():
                    self.send("WATCHDOG=1")
                else:
                    log.warning("not healthy: withholding the systemd watchdog ping")

        threading.Thread(target=loop, name="sd-watchdog", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
