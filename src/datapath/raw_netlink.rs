//! The bytes of netlink messages the `rtnetlink` crate does not model (nf_tables set
//! elements, nexthop objects), and the socket calls that carry them. Shared by
//! [`super::nft_elements`] and [`super::nexthop`]; no policy lives here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLMSG_ERROR: u16 = 0x2;
pub const NLMSG_DONE: u16 = 0x3;
pub const NLA_F_NESTED: u16 = 0x8000;
/// Netlink message header length.
pub const HEADER: usize = 16;

/// A non-blocking netlink socket of `protocol` in the calling thread's network namespace.
pub fn socket(protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned by the OwnedFd made from it.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            protocol,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

pub fn pad(b: &mut Vec<u8>) {
    while b.len() % 4 != 0 {
        b.push(0);
    }
}

/// One netlink message: the 16-byte header, the family header `family_header` (nfgenmsg,
/// nhmsg…), then whatever `body` appends.
pub fn message(
    b: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family_header: &[u8],
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = b.len();
    b.extend_from_slice(&[0; 4]); // length, filled in below
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(family_header);
    body(b);
    pad(b);
    let len = (b.len() - start) as u32;
    b[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

pub fn attr(b: &mut Vec<u8>, kind: u16, value: &[u8]) {
    b.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(value);
    pad(b);
}

pub fn nested(b: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = b.len();
    b.extend_from_slice(&[0; 2]);
    b.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    body(b);
    let len = (b.len() - start) as u16;
    b[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// `fut` (one exchange with the kernel), or a TimedOut error naming `what` after `limit`.
pub async fn within<T>(
    limit: std::time::Duration,
    what: &str,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: no answer from the kernel within {limit:?}"),
        ))
    })
}

/// Sends one datagram once the socket can take it.
pub async fn send_when_ready(fd: &AsyncFd<OwnedFd>, datagram: &[u8]) -> io::Result<()> {
    loop {
        let mut ready = fd.writable().await?;
        if let Ok(r) = ready.try_io(|fd| send(fd.get_ref().as_raw_fd(), datagram)) {
            return r;
        }
    }
}

/// Receives one datagram into `buf` once there is one; returns its length.
pub async fn recv_when_ready(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut ready = fd.readable().await?;
        if let Ok(r) = ready.try_io(|fd| recv(fd.get_ref().as_raw_fd(), buf)) {
            return r;
        }
    }
}

fn send(fd: libc::c_int, batch: &[u8]) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr_nl is valid; the kernel is pid 0.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `batch` and `addr` outlive the call and their sizes are passed.
    let n = unsafe {
        libc::sendto(
            fd,
            batch.as_ptr().cast(),
            batch.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv(fd: libc::c_int, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One message of a netlink answer: its type, sequence number and payload (after the
/// 16-byte header).
pub struct Answer<'a> {
    pub kind: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

impl Answer<'_> {
    /// The error code of an NLMSG_ERROR message (0: an acknowledgement).
    pub fn error_code(&self) -> Option<i32> {
        (self.kind == NLMSG_ERROR && self.payload.len() >= 4).then(|| {
            i32::from_ne_bytes([
                self.payload[0],
                self.payload[1],
                self.payload[2],
                self.payload[3],
            ])
        })
    }
}

/// The messages of one datagram the kernel sent.
pub fn answers(mut msg: &[u8]) -> io::Result<Vec<Answer<'_>>> {
    let mut out = Vec::new();
    while msg.len() >= HEADER {
        let len = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
        let kind = u16::from_ne_bytes([msg[4], msg[5]]);
        if len < HEADER || len > msg.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink answer",
            ));
        }
        let seq = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
        out.push(Answer {
            kind,
            seq,
            payload: &msg[HEADER..len],
        });
        msg = &msg[((len + 3) & !3).min(msg.len())..];
    }
    Ok(out)
}

/// The `(sequence number, error code)` of every NLMSG_ERROR message in `buf` (code 0: an
/// acknowledgement).
pub fn acknowledgements(buf: &[u8]) -> io::Result<Vec<(u32, i32)>> {
    Ok(answers(buf)?
        .iter()
        .filter_map(|a| a.error_code().map(|code| (a.seq, code)))
        .collect())
}

/// The attributes of a message body: `(type without flags, value)`.
pub fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let value = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((kind, value))
    })
}
