//! Leader election against the in-memory API: acquire a missing Lease, renew it, stay out while
//! another holder is fresh, take it over once expired, lose it, and lose a write race (409).

#![allow(clippy::unwrap_used)]

mod install_support;

use std::time::Duration;

use install_support::FakeApi;
use k8s_openapi::jiff::Timestamp;
use rudder_operator::controller::leader::{Elector, lease_name};
use serde_json::Value;

const NS: &str = "istio-operator";

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn lease(fake: &FakeApi, name: &str) -> Value {
    fake.get("leases", Some(NS), name).unwrap()
}

#[tokio::test]
async fn acquire_renew_take_over_and_lose() {
    let (client, fake) = FakeApi::start();
    let name = lease_name(Some("canary"));
    let a = Elector::new(client.clone(), NS, &name, "pod-a", 15);
    let b = Elector::new(client.clone(), NS, &name, "pod-b", 15);

    // Absent: created by the first comer.
    assert!(a.try_acquire_or_renew_at(at(0)).await.unwrap());
    let l = lease(&fake, "istio-operator-lock-canary");
    assert_eq!(l["spec"]["holderIdentity"], "pod-a");
    assert_eq!(l["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(l["spec"]["leaseTransitions"], 0);
    let created_version = l["metadata"]["resourceVersion"].clone();
    let acquired = l["spec"]["acquireTime"].clone();
    assert!(
        fake.calls().iter().any(|c| c.line() == format!("POST /apis/coordination.k8s.io/v1/namespaces/{NS}/leases"))
    );

    // Fresh and held by a: b stays out and writes nothing.
    fake.clear_calls();
    assert!(!b.try_acquire_or_renew_at(at(5)).await.unwrap());
    assert!(fake.calls().iter().all(|c| c.method == "GET"));

    // a renews with a replace carrying the resourceVersion it read.
    assert!(a.try_acquire_or_renew_at(at(10)).await.unwrap());
    let l = lease(&fake, "istio-operator-lock-canary");
    assert_ne!(l["metadata"]["resourceVersion"], created_version);
    assert_eq!(l["spec"]["holderIdentity"], "pod-a");
    assert_eq!(l["spec"]["acquireTime"], acquired);
    assert_ne!(l["spec"]["renewTime"], acquired);
    assert!(fake.calls().iter().any(|c| c.method == "PUT"));

    // a stops renewing; once renewTime + 15s has passed, b takes over.
    assert!(!b.try_acquire_or_renew_at(at(25)).await.unwrap());
    assert!(b.try_acquire_or_renew_at(at(26)).await.unwrap());
    let l = lease(&fake, "istio-operator-lock-canary");
    assert_eq!(l["spec"]["holderIdentity"], "pod-b");
    assert_eq!(l["spec"]["leaseTransitions"], 1);

    // a has lost it.
    assert!(!a.try_acquire_or_renew_at(at(27)).await.unwrap());
}

#[tokio::test]
async fn a_lost_write_race_is_not_leadership() {
    let (client, fake) = FakeApi::start();
    let name = lease_name(None);
    let a = Elector::new(client.clone(), NS, &name, "pod-a", 15);
    let b = Elector::new(client.clone(), NS, &name, "pod-b", 15);
    assert!(a.try_acquire_or_renew_at(at(0)).await.unwrap());
    // Expired for b, but someone writes between b's read and its replace: 409, not leader.
    fake.race_next_get("leases");
    assert!(!b.try_acquire_or_renew_at(at(100)).await.unwrap());
    assert_eq!(lease(&fake, "istio-operator-lock")["spec"]["holderIdentity"], "pod-a");
    // The next attempt reads the new version and wins.
    assert!(b.try_acquire_or_renew_at(at(101)).await.unwrap());
    assert_eq!(lease(&fake, "istio-operator-lock")["spec"]["holderIdentity"], "pod-b");
}

#[tokio::test]
async fn the_run_loop_publishes_leadership_and_hands_over_when_the_leader_stops() {
    let (client, _fake) = FakeApi::start();
    let name = lease_name(None);
    let a = Elector::new(client.clone(), NS, &name, "pod-a", 1);
    let b = Elector::new(client.clone(), NS, &name, "pod-b", 1);
    let (tx_a, mut rx_a) = tokio::sync::watch::channel(false);
    let task_a = tokio::spawn(a.run(tx_a));
    tokio::time::timeout(Duration::from_secs(5), rx_a.wait_for(|l| *l)).await.unwrap().unwrap();
    let (tx_b, mut rx_b) = tokio::sync::watch::channel(false);
    let task_b = tokio::spawn(b.run(tx_b));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!*rx_b.borrow(), "b must not lead while a renews");
    task_a.abort();
    tokio::time::timeout(Duration::from_secs(5), rx_b.wait_for(|l| *l)).await.unwrap().unwrap();
    task_b.abort();
}
