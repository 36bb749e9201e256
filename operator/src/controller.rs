//! The controller: watches DaskClusters and what they own, and runs the
//! reconciler, until told to stop.

use std::future::Future;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::Controller;
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::builders::{LABEL_MANAGED_BY, MANAGER};
use crate::crd::DaskCluster;
use crate::reconcile::{Context, error_policy, reconcile};

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs until `shutdown` completes. `namespaces`: the namespaces to watch,
/// each with its own watches and queue; all namespaces when empty.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    futures::future::join_all(
        scopes
            .into_iter()
            .map(|ns| watch(ctx.clone(), ns, shutdown.clone())),
    )
    .await;
}

async fn watch(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    Controller::new(api::<DaskCluster>(&client, ns), watcher::Config::default())
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .owns(api::<Pod>(&client, ns), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            use kube::runtime::controller::Error;
            match result {
                Ok((obj, _)) => tracing::debug!(cluster = %obj, "reconciled"),
                // Watches that fail (a missing permission, say) must be seen;
                // reconcile errors are logged by the error policy.
                Err(Error::QueueError(e)) => tracing::warn!(error = %e, "watch failed"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}
