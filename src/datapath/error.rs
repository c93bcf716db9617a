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
    #[error("{0}")]
    Invalid(String),
}

impl DatapathError {
    /// The kernel's errno for a rejected netlink request, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DatapathError::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| -c.get()),
            _ => None,
        }
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
