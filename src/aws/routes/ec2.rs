//! The EC2 calls of the reconciler: paginated, filtered reads of the managed tables and
//! of the gateways the ownership guard trusts, and single route writes. Every call is
//! bounded by the call timeout and starts only with enough leadership left; every
//! attempt of a write is sent only with enough leadership left.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::BoxError;

use aws_sdk_ec2::types::{Filter, Route, RouteOrigin, RouteState};
use ipnet::Ipv4Net;

use super::report::{counter_of, Counters, DI, DRT};
use super::write_fence::WriteFence;
use super::{Deadline, RouteTables};
use crate::aws::route_diff::{ObservedRoute, ObservedTable, Target, Trusted, WriteKind};
use crate::aws::{describe_sdk_error, error_code};

/// EC2 copies an Auto Scaling group's name onto its instances under this tag.
const ASG_TAG: &str = "aws:autoscaling:groupName";
/// DescribeRouteTables' page limit; the fewer pages, the fewer calls.
const PAGE: i32 = 100;
/// Filter values per filter: EC2 caps them (200); stay well below.
const FILTER_VALUES: usize = 100;
pub(super) const LEADERSHIP_ENDING: &str = "leadership ends sooner than an EC2 call may take";

impl RouteTables {
    /// Every managed table: by id (a filter, so one unknown id does not fail the whole
    /// call as `RouteTableIds` would) and by tag. Returns the tables and the unknown ids.
    pub(super) async fn read_all(
        &self,
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<(Vec<ObservedTable>, Vec<String>), String> {
        let s = &self.settings;
        let mut found: BTreeMap<String, ObservedTable> = BTreeMap::new();
        if !s.route_table_ids.is_empty() {
            for t in self
                .read_ids(&s.route_table_ids, deadline, counters)
                .await?
            {
                found.insert(t.id.clone(), t);
            }
        }
        if let Some(tag) = &s.route_table_tag {
            let filter = Filter::builder()
                .name(format!("tag:{}", tag.key))
                .values(&tag.value)
                .build();
            for t in self.describe(filter, deadline, counters).await? {
                found.insert(t.id.clone(), t);
            }
        }
        let missing = s
            .route_table_ids
            .iter()
            .filter(|id| !found.contains_key(*id))
            .cloned()
            .collect();
        Ok((found.into_values().collect(), missing))
    }

    pub(super) async fn read_ids(
        &self,
        ids: &[String],
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<Vec<ObservedTable>, String> {
        let mut out = Vec::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            let filter = Filter::builder()
                .name("route-table-id")
                .set_values(Some(chunk.to_vec()))
                .build();
            out.extend(self.describe(filter, deadline, counters).await?);
        }
        Ok(out)
    }

    /// All pages of DescribeRouteTables for one filter.
    pub(super) async fn describe(
        &self,
        filter: Filter,
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<Vec<ObservedTable>, String> {
        let mut tables = Vec::new();
        let mut token: Option<String> = None;
        loop {
            if !self.admit(deadline).await {
                return Err(LEADERSHIP_ENDING.into());
            }
            counters.bump(DRT);
            let mut call = self.ec2.describe_route_tables().filters(filter.clone());
            if let Some(vpc) = &self.settings.vpc_id {
                call = call.filters(Filter::builder().name("vpc-id").values(vpc).build());
            }
            let call = call.max_results(PAGE).set_next_token(token.take()).send();
            let resp = match tokio::time::timeout(self.settings.call_timeout, call).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    return Err(format!("DescribeRouteTables: {}", describe_sdk_error(&e)))
                }
                Err(_) => {
                    return Err(format!(
                        "DescribeRouteTables: no answer within {:?}",
                        self.settings.call_timeout
                    ))
                }
            };
            for rt in resp.route_tables() {
                let Some(id) = rt.route_table_id() else {
                    continue;
                };
                tables.push(ObservedTable {
                    id: id.to_string(),
                    routes: rt.routes().iter().filter_map(observe).collect(),
                });
            }
            token = resp
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(tables);
            }
        }
    }

    /// Gateways the ownership guard trusts: our own instance and `gateway_instance_ids`
    /// (one call, which also tells our Auto Scaling group), then every instance of that
    /// group (a second call). Only made when a route points at an ENI that is not ours.
    pub(super) async fn trusted(
        &self,
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<Trusted, String> {
        let mut ids = self.settings.gateway_instance_ids.clone();
        ids.push(self.self_instance.clone());
        let first = self
            .describe_instances(
                Filter::builder()
                    .name("instance-id")
                    .set_values(Some(ids))
                    .build(),
                deadline,
                counters,
            )
            .await?;
        let asg = first
            .iter()
            .find(|i| i.instance_id() == Some(self.self_instance.as_str()))
            .and_then(|i| i.tags().iter().find(|t| t.key() == Some(ASG_TAG)))
            .and_then(|t| t.value())
            .map(str::to_string);
        let mut all = first;
        if let Some(asg) = asg {
            let filter = Filter::builder()
                .name(format!("tag:{ASG_TAG}"))
                .values(asg)
                .build();
            all.extend(self.describe_instances(filter, deadline, counters).await?);
        }
        let mut trusted = Trusted::default();
        for inst in &all {
            if let Some(id) = inst.instance_id() {
                trusted.instances.insert(id.to_string());
            }
            for ni in inst.network_interfaces() {
                if let Some(eni) = ni.network_interface_id() {
                    trusted.enis.insert(eni.to_string());
                }
            }
        }
        Ok(trusted)
    }

    pub(super) async fn describe_instances(
        &self,
        filter: Filter,
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<Vec<aws_sdk_ec2::types::Instance>, String> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            if !self.admit(deadline).await {
                return Err(LEADERSHIP_ENDING.into());
            }
            counters.bump(DI);
            let call = self
                .ec2
                .describe_instances()
                .filters(filter.clone())
                .max_results(1000)
                .set_next_token(token.take())
                .send();
            let resp = match tokio::time::timeout(self.settings.call_timeout, call).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(format!("DescribeInstances: {}", describe_sdk_error(&e))),
                Err(_) => {
                    return Err(format!(
                        "DescribeInstances: no answer within {:?}",
                        self.settings.call_timeout
                    ))
                }
            };
            out.extend(
                resp.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .cloned(),
            );
            token = resp
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// One CreateRoute / ReplaceRoute / DeleteRoute, bounded by the call timeout and
    /// refused when leadership would not outlast it — checked before the call and again by
    /// [`LeadershipGate`] right before each attempt (the SDK's retries included) is sent.
    pub(super) async fn write(
        &self,
        kind: WriteKind,
        table: &str,
        cidr: Ipv4Net,
        eni: &str,
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<(), Failure> {
        if !self.admit(deadline).await {
            return Err(Failure::Withheld);
        }
        counters.bump(counter_of(kind));
        let timeout = self.settings.call_timeout;
        let gate = LeadershipGate::new(deadline, timeout);
        let withheld = gate.tripped.clone();
        let dest = cidr.to_string();
        let result = match kind {
            WriteKind::Create => {
                let call = self
                    .ec2
                    .create_route()
                    .route_table_id(table)
                    .destination_cidr_block(dest)
                    .network_interface_id(eni)
                    .customize()
                    .interceptor(gate)
                    .send();
                tokio::time::timeout(timeout, while_leading(deadline, &withheld, call))
                    .await
                    .map(|r| {
                        r.map_or(Err(Failure::Withheld), |r| {
                            r.map(drop).map_err(|e| sdk_failure(&e))
                        })
                    })
            }
            WriteKind::Replace => {
                let call = self
                    .ec2
                    .replace_route()
                    .route_table_id(table)
                    .destination_cidr_block(dest)
                    .network_interface_id(eni)
                    .customize()
                    .interceptor(gate)
                    .send();
                tokio::time::timeout(timeout, while_leading(deadline, &withheld, call))
                    .await
                    .map(|r| {
                        r.map_or(Err(Failure::Withheld), |r| {
                            r.map(drop).map_err(|e| sdk_failure(&e))
                        })
                    })
            }
            WriteKind::Delete => {
                let call = self
                    .ec2
                    .delete_route()
                    .route_table_id(table)
                    .destination_cidr_block(dest)
                    .customize()
                    .interceptor(gate)
                    .send();
                tokio::time::timeout(timeout, while_leading(deadline, &withheld, call))
                    .await
                    .map(|r| {
                        r.map_or(Err(Failure::Withheld), |r| {
                            r.map(drop).map_err(|e| sdk_failure(&e))
                        })
                    })
            }
        };
        if withheld.load(Ordering::SeqCst) {
            return Err(Failure::Withheld);
        }
        result.unwrap_or_else(|_| Err(Failure::Other(format!("no answer within {timeout:?}"))))
    }
}

/// Polls a route write only while leadership lasts: `None` (and `tripped`) as soon as a
/// poll finds it over. The gate below checks once per attempt, before the HTTP client
/// takes the request; between that check and the bytes on the wire the call still
/// connects and hands the request over across several polls, and a process stopped or
/// starved in between would, once resumed, finish sending as a deposed leader (found by
/// tests/faults.rs: a SIGSTOP right after a throttled first attempt, or during a sync's
/// second write, put a route write on the wire seconds after the other gateway took
/// over). Checking on every poll, before the call makes progress, drops it instead; the
/// request's bytes themselves are written by the connection's own task, which the fence
/// of `write_fence` stops. (`tokio::time::timeout` polls its future before its timer, so
/// it cannot do this.)
async fn while_leading<F: std::future::Future>(
    deadline: &dyn Deadline,
    tripped: &AtomicBool,
    call: F,
) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| {
        if deadline.remaining().is_zero() {
            tripped.store(true, Ordering::SeqCst);
            return std::task::Poll::Ready(None);
        }
        call.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Stops an attempt of a route write at the last moment before it is handed to the HTTP
/// client — the first attempt or any SDK retry — unless leadership still outlasts a whole
/// call. Checking only before `send()` is not enough: a retry after a throttled first
/// attempt, or a process stopped or starved between the check and the send, would put
/// the write on the wire after another gateway took over. The attempt then carries the
/// same leadership to the HTTP client ([`WriteFence`]), whose connection refuses to write
/// its bytes once that leadership is over: a stop after this hook, while the connection
/// task holds the request, no longer sends it late (see `write_fence`).
struct LeadershipGate {
    deadline: Arc<dyn Deadline + Send>,
    needed: Duration,
    tripped: Arc<AtomicBool>,
}

impl LeadershipGate {
    fn new(deadline: &dyn Deadline, needed: Duration) -> Self {
        LeadershipGate {
            deadline: deadline.to_shared(),
            needed,
            tripped: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl std::fmt::Debug for LeadershipGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeadershipGate")
            .field("needed", &self.needed)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("route write withheld: {left:?} of leadership left, an attempt may take {needed:?}")]
struct AttemptWithheld {
    left: Duration,
    needed: Duration,
}

impl Intercept for LeadershipGate {
    fn name(&self) -> &'static str {
        "LeadershipGate"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let left = self.deadline.remaining();
        if left > self.needed {
            // Per attempt: a retry's request is a fresh copy without extensions.
            context.request_mut().add_extension(WriteFence {
                deadline: self.deadline.clone(),
                refused: self.tripped.clone(),
            });
            return Ok(());
        }
        self.tripped.store(true, Ordering::SeqCst);
        Err(Box::new(AttemptWithheld {
            left,
            needed: self.needed,
        }))
    }
}

pub(super) enum Failure {
    Withheld,
    /// EC2 answered with an error code and message.
    Code(String, String),
    Other(String),
}

fn sdk_failure<E>(e: &aws_sdk_ec2::error::SdkError<E>) -> Failure
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_ec2::error::ProvideErrorMetadata;
    match error_code(e) {
        Some(code) => Failure::Code(
            code.to_string(),
            e.message().unwrap_or_default().to_string(),
        ),
        None => Failure::Other(describe_sdk_error(e)),
    }
}

/// ReplaceRoute / DeleteRoute on a route that is not there. EC2 answers
/// `InvalidRoute.NotFound`, or for ReplaceRoute `InvalidParameterValue` ("There is no route
/// defined for ...").
pub(super) fn is_no_such_route(code: &str, message: &str) -> bool {
    code == "InvalidRoute.NotFound"
        || (code == "InvalidParameterValue" && message.to_ascii_lowercase().contains("no route"))
}

/// One EC2 route as the planner sees it; `None` for non-IPv4 destinations.
fn observe(r: &Route) -> Option<ObservedRoute> {
    let destination: Ipv4Net = r.destination_cidr_block()?.parse().ok()?;
    let s = |v: &str| v.to_string();
    let target = if let Some(eni) = r.network_interface_id() {
        Target::Eni {
            id: s(eni),
            instance: r.instance_id().map(s),
        }
    } else if let Some(i) = r.instance_id() {
        Target::Instance(s(i))
    } else if let Some(t) = r.transit_gateway_id() {
        Target::TransitGateway(s(t))
    } else if let Some(g) = r.gateway_id() {
        match g {
            "local" => Target::Local,
            g if g.starts_with("vgw-") => Target::VpnGateway(s(g)),
            g => Target::Gateway(s(g)),
        }
    } else if let Some(n) = r.nat_gateway_id() {
        Target::NatGateway(s(n))
    } else if let Some(p) = r.vpc_peering_connection_id() {
        Target::Peering(s(p))
    } else if let Some(g) = r.egress_only_internet_gateway_id() {
        Target::Other(format!("egress-only internet gateway {g}"))
    } else if let Some(g) = r.carrier_gateway_id() {
        Target::Other(format!("carrier gateway {g}"))
    } else if let Some(g) = r.local_gateway_id() {
        Target::Other(format!("local gateway {g}"))
    } else if let Some(a) = r.core_network_arn() {
        Target::Other(format!("core network {a}"))
    } else {
        Target::Other("an unknown target".into())
    };
    Some(ObservedRoute {
        destination,
        target,
        propagated: r.origin() == Some(&RouteOrigin::EnableVgwRoutePropagation),
        blackhole: r.state() == Some(&RouteState::Blackhole),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{RouteOrigin, RouteState};

    #[test]
    fn routes_are_observed() {
        let r = Route::builder()
            .destination_cidr_block("192.168.32.0/23")
            .network_interface_id("eni-1")
            .instance_id("i-1")
            .state(RouteState::Active)
            .origin(RouteOrigin::CreateRoute)
            .build();
        let o = observe(&r).unwrap();
        assert_eq!(
            o.target,
            Target::Eni {
                id: "eni-1".into(),
                instance: Some("i-1".into())
            }
        );
        assert!(!o.propagated && !o.blackhole);

        let r = Route::builder()
            .destination_cidr_block("10.0.0.0/8")
            .gateway_id("vgw-1")
            .origin(RouteOrigin::EnableVgwRoutePropagation)
            .state(RouteState::Blackhole)
            .build();
        let o = observe(&r).unwrap();
        assert_eq!(o.target, Target::VpnGateway("vgw-1".into()));
        assert!(o.propagated && o.blackhole);

        let local = Route::builder()
            .destination_cidr_block("10.250.0.0/16")
            .gateway_id("local")
            .build();
        assert_eq!(observe(&local).unwrap().target, Target::Local);
        let v6 = Route::builder()
            .destination_ipv6_cidr_block("::/0")
            .gateway_id("igw-1")
            .build();
        assert!(observe(&v6).is_none());
    }

    #[test]
    fn missing_routes_are_recognised() {
        assert!(is_no_such_route("InvalidRoute.NotFound", ""));
        assert!(is_no_such_route(
            "InvalidParameterValue",
            "There is no route defined for '10.0.0.0/8' in the route table."
        ));
        assert!(!is_no_such_route("InvalidParameterValue", "bad CIDR"));
    }
}
