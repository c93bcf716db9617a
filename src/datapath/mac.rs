//! The MAC addresses both ends of the tunnel agree on without talking to each other.

use std::fmt;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The gateway device's MAC, as the reference gateway derives it, so that a
    /// CiliumVTEPConfig written by either names the same address: the first six bytes of
    /// SHA-256 over the IPv4-mapped IPv6 form of the node IP, made locally administered
    /// and unicast.
    pub fn for_gateway(node_ip: Ipv4Addr) -> Self {
        let digest = Sha256::digest(node_ip.to_ipv6_mapped().octets());
        let mut b = [0u8; 6];
        b.copy_from_slice(&digest[..6]);
        b[0] = (b[0] & 0xfe) | 0x02;
        Mac(b)
    }

    /// The MAC the gateway uses for a hybrid node's VTEP: `02:00:` and the node's IPv4
    /// bytes. Cilium's datapath accepts any inner destination MAC, so this only has to be
    /// unique per node and stable.
    pub fn for_node(node_ip: Ipv4Addr) -> Self {
        let [a, b, c, d] = node_ip.octets();
        Mac([0x02, 0x00, a, b, c, d])
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(Mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_mac_matches_reference_vector() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(Mac::for_gateway(ip).to_string(), "b2:6f:8e:ac:e6:ae");
        // Hashing the 4-byte form instead would give 46:b7:74:c9:3d:5c.
        assert_ne!(Mac::for_gateway(ip).to_string(), "46:b7:74:c9:3d:5c");
    }

    #[test]
    fn gateway_mac_is_local_unicast() {
        for i in 0..=255u8 {
            let m = Mac::for_gateway(Ipv4Addr::new(10, 1, 2, i));
            assert_eq!(m.0[0] & 0x03, 0x02, "{m}");
        }
    }

    #[test]
    fn node_mac_embeds_ip() {
        assert_eq!(
            Mac::for_node(Ipv4Addr::new(10, 99, 0, 2)).to_string(),
            "02:00:0a:63:00:02"
        );
    }

    #[test]
    fn from_slice_needs_six_bytes() {
        assert_eq!(
            Mac::from_slice(&[1, 2, 3, 4, 5, 6]),
            Some(Mac([1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(Mac::from_slice(&[1, 2, 3]), None);
    }
}
