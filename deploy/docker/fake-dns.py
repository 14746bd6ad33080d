#!/usr/bin/env python3
"""A tiny DNS server for the image test: answers A queries for names under ZONE with ADDRESS,
AAAA with no records, and everything else with NXDOMAIN. It lets the test prove that the
static binary in a `scratch` image resolves names through /etc/resolv.conf and its search
list, as it must for Kubernetes service names (no NSS modules are there to load).
usage: fake-dns.py LISTEN_IP ZONE ADDRESS   (listens on LISTEN_IP:53/udp)
"""
import socket
import struct
import sys

listen, zone, address = sys.argv[1], sys.argv[2].strip(".").lower(), sys.argv[3]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((listen, 53))
print("ready", flush=True)

while True:
    query, peer = sock.recvfrom(512)
    if len(query) < 12:
        continue
    ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
    if qdcount != 1:
        continue
    labels, i = [], 12
    while i < len(query) and query[i] != 0:
        n = query[i]
        labels.append(query[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype, _qclass = struct.unpack("!HH", query[i + 1 : i + 5])
    question = query[12 : i + 5]
    name = ".".join(labels).lower()
    known = name == zone or name.endswith("." + zone)
    rcode = 0 if known else 3
    answers = b""
    if known and qtype == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(address)
    header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
    sock.sendto(header + question + answers, peer)
    print(f"{peer[0]} asked {name} type {qtype}: {'answered' if answers else 'rcode %d' % rcode}", flush=True)
