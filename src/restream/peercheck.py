"""Who is on the other end of an accepted loopback TCP connection (Linux ``/proc``).

restream's slot relay listens on loopback ports that only restream's own ffmpeg should publish to. The client's
socket of an accepted connection is the one whose local address is the connection's peer address and whose remote
address is ours; ``/proc/net/tcp`` (and ``tcp6``) gives its inode, and ``/proc/PID/fd`` links to ``socket:[inode]``
for every socket a process holds. So "is this connection ffmpeg's?" is "is that inode among ffmpeg's fds?".

The parsing is pure (tested on fixed strings); ``owner_check`` does the two reads. Cost: one read of the TCP tables
and one ``readlink`` per fd of the expected process, once per accepted connection, never on the data path.
"""

from __future__ import annotations

import ipaddress
import os
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


@dataclass(frozen=True)
class Verdict:
    ok: bool | None     # True: the peer socket is one of pid's fds; False: it is not; None: cannot tell (no /proc)
    uid: int | None     # the peer socket's owner, when known (for the warning)


def owner_check(pid: int, peer: Address, ours: Address) -> Verdict:
    """Is the client end of the accepted connection ``ours`` <- ``peer`` held by process ``pid``?"""
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
