//! The Skiff scheduler: watches pods and nodes through the API (kube-rs watchers, as any
//! operator would), picks a node for every pending pod that names this scheduler, and
//! binds it through `pods/binding`.
//!
//! - `cache.rs`: nodes and what their pods request, kept from the watches.
//! - `queue.rs`: active, backoff and unschedulable pods.
//! - `framework.rs` + `plugins/`: filters and scores, pure.
//! - `preemption.rs`: which lower-priority pods to evict for a pod that fits nowhere.
//! - `scheduler.rs`: the loops: watches, scheduling cycle, concurrent bindings, events.

mod cache;
mod framework;
mod plugins;
mod preemption;
mod queue;
mod scheduler;

pub use scheduler::run;

/// What the scheduler is called (pods choose it by `spec.schedulerName`), how many
/// bindings may be in flight at once, and how NodeResourcesFit scores.
#[derive(Clone, Debug)]
pub struct Config {
    pub scheduler_name: String,
    pub parallel_bindings: usize,
    pub scoring_strategy: ScoringStrategy,
}

/// NodeResourcesFit's scoring strategy (upstream's `scoringStrategy.type`): spread pods
/// over the emptiest nodes, or pack them onto the fullest (bin packing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScoringStrategy {
    #[default]
    LeastAllocated,
    MostAllocated,
}

impl std::str::FromStr for ScoringStrategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "LeastAllocated" => Ok(ScoringStrategy::LeastAllocated),
            "MostAllocated" => Ok(ScoringStrategy::MostAllocated),
            other => Err(format!(
                "unknown scoring strategy {other:?} (LeastAllocated or MostAllocated)"
            )),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scheduler_name: "default-scheduler".into(),
            parallel_bindings: 128,
            scoring_strategy: ScoringStrategy::LeastAllocated,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("watching {what}: {source}")]
    Watch {
        what: &'static str,
        #[source]
        source: kube::runtime::watcher::Error,
    },
}
