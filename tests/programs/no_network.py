"""A test hook, installed as sitecustomize: every attempt to reach the network is logged to
GDPIPE_TEST_NETWORK_LOG and refused."""

import os
import socket


def _refuse(what):
    with open(os.environ["GDPIPE_TEST_NETWORK_LOG"], "a") as log:
        log.write(repr(what)[:300] + "\n")
    raise OSError("this test forbids network access")


def _guard(method):
    def guarded(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse((method.__name__, address))
        return method(self, address, *args)

    return guarded


for _name in ("connect", "connect_ex", "sendto"):
    setattr(socket.socket, _name, _guard(getattr(socket.socket, _name)))
socket.getaddrinfo = lambda *args, **kwargs: _refuse(("getaddrinfo", args))
