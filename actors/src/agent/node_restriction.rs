//! Which node an agent is, and what that node may do (Kubernetes'
//! NodeRestriction). An agent-token holder may only claim a node name no
//! other agent holds ([`NodeCredentials::claim`]); every later request
//! carries the node's credential ([`NodeCredentials::verify`]) and may
//! only touch that node, the pods bound to it and what networking needs
//! ([`may`]; pod writes are checked against the binding in the write).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flotilla_raft::{Compare, CompareOp, CompareTarget, Consistency, Member, Outcome, TxnOp};
use serde_json::{json, Value};

use super::agent_error::AgentError;
use super::agent_protocol::AgentRequest;
use super::node_credential::{digest, digests_match};
use crate::limits::{NODE_CREDENTIALS_CACHED_MAX, NODE_CREDENTIAL_CACHE_TTL};
use crate::model::admission::is_dns1123_subdomain;
use crate::model::kinds::node::credential_key;
use crate::model::kinds::NODES;

/// Whether node `node` may send `request` by the names it carries. Pod
/// writes name no node; they are checked against the pod's binding.
pub fn may(node: &str, request: &AgentRequest) -> Result<(), String> {
    let named = match request {
        AgentRequest::RegisterNode(object) => object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""),
        AgentRequest::UpdateNodeStatus { name, .. } | AgentRequest::Heartbeat { name, .. } => name,
        AgentRequest::ListPods { node } | AgentRequest::WatchPods { node, .. } => node,
        AgentRequest::UpdatePodStatus { .. }
        | AgentRequest::FinalizePod { .. }
        | AgentRequest::PodInputs { .. }
        | AgentRequest::RecordEvent { .. }
        | AgentRequest::ListObjects { .. }
        | AgentRequest::WatchObjects { .. }
        | AgentRequest::Certificate { .. } => return Ok(()),
    };
    if named == node {
        Ok(())
    } else {
        Err(format!("node {node:?} may not act for node {named:?}: an agent reaches only its own node and the pods bound to it"))
    }
}

/// Checks and hands out node credentials against the store, caching what
/// it read for a short while so heartbeats cost no store read each.
#[derive(Clone)]
pub struct NodeCredentials {
    member: Arc<Member>,
    cache: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

fn unavailable(e: impl std::fmt::Display) -> AgentError {
    AgentError::Unavailable(format!("node credentials: {e}"))
}

impl NodeCredentials {
    pub fn new(member: Arc<Member>) -> Self {
        NodeCredentials { member, cache: Arc::default() }
    }

    /// Gives node `node` to the agent that chose `secret`: granted when no
    /// agent holds the name and no Node of that name exists that no agent
    /// holds (one an API client wrote or a server process serves), and
    /// granted again to the holder (a retry or a restart). Anyone else is
    /// refused.
    pub async fn claim(&self, node: &str, secret: &str) -> Result<(), AgentError> {
        if !is_dns1123_subdomain(node) {
            return Err(AgentError::Refused(format!(
                "node name {node:?} must be a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253 characters"
            )));
        }
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AgentError::Refused("a node credential is 64 hex digits".into()));
        }
        let presented = digest(secret);
        let held = self.stored_digest(node, Consistency::Linearizable).await?;
        if held.is_none() {
            let key = credential_key(node);
            let record = json!({"sha256": presented, "claimedAt": chrono::Utc::now().to_rfc3339()}).to_string();
            let absent = |key: Vec<u8>| Compare { key, op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) };
            let result = self
                .member
                .txn(
                    vec![absent(key.clone()), absent(NODES.key(None, node).into_bytes())],
                    vec![TxnOp::Put { key, value: record.into_bytes() }],
                    vec![],
                )
                .await
                .map_err(unavailable)?;
            if matches!(result.outcome, Outcome::Txn { succeeded: true, .. }) {
                tracing::info!(node, "node claimed by a new agent");
                return Ok(());
            }
        }
        // Held already, or taken while this claim was being made.
        let held = match held {
            Some(h) => Some(h),
            None => self.stored_digest(node, Consistency::Linearizable).await?,
        };
        match held {
            Some(h) if digests_match(&h, &presented) => Ok(()),
            Some(_) => {
                tracing::warn!(node, "refused a second agent claiming a node another agent holds");
                Err(AgentError::Refused(format!(
                    "node {node:?} is held by another agent; an agent that restarts keeps its credential in its --state-dir. \
                     If that agent is gone for good, remove the node (kubectl delete node {node}) and start this one again"
                )))
            }
            None => Err(AgentError::Refused(format!(
                "a Node named {node:?} exists that no agent holds (written through the API or served by a server process); \
                 choose another --name, or delete that Node first"
            ))),
        }
    }

    async fn stored_digest(&self, node: &str, consistency: Consistency) -> Result<Option<String>, AgentError> {
        let (kv, _) = self.member.get(&credential_key(node), consistency).await.map_err(unavailable)?;
        let Some(kv) = kv else { return Ok(None) };
        let record: Value = serde_json::from_slice(&kv.value).map_err(|e| unavailable(format!("the record of node {node:?}: {e}")))?;
        Ok(record.get("sha256").and_then(Value::as_str).map(String::from))
    }

    /// Ok when `secret` is node `node`'s credential; with `cached`, a check
    /// made within the cache's lifetime is taken as still true.
    pub async fn verify(&self, node: &str, secret: &str, cached: bool) -> Result<(), AgentError> {
        let presented = digest(secret);
        let now = Instant::now();
        if cached {
            if let Some((held, at)) = self.lock().get(node) {
                if now.duration_since(*at) < NODE_CREDENTIAL_CACHE_TTL && digests_match(held, &presented) {
                    return Ok(());
                }
            }
        }
        // This member may not have applied a claim made a moment ago
        // through another; a miss is confirmed with the leader.
        let mut held = self.stored_digest(node, Consistency::Serializable).await?;
        if !held.as_deref().is_some_and(|h| digests_match(h, &presented)) {
            held = self.stored_digest(node, Consistency::Linearizable).await?;
        }
        match held {
            Some(h) if digests_match(&h, &presented) => {
                let mut cache = self.lock();
                if cache.len() >= NODE_CREDENTIALS_CACHED_MAX {
                    cache.clear();
                }
                cache.insert(node.to_string(), (h, now));
                Ok(())
            }
            Some(_) => Err(AgentError::Refused(format!(
                "wrong credential for node {node:?}: another agent holds it, or this agent's --state-dir is not the one it claimed with"
            ))),
            None => Err(AgentError::Refused(format!(
                "node {node:?} was removed from the cluster and its credential revoked; \
                 delete node-credential in the agent's --state-dir to join again as a new node"
            ))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(name: &str) -> AgentRequest {
        AgentRequest::Heartbeat { name: name.into(), cpu_millis: 0, memory_bytes: 0, pods: 0, relayed: false, probe_only: false }
    }

    #[test]
    fn a_node_acts_only_for_itself() {
        let own = [
            AgentRequest::RegisterNode(json!({"metadata": {"name": "a"}})),
            AgentRequest::UpdateNodeStatus { name: "a".into(), status: json!({}) },
            beat("a"),
            AgentRequest::ListPods { node: "a".into() },
            AgentRequest::WatchPods { node: "a".into(), after: 0 },
            AgentRequest::ListObjects { plural: "services".into() },
            AgentRequest::Certificate { addresses: vec![] },
        ];
        for r in &own {
            assert_eq!(may("a", r), Ok(()), "{r:?}");
        }
        let other = [
            AgentRequest::RegisterNode(json!({"metadata": {"name": "b"}})),
            AgentRequest::RegisterNode(json!({"metadata": {}})),
            AgentRequest::UpdateNodeStatus { name: "b".into(), status: json!({}) },
            beat("b"),
            AgentRequest::ListPods { node: "b".into() },
            AgentRequest::WatchPods { node: "".into(), after: 0 },
        ];
        for r in &other {
            let e = may("a", r).expect_err("refused");
            assert!(e.starts_with("node \"a\" may not act for node"), "{e}");
        }
    }
}
