//! One ICMP socket for every probe: echo requests out, echo replies in, matched by
//! identifier and sequence number. No process per probe.
//!
//! The unprivileged "ping socket" (`SOCK_DGRAM`, `IPPROTO_ICMP`) is tried first: it needs no
//! capability, only the process's group inside `net.ipv4.ping_group_range` (systemd sets
//! `0 2147483647` on every host it boots; a fresh network namespace has `1 0`). The kernel
//! then owns the identifier and hands this socket only its own replies. Failing that, a raw
//! ICMP socket (`CAP_NET_RAW`) sees every ICMP packet and filters by identifier itself.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
/// ICMP header (8) + a 16-byte payload: small, and enough to carry our marker.
const PACKET: usize = 24;
/// Written in every request's payload and checked in every reply (a raw socket sees other
/// programs' echoes; a stray reply with our id and a recycled sequence must not count).
const MARKER: &[u8; 8] = b"hgwprobe";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `SOCK_DGRAM` ping socket.
    Datagram,
    /// `SOCK_RAW`: needs `CAP_NET_RAW`.
    Raw,
}

/// An echo reply that belongs to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub from: Ipv4Addr,
    pub seq: u16,
}

pub struct IcmpSocket {
    fd: AsyncFd<OwnedFd>,
    kind: Kind,
    /// The identifier our requests carry (raw sockets; the kernel sets it for ping sockets).
    ident: u16,
}

impl IcmpSocket {
    /// A ping socket if the host allows it, else a raw one; the error says both failed.
    pub fn open() -> io::Result<Self> {
        let dgram = open(libc::SOCK_DGRAM);
        let (fd, kind) = match dgram {
            Ok(fd) => (fd, Kind::Datagram),
            Err(d) => match open(libc::SOCK_RAW) {
                Ok(fd) => (fd, Kind::Raw),
                Err(r) => {
                    return Err(io::Error::new(
                        r.kind(),
                        format!(
                            "opening an ICMP socket: ping socket: {d} (is the service's group in net.ipv4.ping_group_range?); raw socket: {r} (needs CAP_NET_RAW)"
                        ),
                    ))
                }
            },
        };
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it (and so keeps it open
        // and the same) until it is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(IcmpSocket {
            fd,
            kind,
            ident: fastrand::u16(..),
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Sends one echo request to `to` with sequence `seq`.
    pub async fn send(&self, to: Ipv4Addr, seq: u16) -> io::Result<()> {
        let packet = request(self.ident, seq);
        let addr = sockaddr(to);
        loop {
            let mut guard = self.fd.writable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: the buffer and address are valid for the lengths given.
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&addr as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match r {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// The next echo reply that is ours (anything else on the socket is skipped).
    pub async fn recv(&self) -> io::Result<Reply> {
        let mut buf = [0u8; 1500];
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: an all-zero sockaddr_in is valid.
                let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                // SAFETY: buf and from are valid for the lengths given.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut from as *mut libc::sockaddr_in).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok((
                        n as usize,
                        Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
                    ))
                }
            });
            let (n, from) = match r {
                Ok(result) => result?,
                Err(_would_block) => continue,
            };
            let icmp = match self.kind {
                Kind::Datagram => buf.get(..n),
                // A raw socket hands over the IP header too.
                Kind::Raw => {
                    let ihl = usize::from(buf[0] & 0x0f) * 4;
                    buf.get(ihl..n)
                }
            };
            if let Some(reply) = icmp.and_then(|p| parse_reply(p, self.kind, self.ident, from)) {
                return Ok(reply);
            }
        }
    }
}

fn open(ty: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    a.sin_family = libc::AF_INET as libc::sa_family_t;
    a.sin_addr.s_addr = u32::from(ip).to_be();
    a
}

/// An echo request with our marker; the checksum is filled in (a ping socket's kernel
/// recomputes it after setting the identifier).
fn request(ident: u16, seq: u16) -> [u8; PACKET] {
    let mut p = [0u8; PACKET];
    p[0] = ECHO_REQUEST;
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(MARKER);
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// An echo reply carrying our marker (and, on a raw socket, our identifier).
fn parse_reply(p: &[u8], kind: Kind, ident: u16, from: Ipv4Addr) -> Option<Reply> {
    if p.len() < 16 || p[0] != ECHO_REPLY || p[1] != 0 || &p[8..16] != MARKER {
        return None;
    }
    let id = u16::from_be_bytes([p[4], p[5]]);
    if kind == Kind::Raw && id != ident {
        return None;
    }
    Some(Reply {
        from,
        seq: u16::from_be_bytes([p[6], p[7]]),
    })
}

/// RFC 1071 Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_checksums_to_zero_and_replies_are_matched() {
        let r = request(0x1234, 7);
        assert_eq!(checksum(&r), 0, "a packet with its checksum sums to 0");
        let mut reply = r;
        reply[0] = ECHO_REPLY;
        let from = Ipv4Addr::new(192, 168, 32, 1);
        assert_eq!(
            parse_reply(&reply, Kind::Raw, 0x1234, from),
            Some(Reply { from, seq: 7 })
        );
        assert_eq!(parse_reply(&reply, Kind::Raw, 0x9999, from), None);
        // A ping socket's kernel rewrote the identifier and filters by it already.
        assert!(parse_reply(&reply, Kind::Datagram, 0x9999, from).is_some());
        assert_eq!(parse_reply(&r, Kind::Raw, 0x1234, from), None, "a request");
        reply[9] = b'X';
        assert_eq!(
            parse_reply(&reply, Kind::Raw, 0x1234, from),
            None,
            "not ours"
        );
    }
}
