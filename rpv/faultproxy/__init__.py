"""Userspace TCP fault proxy for tests: latency, jitter, bandwidth caps, blackholes, resets.

Run it with ``glvm-faultproxy`` (see :mod:`rpv.faultproxy.main`), drive it from tests with
:func:`rpv.faultproxy.client.start_proxy` and :class:`rpv.faultproxy.client.FaultProxyControl`.
"""

from rpv.faultproxy.client import FaultProxyControl, FaultProxyError, start_proxy
from rpv.faultproxy.proxy import MODES, SILENCE_POLICIES, Proxy, Settings

__all__ = [
    "MODES",
    "SILENCE_POLICIES",
    "FaultProxyControl",
    "FaultProxyError",
    "Proxy",
    "Settings",
    "start_proxy",
]
