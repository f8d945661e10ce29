//! Leader election against the in-memory API: acquire a missing Lease, renew it, stay out while
//! another holder is fresh, take it over once expired, lose it, lose a write race (409), release
//! it on graceful shutdown; and readiness of `operator run` whether it leads or stands by.

#![allow(clippy::unwrap_used)]

mod install_support;

use std::time::Duration;

use install_support::FakeApi;
use k8s_openapi::jiff::Timestamp;
use rudder_operator::controller::leader::{Elector, lease_name};
use rudder_operator::controller::run::{LeaderElection, RunOptions, run_on};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

#[tokio::test]
async fn releasing_lets_another_replica_lead_at_once() {
    let (client, fake) = FakeApi::start();
    let name = lease_name(None);
    let a = Elector::new(client.clone(), NS, &name, "pod-a", 15);
    let b = Elector::new(client.clone(), NS, &name, "pod-b", 15);
    let now = Timestamp::now();
    assert!(a.try_acquire_or_renew_at(now).await.unwrap());
    assert!(!b.try_acquire_or_renew_at(now).await.unwrap());
    // b does not hold it: releasing is a read, nothing more.
    fake.clear_calls();
    assert!(!b.release().await.unwrap());
    assert!(fake.calls().iter().all(|c| c.method == "GET"));
    assert_eq!(lease(&fake, "istio-operator-lock")["spec"]["holderIdentity"], "pod-a");
    // a gives it up: no holder, and b takes it well within the 15 seconds a held it for.
    assert!(a.release().await.unwrap());
    let l = lease(&fake, "istio-operator-lock");
    assert_eq!(l["spec"].get("holderIdentity"), None);
    assert_eq!(l["spec"]["leaseDurationSeconds"], 1);
    assert!(b.try_acquire_or_renew_at(now).await.unwrap());
    assert_eq!(lease(&fake, "istio-operator-lock")["spec"]["holderIdentity"], "pod-b");
}

/// One plain HTTP GET against the health listener: (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

async fn metric_until(addr: std::net::SocketAddr, line: &str) {
    let wait = async {
        while !http_get(addr, "/metrics").await.1.lines().any(|l| l == line) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.unwrap_or_else(|_| panic!("never saw {line}"));
}

fn opts(identity: &str) -> RunOptions {
    let le = LeaderElection { namespace: NS.into(), identity: identity.into(), lease_duration_secs: 15 };
    RunOptions { leader_election: Some(le), ..RunOptions::default() }
}

/// A runtime whose workers have room for a running controller: in debug builds its future (a
/// watch per installed kind) needs more stack than the 2 MiB of a test thread.
fn roomy_runtime() -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).thread_stack_size(32 << 20).enable_all().build().unwrap()
}

#[test]
fn a_standby_replica_is_ready_without_leading() {
    roomy_runtime().block_on(standby_replica_is_ready());
}

async fn standby_replica_is_ready() {
    let (client, fake) = FakeApi::start();
    let held = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "istio-operator-lock", "namespace": NS, "resourceVersion": "1"},
        "spec": {"holderIdentity": "old-pod", "leaseDurationSeconds": 15,
            "renewTime": Timestamp::now().to_string(), "acquireTime": Timestamp::now().to_string()}});
    fake.seed("leases", Some(NS), held);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_on(listener, client, opts("new-pod"), async {
        let _ = stopped.await;
    }));
    let ready = async {
        while http_get(addr, "/readyz").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ready).await.expect("a follower turns ready");
    metric_until(addr, "rudder_operator_leader 0").await;
    assert_eq!(lease(&fake, "istio-operator-lock")["spec"]["holderIdentity"], "old-pod");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    assert_eq!(lease(&fake, "istio-operator-lock")["spec"]["holderIdentity"], "old-pod", "not ours to release");
}

#[test]
fn a_leader_releases_the_lease_on_graceful_shutdown() {
    roomy_runtime().block_on(leader_releases_on_shutdown());
}

async fn leader_releases_on_shutdown() {
    let (client, fake) = FakeApi::start();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_on(listener, client.clone(), opts("pod-a"), async {
        let _ = stopped.await;
    }));
    metric_until(addr, "rudder_operator_leader 1").await;
    assert_eq!(lease(&fake, "istio-operator-lock")["spec"]["holderIdentity"], "pod-a");
    // Readiness check, the controller's initial list, then its first watch: the cache is synced.
    let synced = async {
        while fake.calls().iter().filter(|c| c.method == "GET" && c.path.ends_with("/istiooperators")).count() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), synced).await.unwrap();
    stop.send(()).unwrap();
    // Well within the shutdown grace: the controllers stop on the signal, then the Lease goes.
    tokio::time::timeout(Duration::from_secs(8), task).await.unwrap().unwrap().unwrap();
    let spec = lease(&fake, "istio-operator-lock")["spec"].clone();
    assert_eq!(spec.get("holderIdentity"), None, "{spec}");
    // The next replica leads at once instead of after 15 seconds.
    let b = Elector::new(client, NS, &lease_name(None), "pod-b", 15);
    assert!(b.try_acquire_or_renew().await.unwrap());
}

#[test]
fn a_leader_that_loses_the_lease_stands_by_and_leads_again_without_exiting() {
    roomy_runtime().block_on(leader_stands_by_after_losing_the_lease());
}

async fn leader_stands_by_after_losing_the_lease() {
    let (client, fake) = FakeApi::start();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_on(listener, client, opts("pod-a"), async {
        let _ = stopped.await;
    }));
    metric_until(addr, "rudder_operator_leader 1").await;
    // Another replica holds the Lease now (as after pod-a could not renew while the API server
    // was away): pod-a's next renewal is refused.
    let lease_held_by = |holder: &str, renewed: Timestamp| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "istio-operator-lock", "namespace": NS, "resourceVersion": "900"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                "renewTime": renewed.to_string(), "acquireTime": renewed.to_string()}})
    };
    fake.seed("leases", Some(NS), lease_held_by("pod-b", Timestamp::now()));
    metric_until(addr, "rudder_operator_leader 0").await;
    assert!(!task.is_finished(), "losing the lease stops the controllers, not the process");
    assert_eq!(http_get(addr, "/readyz").await.0, 200, "still ready while standing by");
    // pod-b stops renewing: once its lease has expired, pod-a leads again.
    fake.seed("leases", Some(NS), lease_held_by("pod-b", Timestamp::now() - std::time::Duration::from_secs(60)));
    metric_until(addr, "rudder_operator_leader 1").await;
    assert_eq!(lease(&fake, "istio-operator-lock")["spec"]["holderIdentity"], "pod-a");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(12), task).await.unwrap().unwrap().unwrap();
}
