//! openraft's network over the peer [`Transport`]: one QUIC stream per RPC,
//! with the deadline openraft asks for, and the test fault table applied on
//! the sending side.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};

use crate::error::StoreError;
use crate::transport::{Fault, Faults, Transport};
use crate::types::{Member, NodeId, TypeConfig};
use crate::wire::{Reply, Request};

/// Makes one [`PeerLink`] per target member.
pub struct Network {
    pub from: NodeId,
    pub transport: Arc<Transport>,
    pub faults: Faults,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        PeerLink { from: self.from, target, addr: node.addr.clone(), transport: self.transport.clone(), faults: self.faults.clone() }
    }
}

/// The link from this member to one peer.
pub struct PeerLink {
    from: NodeId,
    target: NodeId,
    addr: String,
    transport: Arc<Transport>,
    faults: Faults,
}

impl PeerLink {
    async fn send<E: std::error::Error>(&self, request: Request, option: &RPCOption) -> Result<Reply, RPCError<NodeId, Member, E>> {
        match self.faults.get(self.from, self.target) {
            Some(Fault::Drop) => {
                let e = StoreError::Unreachable { addr: self.addr.clone(), reason: "dropped by fault injection".into() };
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            None => {}
        }
        let timeout = option.hard_ttl().min(self.transport.limits().raft_rpc_timeout()).max(Duration::from_millis(10));
        match self.transport.call(&self.addr, &request, timeout).await {
            Ok(reply) => Ok(reply),
            Err(e @ (StoreError::Unreachable { .. } | StoreError::Timeout { .. })) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

fn unexpected<E: std::error::Error>(reply: Reply) -> RPCError<NodeId, Member, E> {
    let e = StoreError::Protocol(format!("unexpected reply {reply:?}"));
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.send(Request::AppendEntries(rpc), &option).await? {
            Reply::AppendEntries(Ok(r)) => Ok(r),
            Reply::AppendEntries(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>> {
        match self.send(Request::InstallSnapshot(rpc), &option).await? {
            Reply::InstallSnapshot(Ok(r)) => Ok(r),
            Reply::InstallSnapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.send(Request::Vote(rpc), &option).await? {
            Reply::Vote(Ok(r)) => Ok(r),
            Reply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(other)),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A dead peer is retried often enough that a restarted member is
        // back in the group within a fraction of a second.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
