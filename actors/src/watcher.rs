//! The one list-and-watch loop. A [`Watcher`] lists a kind, watches from
//! the list's revision, resumes a broken watch from the last revision it
//! saw, lists again only when that history is gone (compacted), and waits
//! between failed tries by one capped back-off. Everything that follows a
//! kind (the leader's cache, the node agent, the proxy, chaos orders, the
//! pod fan-out) takes its events from one, through a [`WatchSource`]: the
//! registry in process, or the agents' connection to the servers.
//!
//! The decisions are [`WatchPlan::step`], a plain function tested on its
//! exact actions; [`Watcher::next`] performs them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

pub use crate::backoff::Backoff;
use crate::limits::WATCH_BATCH_EVENTS_MAX;
use crate::model::object;
use crate::model::resources::Resource;
use crate::model::selector::Selector;
use crate::registry::{Registry, RegistryError, RegistryWatch, WatchEvent, WatchEventKind};

/// Why a list or watch failed, as far as a watcher cares.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The revision asked for is compacted away: list again.
    #[error("history expired: {0}")]
    Expired(String),
    /// Not now (no leader, a network fault, a timeout): try again.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// A stream of changes after some revision.
#[async_trait::async_trait]
pub trait EventStream: Send {
    /// The next batch of changes (possibly empty: progress only).
    async fn next(&mut self) -> Result<Vec<WatchEvent>, SourceError>;
    /// The revision through which this stream has delivered, bookmarks
    /// included.
    fn revision(&self) -> u64;
}

/// What a watcher follows.
#[async_trait::async_trait]
pub trait WatchSource: Send + Sync {
    /// Every object, and the revision of the list.
    async fn list(&self) -> Result<(Vec<Value>, u64), SourceError>;
    /// Changes after revision `after`.
    async fn watch(&self, after: u64) -> Result<Box<dyn EventStream>, SourceError>;
    /// For logs.
    fn describe(&self) -> String;
}

/// What a watcher hands on.
#[derive(Debug, Clone, PartialEq)]
pub enum Watched {
    /// A fresh list: everything there is, replacing what was known.
    Restarted { objects: Vec<Value>, revision: u64 },
    /// Changes, in order, and the revision they bring the follower to.
    Changes { events: Vec<WatchEvent>, revision: u64 },
}

/// Where a watcher is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Nothing listed yet, or the history is gone.
    Unlisted,
    /// Caught up through this revision, with no watch open.
    At(u64),
    /// Watching, caught up through this revision.
    Watching(u64),
}

/// The next thing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchAction {
    List,
    WatchFrom(u64),
    /// Read the open watch.
    Read,
    /// Wait before trying again.
    Wait(Duration),
}

/// What the last action came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Start,
    Listed(u64),
    WatchOpened,
    Read(u64),
    Failed(SourceError),
    Waited,
}

/// The watcher's decisions, without I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchPlan {
    pub position: Position,
    pub failures: u32,
    backoff: Backoff,
    /// Where to go once a wait is over.
    after_wait: Position,
}

impl WatchPlan {
    pub fn new(backoff: Backoff) -> Self {
        WatchPlan { position: Position::Unlisted, failures: 0, backoff, after_wait: Position::Unlisted }
    }

    /// The next action, given what the last one came to.
    pub fn step(&mut self, outcome: Outcome) -> WatchAction {
        match outcome {
            Outcome::Start => {}
            Outcome::Listed(rev) => {
                self.failures = 0;
                self.position = Position::At(rev);
            }
            Outcome::WatchOpened => {
                if let Position::At(rev) = self.position {
                    self.position = Position::Watching(rev);
                }
            }
            Outcome::Read(rev) => {
                self.failures = 0;
                if let Position::Watching(old) = self.position {
                    self.position = Position::Watching(old.max(rev));
                }
            }
            Outcome::Failed(err) => {
                self.failures = self.failures.saturating_add(1);
                // A broken watch resumes from the last revision seen; only
                // lost history means listing again.
                self.after_wait = match (err, self.position) {
                    (SourceError::Expired(_), _) | (_, Position::Unlisted) => Position::Unlisted,
                    (_, Position::At(rev) | Position::Watching(rev)) => Position::At(rev),
                };
                self.position = self.after_wait;
                // A watch that ends after delivering (a server going away)
                // is resumed at once the first time.
                return WatchAction::Wait(self.backoff.delay(self.failures - 1));
            }
            Outcome::Waited => self.position = self.after_wait,
        }
        match self.position {
            Position::Unlisted => WatchAction::List,
            Position::At(rev) => WatchAction::WatchFrom(rev),
            Position::Watching(_) => WatchAction::Read,
        }
    }
}

/// Follows one source for as long as it is polled.
pub struct Watcher<S: WatchSource> {
    source: S,
    plan: WatchPlan,
    stream: Option<Box<dyn EventStream>>,
    next: WatchAction,
}

impl<S: WatchSource> Watcher<S> {
    pub fn new(source: S, backoff: Backoff) -> Self {
        let mut plan = WatchPlan::new(backoff);
        let next = plan.step(Outcome::Start);
        Watcher { source, plan, stream: None, next }
    }

    /// The source followed.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Where the watcher is.
    pub fn position(&self) -> Position {
        self.plan.position
    }

    /// Starts over from a fresh list (a follower that lost track).
    pub fn relist(&mut self) {
        self.stream = None;
        self.plan.position = Position::Unlisted;
        self.next = WatchAction::List;
    }

    /// The next list or batch of changes. Never fails: failures are
    /// retried after the back-off (logged at debug), so a caller only ever
    /// sees what there is to see. Cancel-safe between actions.
    pub async fn next(&mut self) -> Watched {
        loop {
            let outcome = match self.next {
                WatchAction::List => match self.source.list().await {
                    Ok((objects, revision)) => {
                        self.next = self.plan.step(Outcome::Listed(revision));
                        return Watched::Restarted { objects, revision };
                    }
                    Err(e) => Outcome::Failed(e),
                },
                WatchAction::WatchFrom(rev) => match self.source.watch(rev).await {
                    Ok(s) => {
                        self.stream = Some(s);
                        Outcome::WatchOpened
                    }
                    Err(e) => Outcome::Failed(e),
                },
                WatchAction::Read => match self.stream.as_mut() {
                    None => Outcome::Failed(SourceError::Unavailable("no watch open".into())),
                    Some(stream) => match stream.next().await {
                        Ok(events) => {
                            let revision = stream.revision();
                            self.next = self.plan.step(Outcome::Read(revision));
                            return Watched::Changes { events, revision };
                        }
                        Err(e) => {
                            self.stream = None;
                            Outcome::Failed(e)
                        }
                    },
                },
                WatchAction::Wait(d) => {
                    tokio::time::sleep(d).await;
                    Outcome::Waited
                }
            };
            if let Outcome::Failed(e) = &outcome {
                tracing::debug!(source = %self.source.describe(), error = %e, "watch failed; trying again after back-off");
            }
            self.next = self.plan.step(outcome);
        }
    }
}

/// Whether an event removes its object.
pub fn is_delete(ev: &WatchEvent) -> bool {
    ev.kind == WatchEventKind::Deleted
}

/// The objects a watcher has seen, by `namespace/name` (or `name`): what a
/// follower that needs no indexes of its own keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reflector {
    pub objects: BTreeMap<String, Value>,
    /// Listed at least once (half a view must not be acted on).
    pub listed: bool,
    pub revision: u64,
}

/// The key a reflector files an object under.
pub fn object_key(o: &Value) -> String {
    match object::namespace(o) {
        Some(ns) => format!("{ns}/{}", object::name(o).unwrap_or("")),
        None => object::name(o).unwrap_or("").to_string(),
    }
}

impl Reflector {
    /// Takes in what the watcher saw.
    pub fn apply(&mut self, watched: Watched) {
        match watched {
            Watched::Restarted { objects, revision } => {
                self.objects = objects.into_iter().map(|o| (object_key(&o), o)).collect();
                self.listed = true;
                self.revision = revision;
            }
            Watched::Changes { events, revision } => {
                for ev in events {
                    let key = object_key(&ev.object);
                    if is_delete(&ev) {
                        self.objects.remove(&key);
                    } else {
                        self.objects.insert(key, ev.object);
                    }
                }
                self.revision = self.revision.max(revision);
            }
        }
    }
}

/// One kind, straight from the registry (in the servers' processes).
#[derive(Clone)]
pub struct RegistrySource {
    pub registry: Registry,
    pub res: &'static Resource,
}

fn source_error(e: RegistryError) -> SourceError {
    match e {
        RegistryError::Expired { .. } => SourceError::Expired(e.to_string()),
        other => SourceError::Unavailable(other.to_string()),
    }
}

#[async_trait::async_trait]
impl EventStream for RegistryWatch {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, SourceError> {
        RegistryWatch::next(self).await.map_err(source_error)
    }
    fn revision(&self) -> u64 {
        self.progress_revision()
    }
}

#[async_trait::async_trait]
impl WatchSource for RegistrySource {
    async fn list(&self) -> Result<(Vec<Value>, u64), SourceError> {
        let (items, revision, _) =
            self.registry.list(self.res, None, &Selector::default(), &Selector::default(), 0, None).await.map_err(source_error)?;
        Ok((items, revision))
    }
    async fn watch(&self, after: u64) -> Result<Box<dyn EventStream>, SourceError> {
        Ok(Box::new(self.registry.watch(self.res, None, after).map_err(source_error)?))
    }
    fn describe(&self) -> String {
        self.res.plural.to_string()
    }
}

/// A stream fed through a channel (the agents' watches): batches what is
/// queued, and tracks the revision from the objects' resourceVersions.
pub struct ChannelStream<E> {
    rx: tokio::sync::mpsc::Receiver<Result<WatchEvent, E>>,
    revision: u64,
    map_err: fn(E) -> SourceError,
    /// An error that came after events: handed on at the next call, once
    /// those events have been.
    failed: Option<SourceError>,
}

impl<E: Send> ChannelStream<E> {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Result<WatchEvent, E>>, after: u64, map_err: fn(E) -> SourceError) -> Self {
        ChannelStream { rx, revision: after, map_err, failed: None }
    }
}

#[async_trait::async_trait]
impl<E: Send> EventStream for ChannelStream<E> {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, SourceError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let first = self.rx.recv().await.ok_or_else(|| SourceError::Unavailable("the watch ended".into()))?;
        let mut batch = vec![first.map_err(self.map_err)?];
        while batch.len() < WATCH_BATCH_EVENTS_MAX {
            match self.rx.try_recv() {
                Ok(Ok(ev)) => batch.push(ev),
                Ok(Err(e)) => {
                    self.failed = Some((self.map_err)(e));
                    break;
                }
                Err(_) => break,
            }
        }
        // One revision may change many objects (a batch of evictions): the
        // position is just before the latest, so a stream cut inside it
        // replays the whole of it (applying an event twice changes nothing).
        for ev in &batch {
            if let Some(rv) = object::resource_version(&ev.object) {
                self.revision = self.revision.max(rv.saturating_sub(1));
            }
        }
        Ok(batch)
    }
    fn revision(&self) -> u64 {
        self.revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lists_then_watches_from_the_list_and_follows_progress() {
        let mut p = WatchPlan::new(Backoff::default());
        assert_eq!(p.step(Outcome::Start), WatchAction::List);
        assert_eq!(p.step(Outcome::Listed(40)), WatchAction::WatchFrom(40));
        assert_eq!(p.step(Outcome::WatchOpened), WatchAction::Read);
        assert_eq!(p.step(Outcome::Read(45)), WatchAction::Read);
        assert_eq!(p.position, Position::Watching(45));
    }

    #[test]
    fn a_broken_watch_resumes_from_the_last_revision_seen_without_listing() {
        let mut p = WatchPlan::new(Backoff::default());
        p.step(Outcome::Start);
        p.step(Outcome::Listed(40));
        p.step(Outcome::WatchOpened);
        p.step(Outcome::Read(52));
        assert_eq!(p.step(Outcome::Failed(SourceError::Unavailable("server gone".into()))), WatchAction::Wait(ms(100)));
        assert_eq!(p.step(Outcome::Waited), WatchAction::WatchFrom(52));
        // The server is still away: the back-off doubles.
        assert_eq!(p.step(Outcome::Failed(SourceError::Unavailable("refused".into()))), WatchAction::Wait(ms(200)));
        assert_eq!(p.step(Outcome::Waited), WatchAction::WatchFrom(52));
        assert_eq!(p.step(Outcome::WatchOpened), WatchAction::Read);
        assert_eq!(p.step(Outcome::Read(53)), WatchAction::Read);
        assert_eq!(p.failures, 0, "a read resets the back-off");
    }

    #[test]
    fn lost_history_means_listing_again() {
        let mut p = WatchPlan::new(Backoff::default());
        p.step(Outcome::Start);
        p.step(Outcome::Listed(40));
        p.step(Outcome::WatchOpened);
        assert_eq!(p.step(Outcome::Failed(SourceError::Expired("compacted at 90".into()))), WatchAction::Wait(ms(100)));
        assert_eq!(p.step(Outcome::Waited), WatchAction::List);
        assert_eq!(p.step(Outcome::Listed(95)), WatchAction::WatchFrom(95));
    }

    #[test]
    fn a_failed_first_list_is_tried_again_with_a_capped_back_off() {
        let mut p = WatchPlan::new(Backoff { first: ms(100), max: ms(500) });
        p.step(Outcome::Start);
        let waits: Vec<WatchAction> = (0..5)
            .map(|_| {
                let w = p.step(Outcome::Failed(SourceError::Unavailable("no leader".into())));
                assert_eq!(p.step(Outcome::Waited), WatchAction::List);
                w
            })
            .collect();
        assert_eq!(waits, [100, 200, 400, 500, 500].map(|d| WatchAction::Wait(ms(d))));
    }
}
