//! The DynamoDB lock: one item per lock, written only with conditional writes on its record
//! version number (`rvn`), as the Java amazon-dynamodb-lock-client does.
//!
//! Table schema (created by Terraform / `tests/aws/seed.py`; on-demand billing is enough):
//!
//! | attribute           | type | meaning                                                       |
//! |---------------------|------|---------------------------------------------------------------|
//! | `lock_key`          | S    | partition key: one item per lock (`election.dynamodb.key`)     |
//! | `owner`             | S    | holder identity; `""` once released                           |
//! | `rvn`               | S    | record version number: fresh random on every write            |
//! | `fence`             | N    | [`LeaderRecord::transitions`]: the term, kept on release       |
//! | `lease_duration_ms` | N    | lease length the holder promised                              |
//! | `released`          | BOOL | `owner` is empty after a clean release                        |
//! | `acquire_time`      | S    | RFC 3339, informational                                       |
//! | `renew_time`        | S    | RFC 3339, informational                                       |
//! | `expires_at`        | N    | epoch seconds; the table's TTL attribute, for garbage         |
//! |                     |      | collection of abandoned locks only                            |
//!
//! No expiry decision ever reads a time from the item: contenders judge expiry on their own
//! monotonic clock from when they saw `rvn` change (the elector does that), so clocks of
//! different hosts are never compared. `expires_at` is far in the future on purpose: TTL
//! deletion would reset the fence, so only a lock nobody touched for a week goes.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use jiff::Timestamp;

use super::record::{LeaderRecord, LockError, LockStore, Observed};

/// The lock item's partition key attribute (also probed by `doctor`).
pub(crate) const KEY: &str = "lock_key";
const OWNER: &str = "owner";
const RVN: &str = "rvn";
const FENCE: &str = "fence";
const LEASE_MS: &str = "lease_duration_ms";
const RELEASED: &str = "released";
const ACQUIRE_TIME: &str = "acquire_time";
const RENEW_TIME: &str = "renew_time";
const EXPIRES_AT: &str = "expires_at";

/// How long an untouched item survives DynamoDB's TTL sweep.
const GC_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// A [`LockStore`] on one DynamoDB item.
#[derive(Debug, Clone)]
pub struct DynamoDbLockStore {
    client: Client,
    table: String,
    key: String,
    timeout: Duration,
}

impl DynamoDbLockStore {
    /// `timeout` bounds every call, the SDK's retries included; keep it below the renew
    /// deadline so a hung request cannot eat the lease.
    pub fn new(
        client: Client,
        table: impl Into<String>,
        key: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        DynamoDbLockStore {
            client,
            table: table.into(),
            key: key.into(),
            timeout,
        }
    }

    async fn put(
        &self,
        record: &LeaderRecord,
        condition: &str,
        previous: Option<&str>,
    ) -> Result<Observed, LockError> {
        let version = new_version();
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(encode(&self.key, record, &version)))
            .condition_expression(condition);
        if let Some(prev) = previous {
            req = req.expression_attribute_values(":prev", AttributeValue::S(prev.to_string()));
        }
        match tokio::time::timeout(self.timeout, req.send()).await {
            Ok(Ok(_)) => Ok(Observed {
                record: record.clone(),
                version,
            }),
            Ok(Err(e)) => Err(classify(&e, |e| e.is_conditional_check_failed_exception())),
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> LockError {
        LockError::Unreachable(format!(
            "DynamoDB table {} did not answer within {:?}",
            self.table, self.timeout
        ))
    }
}

impl LockStore for DynamoDbLockStore {
    async fn get(&self) -> Result<Option<Observed>, LockError> {
        // Strongly consistent: an eventually consistent read could show a version that a
        // newer holder already replaced, and we would wait on the wrong one.
        let call = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(self.key.clone()))
            .consistent_read(true)
            .send();
        let out = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(classify(&e, |_| false)),
            Err(_) => return Err(self.timed_out()),
        };
        match out.item() {
            None => Ok(None),
            Some(item) => decode(item).map(Some).map_err(|why| {
                LockError::Store(format!(
                    "lock item {:?} in table {}: {why}",
                    self.key, self.table
                ))
            }),
        }
    }

    async fn create(&self, record: &LeaderRecord) -> Result<Observed, LockError> {
        self.put(record, "attribute_not_exists(lock_key)", None)
            .await
    }

    async fn update(
        &self,
        previous: &Observed,
        record: &LeaderRecord,
    ) -> Result<Observed, LockError> {
        // A timeout here is ambiguous (the write may have landed): the elector re-reads,
        // and a record that names us with a new rvn is simply ours.
        self.put(record, "rvn = :prev", Some(&previous.version))
            .await
    }

    fn describe(&self) -> String {
        format!("DynamoDB {}/{}", self.table, self.key)
    }
}

/// 128 random bits: a version nobody else can produce, so a condition on it fails for
/// every writer that did not read this exact write.
fn new_version() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn encode(key: &str, r: &LeaderRecord, version: &str) -> HashMap<String, AttributeValue> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let expires = now + r.lease_duration + GC_AFTER;
    let mut item = HashMap::from([
        (KEY.to_string(), AttributeValue::S(key.to_string())),
        (OWNER.to_string(), AttributeValue::S(r.holder.clone())),
        (RVN.to_string(), AttributeValue::S(version.to_string())),
        (
            FENCE.to_string(),
            AttributeValue::N(r.transitions.to_string()),
        ),
        (
            LEASE_MS.to_string(),
            AttributeValue::N(r.lease_duration.as_millis().to_string()),
        ),
        (
            RELEASED.to_string(),
            AttributeValue::Bool(r.holder.is_empty()),
        ),
        (
            EXPIRES_AT.to_string(),
            AttributeValue::N(expires.as_secs().to_string()),
        ),
    ]);
    if let Some(t) = r.acquire_time {
        item.insert(ACQUIRE_TIME.to_string(), AttributeValue::S(t.to_string()));
    }
    if let Some(t) = r.renew_time {
        item.insert(RENEW_TIME.to_string(), AttributeValue::S(t.to_string()));
    }
    item
}

fn decode(item: &HashMap<String, AttributeValue>) -> Result<Observed, String> {
    let s = |name: &str| match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.as_str()),
        Some(_) => Err(format!("attribute {name} is not a string")),
        None => Err(format!("attribute {name} is missing")),
    };
    let n = |name: &str| match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse::<u64>()
            .map_err(|_| format!("attribute {name} = {v:?} is not a non-negative integer")),
        Some(_) => Err(format!("attribute {name} is not a number")),
        None => Err(format!("attribute {name} is missing")),
    };
    // Informational times: a value a human mangled must not stop the election.
    let time = |name: &str| match item.get(name) {
        Some(AttributeValue::S(v)) => v.parse::<Timestamp>().ok(),
        _ => None,
    };
    let version = s(RVN)?;
    if version.is_empty() {
        return Err("attribute rvn is empty".into());
    }
    let transitions =
        u32::try_from(n(FENCE)?).map_err(|_| "attribute fence does not fit 32 bits".to_string())?;
    Ok(Observed {
        record: LeaderRecord {
            holder: s(OWNER)?.to_string(),
            lease_duration: Duration::from_millis(n(LEASE_MS)?),
            acquire_time: time(ACQUIRE_TIME),
            renew_time: time(RENEW_TIME),
            transitions,
        },
        version: version.to_string(),
    })
}

/// ConditionalCheckFailed → Conflict; anything that may heal by itself (throttling, 5xx,
/// no connection, timeouts) → Unreachable; the rest (no such table, access denied) → Store.
fn classify<E>(e: &SdkError<E>, conditional_failed: impl Fn(&E) -> bool) -> LockError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(ctx) => {
            if conditional_failed(ctx.err()) {
                return LockError::Conflict;
            }
            let code = e.code().unwrap_or("unknown error");
            let text = format!("{code}: {}", e.message().unwrap_or_default());
            let transient = ctx.raw().status().is_server_error()
                || matches!(
                    code,
                    "ThrottlingException"
                        | "ProvisionedThroughputExceededException"
                        | "RequestLimitExceeded"
                        | "InternalServerError"
                        | "ServiceUnavailable"
                );
            if transient {
                LockError::Unreachable(text)
            } else {
                LockError::Store(text)
            }
        }
        SdkError::ConstructionFailure(_) => LockError::Store(crate::aws::describe_sdk_error(e)),
        _ => LockError::Unreachable(crate::aws::describe_sdk_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str) -> LeaderRecord {
        LeaderRecord {
            holder: holder.into(),
            lease_duration: Duration::from_millis(3500),
            acquire_time: Some("2026-11-21T06:00:00.123456789Z".parse().unwrap()),
            renew_time: Some("2026-11-21T06:00:01Z".parse().unwrap()),
            transitions: 7,
        }
    }

    #[test]
    fn items_round_trip() {
        for holder in ["i-0123456789abcdef0-1234", ""] {
            let r = record(holder);
            let item = encode("leader", &r, "v1");
            assert_eq!(item[RELEASED], AttributeValue::Bool(holder.is_empty()));
            assert_eq!(item[FENCE], AttributeValue::N("7".into()));
            let back = decode(&item).unwrap();
            assert_eq!(
                back,
                Observed {
                    record: r,
                    version: "v1".into()
                }
            );
        }
    }

    #[test]
    fn expires_at_is_far_beyond_the_lease() {
        let item = encode("leader", &record("a"), "v");
        let AttributeValue::N(exp) = &item[EXPIRES_AT] else {
            panic!("not a number")
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(exp.parse::<u64>().unwrap() >= now + GC_AFTER.as_secs());
    }

    #[test]
    fn malformed_items_are_errors_not_panics() {
        let mut item = encode("leader", &record("a"), "v");
        item.insert(FENCE.into(), AttributeValue::N("-1".into()));
        assert!(decode(&item).unwrap_err().contains("fence"));
        let mut item = encode("leader", &record("a"), "v");
        item.remove(OWNER);
        assert!(decode(&item).unwrap_err().contains("owner"));
        // Informational times may be junk.
        let mut item = encode("leader", &record("a"), "v");
        item.insert(RENEW_TIME.into(), AttributeValue::S("yesterday".into()));
        assert_eq!(decode(&item).unwrap().record.renew_time, None);
    }

    #[test]
    fn versions_are_fresh() {
        assert_ne!(new_version(), new_version());
        assert_eq!(new_version().len(), 32);
    }
}
