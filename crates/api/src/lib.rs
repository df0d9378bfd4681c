//! Kubernetes API logic without I/O, shared by the components that act on objects (the
//! scheduler, the controllers): resource quantities, label selectors, taints and
//! tolerations, cron schedules, query strings, certificate requests. Pure functions over `k8s-openapi` types, so every rule is unit-tested
//! against upstream's examples.

pub mod certificates;
pub mod cron;
pub mod defaults;
pub mod quantity;
pub mod query;
pub mod selector;
pub mod taints;

/// The Kubernetes release whose API Skiff serves (major, minor).
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "33");

/// The version string components report (`gitVersion`, a Node's `kubeletVersion`).
pub fn git_version() -> String {
    let (major, minor) = KUBERNETES_VERSION;
    format!("v{major}.{minor}.0+skiff-{}", env!("CARGO_PKG_VERSION"))
}
