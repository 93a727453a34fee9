//! The bounds of the control plane's queues, mailboxes and retries, in one
//! place with units in their names (the store's own are in
//! `flotilla_raft::Limits`).
//!
//! ractor's mailboxes have no bound of their own, so every actor whose
//! input comes from outside is fed by something that is: a watch reaches
//! an agent's mailbox through credits ([`POD_BATCHES_QUEUED_MAX`]), ticks
//! re-arm themselves with `send_after` once handled (a slow actor gets one
//! pending tick, not a backlog), heartbeats land in a shared map rather
//! than a mailbox, and the leader's controllers are woken by a
//! `watch::Receiver` that holds one value however often it changes.

use std::time::Duration;

/// Events queued from a pod or network watch to one agent before the
/// watch pauses (a local watch) or the subscriber is cut off and relists
/// (the shared pod fan-out).
pub const POD_EVENT_QUEUE_MAX: usize = 1024;

/// Batches from the pod watcher queued in a node agent's mailbox at most;
/// the watcher waits for the agent beyond that.
pub const POD_BATCHES_QUEUED_MAX: usize = 4;

/// Recent pod events the shared fan-out keeps, to replay to an agent that
/// subscribes from a revision just behind it.
pub const POD_FANOUT_RING_EVENTS_MAX: usize = 16_384;

/// Events a channel-fed watch stream hands on in one batch at most.
pub const WATCH_BATCH_EVENTS_MAX: usize = 256;

/// Heartbeats a follower holds for relay to the leader. One entry per node
/// (a newer beat replaces an older one), so this is also the most nodes a
/// follower relays for; beyond it a beat is dropped, and the next one,
/// a beat interval later, tries again.
pub const HEARTBEAT_RELAY_NODES_MAX: usize = 16_384;

/// How long a server trusts a node credential it checked against the
/// store: also how long a removed node's agent may still be served.
pub const NODE_CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(2);
/// Node credentials a server keeps checked at once (then it forgets them all).
pub const NODE_CREDENTIALS_CACHED_MAX: usize = 16_384;
/// Addresses an agent may ask to have in its node certificate.
pub const NODE_CERT_ADDRESSES_MAX: usize = 8;

/// Heartbeat relays from one follower to the leader in flight at once.
pub const HEARTBEAT_RELAYS_IN_FLIGHT_MAX: usize = 64;

/// How long a follower waits for the leader to take one relayed heartbeat.
pub const HEARTBEAT_RELAY_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Tries of a read-modify-write that keeps losing to concurrent writers.
pub const UPDATE_RETRIES_MAX: usize = 8;
/// Times a Secret's write is sealed again because a rotation retired its
/// data key while it was in flight (one rotation at a time needs one).
pub const KEYRING_RESEALS_MAX: usize = 3;

/// Tries of a Service write that lost the address-allocation race.
pub const ALLOCATION_RETRIES_MAX: usize = 8;

/// What one object may ask of the cluster. Kubernetes bounds these only by
/// the object's size; flotilla bounds them so that no single request makes
/// the control plane create, bind or wait without end.
///
/// Replicas of one Deployment or ReplicaSet.
pub const REPLICAS_MAX: i64 = 100_000;

/// Containers and init containers of one pod, together.
pub const CONTAINERS_PER_POD_MAX: usize = 64;

/// Connections a node's API relay carries for its pods at once.
pub const API_RELAY_CONNECTIONS_MAX: usize = 512;
/// How long the relay waits for one API server to accept before it tries
/// the next.
pub const API_RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Volumes of one pod.
pub const VOLUMES_PER_POD_MAX: usize = 256;

/// The longest grace period a pod or a delete may ask for (one year): the
/// deadline it gives must stay a time the clock can represent.
pub const GRACE_PERIOD_SECONDS_MAX: i64 = 366 * 24 * 3600;

/// A ServiceAccount token's lifetime when the request names none (one hour,
/// as Kubernetes').
pub const SERVICE_ACCOUNT_TOKEN_TTL_DEFAULT_SECONDS: i64 = 3600;
/// The shortest lifetime a token may be asked for (Kubernetes': 10 minutes).
pub const SERVICE_ACCOUNT_TOKEN_TTL_MIN_SECONDS: i64 = 600;
/// The longest (Kubernetes' --service-account-max-token-expiration is
/// unset by default; flotilla bounds it at 48 hours).
pub const SERVICE_ACCOUNT_TOKEN_TTL_MAX_SECONDS: i64 = 48 * 3600;
/// The Secrets and ConfigMaps one pod may name, together, in bytes of
/// JSON: what its node is sent before the pod starts (the peer port's
/// replies are bounded at 64 MiB).
pub const POD_INPUTS_MAX_BYTES: usize = 16 * 1024 * 1024;
/// The size of the tmpfs under each secret, projected and ServiceAccount
/// volume: twice what a pod may be sent, so the old generation and the new
/// fit side by side while the `..data` link swaps.
pub const SECRET_VOLUME_TMPFS_BYTES: u64 = 2 * POD_INPUTS_MAX_BYTES as u64;
/// An `emptyDir: {medium: Memory}` without a `sizeLimit` is at most this
/// (Docker's default for /dev/shm).
pub const MEMORY_EMPTY_DIR_DEFAULT_BYTES: u64 = 64 * 1024 * 1024;
/// How often a running pod's volumes are brought up to date with the
/// Secrets and ConfigMaps they show (the kubelet's sync is about a minute).
pub const POD_VOLUME_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);
/// The first and the longest wait before a pod that could not be prepared
/// (a Secret it names is missing, the servers are away) is tried again.
pub const POD_INPUTS_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
pub const POD_INPUTS_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// Audiences one token may name.
pub const SERVICE_ACCOUNT_TOKEN_AUDIENCES_MAX: usize = 16;
