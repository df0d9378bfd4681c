//! Leader election through a coordination.k8s.io Lease, as client-go's `leaderelection`
//! does it: candidates race to write their identity into the Lease with
//! compare-and-swap; the holder renews it every retry period; a candidate takes over
//! once it has seen the same record unchanged for a whole lease duration (measured on
//! its own clock, so clock skew between machines does not matter). A holder that cannot
//! renew within the renew deadline stops its work before anyone else may start.
//!
//! [`run`] runs the caller's work only while this candidate leads, and campaigns again
//! after losing the lease.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading or writing the lease {name}: {source}")]
    Lease {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Which Lease, who we are, and upstream's default timings (15 s / 10 s / 2 s).
#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Config {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Config {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// A candidate's view of the Lease.
struct Candidate {
    api: Api<Lease>,
    config: Config,
    /// The last holder record seen and when (on our clock) it was first seen.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
}

impl Candidate {
    fn lease_error(&self, source: kube::Error) -> Error {
        Error::Lease {
            name: format!("{}/{}", self.config.namespace, self.config.name),
            source,
        }
    }

    /// One attempt to acquire or renew; whether we hold the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(15);
        let lease = match self.api.get_opt(&self.config.name).await {
            Ok(lease) => lease,
            Err(e) => return Err(self.lease_error(e)),
        };
        let Some(mut lease) = lease else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.lease_error(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (holder.clone(), spec.renew_time.clone());
        let seen_at = match &self.observed {
            Some((h, r, at)) if (h, r) == (&record.0, &record.1) => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record.0.clone(), record.1.clone(), at));
                at
            }
        };
        let ours = holder.as_deref() == Some(self.config.identity.as_str());
        let expired = holder.is_none() || seen_at.elapsed() > self.config.lease_duration;
        if !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.config.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        // The resourceVersion read makes this a compare-and-swap.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.lease_error(e)),
        }
    }

    /// Gives the lease up on shutdown, so a standby takes over at once.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        let _ = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await;
    }
}

/// Runs `work` while this candidate holds the Lease; campaigns again when leadership is
/// lost (the work is dropped first). Returns when `shutdown` completes (releasing the
/// lease) or when the work itself returns.
pub async fn run<W, F, E>(
    client: kube::Client,
    config: Config,
    mut work: W,
    shutdown: impl Future<Output = ()>,
) -> Result<Result<(), E>, Error>
where
    W: FnMut() -> F,
    F: Future<Output = Result<(), E>>,
{
    let mut candidate = Candidate {
        api: Api::namespaced(client, &config.namespace),
        config,
        observed: None,
    };
    tokio::pin!(shutdown);
    loop {
        // Campaign.
        loop {
            match candidate.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::select! {
                () = tokio::time::sleep(candidate.config.retry_period) => {}
                () = &mut shutdown => return Ok(Ok(())),
            }
        }
        tracing::info!(
            lease = %candidate.config.name,
            identity = %candidate.config.identity,
            "became leader"
        );
        let task = work();
        tokio::pin!(task);
        let mut renewed = Instant::now();
        let mut tick = tokio::time::interval(candidate.config.retry_period);
        tick.tick().await;
        loop {
            tokio::select! {
                result = &mut task => {
                    candidate.release().await;
                    return Ok(result);
                }
                () = &mut shutdown => {
                    candidate.release().await;
                    return Ok(Ok(()));
                }
                _ = tick.tick() => {
                    // A renewal that hangs must not outlive the renew deadline.
                    let deadline = candidate.config.renew_deadline;
                    match tokio::time::timeout(deadline, candidate.try_acquire_or_renew()).await {
                        Ok(Ok(true)) => renewed = Instant::now(),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "renewing the lease"),
                        Err(_) => tracing::warn!("renewing the lease timed out"),
                    }
                    if renewed.elapsed() > candidate.config.renew_deadline {
                        tracing::warn!(lease = %candidate.config.name, "lost the lease; stopping");
                        break;
                    }
                }
            }
        }
    }
}
