//! Adds and removes elements of one nftables set over nfnetlink, in one batch (one kernel
//! transaction): what a node event does to the filter's `nodes` set. Spawning `nft` for
//! that costs a process start and its ruleset parse, tens of milliseconds on a busy host,
//! for a few bytes of change. Everything else about the table still goes through `nft`.
//!
//! The socket is kept open across batches. Closing a NETLINK_NETFILTER socket makes the
//! kernel finish releasing whatever earlier transactions deleted before `close` returns
//! (`nft_rcv_nl_event` flushes nf_tables' destroy work, which waits for an RCU grace
//! period): with a socket per batch, every node removal waited for a grace period, 5–30 ms
//! (the per-event p99). Kept open, that release happens in the kernel's own worker.
//! The kernel handles a batch inside `sendto`, so its acknowledgements are queued when the
//! send returns: no worker thread is needed to wait for them.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use super::raw_netlink::{
    self as raw, acknowledgements, attr, nested, recv_when_ready, send_when_ready, within,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST,
};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFPROTO_IPV4: u8 = 2;

/// A non-blocking NETLINK_NETFILTER socket in the calling thread's network namespace
/// (also [`super::filter_events`]' subscription, which binds it to a group).
pub(super) fn netfilter_socket() -> io::Result<OwnedFd> {
    raw::socket(NETLINK_NETFILTER)
}

/// How long the kernel may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A NETLINK_NETFILTER socket for set element batches, kept open, in the network namespace
/// of the thread that opened it (like [`super::Netlink`]).
pub struct ElementSocket {
    fd: AsyncFd<OwnedFd>,
    /// The next sequence number: acknowledgements of an earlier batch that timed out are
    /// told apart from this one's by it.
    seq: u32,
}

impl ElementSocket {
    /// Opens the socket; must be called inside a tokio runtime.
    pub fn open() -> io::Result<Self> {
        // SAFETY: the OwnedFd is moved into the AsyncFd, which alone owns and closes it.
        let fd = unsafe { AsyncFd::register(netfilter_socket()?) }.map_err(io::Error::from)?;
        Ok(ElementSocket { fd, seq: 1 })
    }

    /// `added` into and `removed` out of set `set` of table `ip table`, atomically: any
    /// failure (a removed element missing, the set gone) changes nothing and is returned.
    /// After an error that is not the kernel's answer (a timeout, a socket error) the
    /// socket should be replaced: a late answer could still arrive.
    pub async fn update(
        &mut self,
        table: &str,
        set: &str,
        added: &[Ipv4Addr],
        removed: &[Ipv4Addr],
    ) -> io::Result<()> {
        let first = self.seq;
        let (batch, acks) = batch(table, set, added, removed, &mut self.seq);
        if acks == 0 {
            return Ok(());
        }
        within(TIMEOUT, "nf_tables", self.exchange(&batch, first, acks)).await
    }

    async fn exchange(&self, batch: &[u8], first: u32, acks: usize) -> io::Result<()> {
        send_when_ready(&self.fd, batch).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut want = acks;
        let mut failed = None;
        while want > 0 {
            let n = recv_when_ready(&self.fd, &mut buf).await?;
            for (seq, code) in acknowledgements(&buf[..n])? {
                // Sequence numbers this batch used: `first` (BEGIN) .. the END message.
                if seq.wrapping_sub(first) >= self.seq.wrapping_sub(first) {
                    continue;
                }
                want = want.saturating_sub(1);
                if code != 0 && failed.is_none() {
                    failed = Some(code);
                }
            }
            // The kernel aborts a batch at its first error and answers no further message.
            if failed.is_some() {
                break;
            }
        }
        match failed {
            Some(code) => Err(io::Error::from_raw_os_error(-code)),
            None => Ok(()),
        }
    }
}

/// The batch's bytes and how many acknowledgements it asks for; `seq` is advanced past
/// the sequence numbers it uses.
fn batch(
    table: &str,
    set: &str,
    added: &[Ipv4Addr],
    removed: &[Ipv4Addr],
    seq: &mut u32,
) -> (Vec<u8>, usize) {
    let mut batch = Vec::new();
    let mut next = || {
        let s = *seq;
        *seq = seq.wrapping_add(1);
        s
    };
    message(
        &mut batch,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        0,
        next(),
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
        acks += 1;
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        message(
            &mut batch,
            kind,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_IPV4,
            next(),
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
    message(
        &mut batch,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        0,
        next(),
        |_| {},
    );
    (batch, acks)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
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
    // nfgenmsg: family, version, resource id (big endian: the batch's subsystem).
    let res_id = if kind == NFNL_MSG_BATCH_BEGIN || kind == NFNL_MSG_BATCH_END {
        NFNL_SUBSYS_NFTABLES
    } else {
        0
    };
    let [r0, r1] = res_id.to_be_bytes();
    raw::message(b, kind, flags, seq, &[family, 0, r0, r1], body);
}
