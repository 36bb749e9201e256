//! The daskrs Kubernetes operator: `DaskCluster` resources reconciled into a
//! scheduler Deployment and Service and worker pods.

pub mod builders;
pub mod controller;
pub mod crd;
pub mod lease;
pub mod metrics;
pub mod quantity;
pub mod reconcile;
pub mod scheduler_api;
