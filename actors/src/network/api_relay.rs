//! The node's relay to the API for its pods: in-cluster clients dial the
//! `kubernetes` Service's virtual IP, which the node's rules send to this
//! relay on the pod network's gateway; it passes the bytes on to an API
//! server the Service's Endpoints name, untouched (TLS runs end to end, so
//! the relay sees no token). It is needed because servers may listen on
//! loopback only, which no pod can reach, and it is what lets a pod on any
//! node reach the API wherever the servers run.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::service_table::{Backend, ServiceTable};
use crate::limits::{API_RELAY_CONNECTIONS_MAX, API_RELAY_CONNECT_TIMEOUT};
use crate::tasks::OwnedTask;

/// The Service in-cluster clients reach the API by.
pub const API_SERVICE: (&str, &str) = ("default", "kubernetes");

/// The API servers the table names, as the relay dials them.
pub fn api_backends(table: &ServiceTable) -> Vec<Backend> {
    table
        .services
        .get(&(API_SERVICE.0.to_string(), API_SERVICE.1.to_string()))
        .map(|svc| svc.ports.iter().flat_map(|p| p.backends.iter().cloned()).collect())
        .unwrap_or_default()
}

/// A running relay; it and every connection it carries end when dropped.
pub struct ApiRelay {
    pub local_addr: SocketAddr,
    _task: OwnedTask,
}

impl ApiRelay {
    pub async fn start(bind: SocketAddr, table: watch::Receiver<Arc<ServiceTable>>) -> std::io::Result<ApiRelay> {
        let listener = TcpListener::bind(bind).await?;
        let local_addr = listener.local_addr()?;
        let task = OwnedTask::spawn(serve(listener, table));
        Ok(ApiRelay { local_addr, _task: task })
    }
}

async fn serve(listener: TcpListener, table: watch::Receiver<Arc<ServiceTable>>) {
    let slots = Arc::new(Semaphore::new(API_RELAY_CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    let mut next = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, peer)) = accepted else { continue };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "API relay full ({API_RELAY_CONNECTIONS_MAX} connections); connection refused");
                    continue;
                };
                let backends = api_backends(&table.borrow());
                next = next.wrapping_add(1);
                connections.spawn(async move {
                    let _slot = slot;
                    relay(client, peer, backends, next).await;
                });
            }
            // Finished connections are reaped so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Carries one pod's connection to the first API server that answers,
/// starting at a different one each time.
async fn relay(mut client: TcpStream, peer: SocketAddr, backends: Vec<Backend>, start: usize) {
    if backends.is_empty() {
        tracing::warn!(%peer, "no API server is known (the kubernetes Service has no endpoints); connection closed");
        return;
    }
    for i in 0..backends.len() {
        let b = &backends[(start + i) % backends.len()];
        let addr = SocketAddr::from((b.ip, b.port));
        match tokio::time::timeout(API_RELAY_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(mut server)) => {
                let _ = server.set_nodelay(true);
                let _ = client.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                return;
            }
            Ok(Err(e)) => tracing::debug!(%addr, error = %e, "API server not reached; trying the next"),
            Err(_) => tracing::debug!(%addr, "API server did not answer in time; trying the next"),
        }
    }
    tracing::warn!(%peer, servers = backends.len(), "no API server answered; connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn table(port: u16) -> ServiceTable {
        let svc = json!({"metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "targetPort": port}]}});
        let ep = json!({"metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": port}]}]});
        ServiceTable::build(&[svc], &[ep])
    }

    #[tokio::test]
    async fn bytes_go_through_to_the_api_and_back() {
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = api.local_addr().unwrap().port();
        let (_tx, rx) = watch::channel(Arc::new(table(port)));
        let relay = ApiRelay::start("127.0.0.1:0".parse().unwrap(), rx).await.unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = api.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let mut c = TcpStream::connect(relay.local_addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        tokio::time::timeout(std::time::Duration::from_secs(10), c.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(&back, b"hello");
        echo.await.unwrap();
        assert_eq!(api_backends(&table(port)), vec![Backend { ip: "127.0.0.1".parse().unwrap(), port, pod: None }]);
        assert!(api_backends(&ServiceTable::default()).is_empty());
    }
}
