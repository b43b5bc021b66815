"""Mutual TLS for the RPV link and NBD over TCP (stdlib ``ssl``); ``glvmctl tls`` makes the
site CA and the certificates (glvmctl/ca.py).

The server requires a client certificate signed by the site CA and still enforces
``client_addr``; the client verifies the server's certificate against the same CA. Peers are
identified by address and certificate chain, so host names are not checked.
"""

from __future__ import annotations

import ssl


def server_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # peers are addressed by IP; the CA chain is what is checked
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    return ctx
