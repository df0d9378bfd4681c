//! Kubernetes API logic without I/O, shared by the components that act on objects (the
//! scheduler, the controllers): resource quantities, label selectors, taints and
//! tolerations, cron schedules. Pure functions over `k8s-openapi` types, so every rule is unit-tested
//! against upstream's examples.

pub mod cron;
pub mod quantity;
pub mod selector;
pub mod taints;
