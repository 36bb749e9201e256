//! Validate: the spec checked and resolved into what the later stages use,
//! without touching the API. Most mistakes are refused by the CRD when the
//! manifest is applied; this stage catches the rest (quantities in keys
//! the CRD's rules cannot afford to look at, durations too long for a
//! clock) and clusters stored before the CRD grew a rule. An invalid spec
//! is reported, not retried: it cannot get better until someone edits it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::builders::WorkerSizing;
use crate::crd::{CERT_MANAGER_GROUP, DaskCluster, TlsSpec};
use crate::quantity::{self, QuantityError};

/// A spec the operator can act on, with its strings resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Valid {
    pub idle_timeout: Option<Duration>,
    pub worker: WorkerSizing,
}

/// One thing wrong with a spec, naming the field.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("spec.idleTimeout: {value:?} is not a duration such as 30m or 1h30m")]
    IdleTimeout { value: String },
    #[error("{field}: {error}")]
    Quantity { field: String, error: QuantityError },
    #[error("spec.tls.issuerRef: {0}")]
    Issuer(String),
}

/// Everything wrong with a spec, so one edit can fix it all.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Invalid(pub Vec<Problem>);

pub fn validate(cluster: &DaskCluster) -> Result<Valid, Invalid> {
    let spec = &cluster.spec;
    let mut problems = Vec::new();
    let idle_timeout = match &spec.idle_timeout {
        Some(s) => parse_duration(s).or_else(|| {
            problems.push(Problem::IdleTimeout { value: s.clone() });
            None
        }),
        None => None,
    };
    check_resources(
        "spec.scheduler.resources",
        &spec.scheduler.resources,
        &mut problems,
    );
    check_resources(
        "spec.worker.resources",
        &spec.worker.resources,
        &mut problems,
    );
    let memory_limit = spec.worker.memory_limit.as_ref().and_then(|q| {
        quantity::bytes(&q.0)
            .map_err(|error| {
                problems.push(Problem::Quantity {
                    field: "spec.worker.memoryLimit".into(),
                    error,
                })
            })
            .ok()
    });
    if let Some(problem) = spec.tls.as_ref().and_then(issuer_problem) {
        problems.push(Problem::Issuer(problem));
    }
    if !problems.is_empty() {
        return Err(Invalid(problems));
    }
    Ok(Valid {
        idle_timeout,
        worker: worker_sizing(cluster, memory_limit),
    })
}

/// What is wrong with a TLS spec's cert-manager issuer, if anything.
fn issuer_problem(tls: &TlsSpec) -> Option<String> {
    let issuer = tls.issuer_ref.as_ref()?;
    if !tls.enabled {
        return Some("names an issuer while TLS is off (enabled: false); drop one of them".into());
    }
    if issuer.name.trim().is_empty() {
        return Some("the issuer's name is empty".into());
    }
    let kind = issuer.kind();
    if issuer.group() == CERT_MANAGER_GROUP && kind != "Issuer" && kind != "ClusterIssuer" {
        return Some(format!(
            "kind {kind:?} is not one of cert-manager's: Issuer or ClusterIssuer"
        ));
    }
    None
}

/// Every quantity of `resources`: a pod with one Kubernetes cannot read is
/// refused when it is made, so the whole cluster would stall there.
fn check_resources(
    field: &str,
    resources: &Option<ResourceRequirements>,
    problems: &mut Vec<Problem>,
) {
    let Some(r) = resources else { return };
    let maps: [(&str, &Option<BTreeMap<String, Quantity>>); 2] =
        [("limits", &r.limits), ("requests", &r.requests)];
    for (name, map) in maps {
        for (key, q) in map.iter().flatten() {
            if let Err(error) = quantity::value(&q.0) {
                problems.push(Problem::Quantity {
                    field: format!("{field}.{name}[{key}]"),
                    error,
                });
            }
        }
    }
}

/// Threads: the spec's, else the CPU limit or request rounded up, else 1.
/// Memory: the spec's `memoryLimit`, else the memory limit or request.
/// Only called once every quantity has parsed.
fn worker_sizing(cluster: &DaskCluster, memory_limit: Option<u64>) -> WorkerSizing {
    let spec = &cluster.spec.worker;
    let threads = match spec.threads {
        Some(t) => i64::from(t.max(1)),
        None => resource(&spec.resources, "cpu")
            .and_then(|q| quantity::cpu_millis(&q.0).ok())
            .map(|m| ((m + 999) / 1000).max(1))
            .unwrap_or(1),
    };
    let memory_limit = memory_limit
        .or_else(|| resource(&spec.resources, "memory").and_then(|q| quantity::bytes(&q.0).ok()));
    WorkerSizing {
        threads,
        memory_limit,
    }
}

/// The limit of `name`, else its request.
fn resource<'a>(r: &'a Option<ResourceRequirements>, name: &str) -> Option<&'a Quantity> {
    let r = r.as_ref()?;
    r.limits
        .as_ref()
        .and_then(|l| l.get(name))
        .or_else(|| r.requests.as_ref().and_then(|l| l.get(name)))
}

/// `90s`, `30m`, `1h30m`, `1.5h`, `500ms`; None for anything else,
/// including a duration too long to represent.
fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, tail) = rest.split_at(split);
        let num: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        total += num
            * match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return None,
            };
        rest = tail;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::fixtures::fixture;

    #[test]
    fn idle_timeouts_parse_hours_minutes_seconds_and_milliseconds() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    }

    #[test]
    fn idle_timeouts_without_a_known_unit_or_too_long_for_a_clock_are_refused() {
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("10d"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn a_minimal_cluster_is_valid_with_one_thread_and_the_nodes_memory() {
        let valid = validate(&fixture("minimal")).expect("valid");
        assert_eq!(
            valid,
            Valid {
                idle_timeout: None,
                worker: WorkerSizing {
                    threads: 1,
                    memory_limit: None
                },
            }
        );
    }

    #[test]
    fn worker_threads_and_memory_follow_the_resource_limits_before_the_requests() {
        let mut c = fixture("sized");
        let valid = validate(&c).expect("valid");
        assert_eq!(valid.worker.threads, 2, "1500m rounds up to two threads");
        assert_eq!(valid.worker.memory_limit, Some(3 << 30));

        c.spec.worker.resources.as_mut().unwrap().limits = None;
        let valid = validate(&c).expect("valid");
        assert_eq!(valid.worker.threads, 1, "500m requested");
        assert_eq!(valid.worker.memory_limit, Some(1_000_000_000));

        c.spec.worker.threads = Some(8);
        c.spec.worker.memory_limit = Some(Quantity("512Mi".into()));
        let valid = validate(&c).expect("valid");
        assert_eq!(valid.worker.threads, 8);
        assert_eq!(valid.worker.memory_limit, Some(512 << 20));
    }

    #[test]
    fn a_cert_manager_issuer_must_be_one_of_its_kinds_and_tls_on() {
        use crate::crd::IssuerRef;
        let issuer = |kind: Option<&str>, group: Option<&str>| IssuerRef {
            name: "cluster-ca".into(),
            kind: kind.map(str::to_string),
            group: group.map(str::to_string),
        };
        let from_yaml = fixture("issuer");
        assert!(validate(&from_yaml).is_ok());
        assert_eq!(
            from_yaml.spec.tls_issuer().map(|i| i.name.as_str()),
            Some("team-ca")
        );
        let mut c = fixture("minimal");
        let mut tls = |enabled, issuer_ref| {
            c.spec.tls = Some(TlsSpec {
                enabled,
                issuer_ref,
            });
            validate(&c).map(|_| ()).map_err(|e| e.to_string())
        };
        assert_eq!(tls(true, Some(issuer(None, None))), Ok(()));
        assert_eq!(tls(true, Some(issuer(Some("ClusterIssuer"), None))), Ok(()));
        // An external issuer names its own kinds.
        assert_eq!(
            tls(
                true,
                Some(issuer(Some("AWSPCAIssuer"), Some("awspca.cert-manager.io")))
            ),
            Ok(())
        );
        assert_eq!(
            tls(true, Some(issuer(Some("Certificate"), None))),
            Err(
                "spec.tls.issuerRef: kind \"Certificate\" is not one of cert-manager's: \
                 Issuer or ClusterIssuer"
                    .into()
            )
        );
        assert_eq!(
            tls(false, Some(issuer(None, None))),
            Err(
                "spec.tls.issuerRef: names an issuer while TLS is off (enabled: false); \
                 drop one of them"
                    .into()
            )
        );
        let mut blank = issuer(None, None);
        blank.name = " ".into();
        assert_eq!(
            tls(true, Some(blank)),
            Err("spec.tls.issuerRef: the issuer's name is empty".into())
        );
    }

    #[test]
    fn a_memory_limit_of_4gb_is_refused_naming_the_field_instead_of_dropped() {
        let err = validate(&fixture("memory-limit-4Gb")).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "spec.worker.memoryLimit: \"4Gb\" is not a Kubernetes quantity (such as 500m, 2, 4Gi or 4G)"
        );
    }

    #[test]
    fn every_unreadable_resource_quantity_is_reported_with_its_key() {
        let err = validate(&fixture("bad-quantities")).expect_err("invalid");
        let fields: Vec<&str> = err
            .0
            .iter()
            .map(|p| match p {
                Problem::Quantity { field, .. } => field.as_str(),
                Problem::IdleTimeout { .. } => "spec.idleTimeout",
                Problem::Issuer(_) => "spec.tls.issuerRef",
            })
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.scheduler.resources.requests[ephemeral-storage]",
                "spec.worker.resources.limits[nvidia.com/gpu]",
            ]
        );
    }

    #[test]
    fn an_idle_timeout_too_long_for_a_clock_is_refused_naming_the_field() {
        let err = validate(&fixture("idle-timeout-overflow")).expect_err("invalid");
        assert_eq!(
            err.0,
            vec![Problem::IdleTimeout {
                value: "99999999999999999999h".into()
            }]
        );
        assert!(err.to_string().starts_with("spec.idleTimeout: "), "{err}");
    }
}
