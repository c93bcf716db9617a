//! Nexthop objects (`ip nexthop`, Linux ≥ 5.3) over a raw rtnetlink socket: the `rtnetlink`
//! crate has no nexthop messages.
//!
//! Why the routes use them: the kernel's fib_info hash leaves a route's gateway out, so
//! 5,000 routes each via a different hybrid node land in one hash bucket and every insert
//! walks all the others (`tests/lab/fib_insert_cost.sh`: 578–785 ms for 5,000 routes, 54–92
//! ms via one gateway). A route by nexthop id hashes by that id: 5,000 nexthops plus 5,000
//! routes by `nhid` took 133–161 ms. One nexthop per node, id = the node's IPv4 address as
//! a number (never 0: 0.0.0.0/8 is rejected), so a restarted daemon finds its own.
//!
//! Requests go many to a datagram: the kernel handles each in turn inside `sendto` and
//! queues one acknowledgement per request, matched back by sequence number.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use super::raw_netlink::{
    self as raw, answers, attr, attributes, recv_when_ready, send_when_ready, within, NLMSG_DONE,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST,
};

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_FDB: u16 = 11;
const RTNH_F_ONLINK: u32 = 4;
const AF_INET: u8 = libc::AF_INET as u8;

/// How long the kernel may take to answer one datagram or a whole dump.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Requests per datagram: their acknowledgements (one skb each) must fit the receive
/// buffer, or the kernel drops them and the socket reports ENOBUFS.
const PER_DATAGRAM: usize = 128;
const RECV_BUFFER: libc::c_int = 4 << 20;

/// A nexthop object as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNexthopEntry {
    pub id: u32,
    pub family: u8,
    pub protocol: u8,
    pub onlink: bool,
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    /// A group, a blackhole or an FDB nexthop: never one of ours.
    pub special: bool,
}

/// One change to a nexthop object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NexthopChange {
    /// Create or replace `id` as `via <via> dev <oif> onlink proto <protocol>`.
    Set {
        id: u32,
        via: Ipv4Addr,
        oif: u32,
        protocol: u8,
    },
    Delete {
        id: u32,
    },
}

/// A NETLINK_ROUTE socket for nexthop requests, kept open, in the network namespace of
/// the thread that opened it (like [`super::Netlink`]). After an error that is not the
/// kernel's answer (a timeout, a socket error) it should be replaced: a late answer could
/// still arrive.
pub struct NexthopSocket {
    fd: AsyncFd<OwnedFd>,
    seq: u32,
}

impl NexthopSocket {
    /// Opens the socket; must be called inside a tokio runtime.
    pub fn open() -> io::Result<Self> {
        let fd = raw::socket(libc::NETLINK_ROUTE)?;
        // Best effort (FORCE needs CAP_NET_ADMIN, which the daemon has): a smaller buffer
        // only risks ENOBUFS on a full datagram of errors, which is reported and retried.
        // SAFETY: setsockopt with a c_int value of the stated size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&RECV_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd, which alone owns and closes it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(NexthopSocket { fd, seq: 1 })
    }

    /// Every nexthop object of this network namespace. On a kernel without nexthop
    /// objects the error is the kernel's (EOPNOTSUPP or EINVAL).
    pub async fn dump(&mut self) -> io::Result<Vec<KernelNexthopEntry>> {
        let seq = self.next_seq();
        let mut req = Vec::new();
        raw::message(
            &mut req,
            RTM_GETNEXTHOP,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            &nhmsg(0, 0, 0),
            |_| {},
        );
        within(TIMEOUT, "nexthop dump", self.dump_exchange(&req, seq)).await
    }

    async fn dump_exchange(&self, req: &[u8], seq: u32) -> io::Result<Vec<KernelNexthopEntry>> {
        send_when_ready(&self.fd, req).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            let n = recv_when_ready(&self.fd, &mut buf).await?;
            for a in answers(&buf[..n])? {
                if a.seq != seq {
                    continue;
                }
                if let Some(code) = a.error_code() {
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    continue;
                }
                match a.kind {
                    NLMSG_DONE => return Ok(out),
                    RTM_NEWNEXTHOP => out.extend(parse(a.payload)),
                    _ => {}
                }
            }
        }
    }

    /// Applies `changes` in order; returns each one's errno (0: done). `Err` only when
    /// the socket failed or the kernel did not answer in time.
    pub async fn apply(&mut self, changes: &[NexthopChange]) -> io::Result<Vec<i32>> {
        let mut codes = Vec::with_capacity(changes.len());
        for chunk in changes.chunks(PER_DATAGRAM) {
            let first = self.seq;
            let mut req = Vec::with_capacity(chunk.len() * 48);
            for change in chunk {
                let seq = self.next_seq();
                encode(&mut req, change, seq);
            }
            let got = within(
                TIMEOUT,
                "nexthop changes",
                self.exchange(&req, first, chunk.len()),
            )
            .await?;
            codes.extend(got);
        }
        Ok(codes)
    }

    /// Sends one datagram of `count` requests numbered from `first`; collects their codes.
    async fn exchange(&self, req: &[u8], first: u32, count: usize) -> io::Result<Vec<i32>> {
        send_when_ready(&self.fd, req).await?;
        let mut codes: Vec<Option<i32>> = vec![None; count];
        let mut want = count;
        let mut buf = vec![0u8; 64 * 1024];
        while want > 0 {
            let n = recv_when_ready(&self.fd, &mut buf).await?;
            for a in answers(&buf[..n])? {
                let i = a.seq.wrapping_sub(first) as usize;
                let (Some(code), Some(slot)) = (a.error_code(), codes.get_mut(i)) else {
                    continue; // an earlier exchange's late answer
                };
                if slot.replace(-code).is_none() {
                    want -= 1;
                }
            }
        }
        Ok(codes.into_iter().map(|c| c.unwrap_or(0)).collect())
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }
}

/// struct nhmsg: family, scope, protocol, reserved, flags.
fn nhmsg(family: u8, protocol: u8, flags: u32) -> [u8; 8] {
    let f = flags.to_ne_bytes();
    [family, 0, protocol, 0, f[0], f[1], f[2], f[3]]
}

fn encode(b: &mut Vec<u8>, change: &NexthopChange, seq: u32) {
    match *change {
        NexthopChange::Set {
            id,
            via,
            oif,
            protocol,
        } => raw::message(
            b,
            RTM_NEWNEXTHOP,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            seq,
            &nhmsg(AF_INET, protocol, RTNH_F_ONLINK),
            |b| {
                attr(b, NHA_ID, &id.to_ne_bytes());
                attr(b, NHA_OIF, &oif.to_ne_bytes());
                attr(b, NHA_GATEWAY, &via.octets());
            },
        ),
        NexthopChange::Delete { id } => raw::message(
            b,
            RTM_DELNEXTHOP,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            &nhmsg(0, 0, 0),
            |b| attr(b, NHA_ID, &id.to_ne_bytes()),
        ),
    }
}

fn parse(payload: &[u8]) -> Option<KernelNexthopEntry> {
    if payload.len() < 8 {
        return None;
    }
    let flags = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
    let mut entry = KernelNexthopEntry {
        id: 0,
        family: payload[0],
        protocol: payload[2],
        onlink: flags & RTNH_F_ONLINK != 0,
        oif: None,
        gateway: None,
        special: false,
    };
    let u32_of = |v: &[u8]| <[u8; 4]>::try_from(v).ok().map(u32::from_ne_bytes);
    for (kind, value) in attributes(&payload[8..]) {
        match kind {
            NHA_ID => entry.id = u32_of(value)?,
            NHA_OIF => entry.oif = u32_of(value),
            NHA_GATEWAY => entry.gateway = <[u8; 4]>::try_from(value).ok().map(Ipv4Addr::from),
            NHA_GROUP | NHA_BLACKHOLE | NHA_FDB => entry.special = true,
            _ => {}
        }
    }
    (entry.id != 0).then_some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_request_reads_back_as_the_entry_it_asks_for() {
        let mut b = Vec::new();
        let change = NexthopChange::Set {
            id: 0x0a00_0007,
            via: Ipv4Addr::new(10, 0, 0, 7),
            oif: 9,
            protocol: 158,
        };
        encode(&mut b, &change, 42);
        let a = answers(&b).unwrap();
        assert_eq!((a.len(), a[0].kind, a[0].seq), (1, RTM_NEWNEXTHOP, 42));
        assert_eq!(
            parse(a[0].payload),
            Some(KernelNexthopEntry {
                id: 0x0a00_0007,
                family: AF_INET,
                protocol: 158,
                onlink: true,
                oif: Some(9),
                gateway: Some(Ipv4Addr::new(10, 0, 0, 7)),
                special: false,
            })
        );
    }
}
