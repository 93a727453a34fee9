//! The hook by which the layers above the store serve their own requests
//! on the peer port (node agents talking to the control plane), with the
//! same QUIC connections, TLS and token admission. The store carries the
//! bytes; it does not know what they mean.

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::error::StoreError;

/// Frames an application stream may have queued before it waits for the reader.
pub const APP_STREAM_QUEUE_MAX: usize = 256;

/// The frames of an application stream, each a reply body or the error that ended it.
pub type AppFrames = mpsc::Receiver<Result<Vec<u8>, StoreError>>;

/// Who sent an application request, as the peer port authenticated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppCaller {
    /// A member (its certificate), a server-token holder, or this process.
    Trusted,
    /// An agent-token or node-credential holder: it must still prove which
    /// node it is on every request.
    Agent,
}

/// A handler for application requests, registered on a [`crate::Member`].
pub trait AppHandler: Send + Sync + 'static {
    /// One request, one reply.
    fn call(&self, caller: AppCaller, request: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, StoreError>>;
    /// One request, a stream of replies (ends when the sender is dropped).
    fn stream(&self, caller: AppCaller, request: Vec<u8>) -> BoxFuture<'static, Result<AppFrames, StoreError>>;
    /// Whether `secret` is node `node`'s credential, for a `HelloNode`: the
    /// application keeps the credentials. Such a connection is then an
    /// agent's, its requests still proven node by node.
    fn authenticate_node(&self, node: String, secret: String) -> BoxFuture<'static, bool>;
}
