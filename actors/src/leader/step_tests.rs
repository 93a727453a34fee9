//! Every reconciler's step on a cache built from objects, asserted on the
//! exact commands it returns (and, where a reconciler learns from them, on
//! what it does with the outcomes).

use std::sync::Arc;

use serde_json::{json, Value};

use super::cache::{CacheState, Kind};
use super::command::{Command, Decision, Now, Outcome};
use super::controller::{Reconciler, StepInput};
use super::settings::LeaderSettings;
use crate::clock::Mono;
use crate::model::addresses::NetworkPlan;
use crate::registry::{WatchEvent, WatchEventKind};

fn cache(objects: &[(Kind, Value)]) -> CacheState {
    let mut s = CacheState::default();
    for kind in Kind::ALL {
        let items = objects.iter().filter(|(k, _)| *k == kind).map(|(_, o)| o.clone()).collect();
        s.replace_all(kind, items, 10);
    }
    s
}

fn now() -> Now {
    Now { mono: Mono::from_secs(100), wall: "2026-12-02T00:00:00Z".into() }
}

fn step(r: &mut dyn Reconciler, s: &mut CacheState, resync: bool) -> Decision {
    let settings = LeaderSettings::default();
    let plan = NetworkPlan::default();
    r.step(StepInput { cache: s, settings: &settings, resync, now: &now(), network: &plan })
}

fn rs(name: &str, uid: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
           "metadata": {"name": name, "namespace": "ns", "uid": uid, "generation": 1, "resourceVersion": "5"},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
}

fn pod(name: &str, owner: Option<&str>, node: Option<&str>, ready: bool) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": "7",
                     "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 8080}],
                                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
        "status": {"phase": if node.is_some() { "Running" } else { "Pending" },
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
    if let Some(o) = owner {
        p["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": o, "controller": true}]);
    }
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
        p["status"]["podIP"] = json!(format!("10.1.0.{}", name.len()));
    }
    p
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": "3"}, "spec": {},
           "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"},
                      "conditions": [{"type": "Ready", "status": "True"}]}})
}

#[test]
fn the_replicaset_step_creates_the_missing_pods_in_one_batch_then_reports_status() {
    let mut s = cache(&[(Kind::ReplicaSets, rs("web", "rs-1", 3)), (Kind::Pods, pod("web-a", Some("rs-1"), Some("n1"), true))]);
    let mut r = super::replicaset_controller::ReplicaSetController;
    let d = step(&mut r, &mut s, false);
    let template = super::replicas::pod_from_template(&rs("web", "rs-1", 3));
    assert_eq!(
        d.commands,
        vec![
            Command::Create { kind: Kind::Pods, namespace: "ns".into(), objects: vec![template.clone(), template] },
            Command::WriteStatus {
                kind: Kind::ReplicaSets,
                namespace: Some("ns".into()),
                name: "web".into(),
                status: json!({"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 1}),
            },
        ]
    );
    assert!(!d.more);
    assert_eq!(step(&mut r, &mut s, false), Decision::default(), "nothing changed, so nothing to decide");
}

#[test]
fn the_scheduler_binds_what_fits_and_takes_a_failed_bind_off_its_view() {
    let mut s = cache(&[(Kind::Nodes, node("n1")), (Kind::Pods, pod("a", None, None, false)), (Kind::Pods, pod("b", None, None, false))]);
    let mut r = super::scheduler::Scheduler::default();
    let d = step(&mut r, &mut s, false);
    let pa = Arc::new(pod("a", None, None, false));
    let pb = Arc::new(pod("b", None, None, false));
    assert_eq!(d.commands, vec![Command::Bind { pods: vec![(pa, "n1".into()), (pb, "n1".into())] }]);
    // b moved before its bind: only a is on n1 now.
    r.feedback(&d.commands, &[Outcome::Bound(vec![true, false])]);
    let mut pods: Vec<Value> = (0..9).map(|i| pod(&format!("x{i}"), None, None, false)).collect();
    pods.push(pod("b", None, None, false));
    let mut s2 = cache(&[(Kind::Nodes, node("n1"))]);
    for p in &pods {
        s2.apply(Kind::Pods, &crate::registry::WatchEvent { kind: crate::registry::WatchEventKind::Added, object: p.clone() });
    }
    // The same scheduler, a cache that relisted: it recounts from the
    // cache, which shows no pod bound, so ten fit (allocatable pods 10).
    let d2 = step(&mut r, &mut s2, false);
    let Command::Bind { pods: bound } = &d2.commands[0] else { panic!("expected a bind, got {:?}", d2.commands) };
    assert_eq!(bound.len(), 10);
}

#[test]
fn a_pod_that_fits_nowhere_is_marked_once_with_the_reason() {
    let mut big = pod("big", None, None, false);
    big["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("8");
    let mut s = cache(&[(Kind::Nodes, node("n1")), (Kind::Pods, big)]);
    let mut r = super::scheduler::Scheduler::default();
    let d = step(&mut r, &mut s, false);
    let [Command::MarkUnschedulable { namespace, name, reason, at }] = d.commands.as_slice() else {
        panic!("expected one MarkUnschedulable, got {:?}", d.commands)
    };
    assert_eq!((namespace.as_str(), name.as_str(), at.as_str()), ("ns", "big", "2026-12-02T00:00:00Z"));
    assert_eq!(reason, "0/1 nodes: 1 insufficient cpu");
    assert_eq!(step(&mut r, &mut s, false).commands, vec![], "the same reason is not written twice");
}

#[test]
fn the_endpoints_step_lists_ready_pods_and_removes_endpoints_of_a_gone_service() {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "ns"},
                     "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    let stale = json!({"apiVersion": "v1", "kind": "Endpoints",
                       "metadata": {"name": "old", "namespace": "ns", "labels": {super::endpoints_controller::MANAGED_BY_LABEL: "flotilla"}},
                       "subsets": []});
    let mut s = cache(&[(Kind::Services, svc), (Kind::Endpoints, stale), (Kind::Pods, pod("web-a", None, Some("n1"), true))]);
    let d = step(&mut super::endpoints_controller::EndpointsController, &mut s, true);
    // In key order: ns/old, then ns/web.
    assert_eq!(
        d.commands,
        vec![
            Command::Delete { kind: Kind::Endpoints, namespace: Some("ns".into()), name: "old".into() },
            Command::Upsert {
                kind: Kind::Endpoints,
                object: json!({"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": "web", "namespace": "ns", "labels": {super::endpoints_controller::MANAGED_BY_LABEL: "flotilla"}},
                    "subsets": [{"ports": [{"port": 8080, "protocol": "TCP"}],
                                 "addresses": [{"ip": "10.1.0.5", "nodeName": "n1",
                                                "targetRef": {"kind": "Pod", "name": "web-a", "namespace": "ns", "uid": "uid-web-a"}}]}]}),
            },
        ]
    );
}

#[test]
fn the_garbage_collector_deletes_an_orphan_only_on_its_second_resync() {
    let mut s = cache(&[(Kind::Pods, pod("lost", Some("rs-gone"), Some("n1"), true))]);
    let mut gc = super::gc::GarbageCollector::default();
    assert_eq!(step(&mut gc, &mut s, false).commands, vec![], "only resyncs collect");
    assert_eq!(step(&mut gc, &mut s, true).commands, vec![], "first sighting: a suspect");
    assert_eq!(
        step(&mut gc, &mut s, true).commands,
        vec![Command::Delete { kind: Kind::Pods, namespace: Some("ns".into()), name: "lost".into() }]
    );
}

#[test]
fn evicting_a_node_deletes_its_pods_at_once_and_judging_it_writes_its_condition() {
    let s =
        cache(&[(Kind::Nodes, node("n1")), (Kind::Pods, pod("a", None, Some("n1"), true)), (Kind::Pods, pod("b", None, Some("n2"), true))]);
    let evict = super::node_health::NodeCommand::Evict { node: "n1".into() };
    assert_eq!(
        super::node_lifecycle::writes(&evict, &s, &now()),
        vec![Command::DeleteNow { kind: Kind::Pods, items: vec![("ns".into(), "a".into())] }]
    );
    let lost = super::node_health::NodeCommand::MarkNotReady { node: "n1".into(), message: "silent".into() };
    assert_eq!(
        super::node_lifecycle::writes(&lost, &s, &now()),
        vec![Command::SetNodeReady { node: "n1".into(), ready: false, message: "silent".into(), at: "2026-12-02T00:00:00Z".into() }]
    );
}

#[test]
fn a_pod_subnet_the_store_says_is_taken_is_not_chosen_again() {
    let mut s = cache(&[(Kind::Nodes, node("n1"))]);
    let mut r = super::node_ipam_controller::make();
    let d = step(r.as_mut(), &mut s, false);
    let [Command::AssignPodCidr { node, cidr }] = d.commands.as_slice() else { panic!("{:?}", d.commands) };
    assert_eq!(node, "n1");
    r.feedback(&d.commands, &[Outcome::Requeue(format!("pod subnet {cidr} is held by node n9"))]);
    let d2 = step(r.as_mut(), &mut s, false);
    let [Command::AssignPodCidr { cidr: second, .. }] = d2.commands.as_slice() else { panic!("{:?}", d2.commands) };
    assert_ne!(second, cidr);
}

#[test]
fn pod_subnets_go_to_the_nodes_without_one_skipping_those_held_and_nothing_is_asked_when_all_have_one() {
    let mut with = node("n1");
    with["spec"]["podCIDR"] = json!("10.224.0.0/24");
    let mut s = cache(&[(Kind::Nodes, with), (Kind::Nodes, node("n2")), (Kind::Nodes, node("n3"))]);
    let mut r = super::node_ipam_controller::make();
    let d = step(r.as_mut(), &mut s, false);
    assert_eq!(
        d.commands,
        vec![
            Command::AssignPodCidr { node: "n2".into(), cidr: "10.224.1.0/24".into() },
            Command::AssignPodCidr { node: "n3".into(), cidr: "10.224.2.0/24".into() },
        ]
    );
    assert!(!d.more);
    // The writes come back through the cache: nothing is left to do, and
    // a pass costs no walk over the nodes.
    for (name, cidr) in [("n2", "10.224.1.0/24"), ("n3", "10.224.2.0/24")] {
        let mut n = node(name);
        n["spec"]["podCIDR"] = json!(cidr);
        s.apply(Kind::Nodes, &WatchEvent { kind: WatchEventKind::Modified, object: n });
    }
    assert!(s.nodes_without_pod_cidr.is_empty());
    assert_eq!(step(r.as_mut(), &mut s, false).commands, vec![]);
    // A node deleted frees its subnet for the next.
    s.apply(Kind::Nodes, &WatchEvent { kind: WatchEventKind::Deleted, object: node("n1") });
    s.apply(Kind::Nodes, &WatchEvent { kind: WatchEventKind::Added, object: node("n4") });
    assert_eq!(step(r.as_mut(), &mut s, false).commands, vec![Command::AssignPodCidr { node: "n4".into(), cidr: "10.224.0.0/24".into() }]);
}
