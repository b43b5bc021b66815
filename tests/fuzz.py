"""``make fuzz``: a long fuzz run of the three parsers that face untrusted bytes, and of the
compiled decoders (rpv/speedups.py) against their pure-Python references (same results on
every input).

    python -m tests.fuzz --inputs 1000000 [--seed N]

Inputs are random bytes, valid streams cut and fed at random chunk sizes, and valid streams
with random bytes flipped, inserted or deleted. Each parser must never raise and never hold
more than its limits allow. Prints inputs per parser, inputs per second and peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import random
import resource
import time

import structlog

from rpv import control_api as api
from rpv import protocol as pc
from rpv.daemon.control import ControlServer
from rpv.errors import CommandError
from rpv.nbd import protocol as nbd
from rpv.nbd import wire as nbd_wire


def rpv_seeds() -> list[bytes]:
    c = pc.Connection(pc.Role.CLIENT)
    frames = [c.send_hello(1, "00" * 16, "siteA", "nodeA")]
    s = pc.Connection(pc.Role.SERVER)
    s.receive_data(b"".join(bytes(b) for b in frames[0]))
    list(s.events())
    c.receive_data(b"".join(bytes(b) for b in s.send_hello_reply(1, pc.HelloInfo(
        "siteB", "nodeB", "hdisk2", 1 << 30, 512, 1 << 22, 256))))
    list(c.events())
    frames += [c.send_write(2, 4096, b"x" * 4096, 1000, fua=True), c.send_read(3, 0, 512, 9),
               c.send_flush(4, 5), c.send_ping(5, 5), c.send_discover(6),
               c.send_checksum(7, 0, 65537, 9)]
    return [b"".join(bytes(b) for f in frames for b in f)]


def nbd_seeds() -> list[bytes]:
    import struct
    opt = struct.pack(">QII", nbd.IHAVEOPT, 7, 6) + struct.pack(">I", 2) + b"d0" + b"\0\0"
    req = struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, 1, 7, 0, 512) + b"y" * 512
    return [struct.pack(">I", 3) + opt + req + struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, 0,
                                                           8, 0, 512)]


def control_seeds() -> list[bytes]:
    return [json.dumps({"op": "lsdev", "args": {"dev_class": "disk"}}).encode() + b"\n",
            b'{"op": "chdev", "args": {"name": "hdisk3", "changes": {"resume": "yes"}}}\n']


def mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        pos = rng.randrange(len(data) + 1)
        if kind < 0.4 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif kind < 0.7:
            data[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif data:
            del data[pos:pos + rng.randint(1, 16)]
    return bytes(data)


def sample(rng: random.Random, seeds: list[bytes]) -> bytes:
    r = rng.random()
    if r < 0.3:
        return rng.randbytes(rng.randint(0, 256))
    seed = rng.choice(seeds)
    if r < 0.5:
        return seed[:rng.randint(0, len(seed))]
    return mutate(rng, seed)


def feed(rng: random.Random, data: bytes, receive) -> None:
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 512)
        receive(data[pos:pos + n])
        pos += n


def fuzz_rpv(rng: random.Random, data: bytes) -> None:
    for role in (pc.Role.SERVER, pc.Role.CLIENT):
        conn = pc.Connection(role, max_payload=1 << 16)
        feed(rng, data, conn.receive_data)
        conn.receive_data(b"")
        for _ in conn.events():
            pass
        assert conn.buffered <= len(data) + 64


class _Registry:
    def get_export(self, name):
        return _Disk() if name == "d0" else None

    def list_exports(self):
        return [("d0", "fuzz disk")]


class _Disk:
    size = 1 << 20
    name = "d0"


def fuzz_nbd(rng: random.Random, data: bytes) -> None:
    conn = nbd.ServerConnection(_Registry(), max_request_length=1 << 16)
    conn.data_to_send()
    feed(rng, data, conn.receive_data)
    conn.receive_data(b"")
    for _ in range(10_000):
        if conn.next_event() is nbd.NEED_DATA:
            break
        conn.data_to_send()


def fuzz_nbd_twins(rng: random.Random, data: bytes, compiled) -> None:
    """The compiled batch decoder against the reference: the same requests, bytes consumed
    and error replies (the NBD stream past the handshake: the seed's requests)."""
    body = data[data.find(b"\x25\x60\x95\x13"):] if b"\x25\x60\x95\x13" in data else data
    size, readonly, limit = rng.choice((1 << 20, 4096, 0)), rng.random() < 0.2, 1 << 16
    got = []
    for impl in (nbd_wire, compiled):
        out: list = []
        reqs, used = impl.take_requests(bytearray(body), size, readonly, limit, out,
                                        nbd.Request)
        got.append((reqs, used, out))
    assert got[0] == got[1], (body, got)


def hot_seeds() -> list[bytes]:
    import struct
    head = struct.Struct(">IBBHQI")
    return [head.pack(pc.MAGIC, pc.VERSION, 4, 2, 7, 512) + struct.pack(">QII", 4096, 512, 9)
            + b"w" * 512,
            head.pack(pc.MAGIC, pc.VERSION, 4, 1, 7, 0) + struct.pack(">I", 0)]


def fuzz_hot_twins(rng: random.Random, data: bytes, compiled) -> None:
    """The compiled RPV WRITE request/reply decoders against the reference."""
    from rpv.protocol import hotpath
    from rpv.protocol.events import WriteReply, WriteRequest
    table = {rid: (rng.choice((pc.Opcode.WRITE, pc.Opcode.READ)), 512)
             for rid in rng.sample((7, 8, 2**64 - 1), rng.randint(0, 2))}
    limit, pos = rng.randint(1, 4), rng.choice((0, 0, 1))
    got = []
    for impl in (hotpath, compiled):
        out, calls = dict(table), []
        got.append((impl.take_write_request(bytearray(data), pos, out, limit, 1 << 16,
                                            pc.Opcode.WRITE, lambda *a, c=calls: c.append(a),
                                            WriteRequest), out, calls))
        out = dict(table)
        got.append((impl.take_write_reply(bytearray(data), pos, out, pc.Opcode.WRITE,
                                          WriteReply), out))
    assert got[:2] == got[2:], (data, got)


def fuzz_control(server: ControlServer, loop, data: bytes) -> None:
    for line in data.split(b"\n")[:8]:
        reply = loop.run_until_complete(server._dispatch(line, None))[0]
        assert isinstance(reply, dict) and isinstance(reply["ok"], bool)


def control_server() -> ControlServer:
    def refuse(name: str = "", **kw):
        raise CommandError(f"no such device {name}")

    handlers = {op: (lambda **kw: {}) for op in api.OPERATIONS}
    handlers.update(lsdev=lambda **kw: [], chdev=refuse, ping=lambda: {"ok": 1})
    return ControlServer(handlers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=int, default=1_000_000, help="inputs per parser")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    rng = random.Random(args.seed)
    loop = asyncio.new_event_loop()
    ctl = control_server()
    targets = [("rpv frames", rpv_seeds(), lambda d: fuzz_rpv(rng, d)),
               ("nbd handshake+requests", nbd_seeds(), lambda d: fuzz_nbd(rng, d)),
               ("control requests", control_seeds(), lambda d: fuzz_control(ctl, loop, d))]
    twins = (("nbd decoder twins", "rpv.nbd._wire", nbd_seeds(), fuzz_nbd_twins),
             ("rpv hot path twins", "rpv.protocol._hotpath", hot_seeds(), fuzz_hot_twins))
    for name, module, seeds, fuzz in twins:
        try:
            compiled = importlib.import_module(module)
        except ImportError:
            print(f"{name}: {module} is not compiled (pip install builds it)")
            continue
        targets.append((name, seeds, lambda d, f=fuzz, m=compiled: f(rng, d, m)))
    for name, seeds, run in targets:
        t0 = time.monotonic()
        for _ in range(args.inputs):
            run(sample(rng, seeds))
        dt = time.monotonic() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(f"{name:24} {args.inputs:>9} inputs  {args.inputs / dt:>9.0f}/s  "
              f"no exception  peak RSS {rss} MiB", flush=True)


if __name__ == "__main__":
    main()
