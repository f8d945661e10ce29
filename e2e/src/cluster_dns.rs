//! What a local test cluster's node needs beside k8s-local, served from the test process on
//! the node address: a TCP forwarder to the API server (k8s-local binds it to loopback only, and
//! pods reach the `kubernetes` Service through it) and a cluster DNS for Service names, in the
//! role CoreDNS plays in a real cluster.
//!
//! The DNS answers `A` queries for `<service>.<namespace>.svc.cluster.local` and for
//! `<service>.<namespace>.svc` (a real cluster's search path turns the second into the
//! first; the node's resolv.conf here has no search path) with the Service's ClusterIP. Every
//! other name is NXDOMAIN: short names are what Rudder's sidecar DNS proxy answers.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use futures::TryStreamExt;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::watcher;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const TTL: u32 = 5;

type Names = Arc<RwLock<BTreeMap<String, Ipv4Addr>>>;

/// Starts the forwarder (`forward_listen` → `api`) and the DNS (port 53 on the forwarder's
/// address) on a thread of their own; both live as long as the process. Returns once both
/// listen.
pub fn spawn_node_services(kubeconfig: PathBuf, forward_listen: SocketAddr, api: SocketAddr) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    std::thread::Builder::new().name("cluster-node-services".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        runtime.block_on(async move {
            let started = async {
                let forward = TcpListener::bind(forward_listen)
                    .await
                    .with_context(|| format!("binding the API forwarder on {forward_listen}"))?;
                let dns_addr = SocketAddr::new(forward_listen.ip(), 53);
                let dns = UdpSocket::bind(dns_addr)
                    .await
                    .with_context(|| format!("binding the cluster DNS on {dns_addr}"))?;
                let client = crate::cluster::client_for(&kubeconfig).await?;
                anyhow::Ok((forward, dns, client))
            }
            .await;
            let (forward, dns, client) = match started {
                Ok(parts) => parts,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let names: Names = Arc::default();
            tokio::spawn(watch_services(client, names.clone()));
            tokio::spawn(serve_dns(dns, names));
            let _ = ready_tx.send(Ok(()));
            forward_all(forward, api).await;
        });
    })?;
    ready_rx.recv().context("the node services thread ended before it was ready")?
}

async fn forward_all(listener: TcpListener, api: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(api).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

async fn watch_services(client: kube::Client, names: Names) {
    let api = kube::Api::<Service>::all(client);
    let mut known: BTreeMap<(String, String), Ipv4Addr> = BTreeMap::new();
    let stream = watcher(api, watcher::Config::default());
    futures::pin_mut!(stream);
    let mut pending: Option<BTreeMap<(String, String), Ipv4Addr>> = None;
    loop {
        let event = match stream.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(_) => continue, // the watcher backs off and re-lists by itself
        };
        match event {
            watcher::Event::Init => pending = Some(BTreeMap::new()),
            watcher::Event::InitApply(svc) => {
                if let (Some(p), Some((key, ip))) = (pending.as_mut(), entry(&svc)) {
                    p.insert(key, ip);
                }
            }
            watcher::Event::InitDone => known = pending.take().unwrap_or_default(),
            watcher::Event::Apply(svc) => match entry(&svc) {
                Some((key, ip)) => {
                    known.insert(key, ip);
                }
                None => {
                    known.remove(&key_of(&svc));
                }
            },
            watcher::Event::Delete(svc) => {
                known.remove(&key_of(&svc));
            }
        }
        let mut table = BTreeMap::new();
        for ((ns, name), ip) in &known {
            table.insert(format!("{name}.{ns}.svc.cluster.local"), *ip);
            table.insert(format!("{name}.{ns}.svc"), *ip);
        }
        if let Ok(mut names) = names.write() {
            *names = table;
        }
    }
}

fn key_of(svc: &Service) -> (String, String) {
    (svc.metadata.namespace.clone().unwrap_or_default(), svc.metadata.name.clone().unwrap_or_default())
}

fn entry(svc: &Service) -> Option<((String, String), Ipv4Addr)> {
    let ip = svc.spec.as_ref()?.cluster_ip.as_deref()?.parse().ok()?;
    Some((key_of(svc), ip))
}

async fn serve_dns(socket: UdpSocket, names: Names) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else { continue };
        let Some(reply) = answer(&buf[..len], &names) else { continue };
        let _ = socket.send_to(&reply, peer).await;
    }
}

/// The reply to one query; `None` for a packet that is not a query.
fn answer(packet: &[u8], names: &Names) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.queries = query.queries.clone();
    let mut found = false;
    for q in &query.queries {
        let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let ip = names.read().ok().and_then(|n| n.get(&name).copied());
        if let Some(ip) = ip {
            found = true;
            if q.query_type() == RecordType::A {
                reply.answers.push(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
            }
        }
    }
    if !found {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply.to_vec().ok()
}
