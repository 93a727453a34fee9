//! The node's nftables ruleset, table `ip flotilla`: service virtual IPs
//! and node ports DNATed to a random ready backend, connections to services
//! without backends refused at once, and ingress NetworkPolicy enforced on
//! the pods given as isolated. [`render`] is pure; [`apply`] hands the
//! script to `nft`, which swaps the whole table in one transaction.
//!
//! Isolation sits on the `forward` hook, after DNAT, so it sees the real
//! pod address whether a client dialled the pod or a service. Pod-to-pod
//! traffic across a Linux bridge only reaches that hook with
//! `br_netfilter` loaded; routed (point-to-point) pod interfaces need
//! nothing. The node's own connections to its pods (probes) never pass
//! `forward` and so are always allowed, as in Kubernetes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::policy::{mask, AllowRule, IsolatedPod, PortMatch, Source};
use super::service_table::{Protocol, ServicePortEntry, ServiceTable};

/// The table flotilla owns; nothing else in the ruleset is touched.
pub const TABLE: &str = "flotilla";
/// How long one `nft` run may take before it is killed.
pub const NFT_DEADLINE_SECS: u64 = 5;
const NFT_POLL_MS: u64 = 10;
/// Packet mark bit meaning "masquerade on the way out" (kube-proxy's bit,
/// so tools that know it read it right).
const MASQ_MARK: &str = "0x4000";
/// Longest readable chain-name stem; longer (or unclean) ones are cut and
/// hashed. nft allows 255 characters.
const STEM_MAX_CHARS: usize = 200;

/// What the node's rules are made from.
pub struct NodeRules<'a> {
    pub services: &'a ServiceTable,
    /// The node's own pods under ingress policy (from [`super::policy::isolated_pods`]).
    pub isolated: &'a [IsolatedPod],
    /// Also serve each service's node port on the node's addresses.
    pub node_ports: bool,
}

/// A failed `nft` run; each message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftError {
    #[error("the nft command was not found: install the nftables package (nft 1.0 or newer) on this node")]
    NotInstalled,
    #[error("cannot run nft: {0}")]
    Spawn(String),
    #[error("nft did not finish within {secs} s and was killed; a script applies whole or not at all, so retrying is safe")]
    Timeout { secs: u64 },
    #[error("nft was not permitted to change the ruleset ({stderr}): run the agent as root (it needs CAP_NET_ADMIN)")]
    PermissionDenied { stderr: String },
    #[error(
        "nft rejected the script (exit {code}): {stderr}; the previous rules stay in force. Check that the kernel has nf_tables \
         with nat, fib and reject support; if it does, this is a flotilla bug, please report it with this message"
    )]
    Rejected { code: i32, stderr: String },
}

/// A chain as written: its base-chain header (if hooked) and its rules.
struct Chain {
    name: String,
    hook: Option<&'static str>,
    rules: Vec<String>,
}

impl Chain {
    fn new(name: impl Into<String>, hook: Option<&'static str>, rules: Vec<String>) -> Chain {
        Chain { name: name.into(), hook, rules }
    }
}

/// The script for table `ip flotilla`.
pub fn render(r: &NodeRules) -> String {
    render_table(r, TABLE)
}

/// The script for table `ip <table>` (an nft identifier: letters, digits,
/// `_`). Creating the table before deleting it makes the delete succeed on
/// a first run; the three steps run as one transaction, so packets see
/// either the old table or the new one, never none.
pub fn render_table(r: &NodeRules, table: &str) -> String {
    let mut vip_rules = Vec::new();
    let mut node_port_rules = Vec::new();
    let mut service_chains = Vec::new();
    let mut refuse = Vec::new();
    let mut refuse_node_ports = Vec::new();
    let mut stems = BTreeSet::new();
    for svc in r.services.services.values() {
        // Headless and ExternalName services have no virtual IP to carry.
        let Some(vip) = svc.cluster_ip else { continue };
        for port in &svc.ports {
            let proto = port.protocol.lower();
            let node_port = port.node_port.filter(|_| r.node_ports);
            if port.backends.is_empty() {
                let reject = reject_verdict(port.protocol);
                refuse.push(format!("ip daddr {vip} {proto} dport {} {reject}", port.port));
                if let Some(np) = node_port {
                    refuse_node_ports.push(format!("fib daddr type local {proto} dport {np} {reject}"));
                }
                continue;
            }
            let stem = chain_stem(&svc.namespace, &svc.name, port);
            // Two ports with one name and protocol (admission forbids it)
            // would define a chain twice; the first one wins.
            if !stems.insert(stem.clone()) {
                continue;
            }
            let svc_chain = format!("svc_{stem}");
            vip_rules.push(format!("ip daddr {vip} {proto} dport {} jump {svc_chain}", port.port));
            if let Some(np) = node_port {
                // Node-port clients are masqueraded so replies come back
                // through this node even when the backend runs elsewhere.
                // Loopback is left alone: DNAT from 127/8 needs route_localnet.
                node_port_rules.push(format!(
                    "fib daddr type local ip daddr != 127.0.0.0/8 {proto} dport {np} meta mark set meta mark | {MASQ_MARK} jump {svc_chain}"
                ));
            }
            let eps: Vec<String> = (0..port.backends.len()).map(|k| format!("ep_{stem}_{k}")).collect();
            let pick = match eps.as_slice() {
                [only] => format!("goto {only}"),
                _ => {
                    let arms: Vec<String> = eps.iter().enumerate().map(|(k, ep)| format!("{k} : goto {ep}")).collect();
                    format!("numgen random mod {} vmap {{ {} }}", eps.len(), arms.join(", "))
                }
            };
            service_chains.push(Chain::new(svc_chain, None, vec![pick]));
            for (ep, b) in eps.into_iter().zip(&port.backends) {
                let rules = vec![
                    // A backend reaching itself through the service must be
                    // masqueraded, or it would answer itself directly and
                    // the connection would never establish.
                    format!("ip saddr {} meta mark set meta mark | {MASQ_MARK}", b.ip),
                    format!("meta l4proto {proto} dnat to {}:{}", b.ip, b.port),
                ];
                service_chains.push(Chain::new(ep, None, rules));
            }
        }
    }

    let mut chains = vec![
        Chain::new("nat_prerouting", Some("type nat hook prerouting priority dstnat; policy accept;"), vec!["jump services".into()]),
        // nft 1.0.6 accepts the name `dstnat` only on prerouting; -100 is its value.
        Chain::new("nat_output", Some("type nat hook output priority -100; policy accept;"), vec!["jump services".into()]),
        Chain::new(
            "nat_postrouting",
            Some("type nat hook postrouting priority srcnat; policy accept;"),
            vec![format!("meta mark & {MASQ_MARK} == {MASQ_MARK} masquerade")],
        ),
        Chain::new("services", None, vip_rules.into_iter().chain(node_port_rules).collect()),
    ];
    chains.extend(service_chains);

    // Priority filter - 5 runs before the usual filter chains (Docker's,
    // the distribution's), so a refusal or a policy drop is not preceded
    // by someone else's accept-and-forget.
    let mut isolation = BTreeMap::<Ipv4Addr, Vec<&AllowRule>>::new();
    for pod in r.isolated {
        isolation.entry(pod.ip).or_default().extend(pod.allow.iter());
    }
    let mut forward = Vec::new();
    if !refuse.is_empty() {
        // Only new connections: established ones to a VIP were DNATed
        // and no longer carry it.
        forward.push("ct state new jump refuse".to_string());
    }
    let mut ingress_chains = Vec::new();
    if !isolation.is_empty() {
        forward.push("ct state established,related accept".to_string());
    }
    for (ip, allow) in &isolation {
        let name = format!("ing_{}", ip.to_string().replace('.', "_"));
        forward.push(format!("ip daddr {ip} jump {name}"));
        let mut rules: Vec<String> = Vec::new();
        for line in allow.iter().flat_map(|rule| allow_lines(rule)) {
            if !rules.contains(&line) {
                rules.push(line);
            }
        }
        rules.push("drop".into());
        ingress_chains.push(Chain::new(name, None, rules));
    }
    if !refuse_node_ports.is_empty() {
        chains.push(Chain::new(
            "filter_input",
            Some("type filter hook input priority filter - 5; policy accept;"),
            vec!["ct state new jump refuse_nodeports".into()],
        ));
    }
    if !refuse.is_empty() {
        chains.push(Chain::new(
            "filter_output",
            Some("type filter hook output priority filter - 5; policy accept;"),
            vec!["ct state new jump refuse".into()],
        ));
    }
    if !forward.is_empty() {
        chains.push(Chain::new("filter_forward", Some("type filter hook forward priority filter - 5; policy accept;"), forward));
    }
    if !refuse.is_empty() {
        chains.push(Chain::new("refuse", None, refuse));
    }
    if !refuse_node_ports.is_empty() {
        chains.push(Chain::new("refuse_nodeports", None, refuse_node_ports));
    }
    chains.extend(ingress_chains);

    let mut out = format!("table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n");
    for c in &chains {
        out.push_str(&format!("    chain {} {{\n", c.name));
        for line in c.hook.iter().copied().map(String::from).chain(c.rules.iter().cloned()) {
            out.push_str(&format!("        {line}\n"));
        }
        out.push_str("    }\n");
    }
    out.push_str("}\n");
    out
}

/// Refuses at once: a TCP reset, or ICMP port unreachable for UDP.
fn reject_verdict(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "reject with tcp reset",
        Protocol::Udp => "reject with icmp type port-unreachable",
    }
}

/// `<namespace>_<name>_<port name or number>_<protocol>`. Kubernetes names
/// never contain `_`, which keeps the parts apart; a name that needed
/// sanitising or cutting gets a hash of the original instead.
fn chain_stem(namespace: &str, name: &str, port: &ServicePortEntry) -> String {
    let port_part = if port.name.is_empty() { port.port.to_string() } else { port.name.clone() };
    let parts = [namespace, name, port_part.as_str()];
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-';
    let clean = parts.iter().all(|p| !p.is_empty() && p.chars().all(ok));
    let body = parts.iter().map(|p| p.chars().map(|c| if ok(c) { c } else { 'x' }).collect::<String>()).collect::<Vec<_>>().join("_");
    let body = if clean && body.len() <= STEM_MAX_CHARS {
        body
    } else {
        let hash = fnv1a(format!("{namespace}/{name}/{port_part}").as_bytes()) & 0xffff_ffff;
        let cut: String = body.chars().take(STEM_MAX_CHARS - 9).collect();
        format!("{cut}_{hash:08x}")
    };
    // The protocol last: stems then never end in `_<digits>`, so the
    // `ep_<stem>_<k>` chains of two services cannot collide.
    format!("{body}_{}", port.protocol.lower())
}

/// FNV-1a: stable across Rust versions, unlike the std hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The rules of one allow rule: the product of its source matches and
/// its port matches, each ending in accept. A rule no packet can match
/// gives no lines.
fn allow_lines(rule: &AllowRule) -> Vec<String> {
    let sources = match &rule.sources {
        None => vec![String::new()],
        Some(s) => source_matches(s),
    };
    let ports = match &rule.ports {
        None => vec![String::new()],
        Some(p) => port_matches(p),
    };
    let mut out = Vec::new();
    for s in &sources {
        for p in &ports {
            let parts: Vec<&str> = [s.as_str(), p.as_str(), "accept"].into_iter().filter(|x| !x.is_empty()).collect();
            out.push(parts.join(" "));
        }
    }
    out
}

type Block = (Ipv4Addr, u8);

fn block_of(net: Ipv4Addr, prefix: u8) -> Block {
    let prefix = prefix.min(32);
    (mask(net, prefix), prefix)
}

fn contains(outer: Block, inner: Block) -> bool {
    outer.1 <= inner.1 && mask(inner.0, outer.1) == outer.0
}

/// Sorted, with blocks inside another dropped: the sets nft is given hold
/// no overlapping intervals.
fn disjoint(mut blocks: Vec<Block>) -> Vec<Block> {
    // Sorting by (address, prefix) puts every block after any block that contains it.
    blocks.sort();
    let mut out: Vec<Block> = Vec::new();
    for b in blocks {
        if !out.last().is_some_and(|last| contains(*last, b)) {
            out.push(b);
        }
    }
    out
}

fn block_str(b: &Block) -> String {
    if b.1 == 32 {
        b.0.to_string()
    } else {
        format!("{}/{}", b.0, b.1)
    }
}

/// `x` alone, or `{ x, y }`.
fn set(items: Vec<String>) -> String {
    match items.as_slice() {
        [one] => one.clone(),
        _ => format!("{{ {} }}", items.join(", ")),
    }
}

/// Source matches: one set of plain addresses and blocks, and one match
/// per block with exceptions (`ip saddr BLOCK ip saddr != { EXCEPT }`), so
/// an excepted address fails only that match and may still pass another.
fn source_matches(sources: &[Source]) -> Vec<String> {
    let mut plain = Vec::new();
    let mut excepted = Vec::new();
    for s in sources {
        match s {
            Source::Ip(ip) => plain.push((*ip, 32)),
            Source::Cidr { net, prefix, except } => {
                let block = block_of(*net, *prefix);
                let except: Vec<Block> = except.iter().map(|(n, p)| block_of(*n, *p)).collect();
                if except.iter().any(|e| contains(*e, block)) {
                    continue;
                }
                let inside = disjoint(except.into_iter().filter(|e| contains(block, *e)).collect());
                if inside.is_empty() {
                    plain.push(block);
                } else {
                    excepted.push((block, inside));
                }
            }
        }
    }
    let mut out = Vec::new();
    let plain = disjoint(plain);
    if !plain.is_empty() {
        out.push(format!("ip saddr {}", set(plain.iter().map(block_str).collect())));
    }
    excepted.sort();
    excepted.dedup();
    for (block, except) in excepted {
        out.push(format!("ip saddr {} ip saddr != {}", block_str(&block), set(except.iter().map(block_str).collect())));
    }
    out
}

/// Port matches, one per protocol: `tcp dport { 80, 8000-8080 }`, or
/// `meta l4proto tcp` when every port is allowed.
fn port_matches(ports: &[PortMatch]) -> Vec<String> {
    let mut out = Vec::new();
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let mut ranges: Vec<(u16, u16)> = ports
            .iter()
            .filter(|p| p.protocol == proto)
            .filter_map(|p| {
                let end = p.end_port.unwrap_or(p.port);
                (end >= p.port).then_some((p.port, end))
            })
            .collect();
        if ranges.is_empty() {
            continue;
        }
        ranges.sort();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(start) <= u32::from(last.1) + 1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let name = proto.lower();
        if merged == [(0, u16::MAX)] {
            out.push(format!("meta l4proto {name}"));
        } else {
            let items = merged.iter().map(|(s, e)| if s == e { s.to_string() } else { format!("{s}-{e}") }).collect();
            out.push(format!("{name} dport {}", set(items)));
        }
    }
    out
}

/// Runs nft with `args`, feeding `stdin`, killing it at the deadline.
/// Blocking: call it from a blocking thread.
fn run_nft(args: &[&str], stdin: Option<&str>) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| if e.kind() == std::io::ErrorKind::NotFound { NftError::NotInstalled } else { NftError::Spawn(e.to_string()) })?;
    // The script goes in and stderr comes out on threads of their own, so
    // an nft that stops reading cannot hold us past the deadline.
    if let (Some(script), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let script = script.to_owned();
        // Dropping the pipe when done is nft's end of input.
        thread::spawn(move || {
            let _ = pipe.write_all(script.as_bytes());
        });
    }
    let stderr = child.stderr.take().map(|mut pipe| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).trim().to_string()
        })
    });
    let deadline = Instant::now() + Duration::from_secs(NFT_DEADLINE_SECS);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(NFT_POLL_MS)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NftError::Timeout { secs: NFT_DEADLINE_SECS });
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NftError::Spawn(e.to_string()));
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    if stderr.contains("Operation not permitted") {
        return Err(NftError::PermissionDenied { stderr });
    }
    Err(NftError::Rejected { code: status.code().unwrap_or(-1), stderr })
}

/// Loads a rendered script (`nft -f -`); all of it or, on error, none.
/// Blocks for up to [`NFT_DEADLINE_SECS`].
pub fn apply(script: &str) -> Result<(), NftError> {
    run_nft(&["-f", "-"], Some(script))
}

/// Has the kernel validate a script without changing anything (`nft -c`).
/// Needs the same privileges as [`apply`].
pub fn check(script: &str) -> Result<(), NftError> {
    run_nft(&["-c", "-f", "-"], Some(script))
}

/// Deletes table `ip flotilla` if it exists.
pub fn remove() -> Result<(), NftError> {
    remove_table(TABLE)
}

/// Deletes table `ip TABLE` if it exists.
pub fn remove_table(table: &str) -> Result<(), NftError> {
    apply(&format!("table ip {table} {{}}\ndelete table ip {table}\n"))
}

/// Whether this process can program nftables: root, and a working nft.
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root && run_nft(&["list", "tables"], None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::service_table::{Backend, ServiceEntry};

    fn table(entries: Vec<ServiceEntry>) -> ServiceTable {
        ServiceTable { services: entries.into_iter().map(|e| ((e.namespace.clone(), e.name.clone()), e)).collect() }
    }

    fn backend(ip: [u8; 4], port: u16) -> Backend {
        Backend { ip: Ipv4Addr::from(ip), port, pod: None }
    }

    fn port(name: &str, protocol: Protocol, port: u16, node_port: Option<u16>, backends: Vec<Backend>) -> ServicePortEntry {
        ServicePortEntry { name: name.into(), protocol, port, node_port, backends }
    }

    fn service(ns: &str, name: &str, vip: [u8; 4], ports: Vec<ServicePortEntry>) -> ServiceEntry {
        ServiceEntry { namespace: ns.into(), name: name.into(), cluster_ip: Some(Ipv4Addr::from(vip)), external_name: None, ports }
    }

    fn web() -> ServiceTable {
        let backends = vec![backend([10, 244, 0, 2], 8080), backend([10, 244, 0, 3], 8080)];
        table(vec![service("default", "web", [10, 96, 0, 10], vec![port("http", Protocol::Tcp, 80, Some(30080), backends)])])
    }

    fn without_backends() -> ServiceTable {
        table(vec![service(
            "default",
            "db",
            [10, 96, 0, 11],
            vec![port("", Protocol::Tcp, 5432, Some(30432), vec![]), port("dns", Protocol::Udp, 53, None, vec![])],
        )])
    }

    fn isolated() -> Vec<IsolatedPod> {
        let tcp = |port, end_port| PortMatch { protocol: Protocol::Tcp, port, end_port };
        let allow = vec![
            AllowRule {
                sources: Some(vec![
                    Source::Ip(Ipv4Addr::new(10, 244, 0, 2)),
                    Source::Cidr {
                        net: Ipv4Addr::new(10, 0, 0, 0),
                        prefix: 8,
                        except: vec![(Ipv4Addr::new(10, 1, 0, 0), 16), (Ipv4Addr::new(10, 2, 3, 4), 32)],
                    },
                    Source::Cidr { net: Ipv4Addr::new(192, 168, 0, 0), prefix: 16, except: vec![] },
                ]),
                ports: Some(vec![tcp(5432, None), tcp(8000, Some(8080))]),
            },
            AllowRule { sources: None, ports: Some(vec![PortMatch { protocol: Protocol::Udp, port: 53, end_port: None }]) },
            AllowRule { sources: Some(vec![Source::Ip(Ipv4Addr::new(10, 244, 1, 9))]), ports: None },
        ];
        vec![
            IsolatedPod { ip: Ipv4Addr::new(10, 244, 0, 5), pod: "a/db".into(), allow },
            IsolatedPod { ip: Ipv4Addr::new(10, 244, 0, 6), pod: "a/locked".into(), allow: vec![] },
        ]
    }

    const HEAD: &str = "\
table ip flotilla {}
delete table ip flotilla
table ip flotilla {
    chain nat_prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump services
    }
    chain nat_output {
        type nat hook output priority -100; policy accept;
        jump services
    }
    chain nat_postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        meta mark & 0x4000 == 0x4000 masquerade
    }
";

    #[test]
    fn empty_table_is_still_a_whole_script() {
        let services = ServiceTable::default();
        let got = render(&NodeRules { services: &services, isolated: &[], node_ports: true });
        assert_eq!(got, format!("{HEAD}    chain services {{\n    }}\n}}\n"));
    }

    #[test]
    fn service_with_two_backends_and_a_node_port() {
        let services = web();
        let got = render(&NodeRules { services: &services, isolated: &[], node_ports: true });
        let want = HEAD.to_string()
            + "    chain services {
        ip daddr 10.96.0.10 tcp dport 80 jump svc_default_web_http_tcp
        fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 30080 meta mark set meta mark | 0x4000 jump svc_default_web_http_tcp
    }
    chain svc_default_web_http_tcp {
        numgen random mod 2 vmap { 0 : goto ep_default_web_http_tcp_0, 1 : goto ep_default_web_http_tcp_1 }
    }
    chain ep_default_web_http_tcp_0 {
        ip saddr 10.244.0.2 meta mark set meta mark | 0x4000
        meta l4proto tcp dnat to 10.244.0.2:8080
    }
    chain ep_default_web_http_tcp_1 {
        ip saddr 10.244.0.3 meta mark set meta mark | 0x4000
        meta l4proto tcp dnat to 10.244.0.3:8080
    }
}
";
        assert_eq!(got, want);
        let no_node_ports = render(&NodeRules { services: &services, isolated: &[], node_ports: false });
        assert!(!no_node_ports.contains("30080"), "{no_node_ports}");
    }

    #[test]
    fn services_without_backends_are_refused() {
        let services = without_backends();
        let got = render(&NodeRules { services: &services, isolated: &[], node_ports: true });
        let want = HEAD.to_string()
            + "    chain services {
    }
    chain filter_input {
        type filter hook input priority filter - 5; policy accept;
        ct state new jump refuse_nodeports
    }
    chain filter_output {
        type filter hook output priority filter - 5; policy accept;
        ct state new jump refuse
    }
    chain filter_forward {
        type filter hook forward priority filter - 5; policy accept;
        ct state new jump refuse
    }
    chain refuse {
        ip daddr 10.96.0.11 tcp dport 5432 reject with tcp reset
        ip daddr 10.96.0.11 udp dport 53 reject with icmp type port-unreachable
    }
    chain refuse_nodeports {
        fib daddr type local tcp dport 30432 reject with tcp reset
    }
}
";
        assert_eq!(got, want);
    }

    #[test]
    fn isolated_pods_accept_only_what_their_rules_allow() {
        let services = ServiceTable::default();
        let pods = isolated();
        let got = render(&NodeRules { services: &services, isolated: &pods, node_ports: false });
        let want = HEAD.to_string()
            + "    chain services {
    }
    chain filter_forward {
        type filter hook forward priority filter - 5; policy accept;
        ct state established,related accept
        ip daddr 10.244.0.5 jump ing_10_244_0_5
        ip daddr 10.244.0.6 jump ing_10_244_0_6
    }
    chain ing_10_244_0_5 {
        ip saddr { 10.244.0.2, 192.168.0.0/16 } tcp dport { 5432, 8000-8080 } accept
        ip saddr 10.0.0.0/8 ip saddr != { 10.1.0.0/16, 10.2.3.4 } tcp dport { 5432, 8000-8080 } accept
        udp dport 53 accept
        ip saddr 10.244.1.9 accept
        drop
    }
    chain ing_10_244_0_6 {
        drop
    }
}
";
        assert_eq!(got, want);
    }

    #[test]
    fn sets_are_merged_and_exceptions_clipped() {
        let tcp = |port, end_port| PortMatch { protocol: Protocol::Tcp, port, end_port };
        let ports = [tcp(80, None), tcp(70, Some(90)), tcp(91, None), tcp(443, None)];
        assert_eq!(port_matches(&ports), vec!["tcp dport { 70-91, 443 }"]);
        let all_udp = [PortMatch { protocol: Protocol::Udp, port: 0, end_port: Some(65535) }, tcp(22, None)];
        assert_eq!(port_matches(&all_udp), vec!["tcp dport 22", "meta l4proto udp"]);
        let sources = [
            Source::Ip(Ipv4Addr::new(10, 0, 0, 1)),
            Source::Cidr { net: Ipv4Addr::new(10, 0, 0, 0), prefix: 8, except: vec![] },
            // The except covers the block: it admits nothing.
            Source::Cidr { net: Ipv4Addr::new(172, 16, 0, 0), prefix: 16, except: vec![(Ipv4Addr::new(172, 16, 0, 0), 12)] },
            // Exceptions outside the block do not matter.
            Source::Cidr { net: Ipv4Addr::new(192, 168, 0, 0), prefix: 16, except: vec![(Ipv4Addr::new(10, 0, 0, 0), 8)] },
        ];
        assert_eq!(source_matches(&sources), vec!["ip saddr { 10.0.0.0/8, 192.168.0.0/16 }"]);
    }

    #[test]
    fn chain_names_are_readable_identifiers() {
        let p = |name: &str| port(name, Protocol::Udp, 53, None, vec![]);
        assert_eq!(chain_stem("kube-system", "kube-dns", &p("dns")), "kube-system_kube-dns_dns_udp");
        assert_eq!(chain_stem("a", "b", &p("")), "a_b_53_udp");
        let odd = chain_stem("a_b", "c", &p(""));
        assert!(odd.starts_with("axb_c_53_") && odd.ends_with("_udp") && odd != chain_stem("axb", "c", &p("")), "{odd}");
        let long = chain_stem(&"n".repeat(250), "c", &p(""));
        assert!(long.len() <= STEM_MAX_CHARS + 4, "{long}");
        assert!(long.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "{long}");
    }

    /// Has the real nft load each rendered script into a scratch table and
    /// removes it again; the `flotilla` table is never touched.
    #[test]
    fn nft_accepts_the_rendered_scripts() {
        if !available() {
            eprintln!("skipping nft_accepts_the_rendered_scripts: nft needs root and the nft command");
            return;
        }
        let name = format!("flotilla_test_{}", std::process::id());
        let (with_backends, refused, none, pods) = (web(), without_backends(), ServiceTable::default(), isolated());
        let scripts = [
            render_table(&NodeRules { services: &none, isolated: &[], node_ports: true }, &name),
            render_table(&NodeRules { services: &with_backends, isolated: &[], node_ports: true }, &name),
            render_table(&NodeRules { services: &refused, isolated: &[], node_ports: true }, &name),
            render_table(&NodeRules { services: &none, isolated: &pods, node_ports: false }, &name),
        ];
        let results: Vec<_> = scripts.iter().map(|s| (check(s), apply(s))).collect();
        let removed = remove_table(&name);
        for (script, (checked, applied)) in scripts.iter().zip(results) {
            assert_eq!(checked, Ok(()), "{script}");
            assert_eq!(applied, Ok(()), "{script}");
        }
        assert_eq!(removed, Ok(()));
    }
}
