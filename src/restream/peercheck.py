"""Who is on the other end of an accepted loopback TCP connection (Linux ``/proc``).

restream's slot relay listens on loopback ports that only restream's own ffmpeg should publish to. The client's
socket of an accepted connection is the one whose local address is the connection's peer address and whose remote
address is ours; ``/proc/net/tcp`` (and ``tcp6``) gives its inode, and ``/proc/PID/fd`` links to ``socket:[inode]``
for every socket a process holds. So "is this connection ffmpeg's?" is "is that inode among ffmpeg's fds?".

The socket is looked up first with one netlink ``sock_diag`` request for that exact connection (what ``ss`` uses;
no privilege needed; microseconds however many sockets the host has), else by reading the TCP tables. Then one
``readlink`` per fd of the expected process. Once per accepted connection, never on the data path. The parsing and
the netlink messages are pure (tested on fixed strings and bytes).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

Address = tuple[str, int]

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


@dataclass(frozen=True)
class TcpEntry:
    local: Address
    remote: Address
    state: int
    uid: int
    inode: int


def _hex_ip(text: str) -> str:
    """An address as /proc/net/tcp prints it: 32-bit words in host byte order, in hex."""
    raw = b"".join(struct.pack("=I", int(text[i:i + 8], 16)) for i in range(0, len(text), 8))
    return str(_plain(ipaddress.ip_address(raw)))


def _plain(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _addr(text: str) -> Address:
    ip, _, port = text.rpartition(":")
    return _hex_ip(ip), int(port, 16)


def parse_tcp_table(text: str) -> list[TcpEntry]:
    """The entries of a ``/proc/net/tcp`` or ``/proc/net/tcp6`` text (header line skipped, bad lines ignored)."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        try:
            out.append(TcpEntry(_addr(parts[1]), _addr(parts[2]), int(parts[3], 16), int(parts[7]), int(parts[9])))
        except (ValueError, struct.error):
            continue
    return out


def normalize(addr: Address) -> Address:
    """(host, port) with an IPv4-mapped IPv6 host written as IPv4 (as ``parse_tcp_table`` gives it)."""
    return str(_plain(ipaddress.ip_address(addr[0].split("%", 1)[0]))), int(addr[1])


def find_socket(entries: list[TcpEntry], local: Address, remote: Address) -> TcpEntry | None:
    """The entry of the socket bound to ``local`` and connected to ``remote`` that has an inode (a live socket)."""
    local, remote = normalize(local), normalize(remote)
    for e in entries:
        if e.local == local and e.remote == remote and e.inode:
            return e
    return None


def socket_inodes(links: list[str]) -> set[int]:
    """The inodes of ``socket:[N]`` among fd link targets."""
    out = set()
    for link in links:
        if link.startswith("socket:[") and link.endswith("]"):
            try:
                out.add(int(link[8:-1]))
            except ValueError:
                continue
    return out


def read_tables(tables: tuple[str, ...] = TABLES) -> list[TcpEntry] | None:
    """Every TCP socket of this network namespace, or None where there is no /proc/net/tcp."""
    entries: list[TcpEntry] = []
    found = False
    for name in tables:
        try:
            with open(name, encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        found = True
        entries += parse_tcp_table(text)
    return entries if found else None


def fd_links(pid: int) -> list[str] | None:
    """Where the fds of process ``pid`` point, or None if it cannot be read (gone, or not ours)."""
    folder = f"/proc/{pid}/fd"
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    links = []
    for name in names:
        try:
            links.append(os.readlink(f"{folder}/{name}"))
        except OSError:
            continue
    return links


# -- netlink sock_diag (linux/inet_diag.h): one request for one exact connection ----------------------------------

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NO_COOKIE = 0xFFFFFFFF


def diag_request(local: Address, remote: Address, seq: int = 1) -> bytes:
    """A SOCK_DIAG_BY_FAMILY request (inet_diag_req_v2) for the TCP socket bound to ``local``, connected to
    ``remote``, in any state."""
    local, remote = normalize(local), normalize(remote)
    ip = ipaddress.ip_address(local[0])
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6

    def raw(host: str) -> bytes:
        return ipaddress.ip_address(host).packed.ljust(16, b"\0")

    sockid = (struct.pack(">HH", local[1], remote[1]) + raw(local[0]) + raw(remote[0])
              + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE))
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + req


def parse_diag_reply(data: bytes) -> TcpEntry | None:
    """The socket an inet_diag_msg reply describes, or None (an error reply: no such socket)."""
    if len(data) < _NLMSGHDR.size:
        return None
    _, kind, _, _, _ = _NLMSGHDR.unpack_from(data)
    body = data[_NLMSGHDR.size:]
    if kind != SOCK_DIAG_BY_FAMILY or len(body) < 72:
        return None
    family, state = body[0], body[1]
    sport, dport = struct.unpack_from(">HH", body, 4)
    size = 4 if family == socket.AF_INET else 16
    src = str(_plain(ipaddress.ip_address(body[8:8 + size])))
    dst = str(_plain(ipaddress.ip_address(body[24:24 + size])))
    uid, inode = struct.unpack_from("=II", body, 64)
    return TcpEntry((src, sport), (dst, dport), state, uid, inode)


def diag_lookup(local: Address, remote: Address) -> TcpEntry | None:
    """Ask the kernel (netlink sock_diag) for the socket ``local`` -> ``remote``; None if there is none. Raises
    OSError where netlink sock_diag is not available."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as s:
        s.settimeout(1.0)
        s.sendto(diag_request(local, remote), (0, 0))
        entry = parse_diag_reply(s.recv(65536))
    return entry if entry is not None and entry.inode else None


@dataclass(frozen=True)
class Verdict:
    ok: bool | None     # True: the peer socket is one of pid's fds; False: it is not; None: cannot tell (no /proc)
    uid: int | None     # the peer socket's owner, when known (for the warning)


def owner_check(pid: int, peer: Address, ours: Address) -> Verdict:
    """Is the client end of the accepted connection ``ours`` <- ``peer`` held by process ``pid``?"""
    try:
        entry = diag_lookup(peer, ours)
    except (OSError, AttributeError, ValueError):  # no netlink (not Linux, or forbidden): read the tables
        entries = read_tables()
        if entries is None:
            return Verdict(None, None)
        entry = find_socket(entries, peer, ours)
    if entry is None:
        return Verdict(False, None)  # not a local socket we can see (or already gone)
    links = fd_links(pid)
    if links is None:
        return Verdict(False, entry.uid)
    return Verdict(entry.inode in socket_inodes(links), entry.uid)
