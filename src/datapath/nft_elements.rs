//! Adds and removes elements of one nftables set over nfnetlink, in one batch (one kernel
//! transaction): what a node event does to the filter's `nodes` set. Spawning `nft` for
//! that costs a process start and its ruleset parse, tens of milliseconds on a busy host,
//! for a few bytes of change. Everything else about the table still goes through `nft`.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFPROTO_IPV4: u8 = 2;

/// How long the kernel may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// `added` into and `removed` out of set `set` of table `ip table`, atomically: any
/// failure (a removed element missing, the set gone) changes nothing and is returned.
/// Blocking: run it off the async workers.
pub fn update(table: &str, set: &str, added: &[Ipv4Addr], removed: &[Ipv4Addr]) -> io::Result<()> {
    let mut batch = Vec::new();
    let mut seq = 1u32;
    message(
        &mut batch,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        0,
        seq,
        |_| {},
    );
    let mut acks = 0;
    for (kind, flags, ips) in [
        (NFT_MSG_NEWSETELEM, NLM_F_CREATE, added),
        (NFT_MSG_DELSETELEM, 0, removed),
    ] {
        if ips.is_empty() {
            continue;
        }
        seq += 1;
        acks += 1;
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        message(
            &mut batch,
            kind,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_IPV4,
            seq,
            |b| {
                attr(b, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
                attr(b, NFTA_SET_ELEM_LIST_SET, &cstr(set));
                nested(b, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                    for ip in ips {
                        nested(b, NFTA_LIST_ELEM, |b| {
                            nested(b, NFTA_SET_ELEM_KEY, |b| {
                                attr(b, NFTA_DATA_VALUE, &ip.octets());
                            });
                        });
                    }
                });
            },
        );
    }
    if acks == 0 {
        return Ok(());
    }
    seq += 1;
    message(
        &mut batch,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        0,
        seq,
        |_| {},
    );
    let socket = Socket::open()?;
    socket.send(&batch)?;
    socket.acks(acks)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn pad(b: &mut Vec<u8>) {
    while b.len() % 4 != 0 {
        b.push(0);
    }
}

/// One netlink message with an nfgenmsg header; `body` appends its attributes.
fn message(
    b: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    family: u8,
    seq: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = b.len();
    b.extend_from_slice(&[0; 4]); // length, filled in below
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, resource id (big endian: the batch's subsystem).
    b.push(family);
    b.push(0);
    let res_id = if kind == NFNL_MSG_BATCH_BEGIN || kind == NFNL_MSG_BATCH_END {
        NFNL_SUBSYS_NFTABLES
    } else {
        0
    };
    b.extend_from_slice(&res_id.to_be_bytes());
    body(b);
    pad(b);
    let len = (b.len() - start) as u32;
    b[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn attr(b: &mut Vec<u8>, kind: u16, value: &[u8]) {
    b.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(value);
    pad(b);
}

fn nested(b: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = b.len();
    b.extend_from_slice(&[0; 2]);
    b.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    body(b);
    let len = (b.len() - start) as u16;
    b[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// A NETLINK_NETFILTER socket, closed on drop.
struct Socket(libc::c_int);

impl Socket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned by the returned value.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = Socket(fd);
        let tv = libc::timeval {
            tv_sec: TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: `tv` outlives the call and its size is passed.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    fn send(&self, batch: &[u8]) -> io::Result<()> {
        // SAFETY: a zeroed sockaddr_nl is valid; the kernel is pid 0.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `batch` and `addr` outlive the call and their sizes are passed.
        let n = unsafe {
            libc::sendto(
                self.0,
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

    /// Waits for `want` acknowledgements; the first error the kernel reports is returned
    /// (the batch was then aborted as a whole).
    fn acks(&self, mut want: usize) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        while want > 0 {
            // SAFETY: `buf` is valid for its length.
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return Err(match e.kind() {
                    io::ErrorKind::WouldBlock => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from nf_tables within {TIMEOUT:?}"),
                    ),
                    _ => e,
                });
            }
            let mut msg = &buf[..n as usize];
            while msg.len() >= 16 {
                let len = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
                let kind = u16::from_ne_bytes([msg[4], msg[5]]);
                if len < 16 || len > msg.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink answer",
                    ));
                }
                if kind == NLMSG_ERROR && len >= 20 {
                    let code = i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]]);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    want = want.saturating_sub(1);
                }
                msg = &msg[((len + 3) & !3).min(msg.len())..];
            }
        }
        Ok(())
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe {
            libc::close(self.0);
        }
    }
}
