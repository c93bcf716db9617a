use std::io;

/// A datapath failure, always with what was being done when it happened.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{context}: timed out after {seconds}s")]
    Timeout { context: String, seconds: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request sent over a raw netlink socket (nexthop objects).
    #[error("{context}: {source}")]
    Kernel {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// `nft` ran and refused; `missing` when what it was asked about does not exist.
    #[error("{context}: nft: {stderr}")]
    Nft {
        context: String,
        stderr: String,
        missing: bool,
    },
    /// The configured name is held by a device this daemon did not create.
    #[error("vxlan.interface = {name:?}: {what}, not created by hybrid-gateway, already has this name; it is left alone. Delete it (ip link del {name}) if it is a leftover, or set vxlan.interface to a free name")]
    ForeignDevice { name: String, what: String },
    /// Linux allows one VXLAN device per VNI and UDP port; another one has ours.
    #[error("creating VXLAN device {name}: device {other} already uses VNI {vni} on UDP port {port} (Linux allows one per VNI and port); delete it or change vxlan.vni / vxlan.port")]
    VniInUse {
        name: String,
        other: String,
        vni: u32,
        port: u16,
        #[source]
        source: Box<DatapathError>,
    },
}

impl DatapathError {
    /// The kernel's errno for a rejected netlink request, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DatapathError::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| -c.get()),
            DatapathError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Only a person can fix this (a device in the way): restarting will not help.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            DatapathError::ForeignDevice { .. } | DatapathError::VniInUse { .. }
        )
    }

    /// The object was already absent: for a delete, the job is done.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::ENODEV)
        )
    }
}

pub type Result<T, E = DatapathError> = std::result::Result<T, E>;
