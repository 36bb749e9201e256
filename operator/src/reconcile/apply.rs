//! Apply: make the world look like what build asked for. The scheduler
//! Deployment and Service, and the cluster's NetworkPolicy, are server-side applied with one field manager,
//! so spec edits always land and repeated passes are no-ops. Worker pods
//! are made and removed one by one, as the scaling decision says; a busy
//! worker is never deleted unretired, and if the scheduler cannot be
//! reached, deletion's SIGTERM makes the worker hand off by itself within
//! the pod's grace period.

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use super::build::Desired;
use super::events::publish;
use super::read::{self, ObservedPod, SchedulerState};
use super::scale::{self, Scaling, WorkerPod, Workers};
use super::validate::Valid;
use super::{Context, Error, key, lock};
use crate::builders::{self, MANAGER};
use crate::crd::{DaskCluster, IssuerRef};

/// Pods created or deleted at once.
const API_CONCURRENCY: usize = 32;

/// What the pass did, for the status.
pub struct Applied {
    pub scheduler: SchedulerState,
    /// The worker pods after this pass's creations and removals.
    pub workers: Workers,
    pub target: usize,
    pub created: usize,
    pub removed: usize,
}

pub async fn apply(
    ctx: &Context,
    cluster: &DaskCluster,
    ns: &str,
    valid: &Valid,
    desired: &Desired,
    observed: &[ObservedPod],
) -> Result<Applied, Error> {
    let token = ensure_token(ctx, cluster, ns).await?;
    ensure_tls(ctx, cluster, ns).await?;
    let scheduler = apply_scheduler(ctx, ns, desired).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let mut workers = Workers::classify(observed, &desired.template_hash);
    remove_ended(ctx, cluster, &pods, &mut workers).await?;

    let target = decide_target(ctx, cluster, valid, &workers, &scheduler, &token).await;

    // Create: as many current-template pods as the target asks for.
    let fresh = workers.count(None, Some(true));
    let mut created = 0;
    if fresh < target {
        let made = create_pods(cluster, &pods, &desired.worker, target - fresh).await?;
        created = made.len();
        ctx.metrics.pods_created(created);
        let stale = workers.count(None, Some(false));
        let message = if stale > 0 {
            format!("created {created} worker pods to replace {stale} made from an older template")
        } else {
            format!("created {created} worker pods (target {target})")
        };
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "ScalingUp",
            "Create",
            message,
        )
        .await;
        workers.live.extend(made.into_iter().map(|name| WorkerPod {
            name,
            ready: false,
            fresh: true,
        }));
    }

    // Remove: what is beyond the target, in the order that loses least.
    let removed = scale_down(ctx, cluster, &pods, &workers, target, &token).await?;
    workers.live.retain(|p| !removed.contains(&p.name));
    Ok(Applied {
        scheduler,
        workers,
        target,
        created,
        removed: removed.len(),
    })
}

/// The Secret `name` of the cluster: as found, else made by `make` (or
/// the one another pass made meanwhile). One of an earlier cluster of the
/// same name, which Kubernetes is still deleting, is an error.
async fn cluster_secret(
    api: &Api<Secret>,
    cluster: &DaskCluster,
    ns: &str,
    name: &str,
    make: impl FnOnce() -> Result<Secret, Error>,
) -> Result<Secret, Error> {
    let kube_error = |action, source| Error::Kube {
        action,
        object: format!("{ns}/{name}"),
        source,
    };
    let found = api
        .get_opt(name)
        .await
        .map_err(|e| kube_error("reading the cluster's Secret", e))?;
    let secret = match found {
        Some(s) => s,
        None => match api.create(&PostParams::default(), &make()?).await {
            Ok(s) => s,
            // Made meanwhile (another pass, another replica): use that one.
            Err(kube::Error::Api(e)) if e.code == 409 => api
                .get(name)
                .await
                .map_err(|e| kube_error("reading the cluster's Secret", e))?,
            Err(e) => return Err(kube_error("creating the cluster's Secret", e)),
        },
    };
    check_owned(&secret, cluster, ns, name)?;
    Ok(secret)
}

/// Refuses a Secret of an earlier cluster of the same name, which
/// Kubernetes is still deleting.
fn check_owned(secret: &Secret, cluster: &DaskCluster, ns: &str, name: &str) -> Result<(), Error> {
    if builders::owned_by(secret, cluster) {
        return Ok(());
    }
    Err(Error::BadSecret {
        object: format!("{ns}/{name}"),
        problem: "it belongs to an earlier cluster of this name, which Kubernetes \
                  is still deleting; retrying"
            .into(),
    })
}

/// The cluster's token, from its Secret, which is made (once, with a fresh
/// token) if it does not exist. A Secret someone emptied or spoilt is an
/// error that names it, never silently replaced: pods running with the old
/// token would be locked out.
async fn ensure_token(ctx: &Context, cluster: &DaskCluster, ns: &str) -> Result<String, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = builders::token_secret_name(cluster);
    let secret = cluster_secret(&api, cluster, ns, &name, || {
        Ok(builders::token_secret(cluster, &builders::new_token()))
    })
    .await?;
    builders::token_of(&secret).ok_or_else(|| Error::BadSecret {
        object: format!("{ns}/{name}"),
        problem: format!(
            "its `{}` key holds no usable token (letters, digits, . _ ~ -); \
             delete the Secret to have a new one made, then restart the cluster's pods",
            builders::TOKEN_KEY
        ),
    })
}

/// The cluster's TLS authority and the certificates it issues (see
/// `builders::tls`), when the cluster has TLS: the authority is made once;
/// a certificate is issued when missing and again when due for renewal.
async fn ensure_tls(ctx: &Context, cluster: &DaskCluster, ns: &str) -> Result<(), Error> {
    if !cluster.spec.tls_enabled() {
        return Ok(());
    }
    if let Some(issuer) = cluster.spec.tls_issuer() {
        return ensure_cert_manager(ctx, cluster, ns, issuer).await;
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let certificate_error = |e: daskrs_core::certs::CertError| Error::Certificate(e.to_string());
    let ca_name = builders::ca_secret_name(cluster);
    let ca_secret = cluster_secret(&api, cluster, ns, &ca_name, || {
        let ca = builders::new_authority(cluster).map_err(certificate_error)?;
        Ok(builders::ca_secret(cluster, &ca))
    })
    .await?;
    let ca = builders::authority_of(&ca_secret, cluster).ok_or_else(|| Error::BadSecret {
        object: format!("{ns}/{ca_name}"),
        problem: "it holds no certificate authority (ca.crt and ca.key in PEM); delete it to \
                  have a new one made, and the certificates issued again"
            .into(),
    })?;
    let now = std::time::SystemTime::now();
    let certificates = [
        (
            builders::tls_secret_name(cluster),
            "server",
            builders::scheduler_names(cluster),
        ),
        (builders::client_secret_name(cluster), "client", Vec::new()),
    ];
    for (name, who, names) in certificates {
        let kube_error = |action, source| Error::Kube {
            action,
            object: format!("{ns}/{name}"),
            source,
        };
        let found = api
            .get_opt(&name)
            .await
            .map_err(|e| kube_error("reading the cluster's Secret", e))?;
        if let Some(s) = &found {
            check_owned(s, cluster, ns, &name)?;
            if builders::issued_by_cert_manager(s, &name) {
                // The spec named an issuer before: its Certificate would
                // issue into this Secret again, over the operator's.
                let certificates: Api<DynamicObject> =
                    Api::namespaced_with(ctx.client.clone(), ns, &builders::certificate_resource());
                match certificates.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        return Err(kube_error(
                            "deleting the cluster's cert-manager Certificate",
                            e,
                        ));
                    }
                }
            }
        }
        if !builders::needs_issue(found.as_ref(), &ca, now) {
            continue;
        }
        let issued = ca
            .issue(who, &names, daskrs_core::certs::CERT_DAYS)
            .map_err(certificate_error)?;
        let mut fresh = builders::certificate_secret(cluster, name.clone(), &ca, &issued);
        let renewed = found.is_some();
        let written = match found {
            None => api.create(&PostParams::default(), &fresh).await,
            Some(old) => {
                fresh.metadata.resource_version = old.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &fresh).await
            }
        };
        match written {
            Ok(_) => {}
            // Another pass wrote it meanwhile: the next pass looks again.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(kube_error("writing the cluster's Secret", e)),
        }
        let message = format!(
            "{} the {who} certificate in Secret {name} (valid for {} days)",
            if renewed { "renewed" } else { "issued" },
            daskrs_core::certs::CERT_DAYS
        );
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "Certificate",
            "Issue",
            message,
        )
        .await;
    }
    Ok(())
}

/// The cluster's certificates from the cert-manager issuer its spec names:
/// a `Certificate` per Secret, applied (and owned by the cluster), which
/// cert-manager issues and renews into that Secret. A Secret cert-manager
/// issued is made the cluster's too, so that it goes with the cluster.
async fn ensure_cert_manager(
    ctx: &Context,
    cluster: &DaskCluster,
    ns: &str,
    issuer: &IssuerRef,
) -> Result<(), Error> {
    let certificates: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &builders::certificate_resource());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for certificate in builders::cert_manager_certificates(cluster, issuer) {
        let name = certificate.name_any();
        let kube_error = |action, source| Error::Kube {
            action,
            object: format!("{ns}/{name}"),
            source,
        };
        // Whether this pass makes the Certificate: only then is waiting
        // for its Secret news worth an Event.
        let new = certificates
            .get_metadata_opt(&name)
            .await
            .map(|m| m.is_none())
            .unwrap_or(true);
        let params = PatchParams::apply(MANAGER).force();
        match certificates
            .patch(&name, &params, &Patch::Apply(&certificate))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let error = Error::CertManagerMissing {
                    object: format!("{ns}/{name}"),
                };
                publish(
                    ctx,
                    cluster,
                    EventType::Warning,
                    "CertManagerMissing",
                    "Request",
                    error.to_string(),
                )
                .await;
                return Err(error);
            }
            Err(e) => {
                return Err(kube_error(
                    "applying the cluster's cert-manager Certificate",
                    e,
                ));
            }
        }
        let found = secrets
            .get_opt(&name)
            .await
            .map_err(|e| kube_error("reading the cluster's Secret", e))?;
        let Some(mut secret) = found else {
            if new {
                publish(
                    ctx,
                    cluster,
                    EventType::Normal,
                    "Certificate",
                    "Request",
                    format!(
                        "waiting for {} {} to issue the certificate of Certificate {name}",
                        issuer.kind(),
                        issuer.name
                    ),
                )
                .await;
            }
            continue;
        };
        if builders::owned_by(&secret, cluster) {
            continue;
        }
        if !builders::issued_by_cert_manager(&secret, &name) {
            return Err(Error::BadSecret {
                object: format!("{ns}/{name}"),
                problem: format!(
                    "cert-manager did not issue it for Certificate {name}, and it is not \
                     this cluster's; delete or rename it"
                ),
            });
        }
        let owner = cluster.controller_owner_ref(&()).map(|mut r| {
            // cert-manager's Secret, the cluster's only to go with it.
            r.controller = None;
            r
        });
        let mut owners = secret.metadata.owner_references.take().unwrap_or_default();
        owners.extend(owner);
        secret.metadata.owner_references = Some(owners);
        match secrets
            .replace(&name, &PostParams::default(), &secret)
            .await
        {
            Ok(_) => {}
            // cert-manager wrote it meanwhile: the next pass looks again.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(kube_error("writing the cluster's Secret", e)),
        }
    }
    Ok(())
}

async fn apply_scheduler(
    ctx: &Context,
    ns: &str,
    desired: &Desired,
) -> Result<SchedulerState, Error> {
    apply_object(ctx, ns, &desired.service, "applying the scheduler Service").await?;
    if let Some(policy) = &desired.network_policy {
        apply_object(ctx, ns, policy, "applying the cluster's NetworkPolicy").await?;
    }
    let deployment = apply_object(
        ctx,
        ns,
        &desired.deployment,
        "applying the scheduler Deployment",
    )
    .await?;
    Ok(read::scheduler_state(&deployment))
}

/// Server-side applies `object` in `ns` as the operator's field manager;
/// the object as the API server has it now.
async fn apply_object<K>(
    ctx: &Context,
    ns: &str,
    object: &K,
    action: &'static str,
) -> Result<K, Error>
where
    K: kube::Resource<Scope = NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let name = object.name_any();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Kube {
        action,
        object: format!("{ns}/{name}"),
        source,
    })
}

/// Ended pods go: a retired worker's pod has finished its job, a failed
/// one is replaced like any missing worker.
async fn remove_ended(
    ctx: &Context,
    cluster: &DaskCluster,
    pods: &Api<Pod>,
    workers: &mut Workers,
) -> Result<(), Error> {
    for pod in std::mem::take(&mut workers.ended) {
        delete_pod(cluster, pods, &pod.name).await?;
        ctx.metrics.pods_deleted(1);
        if let Some(reason) = pod.failure {
            publish(
                ctx,
                cluster,
                EventType::Warning,
                "WorkerFailed",
                "Replace",
                format!("worker pod {} failed ({reason}); replacing it", pod.name),
            )
            .await;
        }
    }
    Ok(())
}

/// The scaling decision, with the scheduler's answer when it counts and
/// the cluster's `low_since` carried from pass to pass.
async fn decide_target(
    ctx: &Context,
    cluster: &DaskCluster,
    valid: &Valid,
    workers: &Workers,
    scheduler: &SchedulerState,
    token: &str,
) -> usize {
    let autoscaling = cluster.spec.autoscaling.as_ref();
    let asks = scale::asks_scheduler(autoscaling, valid.idle_timeout);
    let adaptive = if asks && scheduler.ready {
        read::adaptive(ctx, cluster, token).await
    } else {
        None
    };
    let k = key(cluster);
    let low_since = lock(&ctx.low_since).get(&k).copied();
    let decision = scale::target(&Scaling {
        replicas: cluster.spec.worker.replicas,
        autoscaling,
        idle_timeout: valid.idle_timeout,
        current: workers.live.len(),
        first_pass: cluster.status.is_none(),
        adaptive: adaptive.as_ref(),
        low_since,
        now: Instant::now(),
        scale_down_delay: ctx.settings.scale_down_delay,
    });
    let mut low = lock(&ctx.low_since);
    match decision.low_since {
        Some(since) => low.insert(k, since),
        None => low.remove(&k),
    };
    decision.workers
}

/// Creates `n` pods from `template`; the names the API server gave them.
async fn create_pods(
    cluster: &DaskCluster,
    pods: &Api<Pod>,
    template: &Pod,
    n: usize,
) -> Result<Vec<String>, Error> {
    let pp = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    futures::stream::iter(0..n)
        .map(|_| async { pods.create(&pp, template).await.map(|p| p.name_any()) })
        .buffer_unordered(API_CONCURRENCY)
        .try_collect()
        .await
        .map_err(|source| Error::Kube {
            action: "creating a worker pod of",
            object: key(cluster),
            source,
        })
}

async fn delete_pod(cluster: &DaskCluster, pods: &Api<Pod>, name: &str) -> Result<(), Error> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: "deleting the worker pod",
            object: format!("{}/{name}", cluster.namespace().unwrap_or_default()),
            source,
        }),
    }
}

/// Removes the pods beyond the target. Returns the names removed.
async fn scale_down(
    ctx: &Context,
    cluster: &DaskCluster,
    pods: &Api<Pod>,
    workers: &Workers,
    target: usize,
    token: &str,
) -> Result<Vec<String>, Error> {
    let plan = scale::removal(workers, target);
    let mut delete = plan.delete;
    let base = ctx.scheduler_at(cluster, token);
    if plan.retire_count > 0 {
        match ctx.scheduler.retire(&base, &[], plan.retire_count).await {
            Ok(chosen) => {
                let (ours, rest) = scale::retired(workers, chosen, plan.retire_count);
                retired_event(ctx, cluster, &ours).await;
                delete.extend(rest);
                delete.extend(ours);
            }
            Err(e) => {
                scheduler_unreachable(ctx, cluster, &e.to_string()).await;
                delete.extend(scale::unretired(workers, plan.retire_count));
            }
        }
    }
    if !plan.retire_named.is_empty() {
        match ctx.scheduler.retire(&base, &plan.retire_named, 0).await {
            Ok(done) => retired_event(ctx, cluster, &done).await,
            Err(e) => scheduler_unreachable(ctx, cluster, &e.to_string()).await,
        }
        delete.extend(plan.retire_named);
    }
    if delete.is_empty() {
        return Ok(delete);
    }
    futures::stream::iter(delete.clone())
        .map(|n| async move { delete_pod(cluster, pods, &n).await })
        .buffer_unordered(API_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    ctx.metrics.pods_deleted(delete.len());
    publish(
        ctx,
        cluster,
        EventType::Normal,
        "ScalingDown",
        "Delete",
        format!("deleted {} worker pods (target {target})", delete.len()),
    )
    .await;
    Ok(delete)
}

async fn retired_event(ctx: &Context, cluster: &DaskCluster, names: &[String]) {
    if names.is_empty() {
        return;
    }
    publish(
        ctx,
        cluster,
        EventType::Normal,
        "WorkersRetired",
        "Retire",
        format!("the scheduler retired {}", names.join(", ")),
    )
    .await;
}

async fn scheduler_unreachable(ctx: &Context, cluster: &DaskCluster, error: &str) {
    publish(
        ctx,
        cluster,
        EventType::Warning,
        "RetireFailed",
        "Retire",
        format!("{error}; deleting the pods, each worker hands off its results on SIGTERM"),
    )
    .await;
}
