"""peercheck: the /proc parsing on fixed strings, then the one real question on real sockets (is this connection's
client end held by that process?)."""

from __future__ import annotations

import os
import socket
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


def test_no_proc_means_cannot_tell(monkeypatch):
    monkeypatch.setattr(peercheck, "TABLES", ("/nonexistent/tcp",))
    monkeypatch.setattr(peercheck, "read_tables", lambda tables=("/nonexistent/tcp",): None)
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
