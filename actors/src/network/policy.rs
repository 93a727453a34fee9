//! Kubernetes NetworkPolicy, ingress side, resolved to addresses: which pod
//! IPs are isolated and, for each, which sources may reach which ports.
//! Selectors are evaluated here against the current pods and namespaces,
//! so the rule writer ([`super::nft`]) only deals in IPs and port numbers.
//! Egress policy is not enforced.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::Value;

use super::service_table::Protocol;
use crate::model::selector::Selector;

/// What policy needs to know about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNet {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    /// Container ports: (name, may be empty; number; protocol). Named ports
    /// in policies resolve against these.
    pub ports: Vec<(String, u16, Protocol)>,
}

impl PodNet {
    /// None for pods policy cannot apply to: no IP yet, finished (their IP
    /// may already belong to another pod), or on the host network (they
    /// share the node's address, so they cannot be isolated one by one).
    pub fn from_pod(pod: &Value) -> Option<PodNet> {
        if matches!(str_at(pod, "/status/phase"), Some("Succeeded" | "Failed")) {
            return None;
        }
        if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        let ip = str_at(pod, "/status/podIP")?.parse::<Ipv4Addr>().ok()?;
        let name = str_at(pod, "/metadata/name")?.to_string();
        let namespace = str_at(pod, "/metadata/namespace").unwrap_or("default").to_string();
        let labels: BTreeMap<String, String> = pod
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        let mut ports = Vec::new();
        for c in pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten() {
            for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
                let Some(number) = port_u16(p.get("containerPort")) else { continue };
                // SCTP and unknown protocols cannot be named by a rule we enforce.
                let Some(protocol) = Protocol::parse(p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")) else { continue };
                let pname = p.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                ports.push((pname, number, protocol));
            }
        }
        Some(PodNet { namespace, name, ip, labels, ports })
    }
}

/// A pod that some ingress policy selects: everything to it is dropped
/// except what `allow` lets in (replies to its own connections aside).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsolatedPod {
    pub ip: Ipv4Addr,
    /// `namespace/name`.
    pub pod: String,
    /// Empty: nothing may connect.
    pub allow: Vec<AllowRule>,
}

/// One ingress rule: a connection is allowed when its source is among
/// `sources` and its destination port among `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AllowRule {
    /// None: from anywhere. Never empty (a rule no source can match is left out).
    pub sources: Option<Vec<Source>>,
    /// None: every port of every protocol. Never empty, likewise.
    pub ports: Option<Vec<PortMatch>>,
}

/// A permitted source address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A pod chosen by a pod or namespace selector.
    Ip(Ipv4Addr),
    /// An `ipBlock`: `net/prefix` (host bits cleared) minus the `except` blocks.
    Cidr { net: Ipv4Addr, prefix: u8, except: Vec<(Ipv4Addr, u8)> },
}

/// A permitted destination port, or range `port..=end_port`. A policy port
/// entry with a protocol and no port reads as the range 0..=65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortMatch {
    pub protocol: Protocol,
    pub port: u16,
    pub end_port: Option<u16>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn port_u16(v: Option<&Value>) -> Option<u16> {
    v.and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0)
}

/// Parses `a.b.c.d/n`, clearing host bits as Kubernetes does. IPv6 and
/// malformed blocks give None: this node only routes IPv4.
pub(crate) fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.trim().split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((mask(addr, prefix), prefix))
}

pub(crate) fn mask(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    Ipv4Addr::from(u32::from(addr) & bits)
}

/// Whether a policy counts for ingress. Unset (or empty) `policyTypes`
/// default to Ingress, plus Egress when egress rules are present.
fn isolates_ingress(spec: &Value) -> bool {
    match spec.get("policyTypes").and_then(Value::as_array) {
        Some(types) if !types.is_empty() => types.iter().any(|t| t.as_str() == Some("Ingress")),
        _ => true,
    }
}

/// A selector field of a policy; absent reads as None, invalid as Err.
fn selector_at(v: &Value, key: &str) -> Result<Option<Selector>, ()> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(sel) => Selector::from_label_selector(sel).map(Some).map_err(|_| ()),
    }
}

/// A rule's `from` or `ports`: None when absent or empty (no restriction);
/// a malformed value restricts to nothing rather than opening up.
fn list_field<'a>(rule: &'a Value, key: &str) -> Option<&'a [Value]> {
    match rule.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.is_empty() => None,
        Some(Value::Array(items)) => Some(items.as_slice()),
        Some(_) => Some(&[]),
    }
}

/// The sources one `from` peer stands for.
fn peer_sources(peer: &Value, policy_ns: &str, pods: &[PodNet], ns_labels: &BTreeMap<&str, &BTreeMap<String, String>>) -> Vec<Source> {
    if let Some(block) = peer.get("ipBlock") {
        let Some((net, prefix)) = block.get("cidr").and_then(Value::as_str).and_then(parse_cidr) else { return Vec::new() };
        let mut except: Vec<(Ipv4Addr, u8)> =
            block.get("except").and_then(Value::as_array).into_iter().flatten().filter_map(|e| parse_cidr(e.as_str()?)).collect();
        except.sort();
        except.dedup();
        return vec![Source::Cidr { net, prefix, except }];
    }
    let (Ok(pod_sel), Ok(ns_sel)) = (selector_at(peer, "podSelector"), selector_at(peer, "namespaceSelector")) else { return Vec::new() };
    if pod_sel.is_none() && ns_sel.is_none() {
        return Vec::new();
    }
    pods.iter()
        .filter(|p| match &ns_sel {
            // Without a namespace selector the peer means the policy's own namespace.
            None => p.namespace == policy_ns,
            Some(s) => ns_labels.get(p.namespace.as_str()).is_some_and(|labels| s.matches_labels(labels)),
        })
        .filter(|p| pod_sel.as_ref().is_none_or(|s| s.matches_labels(&p.labels)))
        .map(|p| Source::Ip(p.ip))
        .collect()
}

/// A rule's `ports` for one target pod (named ports differ per pod). An
/// entry that cannot be resolved or enforced matches nothing.
fn resolve_ports(entries: &[Value], pod: &PodNet) -> Vec<PortMatch> {
    let mut out = Vec::new();
    for e in entries {
        let protocol = match e.get("protocol").and_then(Value::as_str) {
            None => Protocol::Tcp,
            Some(s) => match Protocol::parse(s) {
                Some(p) => p,
                None => continue,
            },
        };
        let end = e.get("endPort").filter(|v| !v.is_null());
        match e.get("port") {
            None | Some(Value::Null) => out.push(PortMatch { protocol, port: 0, end_port: Some(u16::MAX) }),
            Some(Value::String(name)) => {
                if end.is_some() {
                    continue;
                }
                for (pname, number, proto) in &pod.ports {
                    if pname == name && *proto == protocol {
                        out.push(PortMatch { protocol, port: *number, end_port: None });
                    }
                }
            }
            Some(n) => {
                let Some(port) = port_u16(Some(n)) else { continue };
                let end_port = match end {
                    None => None,
                    Some(v) => match port_u16(Some(v)) {
                        Some(end) if end > port => Some(end),
                        Some(end) if end == port => None,
                        _ => continue,
                    },
                };
                out.push(PortMatch { protocol, port, end_port });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The pods isolated for ingress and what each lets in, sorted by IP.
/// `namespaces` pairs each namespace name with its labels; a pod whose
/// namespace is not listed matches no namespace selector. Policies or
/// peers with invalid selectors are skipped (admission rejects them).
pub fn isolated_pods(policies: &[Value], pods: &[PodNet], namespaces: &[(String, BTreeMap<String, String>)]) -> Vec<IsolatedPod> {
    let ns_labels: BTreeMap<&str, &BTreeMap<String, String>> = namespaces.iter().map(|(n, l)| (n.as_str(), l)).collect();
    // Policy order decides the order of allow rules; make it independent of
    // the order the caller listed them in.
    let mut ordered: Vec<(&str, &str, &Value)> = policies
        .iter()
        .map(|p| (str_at(p, "/metadata/namespace").unwrap_or("default"), str_at(p, "/metadata/name").unwrap_or(""), p))
        .collect();
    ordered.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));

    let mut allow_by_pod: BTreeMap<usize, Vec<AllowRule>> = BTreeMap::new();
    for (ns, _, policy) in ordered {
        let spec = policy.get("spec").unwrap_or(&Value::Null);
        if !isolates_ingress(spec) {
            continue;
        }
        let Ok(pod_sel) = selector_at(spec, "podSelector") else { continue };
        let targets: Vec<usize> = pods
            .iter()
            .enumerate()
            .filter(|(_, p)| p.namespace == ns && pod_sel.as_ref().is_none_or(|s| s.matches_labels(&p.labels)))
            .map(|(i, _)| i)
            .collect();
        if targets.is_empty() {
            continue;
        }
        // Sources do not depend on the target pod, so resolve them once per rule.
        let rules: Vec<_> = spec
            .get("ingress")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            // A malformed rule must not read as "allow everything".
            .filter(|rule| rule.is_object())
            .map(|rule| {
                let sources = list_field(rule, "from").map(|peers| {
                    let mut s: Vec<Source> = peers.iter().flat_map(|peer| peer_sources(peer, ns, pods, &ns_labels)).collect();
                    s.sort();
                    s.dedup();
                    s
                });
                (sources, list_field(rule, "ports"))
            })
            .collect();
        for t in targets {
            let allow = allow_by_pod.entry(t).or_default();
            let Some(pod) = pods.get(t) else { continue };
            for (sources, ports) in &rules {
                let rule = AllowRule { sources: sources.clone(), ports: ports.map(|p| resolve_ports(p, pod)) };
                let matches_nothing = rule.sources.as_ref().is_some_and(Vec::is_empty) || rule.ports.as_ref().is_some_and(Vec::is_empty);
                if !matches_nothing && !allow.contains(&rule) {
                    allow.push(rule);
                }
            }
        }
    }
    let mut out: Vec<IsolatedPod> = allow_by_pod
        .into_iter()
        .filter_map(|(i, allow)| pods.get(i).map(|p| IsolatedPod { ip: p.ip, pod: format!("{}/{}", p.namespace, p.name), allow }))
        .collect();
    out.sort_by(|a, b| (a.ip, &a.pod).cmp(&(b.ip, &b.pod)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod(ns: &str, name: &str, ip: [u8; 4], app: &str, ports: &[(&str, u16, Protocol)]) -> PodNet {
        PodNet {
            namespace: ns.into(),
            name: name.into(),
            ip: Ipv4Addr::from(ip),
            labels: labels(&[("app", app)]),
            ports: ports.iter().map(|(n, p, pr)| (n.to_string(), *p, *pr)).collect(),
        }
    }

    /// Namespaces a and b are team x; c is not. a/web names its ports.
    type Namespaces = Vec<(String, BTreeMap<String, String>)>;

    fn cluster() -> (Vec<PodNet>, Namespaces) {
        let pods = vec![
            pod("a", "web", [10, 244, 0, 2], "web", &[("http", 8080, Protocol::Tcp), ("dns", 53, Protocol::Udp)]),
            pod("a", "db", [10, 244, 0, 3], "db", &[]),
            pod("b", "client", [10, 244, 1, 2], "client", &[]),
            pod("b", "web", [10, 244, 1, 3], "web", &[]),
            pod("c", "client", [10, 244, 2, 2], "client", &[]),
        ];
        let namespaces = vec![
            ("a".to_string(), labels(&[("kubernetes.io/metadata.name", "a"), ("team", "x")])),
            ("b".to_string(), labels(&[("kubernetes.io/metadata.name", "b"), ("team", "x")])),
            ("c".to_string(), labels(&[("kubernetes.io/metadata.name", "c")])),
        ];
        (pods, namespaces)
    }

    fn policy(ns: &str, name: &str, spec: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
    }

    fn ip(a: [u8; 4]) -> Source {
        Source::Ip(Ipv4Addr::from(a))
    }

    fn tcp(port: u16, end_port: Option<u16>) -> PortMatch {
        PortMatch { protocol: Protocol::Tcp, port, end_port }
    }

    fn isolated(ip: [u8; 4], pod: &str, allow: Vec<AllowRule>) -> IsolatedPod {
        IsolatedPod { ip: Ipv4Addr::from(ip), pod: pod.into(), allow }
    }

    #[test]
    fn from_pod_reads_ip_labels_and_ports() {
        let p = json!({"metadata": {"namespace": "a", "name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"},
                {"containerPort": 99, "protocol": "SCTP"}]}]},
            "status": {"phase": "Running", "podIP": "10.244.0.2"}});
        assert_eq!(
            PodNet::from_pod(&p),
            Some(PodNet {
                namespace: "a".into(),
                name: "web".into(),
                ip: Ipv4Addr::new(10, 244, 0, 2),
                labels: labels(&[("app", "web")]),
                ports: vec![("http".into(), 8080, Protocol::Tcp), (String::new(), 53, Protocol::Udp)],
            })
        );
        let mut done = p.clone();
        done["status"]["phase"] = json!("Succeeded");
        assert_eq!(PodNet::from_pod(&done), None);
        let mut host = p.clone();
        host["spec"]["hostNetwork"] = json!(true);
        assert_eq!(PodNet::from_pod(&host), None);
        let mut pending = p;
        pending["status"] = json!({"phase": "Pending"});
        assert_eq!(PodNet::from_pod(&pending), None);
    }

    #[test]
    fn only_selected_pods_of_the_policy_namespace_are_isolated() {
        let (pods, namespaces) = cluster();
        let policies = vec![
            policy("a", "db-deny", json!({"podSelector": {"matchLabels": {"app": "db"}}})),
            // Invalid selectors are skipped, not read as "everything".
            policy("a", "bad", json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Near"}]}})),
        ];
        assert_eq!(isolated_pods(&policies, &pods, &namespaces), vec![isolated([10, 244, 0, 3], "a/db", vec![])]);

        // A malformed rule lets nothing in rather than everything.
        let malformed =
            vec![policy("a", "odd", json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": "everyone"}, "all"]}))];
        assert_eq!(isolated_pods(&malformed, &pods, &namespaces), vec![isolated([10, 244, 0, 3], "a/db", vec![])]);

        let all_of_b = vec![policy("b", "deny-all", json!({"podSelector": {}, "ingress": []}))];
        assert_eq!(
            isolated_pods(&all_of_b, &pods, &namespaces),
            vec![isolated([10, 244, 1, 2], "b/client", vec![]), isolated([10, 244, 1, 3], "b/web", vec![])]
        );
    }

    #[test]
    fn own_namespace_only() {
        let (pods, namespaces) = cluster();
        let policies = vec![policy(
            "a",
            "same-ns",
            json!({"podSelector": {}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "a"}}}]}]}),
        )];
        let rule = AllowRule { sources: Some(vec![ip([10, 244, 0, 2]), ip([10, 244, 0, 3])]), ports: None };
        assert_eq!(
            isolated_pods(&policies, &pods, &namespaces),
            vec![isolated([10, 244, 0, 2], "a/web", vec![rule.clone()]), isolated([10, 244, 0, 3], "a/db", vec![rule])]
        );
    }

    #[test]
    fn selectors_in_one_peer_are_anded_separate_peers_ored() {
        let (pods, namespaces) = cluster();
        let and = vec![policy(
            "a",
            "clients",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"team": "x"}}, "podSelector": {"matchLabels": {"app": "client"}}}]}]}),
        )];
        assert_eq!(
            isolated_pods(&and, &pods, &namespaces),
            vec![isolated([10, 244, 0, 2], "a/web", vec![AllowRule { sources: Some(vec![ip([10, 244, 1, 2])]), ports: None }])]
        );

        let or = vec![policy(
            "a",
            "clients",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"team": "x"}}}, {"podSelector": {"matchLabels": {"app": "client"}}}]}]}),
        )];
        let sources = vec![ip([10, 244, 0, 2]), ip([10, 244, 0, 3]), ip([10, 244, 1, 2]), ip([10, 244, 1, 3])];
        assert_eq!(
            isolated_pods(&or, &pods, &namespaces),
            vec![isolated([10, 244, 0, 2], "a/web", vec![AllowRule { sources: Some(sources), ports: None }])]
        );
    }

    #[test]
    fn ip_blocks_keep_their_exceptions() {
        let (pods, namespaces) = cluster();
        let policies = vec![policy(
            "a",
            "blocks",
            json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "2001:db8::/32"]}},
                {"ipBlock": {"cidr": "192.168.1.7/24"}},
                {"ipBlock": {"cidr": "2001:db8::/32"}}]}]}),
        )];
        let sources = vec![
            Source::Cidr { net: Ipv4Addr::new(10, 0, 0, 0), prefix: 8, except: vec![(Ipv4Addr::new(10, 1, 0, 0), 16)] },
            Source::Cidr { net: Ipv4Addr::new(192, 168, 1, 0), prefix: 24, except: vec![] },
        ];
        assert_eq!(
            isolated_pods(&policies, &pods, &namespaces),
            vec![isolated([10, 244, 0, 3], "a/db", vec![AllowRule { sources: Some(sources), ports: None }])]
        );
    }

    #[test]
    fn named_ports_resolve_per_target_pod() {
        let (pods, namespaces) = cluster();
        let policies = vec![policy(
            "a",
            "ports",
            json!({"podSelector": {}, "ingress": [
                {"ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}, {"port": "dns"}, {"port": 5000, "endPort": 5010},
                    {"protocol": "UDP"}, {"port": 9, "protocol": "SCTP"}]},
                {"ports": [{"port": "http"}]}]}),
        )];
        let web_ports = vec![
            tcp(5000, Some(5010)),
            tcp(8080, None),
            PortMatch { protocol: Protocol::Udp, port: 0, end_port: Some(65535) },
            PortMatch { protocol: Protocol::Udp, port: 53, end_port: None },
        ];
        let db_ports = vec![tcp(5000, Some(5010)), PortMatch { protocol: Protocol::Udp, port: 0, end_port: Some(65535) }];
        assert_eq!(
            isolated_pods(&policies, &pods, &namespaces),
            vec![
                isolated(
                    [10, 244, 0, 2],
                    "a/web",
                    vec![
                        AllowRule { sources: None, ports: Some(web_ports) },
                        AllowRule { sources: None, ports: Some(vec![tcp(8080, None)]) }
                    ]
                ),
                // db has no port named http: its second rule lets nothing in.
                isolated([10, 244, 0, 3], "a/db", vec![AllowRule { sources: None, ports: Some(db_ports) }]),
            ]
        );
    }

    #[test]
    fn policies_selecting_one_pod_add_up() {
        let (pods, namespaces) = cluster();
        let policies = vec![
            policy(
                "a",
                "web-from-anywhere",
                json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 80}]}]}),
            ),
            policy(
                "a",
                "web-from-db",
                json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}),
            ),
        ];
        // Listed in reverse: the output follows policy names, not input order.
        let reversed: Vec<Value> = policies.iter().rev().cloned().collect();
        let want = vec![isolated(
            [10, 244, 0, 2],
            "a/web",
            vec![
                AllowRule { sources: None, ports: Some(vec![tcp(80, None)]) },
                AllowRule { sources: Some(vec![ip([10, 244, 0, 3])]), ports: None },
            ],
        )];
        assert_eq!(isolated_pods(&policies, &pods, &namespaces), want);
        assert_eq!(isolated_pods(&reversed, &pods, &namespaces), want);
    }

    #[test]
    fn egress_only_policies_do_not_isolate_ingress() {
        let (pods, namespaces) = cluster();
        let egress_only = vec![policy("a", "egress", json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}))];
        assert_eq!(isolated_pods(&egress_only, &pods, &namespaces), vec![]);
        // Without policyTypes, Ingress is implied even when only egress rules are given.
        let implied = vec![policy("a", "egress", json!({"podSelector": {"matchLabels": {"app": "db"}}, "egress": [{}]}))];
        assert_eq!(isolated_pods(&implied, &pods, &namespaces), vec![isolated([10, 244, 0, 3], "a/db", vec![])]);
    }
}
