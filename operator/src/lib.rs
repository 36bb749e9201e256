//! The daskrs Kubernetes operator: `DaskCluster` resources reconciled into a
//! scheduler Deployment and Service and worker pods.
//!
//! It must not depend on the runtime crates (core, proto, scheduler, worker,
//! engine, client) or DataFusion: it talks to the scheduler over HTTP.

pub mod builders;
pub mod controller;
pub mod crd;
pub mod lease;
pub mod metrics;
pub mod quantity;
pub mod reconcile;
pub mod scheduler_api;
