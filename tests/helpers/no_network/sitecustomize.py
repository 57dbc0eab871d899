"""Test-only: no network. Python imports ``sitecustomize`` at start-up from the first folder of
``sys.path`` that has one, so a process started with this folder first on ``PYTHONPATH`` (the
zoo sweep's steps, tests/helpers/zoo_sweep.py) can reach no other machine: every socket
connection and every name lookup fails with ``OSError``, and the address it tried is appended
to the file ``DETFOLD_NO_NETWORK_LOG`` names. Local (AF_UNIX) sockets still work. Nothing of
this is in detfold.
"""

import os
import socket

_LOG = os.environ.get("DETFOLD_NO_NETWORK_LOG")


def _refuse(address):
    if _LOG:
        with open(_LOG, "a") as handle:
            handle.write(f"{address}\n")
    raise OSError(f"network blocked by the zoo sweep: {address}")


_connect = socket.socket.connect


def _guarded_connect(self, address):
    if self.family == socket.AF_UNIX:
        return _connect(self, address)
    _refuse(address[0] if isinstance(address, tuple) else address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    _refuse(host)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect
socket.getaddrinfo = _guarded_getaddrinfo
socket.create_connection = lambda address, *a, **k: _refuse(address[0])
