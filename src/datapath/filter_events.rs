//! nf_tables notifications (`NFNLGRP_NFTABLES`) about the daemon's own table: the table,
//! one of its chains, rules or sets deleted (`nft flush table`, `nft delete table`,
//! `nft flush ruleset`, a firewall manager reloading) wakes a full pass at once, as link
//! events do for the device, instead of leaving the gateway unfiltered or dropping node
//! traffic until the resync.
//!
//! Set element changes are not listened to: node events make them all the time, and a
//! lost element is the full pass's business. The daemon's own table rewrites (a full pass
//! that found drift) flush the table too, so each costs one more full pass, which finds
//! nothing to do.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_DELSET: u16 = 11;
const NFPROTO_IPV4: u8 = 2;
/// The table's name is attribute 1 of table, chain, rule and set messages alike
/// (`NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`).
const TABLE_NAME_ATTR: u16 = 1;

/// A subscription to nf_tables changes in this network namespace.
pub struct FilterEvents {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl FilterEvents {
    /// Subscribes; must be called inside a tokio runtime, in the datapath's namespace.
    pub fn open() -> io::Result<Self> {
        let fd = super::nft_elements::netfilter_socket()?;
        // SAFETY: a zeroed sockaddr_nl is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = 1 << (NFNLGRP_NFTABLES - 1);
        // SAFETY: `addr` outlives the call and its size is passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd, which alone owns and closes it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(FilterEvents {
            fd,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Waits until a table, chain, rule or set of `ip table` is deleted (or notifications
    /// were lost, which may have hidden one), then swallows the rest of the burst (one
    /// `nft` command sends many). An error: the subscription is broken.
    pub async fn next(&mut self, table: &str) -> io::Result<()> {
        while !self.receive(table).await? {}
        let quiet = tokio::time::sleep(Duration::from_millis(20));
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                _ = &mut quiet => return Ok(()),
                r = self.receive(table) => { r?; }
            }
        }
    }

    /// One datagram: whether it concerns `table` (or was lost).
    async fn receive(&mut self, table: &str) -> io::Result<bool> {
        let n = loop {
            let mut ready = self.fd.readable().await?;
            let buf = &mut self.buf;
            let r = ready.try_io(|fd| {
                // SAFETY: `buf` is valid for its length.
                let n = unsafe {
                    libc::recv(
                        fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Ok(n)) => break n,
                // The socket's queue overflowed: a deletion may be among what was lost.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(true),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        };
        Ok(concerns(&self.buf[..n], table.as_bytes()))
    }
}

/// Whether any message in `buf` deletes a table, chain, rule or set of `ip <table>`.
fn concerns(mut buf: &[u8], table: &[u8]) -> bool {
    let mut hit = false;
    while buf.len() >= 20 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 20 || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let family = buf[16];
        let deletes = kind >> 8 == NFNL_SUBSYS_NFTABLES
            && matches!(
                kind & 0xff,
                NFT_MSG_DELTABLE | NFT_MSG_DELCHAIN | NFT_MSG_DELRULE | NFT_MSG_DELSET
            );
        if deletes && family == NFPROTO_IPV4 && table_name(&buf[20..len]) == Some(table) {
            hit = true;
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    hit
}

/// The table name attribute, without its NUL.
fn table_name(mut attrs: &[u8]) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == TABLE_NAME_ATTR {
            let value = &attrs[4..len];
            return Some(value.strip_suffix(&[0]).unwrap_or(value));
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    None
}
