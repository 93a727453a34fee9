//! Liveness and readiness probes with Kubernetes' fields: `exec`,
//! `tcpSocket` and `httpGet`, `initialDelaySeconds`, `periodSeconds`,
//! `timeoutSeconds`, `failureThreshold`, `successThreshold`. The threshold
//! logic is a plain state machine; the runner does the I/O.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a probe checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    Exec(Vec<String>),
    Tcp { port: u16 },
    Http { port: u16, path: String },
}

/// A parsed probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

fn port_of(v: Option<&Value>, container: &Value) -> Option<u16> {
    match v? {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        // A named port: look it up among the container's ports.
        Value::String(name) => container
            .get("ports")?
            .as_array()?
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name.as_str()))?
            .get("containerPort")?
            .as_u64()
            .and_then(|p| u16::try_from(p).ok()),
        _ => None,
    }
}

impl Probe {
    /// Parses `livenessProbe` / `readinessProbe` of a container; None if
    /// absent or of an unknown kind.
    pub fn parse(probe: Option<&Value>, container: &Value) -> Option<Probe> {
        let p = probe?;
        let secs = |k: &str, d: u64| Duration::from_secs(p.get(k).and_then(Value::as_u64).unwrap_or(d));
        let action = if let Some(cmd) = p.pointer("/exec/command").and_then(Value::as_array) {
            ProbeAction::Exec(cmd.iter().filter_map(|c| c.as_str().map(String::from)).collect())
        } else if let Some(t) = p.get("tcpSocket") {
            ProbeAction::Tcp { port: port_of(t.get("port"), container)? }
        } else if let Some(h) = p.get("httpGet") {
            ProbeAction::Http {
                port: port_of(h.get("port"), container)?,
                path: h.get("path").and_then(Value::as_str).unwrap_or("/").to_string(),
            }
        } else {
            return None;
        };
        Some(Probe {
            action,
            initial_delay: secs("initialDelaySeconds", 0),
            period: secs("periodSeconds", 10).max(Duration::from_millis(100)),
            timeout: secs("timeoutSeconds", 1).max(Duration::from_millis(100)),
            failure_threshold: p.get("failureThreshold").and_then(Value::as_u64).unwrap_or(3).max(1) as u32,
            success_threshold: p.get("successThreshold").and_then(Value::as_u64).unwrap_or(1).max(1) as u32,
        })
    }
}

/// Consecutive results against the thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeState {
    pub healthy: bool,
    successes: u32,
    failures: u32,
}

impl ProbeState {
    pub fn new(healthy: bool) -> Self {
        ProbeState { healthy, successes: 0, failures: 0 }
    }

    /// Records one result; answers the new verdict when it changed.
    pub fn record(&mut self, ok: bool, probe: &Probe) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if !self.healthy && self.successes >= probe.success_threshold {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.healthy && self.failures >= probe.failure_threshold {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

/// Runs a tcp or http check against `host`; exec checks are the runtime's.
pub async fn check_network(action: &ProbeAction, host: &str, timeout: Duration) -> bool {
    let attempt = async {
        match action {
            ProbeAction::Tcp { port } => tokio::net::TcpStream::connect((host, *port)).await.is_ok(),
            ProbeAction::Http { port, path } => {
                let Ok(mut s) = tokio::net::TcpStream::connect((host, *port)).await else { return false };
                let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: flotilla-probe\r\n\r\n");
                if s.write_all(req.as_bytes()).await.is_err() {
                    return false;
                }
                let mut head = [0u8; 12];
                let mut read = 0;
                while read < head.len() {
                    match s.read(&mut head[read..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
                let text = String::from_utf8_lossy(&head[..read]);
                text.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).is_some_and(|c| (200..400).contains(&c))
            }
            ProbeAction::Exec(_) => false,
        }
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe(f: u32, s: u32) -> Probe {
        Probe {
            action: ProbeAction::Tcp { port: 1 },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold: f,
            success_threshold: s,
        }
    }

    #[test]
    fn thresholds() {
        let p = probe(3, 2);
        let mut s = ProbeState::new(true);
        assert_eq!(s.record(false, &p), None);
        assert_eq!(s.record(false, &p), None);
        assert_eq!(s.record(true, &p), None, "a success resets the failure count");
        assert_eq!(s.record(false, &p), None);
        assert_eq!(s.record(false, &p), None);
        assert_eq!(s.record(false, &p), Some(false));
        assert_eq!(s.record(true, &p), None);
        assert_eq!(s.record(true, &p), Some(true));
    }

    #[test]
    fn parses_kubernetes_probe_fields() {
        let c = json!({"ports": [{"name": "http", "containerPort": 8080}]});
        let p =
            Probe::parse(Some(&json!({"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 1})), &c)
                .unwrap();
        assert_eq!(p.action, ProbeAction::Http { port: 8080, path: "/healthz".into() });
        assert_eq!((p.period, p.failure_threshold, p.success_threshold), (Duration::from_secs(2), 1, 1));
        let e = Probe::parse(Some(&json!({"exec": {"command": ["cat", "/tmp/ok"]}})), &c).unwrap();
        assert_eq!(e.action, ProbeAction::Exec(vec!["cat".into(), "/tmp/ok".into()]));
        assert!(Probe::parse(Some(&json!({"grpc": {"port": 1}})), &c).is_none());
        assert!(Probe::parse(None, &c).is_none());
    }

    #[tokio::test]
    async fn network_checks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nok").await;
            }
        });
        assert!(check_network(&ProbeAction::Tcp { port }, "127.0.0.1", Duration::from_secs(2)).await);
        assert!(check_network(&ProbeAction::Http { port, path: "/".into() }, "127.0.0.1", Duration::from_secs(2)).await);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(!check_network(&ProbeAction::Tcp { port: closed }, "127.0.0.1", Duration::from_secs(2)).await);
    }
}
