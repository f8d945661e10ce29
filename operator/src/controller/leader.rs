//! Leader election on a `coordination.k8s.io/v1` Lease named `istio-operator-lock[-<rev>]`, so
//! only one replica of an operator revision reconciles. A replica takes the Lease when nobody
//! holds it or the holder let it expire (`renewTime + leaseDurationSeconds < now`), then renews it
//! every third of the duration. Writes are `replace`s carrying the read `resourceVersion`, so when
//! two replicas race the API server lets one win and answers the other 409 Conflict.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

/// The Lease name of the operator of `revision` (`None`, empty or `default`: unrevisioned).
pub fn lease_name(revision: Option<&str>) -> String {
    match revision.filter(|r| !r.is_empty() && *r != "default") {
        Some(rev) => format!("istio-operator-lock-{rev}"),
        None => "istio-operator-lock".to_owned(),
    }
}

/// Whether `me` may write the Lease at `now`: it is free, already ours, or expired.
pub fn should_take(lease: &Lease, me: &str, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == me => true,
        Some(_) => expired(spec, now),
    }
}

/// Whether the holder failed to renew within the lease duration (no renew time: expired).
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = &spec.renew_time else { return true };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    renewed.0.as_millisecond().saturating_add(duration * 1000) < now.as_millisecond()
}

/// The Lease after `me` takes or renews it at `now` (keeps metadata, so the resourceVersion too).
pub fn taken(lease: &Lease, me: &str, now: Timestamp, duration_secs: i32) -> Lease {
    let old = lease.spec.clone().unwrap_or_default();
    let ours = old.holder_identity.as_deref() == Some(me);
    let spec = LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: if ours { old.acquire_time.clone() } else { Some(MicroTime(now)) },
        renew_time: Some(MicroTime(now)),
        lease_transitions: match (ours, old.holder_identity.is_some()) {
            (true, _) => old.lease_transitions,
            (false, true) => Some(old.lease_transitions.unwrap_or(0) + 1),
            (false, false) => Some(old.lease_transitions.unwrap_or(0)),
        },
        ..old
    };
    Lease { metadata: lease.metadata.clone(), spec: Some(spec) }
}

/// The Lease after its holder gives it up at `now`: no holder, and a one second duration, so
/// any replica may take it at once (ours take a Lease without holder; electors that only look
/// at expiry see it expire a second later).
pub fn released(lease: &Lease, now: Timestamp) -> Lease {
    let old = lease.spec.clone().unwrap_or_default();
    let spec = LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        acquire_time: None,
        ..old
    };
    Lease { metadata: lease.metadata.clone(), spec: Some(spec) }
}

/// Where the operator runs: `LEADER_ELECTION_NAMESPACE`, `POD_NAMESPACE`, the service account's
/// namespace file, else `istio-operator`.
pub fn default_namespace() -> String {
    env_nonempty("LEADER_ELECTION_NAMESPACE")
        .or_else(|| env_nonempty("POD_NAMESPACE"))
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "istio-operator".to_owned())
}

/// This replica's identity: `POD_NAME`, else `HOSTNAME`, else `/etc/hostname`.
pub fn default_identity() -> String {
    env_nonempty("POD_NAME")
        .or_else(|| env_nonempty("HOSTNAME"))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "rudder-operator".to_owned())
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Takes and keeps one Lease.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration_secs: i32,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector").field("name", &self.name).field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl Elector {
    /// An elector on Lease `name` in `namespace`, holding it for `duration_secs` per renewal.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration_secs: i32) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration_secs,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One attempt at `now`: creates the Lease when absent, takes or renews it when allowed.
    /// `Ok(true)` means this replica holds it; a lost race (409) is `Ok(false)`.
    pub async fn try_acquire_or_renew_at(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let written = match self.api.get_opt(&self.name).await? {
            None => {
                let fresh = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                    spec: None,
                };
                let lease = taken(&fresh, &self.identity, now, self.duration_secs);
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(lease) if should_take(&lease, &self.identity, now) => {
                let lease = taken(&lease, &self.identity, now, self.duration_secs);
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
            Some(_) => return Ok(false),
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up on graceful shutdown when this replica holds it, so the next replica
    /// (say, the new pod of a rolling update) leads right away instead of after the lease
    /// duration. `Ok(true)` when released; a Lease held by another replica is left untouched,
    /// and a lost race (409) means someone else already wrote it.
    pub async fn release(&self) -> Result<bool, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else { return Ok(false) };
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
        if holder != Some(self.identity.as_str()) {
            return Ok(false);
        }
        let lease = released(&lease, Timestamp::now());
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`Self::try_acquire_or_renew_at`] now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        self.try_acquire_or_renew_at(Timestamp::now()).await
    }

    /// Runs forever: retries until leader, then renews every third of the duration, publishing
    /// whether this replica leads. Leadership is given up when a renewal is refused, or when
    /// renewals keep failing for longer than the lease duration.
    pub async fn run(self, leading: watch::Sender<bool>) {
        let duration = Duration::from_secs(u64::try_from(self.duration_secs.max(1)).unwrap_or(1));
        let renew_every = duration / 3;
        let retry_every = Duration::from_secs(2).min(renew_every);
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            let is_leader = match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renewed = Some(tokio::time::Instant::now());
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "leader election request failed");
                    last_renewed.is_some_and(|t| t.elapsed() < duration)
                }
            };
            if is_leader != *leading.borrow() {
                match is_leader {
                    true => tracing::info!(lease = %self.name, identity = %self.identity, "became leader"),
                    false => tracing::warn!(lease = %self.name, identity = %self.identity, "lost leadership"),
                }
            }
            if !is_leader {
                last_renewed = None;
            }
            if leading.send(is_leader).is_err() {
                return;
            }
            tokio::time::sleep(if is_leader { renew_every } else { retry_every }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn lease(holder: Option<&str>, renewed: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("istio-operator-lock".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(at(renewed))),
                acquire_time: Some(MicroTime(at(renewed))),
                lease_duration_seconds: Some(duration),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn names_per_revision() {
        assert_eq!(lease_name(None), "istio-operator-lock");
        assert_eq!(lease_name(Some("")), "istio-operator-lock");
        assert_eq!(lease_name(Some("default")), "istio-operator-lock");
        assert_eq!(lease_name(Some("canary")), "istio-operator-lock-canary");
    }

    #[test]
    fn free_own_or_expired_leases_can_be_taken() {
        let empty = Lease::default();
        assert!(should_take(&empty, "me", at(0)));
        assert!(should_take(&lease(None, 0, 15), "me", at(1)));
        assert!(should_take(&lease(Some(""), 0, 15), "me", at(1)));
        assert!(should_take(&lease(Some("me"), 0, 15), "me", at(1)));
        // Someone else's, still fresh (also exactly at the boundary).
        assert!(!should_take(&lease(Some("other"), 0, 15), "me", at(10)));
        assert!(!should_take(&lease(Some("other"), 0, 15), "me", at(15)));
        // Expired.
        assert!(should_take(&lease(Some("other"), 0, 15), "me", at(16)));
        // No renew time at all counts as expired.
        let mut never = lease(Some("other"), 0, 15);
        never.spec.as_mut().unwrap().renew_time = None;
        assert!(should_take(&never, "me", at(0)));
    }

    #[test]
    fn taking_counts_transitions_and_renewing_keeps_acquire_time() {
        let theirs = lease(Some("other"), 0, 15);
        let took = taken(&theirs, "me", at(20), 15);
        let spec = took.spec.clone().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(took.metadata.resource_version.as_deref(), Some("7"));
        let renewed = taken(&took, "me", at(25), 15).spec.unwrap();
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(25))));
        let given_up = released(&took, at(30));
        let spec = given_up.spec.clone().unwrap();
        assert_eq!((spec.holder_identity, spec.lease_duration_seconds), (None, Some(1)));
        assert_eq!(spec.lease_transitions, Some(4));
        assert!(should_take(&given_up, "other", at(30)));
        let fresh = taken(&Lease::default(), "me", at(0), 15).spec.unwrap();
        assert_eq!(fresh.lease_transitions, Some(0));
        assert_eq!(fresh.lease_duration_seconds, Some(15));
    }
}
