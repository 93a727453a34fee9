//! The cluster's address plan as plain functions: CIDRs, the service
//! virtual IPs and node ports a Service is given at creation (never two
//! alike, kept for the Service's life), and the pod subnet each node is
//! given. The registry allocates from it in the transaction of a write
//! (the Service and Node strategies' `Allocation`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::{json, Value};

/// The node port range Kubernetes uses.
pub const NODE_PORT_MIN: u16 = 30000;
pub const NODE_PORT_MAX: u16 = 32767;

/// An IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub net: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `10.96.0.0/12`; host bits must be zero.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, bits) = s.split_once('/').ok_or_else(|| format!("{s:?} must be an IPv4 CIDR such as 10.96.0.0/12"))?;
        let net: Ipv4Addr = ip.parse().map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address"))?;
        let prefix: u8 = bits.parse().ok().filter(|b| *b <= 32).ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 32"))?;
        let c = Cidr { net, prefix };
        if u32::from(net) & !c.mask() != 0 {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}?",
                Cidr { net: Ipv4Addr::from(u32::from(net) & c.mask()), prefix }
            ));
        }
        Ok(c)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// Addresses in the network, the network and broadcast addresses included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.net)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.net) || other.contains(self.net)
    }

    /// The `n`th address of the network.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.net).wrapping_add(n as u32)))
    }

    /// The `index`th subnet of length `prefix` inside this network.
    pub fn subnet(&self, prefix: u8, index: u64) -> Option<Cidr> {
        if prefix < self.prefix || prefix > 32 || index >= 1u64 << (prefix - self.prefix) {
            return None;
        }
        let step = 1u64 << (32 - prefix);
        Some(Cidr { net: Ipv4Addr::from(u32::from(self.net).wrapping_add((index * step) as u32)), prefix })
    }

    /// The gateway of a pod subnet: its first usable address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1).unwrap_or(self.net)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The cluster's address plan; servers take it from their flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkPlan {
    /// Where ClusterIPs come from.
    pub service_cidr: Cidr,
    /// Where node pod subnets come from.
    pub cluster_cidr: Cidr,
    /// The length of each node's pod subnet.
    pub node_prefix: u8,
}

impl Default for NetworkPlan {
    fn default() -> Self {
        NetworkPlan {
            service_cidr: Cidr { net: Ipv4Addr::new(10, 96, 0, 0), prefix: 12 },
            // 8,192 nodes of /24 each; apart from the service range.
            cluster_cidr: Cidr { net: Ipv4Addr::new(10, 224, 0, 0), prefix: 11 },
            node_prefix: 24,
        }
    }
}

impl NetworkPlan {
    pub fn new(service_cidr: &str, cluster_cidr: &str, node_prefix: u8) -> Result<NetworkPlan, String> {
        let plan = NetworkPlan {
            service_cidr: Cidr::parse(service_cidr).map_err(|e| format!("--service-cidr: {e}"))?,
            cluster_cidr: Cidr::parse(cluster_cidr).map_err(|e| format!("--cluster-cidr: {e}"))?,
            node_prefix,
        };
        if plan.service_cidr.overlaps(&plan.cluster_cidr) {
            return Err(format!("--service-cidr {} overlaps --cluster-cidr {}; choose ranges apart", plan.service_cidr, plan.cluster_cidr));
        }
        if plan.service_cidr.prefix > 30 {
            return Err(format!("--service-cidr {} is too small; use /30 or larger", plan.service_cidr));
        }
        if node_prefix < plan.cluster_cidr.prefix || node_prefix > 28 {
            return Err(format!("--node-cidr-mask {node_prefix} must be between the cluster CIDR's /{} and /28", plan.cluster_cidr.prefix));
        }
        Ok(plan)
    }
}

/// What other Services hold: address or port → `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub ips: BTreeMap<Ipv4Addr, String>,
    pub node_ports: BTreeMap<u16, String>,
}

impl Taken {
    /// What `services` hold, except the Service `skip` (`namespace/name`).
    pub fn of<'a>(services: impl IntoIterator<Item = &'a Value>, skip: &str) -> Taken {
        let mut t = Taken::default();
        for s in services {
            let owner = format!(
                "{}/{}",
                s.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(""),
                s.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
            );
            if owner == skip {
                continue;
            }
            if let Some(ip) = s.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|i| i.parse().ok()) {
                t.ips.insert(ip, owner.clone());
            }
            for p in s.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
                if let Some(np) = p.get("nodePort").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok()) {
                    t.node_ports.insert(np, owner.clone());
                }
            }
        }
        t
    }
}

/// Why a Service cannot have the addresses it asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// 409: another Service holds it.
    #[error(
        "spec.ports[{index}].nodePort: {port} is already allocated to service {owner}; choose another or leave it out to get a free one"
    )]
    NodePortTaken { index: usize, port: u16, owner: String },
    /// 409: another Service holds it.
    #[error("spec.clusterIP: {ip} is already allocated to service {owner}; choose another or leave it out to get a free one")]
    ClusterIpTaken { ip: Ipv4Addr, owner: String },
    /// 422.
    #[error("spec.clusterIP: {ip} is not in the service range {range}; leave it out to get one")]
    OutOfRange { ip: String, range: Cidr },
    /// 422.
    #[error("spec.clusterIP: {field} is immutable once set (it was {old})")]
    Immutable { field: String, old: String },
    /// 503: the range is full.
    #[error("no free {what} left in {range}; delete unused services or widen the range")]
    Exhausted { what: &'static str, range: String },
}

/// A stable starting point for a search, so a Service recreated under the
/// same name tends to get the same address back.
fn seed(owner: &str) -> u64 {
    owner.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn free_ip(range: Cidr, taken: &BTreeMap<Ipv4Addr, String>, owner: &str) -> Option<Ipv4Addr> {
    // The network address and, as Kubernetes does, the first address (the
    // API's own service) and the broadcast address are never handed out.
    let usable = range.size().saturating_sub(3);
    let start = seed(owner) % usable.max(1);
    (0..usable).map(|i| range.nth(2 + (start + i) % usable)).find_map(|ip| ip.filter(|ip| !taken.contains_key(ip)))
}

fn free_port(taken: &BTreeMap<u16, String>, also: &BTreeSet<u16>, owner: &str) -> Option<u16> {
    let span = (NODE_PORT_MAX - NODE_PORT_MIN + 1) as u64;
    let start = seed(owner) % span;
    (0..span).map(|i| NODE_PORT_MIN + ((start + i) % span) as u16).find(|p| !taken.contains_key(p) && !also.contains(p))
}

/// On an update that changes a Service's type, drops what the new type
/// does not carry, as Kubernetes does: node ports when it becomes
/// ClusterIP, the virtual IP and node ports when it becomes ExternalName.
pub fn fit_to_type(old: &Value, svc: &mut Value) {
    let type_of = |v: &Value| v.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
    let (was, now) = (type_of(old), type_of(svc));
    if was == now {
        return;
    }
    if now == "ExternalName" {
        if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
    }
    if matches!(now.as_str(), "ClusterIP" | "ExternalName") {
        for p in svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(p) = p.as_object_mut() {
                p.remove("nodePort");
            }
        }
    }
}

/// Fills in a Service's ClusterIP and node ports, keeping what `old` had
/// (an update) and refusing what another Service holds.
pub fn assign_service(svc: &mut Value, old: Option<&Value>, taken: &Taken, plan: &NetworkPlan, owner: &str) -> Result<(), AllocError> {
    let svc_type = svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
    if svc_type == "ExternalName" {
        return Ok(());
    }
    // An address kept from before must still be one this plan hands out
    // (never one an ExternalName Service carried in).
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .filter(|s| *s == "None" || s.parse::<Ipv4Addr>().is_ok_and(|ip| plan.service_cidr.contains(ip)));
    let asked = svc.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
    let ip = match (old_ip, asked) {
        (Some(old), Some(new)) if old != new => return Err(AllocError::Immutable { field: "spec.clusterIP".into(), old: old.into() }),
        (Some(old), _) => old.to_string(),
        (None, Some(none)) if none == "None" => none,
        (None, Some(asked)) => {
            let ip: Ipv4Addr = asked.parse().map_err(|_| AllocError::OutOfRange { ip: asked.clone(), range: plan.service_cidr })?;
            if !plan.service_cidr.contains(ip) {
                return Err(AllocError::OutOfRange { ip: asked, range: plan.service_cidr });
            }
            if let Some(o) = taken.ips.get(&ip) {
                return Err(AllocError::ClusterIpTaken { ip, owner: o.clone() });
            }
            asked
        }
        (None, None) => free_ip(plan.service_cidr, &taken.ips, owner)
            .ok_or(AllocError::Exhausted { what: "cluster IPs", range: plan.service_cidr.to_string() })?
            .to_string(),
    };
    svc["spec"]["clusterIP"] = json!(ip);
    svc["spec"]["clusterIPs"] = json!([ip]);
    if !matches!(svc_type.as_str(), "NodePort" | "LoadBalancer") {
        return Ok(());
    }
    let old_ports: Vec<Value> = old.and_then(|o| o.pointer("/spec/ports")).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut used = BTreeSet::new();
    let ports = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut);
    let Some(ports) = ports else { return Ok(()) };
    // Ports that name their node port first, so a free pick never takes
    // one that a later port of the same Service asks for.
    for (index, p) in ports.iter().enumerate() {
        if let Some(np) = p.get("nodePort").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok()) {
            if let Some(o) = taken.node_ports.get(&np) {
                return Err(AllocError::NodePortTaken { index, port: np, owner: o.clone() });
            }
            used.insert(np);
        }
    }
    for p in ports.iter_mut() {
        if p.get("nodePort").is_some() {
            continue;
        }
        // An update keeps the node port the same port had before.
        let kept = old_ports
            .iter()
            .find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"))
            .and_then(|o| o.get("nodePort"))
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| !used.contains(n) && !taken.node_ports.contains_key(n));
        let np = match kept {
            Some(n) => n,
            None => free_port(&taken.node_ports, &used, owner)
                .ok_or(AllocError::Exhausted { what: "node ports", range: format!("{NODE_PORT_MIN}-{NODE_PORT_MAX}") })?,
        };
        used.insert(np);
        p["nodePort"] = json!(np);
    }
    Ok(())
}

/// The node subnets of the cluster CIDR not in `held`, lowest first: one
/// walk gives out many, instead of a walk from the start for each.
pub fn free_pod_cidrs<'a>(plan: &'a NetworkPlan, held: &'a BTreeSet<Cidr>) -> impl Iterator<Item = Cidr> + 'a {
    let count = 1u64 << (plan.node_prefix - plan.cluster_cidr.prefix);
    (0..count).filter_map(|i| plan.cluster_cidr.subnet(plan.node_prefix, i)).filter(|c| !held.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, spec: Value) -> Value {
        json!({"metadata": {"namespace": "a", "name": name}, "spec": spec})
    }

    #[test]
    fn parses_and_plans_cidrs() {
        let c = Cidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(c.size(), 1 << 20);
        assert!(c.contains("10.111.255.255".parse().unwrap()));
        assert!(!c.contains("10.112.0.0".parse().unwrap()));
        assert_eq!(Cidr::parse("10.96.0.1/12").unwrap_err(), "\"10.96.0.1/12\" has host bits set; did you mean 10.96.0.0/12?");
        assert!(Cidr::parse("10.96.0.0/33").is_err());
        assert_eq!(c.subnet(24, 3).unwrap().to_string(), "10.96.3.0/24");
        assert_eq!(c.subnet(24, 4096), None);
        assert_eq!(Cidr::parse("10.224.5.0/24").unwrap().gateway(), Ipv4Addr::new(10, 224, 5, 1));
        assert!(NetworkPlan::new("10.0.0.0/8", "10.244.0.0/16", 24).unwrap_err().contains("overlaps"));
        assert!(NetworkPlan::new("10.96.0.0/12", "10.244.0.0/16", 24).is_ok());
    }

    #[test]
    fn gives_each_service_its_own_address_and_keeps_it() {
        let plan = NetworkPlan { service_cidr: Cidr::parse("10.96.0.0/29").unwrap(), ..NetworkPlan::default() };
        let mut taken = Taken::default();
        let mut seen = BTreeSet::new();
        // /29: 8 addresses, 5 usable (not .0, .1, .7).
        for i in 0..5 {
            let mut s = svc(&format!("s{i}"), json!({"ports": [{"port": 80}]}));
            assign_service(&mut s, None, &taken, &plan, &format!("a/s{i}")).unwrap();
            let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
            assert!(plan.service_cidr.contains(ip) && ip.octets()[3] >= 2 && ip.octets()[3] <= 6, "{ip}");
            assert!(seen.insert(ip));
            taken.ips.insert(ip, format!("a/s{i}"));
        }
        let mut full = svc("s5", json!({"ports": [{"port": 80}]}));
        assert!(matches!(assign_service(&mut full, None, &taken, &plan, "a/s5"), Err(AllocError::Exhausted { .. })));
        // An update keeps the address; changing it is refused.
        let old = json!({"metadata": {"namespace": "a", "name": "s0"}, "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}});
        let mut update = svc("s0", json!({"ports": [{"port": 81}]}));
        assign_service(&mut update, Some(&old), &Taken::default(), &plan, "a/s0").unwrap();
        assert_eq!(update["spec"]["clusterIP"], "10.96.0.2");
        let mut change = svc("s0", json!({"clusterIP": "10.96.0.3", "ports": [{"port": 80}]}));
        assert!(matches!(assign_service(&mut change, Some(&old), &Taken::default(), &plan, "a/s0"), Err(AllocError::Immutable { .. })));
    }

    #[test]
    fn asked_addresses_are_checked() {
        let plan = NetworkPlan::default();
        let taken = Taken { ips: [("10.96.0.10".parse().unwrap(), "b/dns".to_string())].into(), node_ports: BTreeMap::new() };
        let mut s = svc("x", json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
        assert_eq!(
            assign_service(&mut s, None, &taken, &plan, "a/x").unwrap_err().to_string(),
            "spec.clusterIP: 10.96.0.10 is already allocated to service b/dns; choose another or leave it out to get a free one"
        );
        let mut s = svc("x", json!({"clusterIP": "192.168.0.1", "ports": [{"port": 80}]}));
        assert!(matches!(assign_service(&mut s, None, &taken, &plan, "a/x"), Err(AllocError::OutOfRange { .. })));
        let mut headless = svc("h", json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assign_service(&mut headless, None, &taken, &plan, "a/h").unwrap();
        assert_eq!(headless["spec"]["clusterIP"], "None");
    }

    #[test]
    fn node_ports_are_unique_and_kept() {
        let plan = NetworkPlan::default();
        let taken = Taken { ips: BTreeMap::new(), node_ports: [(30080, "b/web".to_string())].into() };
        let mut s = svc("web", json!({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30080}]}));
        assert_eq!(
            assign_service(&mut s, None, &taken, &plan, "a/web").unwrap_err(),
            AllocError::NodePortTaken { index: 0, port: 30080, owner: "b/web".into() }
        );
        let mut s =
            svc("web", json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30081}]}));
        assign_service(&mut s, None, &taken, &plan, "a/web").unwrap();
        let first = s["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
        assert!((NODE_PORT_MIN..=NODE_PORT_MAX).contains(&first) && first != 30080 && first != 30081);
        assert_eq!(s["spec"]["ports"][1]["nodePort"], 30081);
        // Re-applying without node ports keeps them.
        let mut again = svc("web", json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}));
        assign_service(&mut again, Some(&s), &taken, &plan, "a/web").unwrap();
        assert_eq!(again["spec"]["ports"], s["spec"]["ports"]);
        assert_eq!(again["spec"]["clusterIP"], s["spec"]["clusterIP"]);
    }

    #[test]
    fn a_type_change_drops_what_the_new_type_does_not_carry() {
        let old = svc("web", json!({"type": "NodePort", "clusterIP": "10.96.0.9", "ports": [{"port": 80, "nodePort": 30080}]}));
        let mut to_cluster_ip =
            svc("web", json!({"type": "ClusterIP", "clusterIP": "10.96.0.9", "ports": [{"port": 80, "nodePort": 30080}]}));
        fit_to_type(&old, &mut to_cluster_ip);
        assert_eq!(to_cluster_ip["spec"], json!({"type": "ClusterIP", "clusterIP": "10.96.0.9", "ports": [{"port": 80}]}));
        let mut to_external =
            svc("web", json!({"type": "ExternalName", "externalName": "x.org", "clusterIP": "10.96.0.9", "ports": [{"port": 80}]}));
        fit_to_type(&old, &mut to_external);
        assert_eq!(to_external["spec"], json!({"type": "ExternalName", "externalName": "x.org", "ports": [{"port": 80}]}));
        // An address from outside the range is never kept.
        let smuggled = svc("web", json!({"type": "ExternalName", "clusterIP": "1.1.1.1", "ports": [{"port": 80}]}));
        let mut back = svc("web", json!({"type": "ClusterIP", "ports": [{"port": 80}]}));
        assign_service(&mut back, Some(&smuggled), &Taken::default(), &NetworkPlan::default(), "a/web").unwrap();
        assert!(NetworkPlan::default().service_cidr.contains(back["spec"]["clusterIP"].as_str().unwrap().parse().unwrap()));
    }

    #[test]
    fn pod_subnets_never_overlap() {
        let plan = NetworkPlan::default();
        let held = |cidrs: &[&str]| cidrs.iter().map(|c| Cidr::parse(c).unwrap()).collect::<BTreeSet<Cidr>>();
        assert_eq!(free_pod_cidrs(&plan, &held(&[])).next().unwrap().to_string(), "10.224.0.0/24");
        let gap = held(&["10.224.0.0/24", "10.224.2.0/24"]);
        assert_eq!(free_pod_cidrs(&plan, &gap).next().unwrap().to_string(), "10.224.1.0/24");
        let tiny = NetworkPlan { cluster_cidr: Cidr::parse("10.224.0.0/23").unwrap(), ..plan };
        assert_eq!(free_pod_cidrs(&tiny, &held(&["10.224.0.0/24", "10.224.1.0/24"])).next(), None);
    }
}
