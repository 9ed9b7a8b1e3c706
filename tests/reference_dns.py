"""Slow, obvious twin of engine.dns: a DNS message's question and addresses.

Written from the rules in engine/dns.py's docstring (RFC 1035 names, compression
pointers that must go back past the start of the labels that led to them, 255 octets,
127 labels, MAX_POINTERS jumps), with names decoded into label lists and records into
Python objects; the CNAME chain is followed on those.  dnspython and dpkt check this
twin and the kernel on valid messages (tests/test_dns.py).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from egressd.engine.dns import (CLASS_IN, F_BAD_LABEL, F_BAD_RECORD, F_MORE_ANSWERS,
                                F_NAME_TOO_LONG, F_POINTER_LOOP, F_RESPONSE, F_TC,
                                F_TRUNCATED_NAME, HEADER, MALFORMED, MAX_ANSWERS, MAX_CNAMES,
                                MAX_LABELS, MAX_POINTERS, MAX_RECORDS, NEED_MORE, NOT_DNS, OK,
                                TYPE_A, TYPE_AAAA, TYPE_CNAME)

V4_MAPPED = 0xFFFF << 32


@dataclass(frozen=True)
class Message:
    """What engine.dns.message should return; answers are (128-bit address, ttl)."""

    status: int
    name: bytes = b""
    qtype: int = 0
    rcode: int = 0
    answers: tuple[tuple[int, int], ...] = ()
    flags: int = 0
    txid: int = 0


class Bad(Exception):
    """The message is malformed; `flag` says why."""

    def __init__(self, flag: int) -> None:
        super().__init__(flag)
        self.flag = flag


def read_name(msg: bytes, off: int, no_dots: bool = False) -> tuple[list[bytes], int]:
    """(labels, offset past the name where it is written)."""
    labels: list[bytes] = []
    after = None
    floor = off  # a pointer must land below the first byte of the labels that led to it
    jumps = 0
    octets = 1
    while True:
        if off >= len(msg):
            raise Bad(F_TRUNCATED_NAME)
        length = msg[off]
        if length == 0:
            return labels, off + 1 if after is None else after
        if length >= 0xC0:
            if off + 2 > len(msg):
                raise Bad(F_TRUNCATED_NAME)
            target = struct.unpack_from(">H", msg, off)[0] & 0x3FFF
            if target >= floor or jumps == MAX_POINTERS:
                raise Bad(F_POINTER_LOOP)
            if after is None:
                after = off + 2
            jumps += 1
            floor = off = target
            continue
        if length > 63:
            raise Bad(F_BAD_LABEL)
        octets += length + 1
        if octets > 255 or len(labels) + 1 > MAX_LABELS:
            raise Bad(F_NAME_TOO_LONG)
        label = msg[off + 1:off + 1 + length]
        if len(label) < length:
            raise Bad(F_TRUNCATED_NAME)
        if no_dots and b"." in label:
            raise Bad(F_BAD_LABEL)
        labels.append(label)
        off += 1 + length


@dataclass
class Record:
    owner: tuple[bytes, ...]    # lower-cased labels
    rtype: int
    rclass: int
    ttl: int
    rdata: bytes
    target: tuple[bytes, ...] | None = None  # a CNAME's


def key(labels: list[bytes]) -> tuple[bytes, ...]:
    return tuple(label.lower() for label in labels)  # bytes.lower() folds ASCII only


def read_answers(msg: bytes, off: int, count: int) -> list[Record]:
    records = []
    for _ in range(count):
        owner, off = read_name(msg, off)
        if off + 10 > len(msg):
            raise Bad(F_BAD_RECORD)
        rtype, rclass, ttl, rdlen = struct.unpack_from(">HHIH", msg, off)
        rdata = msg[off + 10:off + 10 + rdlen]
        if len(rdata) < rdlen:
            raise Bad(F_BAD_RECORD)
        rec = Record(key(owner), rtype, rclass, ttl, rdata)
        if rclass == CLASS_IN:
            if (rtype == TYPE_A and rdlen != 4) or (rtype == TYPE_AAAA and rdlen != 16):
                raise Bad(F_BAD_RECORD)
            if rtype == TYPE_CNAME:
                target, end = read_name(msg, off + 10)
                if end != off + 10 + rdlen:
                    raise Bad(F_BAD_RECORD)
                rec.target = key(target)
        records.append(rec)
        off += 10 + rdlen
    return records


def reference_message(msg: bytes) -> Message:
    if len(msg) < HEADER:
        return Message(MALFORMED, flags=F_BAD_RECORD)
    txid, hflags, qdcount, ancount = struct.unpack_from(">HHHH", msg)
    rcode = hflags & 0xF
    flags = (F_RESPONSE if hflags & 0x8000 else 0) | (F_TC if hflags & 0x0200 else 0)
    opcode = hflags >> 11 & 0xF
    if opcode > 5 or (qdcount == 0 and not flags & F_RESPONSE):
        return Message(NOT_DNS, rcode=rcode, flags=flags, txid=txid)
    if qdcount == 0:
        return Message(OK, rcode=rcode, flags=flags, txid=txid)
    try:
        qname, off = read_name(msg, HEADER, no_dots=True)
        if off + 4 > len(msg):
            raise Bad(F_BAD_RECORD)
        qtype = struct.unpack_from(">H", msg, off)[0]
        off += 4
        name = b".".join(qname)
        if not flags & F_RESPONSE or ancount == 0:
            return Message(OK, name, qtype, rcode, (), flags, txid)
        if qdcount > 1:
            return Message(OK, name, qtype, rcode, (), flags | F_MORE_ANSWERS, txid)
        if ancount > MAX_RECORDS:
            flags |= F_MORE_ANSWERS
        records = read_answers(msg, off, min(ancount, MAX_RECORDS))
    except Bad as e:
        return Message(MALFORMED, rcode=rcode, flags=flags | e.flag, txid=txid)

    chain = [key(qname)]
    for _ in range(MAX_CNAMES):
        nxt = next((r.target for r in records if r.rtype == TYPE_CNAME and r.rclass == CLASS_IN
                    and r.owner == chain[-1]), None)
        if nxt is None:
            break
        chain.append(nxt)
    answers = []
    for r in records:
        if r.rtype in (TYPE_A, TYPE_AAAA) and r.rclass == CLASS_IN and r.owner in chain:
            if len(answers) == MAX_ANSWERS:
                flags |= F_MORE_ANSWERS
                break
            addr = int.from_bytes(r.rdata, "big")
            answers.append((V4_MAPPED | addr if r.rtype == TYPE_A else addr, r.ttl))
    return Message(OK, name, qtype, rcode, tuple(answers), flags, txid)


def reference_tcp_message(stream: bytes) -> Message:
    if len(stream) < 2 or len(stream) - 2 < struct.unpack_from(">H", stream)[0]:
        return Message(NEED_MORE)
    return reference_message(stream[2:2 + struct.unpack_from(">H", stream)[0]])
