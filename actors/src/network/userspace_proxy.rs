//! The proxy without root: where the kernel's tables cannot be written,
//! node ports are served by listeners in this process that pass each
//! connection to a ready endpoint chosen at random, as the nftables rules
//! would. Virtual IPs need the kernel (only root can make an address
//! local), so without root they do not answer; cluster DNS still does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::net::{TcpListener, TcpStream};

use super::service_table::{Protocol, ServiceTable};

/// Deadline of the connection to an endpoint.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections carried at once per node port; more wait in the backlog.
const CONNECTIONS_PER_PORT_MAX: usize = 4096;
/// The pause after a failed accept before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(20);

struct PortListener {
    backends: Arc<RwLock<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Listeners for the node ports of the services, kept in step with the
/// table by `sync`.
#[derive(Default)]
pub struct UserspaceProxy {
    ports: HashMap<u16, PortListener>,
}

/// What each TCP node port should reach.
pub fn node_port_backends(table: &ServiceTable) -> HashMap<u16, Vec<SocketAddr>> {
    let mut out = HashMap::new();
    for svc in table.services.values() {
        for p in svc.ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
            if let Some(np) = p.node_port {
                out.insert(np, p.backends.iter().map(|b| SocketAddr::from((b.ip, b.port))).collect());
            }
        }
    }
    out
}

/// Makes closing the socket send a reset, not a graceful end: the client
/// sees its connection refused rather than an empty answer. (A zero linger
/// never blocks the close, which is why tokio's deprecation does not apply.)
fn reset_on_close(socket: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the descriptor is an open socket owned by `socket`, and the
    // option value is a `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

async fn carry(mut client: TcpStream, backends: Arc<RwLock<Vec<SocketAddr>>>) {
    let choice = backends.read().unwrap_or_else(|p| p.into_inner()).choose(&mut rand::thread_rng()).copied();
    let Some(backend) = choice else {
        // No ready endpoint: reset at once rather than leave the client
        // waiting (the closest a listener can come to refusing).
        reset_on_close(&client);
        return;
    };
    match tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
        Ok(Ok(mut server)) => {
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
        _ => reset_on_close(&client),
    }
}

/// Accepts on one node port; its connections are tasks of this one, so
/// they end when the port is no longer served.
async fn serve(listener: TcpListener, backends: Arc<RwLock<Vec<SocketAddr>>>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Reap finished connections; at the limit, wait for one to end.
        while connections.try_join_next().is_some() {}
        if connections.len() >= CONNECTIONS_PER_PORT_MAX {
            connections.join_next().await;
            continue;
        }
        match listener.accept().await {
            Ok((client, _)) => {
                connections.spawn(carry(client, backends.clone()));
            }
            // Out of descriptors, say: do not spin on it.
            Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
        }
    }
}

impl UserspaceProxy {
    /// Opens, updates and closes node-port listeners to match `table`.
    /// A port that cannot be opened (taken by another program) is logged
    /// and tried again on the next sync.
    pub async fn sync(&mut self, table: &ServiceTable) {
        let desired = node_port_backends(table);
        self.ports.retain(|port, l| {
            let keep = desired.contains_key(port);
            if !keep {
                l.task.abort();
            }
            keep
        });
        for (port, backends) in desired {
            if let Some(l) = self.ports.get(&port) {
                *l.backends.write().unwrap_or_else(|p| p.into_inner()) = backends;
                continue;
            }
            match TcpListener::bind(("0.0.0.0", port)).await {
                Ok(listener) => {
                    let shared = Arc::new(RwLock::new(backends));
                    let task = tokio::spawn(serve(listener, shared.clone()));
                    self.ports.insert(port, PortListener { backends: shared, task });
                }
                Err(e) => tracing::warn!(port, error = %e, "node port not served by the userspace proxy"),
            }
        }
    }

    /// The node ports being served.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.ports.keys().copied().collect();
        p.sort();
        p
    }
}

impl Drop for UserspaceProxy {
    fn drop(&mut self) {
        for l in self.ports.values() {
            l.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn table(node_port: u16, backends: &[SocketAddr]) -> ServiceTable {
        let addresses: Vec<_> = backends.iter().map(|b| json!({"ip": b.ip().to_string()})).collect();
        let port = backends.first().map_or(1, |b| b.port());
        let services = vec![json!({"metadata": {"namespace": "a", "name": "web"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "nodePort": node_port}]}})];
        let endpoints = vec![json!({"metadata": {"namespace": "a", "name": "web"},
            "subsets": [{"addresses": addresses, "ports": [{"name": "http", "port": port}]}]})];
        let endpoints: &[serde_json::Value] = if backends.is_empty() { &[] } else { &endpoints };
        ServiceTable::build(&services, endpoints)
    }

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = s.read(&mut buf).await {
                        let _ = s.write_all(&buf[..n]).await;
                    }
                });
            }
        });
        addr
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn node_ports_reach_ready_endpoints_and_reset_without_them() {
        let backend = echo_server().await;
        let port = free_port();
        let mut proxy = UserspaceProxy::default();
        proxy.sync(&table(port, &[backend])).await;
        assert_eq!(proxy.ports(), vec![port]);
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        // No ready endpoints: the connection ends at once.
        proxy.sync(&table(port, &[])).await;
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await.expect("not left hanging");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        // The service gone: the port closes.
        proxy.sync(&ServiceTable::default()).await;
        assert!(proxy.ports().is_empty());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "node port {port} still open");
            tokio::task::yield_now().await;
        }
    }
}
