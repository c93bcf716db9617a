//! The primary ENI's source/destination check. With it on, EC2 drops every packet the
//! gateway forwards (neither source nor destination is the instance), so a gateway that
//! cannot turn it off must not become ready, let alone leader.

use std::time::Duration;

use aws_sdk_ec2::types::AttributeBooleanValue;
use aws_sdk_ec2::Client;

use super::describe_sdk_error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDestCheck {
    /// Already off (e.g. set by the launch template): nothing written.
    AlreadyDisabled,
    /// Was on; this call turned it off and read it back.
    Disabled,
}

#[derive(Debug, thiserror::Error)]
pub enum EniError {
    #[error(
        "source/destination check is enabled on {eni}: EC2 drops traffic this gateway forwards, \
         so it refuses to become ready. Disable it (aws ec2 modify-network-interface-attribute \
         --network-interface-id {eni} --no-source-dest-check, or source_dest_check = false in \
         the launch template), or set aws.manage_source_dest_check = true"
    )]
    Enabled { eni: String },
    #[error("reading the source/destination check of {eni}: {cause}")]
    Read { eni: String, cause: String },
    #[error("disabling the source/destination check of {eni} (needs ec2:ModifyNetworkInterfaceAttribute): {cause}")]
    Modify { eni: String, cause: String },
}

/// Makes sure forwarding works on `eni`: reads SourceDestCheck and, if it is on and
/// `manage` allows, turns it off and reads it back. Every call is bounded by `timeout`.
pub async fn ensure_source_dest_check_disabled(
    ec2: &Client,
    eni: &str,
    manage: bool,
    timeout: Duration,
) -> Result<SourceDestCheck, EniError> {
    if !read(ec2, eni, timeout).await? {
        return Ok(SourceDestCheck::AlreadyDisabled);
    }
    if !manage {
        return Err(EniError::Enabled {
            eni: eni.to_string(),
        });
    }
    let call = ec2
        .modify_network_interface_attribute()
        .network_interface_id(eni)
        .source_dest_check(AttributeBooleanValue::builder().value(false).build())
        .send();
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(EniError::Modify {
                eni: eni.to_string(),
                cause: describe_sdk_error(&e),
            })
        }
        Err(_) => {
            return Err(EniError::Modify {
                eni: eni.to_string(),
                cause: format!("no answer within {timeout:?}"),
            })
        }
    }
    // Trust, but verify: a silently ignored change would leave a black hole behind a
    // gateway that believes it forwards.
    if read(ec2, eni, timeout).await? {
        return Err(EniError::Modify {
            eni: eni.to_string(),
            cause: "EC2 accepted the change but still reports the check enabled".into(),
        });
    }
    tracing::info!(%eni, "source/destination check disabled");
    Ok(SourceDestCheck::Disabled)
}

/// `true` when the check is on. An absent value counts as on: EC2's default.
pub async fn read(ec2: &Client, eni: &str, timeout: Duration) -> Result<bool, EniError> {
    let call = ec2
        .describe_network_interfaces()
        .network_interface_ids(eni)
        .send();
    let resp = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return Err(EniError::Read {
                eni: eni.to_string(),
                cause: describe_sdk_error(&e),
            })
        }
        Err(_) => {
            return Err(EniError::Read {
                eni: eni.to_string(),
                cause: format!("no answer within {timeout:?}"),
            })
        }
    };
    let ni = resp
        .network_interfaces()
        .iter()
        .find(|n| n.network_interface_id() == Some(eni))
        .ok_or_else(|| EniError::Read {
            eni: eni.to_string(),
            cause: "EC2 does not know this network interface".into(),
        })?;
    Ok(ni.source_dest_check().unwrap_or(true))
}
