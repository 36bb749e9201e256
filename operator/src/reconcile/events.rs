//! Events on a DaskCluster: what the operator did, or could not do, that
//! `kubectl describe` should show.

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};

use super::{Context, key};
use crate::crd::DaskCluster;

pub async fn publish(
    ctx: &Context,
    cluster: &DaskCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    // A recorder of its own for each Event: a shared one folds every Event
    // with the same reason into the first one's series and keeps that one's
    // note, so "scaled to 3" would still read "scaled to 2".
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(cluster = %key(cluster), error = %e, "cannot publish event");
    }
}
