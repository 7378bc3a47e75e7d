"""peercheck: the /proc parsing on fixed strings, then the one real question on real sockets (is this connection's
client end held by that process?)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys

from restream import peercheck

# A /proc/net/tcp as Linux prints it (x86-64, little endian): a listener on 127.0.0.1:8080, the client end
# 127.0.0.1:45678 -> :8080 (inode 5555, uid 1000), the accepted end (inode 6666), a TIME_WAIT leftover (inode 0).
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0000000000000000 100 0 0 10 0
   1: 0100007F:B26E 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 5555 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:B26E 01 00000000:00000000 00:00000000 00000000  1000        0 6666 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:B26F 0100007F:1F90 06 00000000:00000000 03:00000F5F 00000000     0        0 0 3 0000000000000000
garbage line
"""

# /proc/net/tcp6: ::1 port 9000 listening, and an IPv4-mapped client ::ffff:127.0.0.1:40000 -> ::ffff:127.0.0.1:9000
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:2328 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 7777 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF00000100007F:2328 01 00000000:00000000 00:00000000 00000000  1001        0 8888 1 0000000000000000 20 4 30 10 -1
"""


def test_parse_ipv4_table():
    entries = peercheck.parse_tcp_table(TCP)
    assert [(e.local, e.remote, e.state, e.uid, e.inode) for e in entries] == [
        (("127.0.0.1", 8080), ("0.0.0.0", 0), 0x0A, 1000, 4444),
        (("127.0.0.1", 45678), ("127.0.0.1", 8080), 0x01, 1000, 5555),
        (("127.0.0.1", 8080), ("127.0.0.1", 45678), 0x01, 1000, 6666),
        (("127.0.0.1", 45679), ("127.0.0.1", 8080), 0x06, 0, 0),
    ]


def test_parse_ipv6_table_and_mapped_addresses():
    entries = peercheck.parse_tcp_table(TCP6)
    assert entries[0].local == ("::1", 9000)
    assert (entries[1].local, entries[1].remote, entries[1].uid) == (("127.0.0.1", 40000), ("127.0.0.1", 9000), 1001)
    found = peercheck.find_socket(entries, ("::ffff:127.0.0.1", 40000), ("::ffff:127.0.0.1", 9000))
    assert found is not None and found.inode == 8888


def test_find_the_client_end_not_the_accepted_end():
    entries = peercheck.parse_tcp_table(TCP)
    # the relay accepted a connection on 127.0.0.1:8080 from 127.0.0.1:45678: the client end is (45678 -> 8080)
    assert peercheck.find_socket(entries, ("127.0.0.1", 45678), ("127.0.0.1", 8080)).inode == 5555
    assert peercheck.find_socket(entries, ("127.0.0.1", 45679), ("127.0.0.1", 8080)) is None  # gone: inode 0
    assert peercheck.find_socket(entries, ("127.0.0.1", 1), ("127.0.0.1", 8080)) is None


def test_socket_inodes_from_fd_links():
    links = ["/dev/null", "pipe:[123]", "socket:[5555]", "socket:[77]", "anon_inode:[eventpoll]", "socket:[x]"]
    assert peercheck.socket_inodes(links) == {5555, 77}


def test_no_netlink_and_no_proc_means_cannot_tell(monkeypatch):
    def no_netlink(local, remote):
        raise OSError("no netlink here")

    monkeypatch.setattr(peercheck, "diag_lookup", no_netlink)
    monkeypatch.setattr(peercheck, "read_tables", lambda tables=(): None)
    assert peercheck.owner_check(os.getpid(), ("127.0.0.1", 1), ("127.0.0.1", 2)).ok is None


def test_real_sockets_own_process_and_another_process():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        ours = server.getsockname()
        # our own client: its socket is one of this process's fds
        with socket.create_connection(ours) as client:
            conn, peer = server.accept()
            with conn:
                v = peercheck.owner_check(os.getpid(), peer, ours)
                assert v.ok is True and v.uid == os.getuid()
        # another process's client: not ours, and not the other process's once we name a different PID
        child = subprocess.Popen([sys.executable, "-c", "import socket,sys,time;"
                                  f"s=socket.create_connection(('127.0.0.1',{ours[1]}));"
                                  "print('ok',flush=True);sys.stdin.read()"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ok"
            conn, peer = server.accept()
            with conn:
                assert peercheck.owner_check(os.getpid(), peer, ours).ok is False
                assert peercheck.owner_check(child.pid, peer, ours).ok is True
        finally:
            child.stdin.close()
            child.wait(10)


def test_diag_request_bytes():
    req = peercheck.diag_request(("127.0.0.1", 45678), ("127.0.0.1", 8080), seq=7)
    assert len(req) == 16 + 56
    assert struct.unpack_from("=IHHII", req) == (72, 20, 1, 7, 0)  # SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST
    assert req[16:24] == bytes((socket.AF_INET, socket.IPPROTO_TCP, 0, 0)) + b"\xff\xff\xff\xff"  # any state
    assert req[24:28] == struct.pack(">HH", 45678, 8080)
    assert req[28:44] == bytes((127, 0, 0, 1)) + bytes(12) and req[44:60] == bytes((127, 0, 0, 1)) + bytes(12)
    assert req[60:] == struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
    v6 = peercheck.diag_request(("::1", 1), ("::1", 2))
    assert v6[16] == socket.AF_INET6 and v6[28:44] == bytes(15) + b"\x01"


def test_parse_diag_reply_bytes():
    body = (bytes((socket.AF_INET, 1, 0, 0)) + struct.pack(">HH", 45678, 8080)
            + bytes((127, 0, 0, 1)) + bytes(12) + bytes((127, 0, 0, 1)) + bytes(12)
            + struct.pack("=III", 0, 1, 2) + struct.pack("=IIIII", 0, 0, 0, 1000, 5555))
    reply = struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body
    e = peercheck.parse_diag_reply(reply)
    assert (e.local, e.remote, e.state, e.uid, e.inode) == (("127.0.0.1", 45678), ("127.0.0.1", 8080), 1, 1000, 5555)
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -2) + bytes(16)
    assert peercheck.parse_diag_reply(error) is None


def test_netlink_and_proc_tables_agree_on_a_real_connection():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        ours = server.getsockname()
        with socket.create_connection(ours) as client:
            conn, peer = server.accept()
            with conn:
                by_diag = peercheck.diag_lookup(peer, ours)
                by_table = peercheck.find_socket(peercheck.read_tables(), peer, ours)
                assert by_diag.inode == by_table.inode == os.fstat(client.fileno()).st_ino
                assert by_diag.uid == by_table.uid == os.getuid()
                assert peercheck.diag_lookup(("127.0.0.1", 1), ours) is None


def test_tables_are_the_fallback_when_netlink_is_not_there(monkeypatch):
    def no_netlink(local, remote):
        raise OSError("no netlink here")

    monkeypatch.setattr(peercheck, "diag_lookup", no_netlink)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()):
            conn, peer = server.accept()
            with conn:
                assert peercheck.owner_check(os.getpid(), peer, server.getsockname()).ok is True
