//! Services with their virtual IPs, ports and ready endpoints, built from
//! the Service and Endpoints objects: what the proxy programs and what
//! cluster DNS answers from.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::Value;

/// A transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// The name nft and SRV records use: `tcp` or `udp`.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One ready endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The pod behind it, `namespace/name`, when the Endpoints say.
    pub pod: Option<String>,
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortEntry {
    /// Empty for the single unnamed port of a service.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Ready endpoints, sorted; empty means connections are refused.
    pub backends: Vec<Backend>,
}

/// One service as the node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    /// None for headless services (`clusterIP: None`) and ExternalName.
    pub cluster_ip: Option<Ipv4Addr>,
    /// For ExternalName services: the name DNS answers with a CNAME.
    pub external_name: Option<String>,
    pub ports: Vec<ServicePortEntry>,
}

impl ServiceEntry {
    /// Every ready endpoint address of the service, once each (headless
    /// services answer DNS with these).
    pub fn ready_ips(&self) -> Vec<Ipv4Addr> {
        let mut ips: Vec<Ipv4Addr> = self.ports.iter().flat_map(|p| p.backends.iter().map(|b| b.ip)).collect();
        ips.sort();
        ips.dedup();
        ips
    }
}

/// All services, keyed by (namespace, name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    pub services: BTreeMap<(String, String), ServiceEntry>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn port_u16(v: Option<&Value>) -> Option<u16> {
    v.and_then(Value::as_i64).and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0)
}

impl ServiceTable {
    /// The table with Service `namespace/name` carried to `to` (the node's
    /// API relay) instead of its own endpoints.
    pub fn with_backend_for(&self, namespace: &str, name: &str, to: std::net::SocketAddrV4) -> ServiceTable {
        let mut table = self.clone();
        if let Some(svc) = table.services.get_mut(&(namespace.to_string(), name.to_string())) {
            for port in &mut svc.ports {
                port.backends = vec![Backend { ip: *to.ip(), port: to.port(), pod: None }];
            }
        }
        table
    }

    /// Builds the table from Service and Endpoints objects. Objects that
    /// are malformed (admission prevents that) are skipped, not fatal.
    pub fn build(services: &[Value], endpoints: &[Value]) -> ServiceTable {
        let mut by_key: BTreeMap<(String, String), &Value> = BTreeMap::new();
        for ep in endpoints {
            if let (Some(ns), Some(name)) = (str_at(ep, "/metadata/namespace"), str_at(ep, "/metadata/name")) {
                by_key.insert((ns.to_string(), name.to_string()), ep);
            }
        }
        let mut table = ServiceTable::default();
        for svc in services {
            let (Some(ns), Some(name)) = (str_at(svc, "/metadata/namespace"), str_at(svc, "/metadata/name")) else { continue };
            let key = (ns.to_string(), name.to_string());
            let svc_type = str_at(svc, "/spec/type").unwrap_or("ClusterIP");
            let external_name = (svc_type == "ExternalName").then(|| str_at(svc, "/spec/externalName").unwrap_or("").to_string());
            // Only what the type carries: an ExternalName Service has no
            // virtual IP, and only NodePort and LoadBalancer have node ports.
            let cluster_ip = str_at(svc, "/spec/clusterIP").and_then(|s| s.parse::<Ipv4Addr>().ok()).filter(|_| external_name.is_none());
            let has_node_ports = matches!(svc_type, "NodePort" | "LoadBalancer");
            let ep = by_key.get(&key).copied();
            let mut ports = Vec::new();
            for p in svc.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
                let Some(port) = port_u16(p.get("port")) else { continue };
                let Some(protocol) = Protocol::parse(p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")) else { continue };
                let pname = p.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                let mut backends = Vec::new();
                for subset in ep.and_then(|e| e.get("subsets")).and_then(Value::as_array).into_iter().flatten() {
                    // The subset's port of the same name (Endpoints name
                    // their ports after the service's).
                    let target = subset.get("ports").and_then(Value::as_array).into_iter().flatten().find(|sp| {
                        sp.get("name").and_then(Value::as_str).unwrap_or("") == pname
                            && Protocol::parse(sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP")) == Some(protocol)
                    });
                    let Some(target_port) = target.and_then(|t| port_u16(t.get("port"))) else { continue };
                    for a in subset.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                        let Some(ip) = a.get("ip").and_then(Value::as_str).and_then(|s| s.parse::<Ipv4Addr>().ok()) else { continue };
                        let pod = match (a.pointer("/targetRef/namespace"), a.pointer("/targetRef/name")) {
                            (Some(Value::String(n)), Some(Value::String(p))) => Some(format!("{n}/{p}")),
                            _ => None,
                        };
                        backends.push(Backend { ip, port: target_port, pod });
                    }
                }
                backends.sort();
                backends.dedup();
                ports.push(ServicePortEntry {
                    name: pname,
                    protocol,
                    port,
                    node_port: port_u16(p.get("nodePort")).filter(|_| has_node_ports),
                    backends,
                });
            }
            table.services.insert(key.clone(), ServiceEntry { namespace: key.0, name: key.1, cluster_ip, external_name, ports });
        }
        table
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&ServiceEntry> {
        self.services.get(&(namespace.to_string(), name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn joins_services_with_their_ready_endpoints() {
        let services = vec![
            json!({"metadata": {"namespace": "a", "name": "web"}, "spec": {"clusterIP": "10.96.0.10", "type": "NodePort",
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
            json!({"metadata": {"namespace": "a", "name": "empty"}, "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}}),
            json!({"metadata": {"namespace": "a", "name": "ext"}, "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        ];
        let endpoints = vec![json!({"metadata": {"namespace": "a", "name": "web"}, "subsets": [
            {"addresses": [{"ip": "10.244.0.3", "targetRef": {"namespace": "a", "name": "web-2"}}, {"ip": "10.244.0.2"}],
             "notReadyAddresses": [{"ip": "10.244.0.9"}],
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]}]})];
        let t = ServiceTable::build(&services, &endpoints);
        let web = t.get("a", "web").unwrap();
        assert_eq!(web.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(web.ports[0].node_port, Some(30080));
        assert_eq!(
            web.ports[0].backends,
            vec![
                Backend { ip: Ipv4Addr::new(10, 244, 0, 2), port: 8080, pod: None },
                Backend { ip: Ipv4Addr::new(10, 244, 0, 3), port: 8080, pod: Some("a/web-2".into()) },
            ]
        );
        assert_eq!(web.ports[1].protocol, Protocol::Udp);
        assert_eq!(web.ports[1].backends.iter().map(|b| b.port).collect::<Vec<_>>(), vec![5353, 5353]);
        assert_eq!(web.ready_ips(), vec![Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 0, 3)]);
        assert!(t.get("a", "empty").unwrap().ports[0].backends.is_empty());
        let ext = t.get("a", "ext").unwrap();
        assert_eq!((ext.cluster_ip, ext.external_name.as_deref()), (None, Some("example.org")));
    }
}
