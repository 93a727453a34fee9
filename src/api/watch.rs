//! `?watch=true`: newline-delimited watch events, resumable from any
//! resourceVersion the store still holds (410 Gone when it does not), with
//! periodic bookmarks. The stream pulls from the store's watcher; a client
//! too slow to read falls behind the store's bounded queue and is cut off
//! with an ERROR event, so writers never wait for it.

use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use flotilla_actors::model::resources::Resource;
use flotilla_actors::model::table;
use flotilla_actors::{RegistryError, RegistryWatch, WatchEvent, WatchEventKind};
use serde_json::{json, Value};

use super::params::Params;
use super::status::ApiError;
use super::ApiState;

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);
/// Longest a single watch request stays open (clients re-watch after).
const WATCH_TIMEOUT_MAX: Duration = Duration::from_secs(1800);

fn line(kind: &str, object: Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    out.push(b'\n');
    out
}

fn render(res: &Resource, ev: &WatchEvent, as_table: bool, full: bool) -> Vec<u8> {
    if as_table {
        let rv = flotilla_actors::model::object::resource_version(&ev.object).unwrap_or(0);
        return line(ev.kind.as_str(), table::table(res, std::slice::from_ref(&ev.object), rv, full, std::time::SystemTime::now()));
    }
    line(ev.kind.as_str(), ev.object.clone())
}

struct WatchState {
    res: &'static Resource,
    watch: RegistryWatch,
    pending: std::collections::VecDeque<Vec<u8>>,
    labels: flotilla_actors::model::selector::Selector,
    fields: flotilla_actors::model::selector::Selector,
    as_table: bool,
    full: bool,
    bookmarks: bool,
    bookmark: tokio::time::Interval,
    deadline: tokio::time::Instant,
    done: bool,
}

pub async fn stream(
    state: &ApiState,
    res: &'static Resource,
    ns: Option<&str>,
    params: Params,
    as_table: bool,
) -> Result<Response, ApiError> {
    let from = params.revision()?;
    let mut pending = std::collections::VecDeque::new();
    // Without a resourceVersion, a watch starts with the current objects as
    // ADDED events, then follows changes after the list.
    let start = if from == 0 {
        let (items, rv, _) = state.registry.list(res, ns, &params.labels, &params.fields, 0, None).await?;
        for object in items {
            pending.push_back(render(res, &WatchEvent { kind: WatchEventKind::Added, object }, as_table, params.full_objects));
        }
        rv
    } else {
        from
    };
    let watch = state.registry.watch(res, ns, start).map_err(ApiError::from)?;
    let timeout = params.timeout_seconds.map(Duration::from_secs).unwrap_or(WATCH_TIMEOUT_MAX).min(WATCH_TIMEOUT_MAX);
    let mut bookmark = tokio::time::interval(BOOKMARK_INTERVAL);
    bookmark.reset();
    let st = WatchState {
        res,
        watch,
        pending,
        labels: params.labels,
        fields: params.fields,
        as_table,
        full: params.full_objects,
        bookmarks: params.bookmarks,
        bookmark,
        deadline: tokio::time::Instant::now() + timeout,
        done: false,
    };
    let body = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(bytes) = st.pending.pop_front() {
                return Some((Ok::<_, std::io::Error>(bytes), st));
            }
            if st.done {
                return None;
            }
            tokio::select! {
                batch = st.watch.next() => match batch {
                    Ok(events) => {
                        for ev in events {
                            if st.labels.matches_object(&ev.object) && st.fields.matches_fields(&ev.object) {
                                st.pending.push_back(render(st.res, &ev, st.as_table, st.full));
                            }
                        }
                    }
                    Err(e) => {
                        let api: ApiError = match e {
                            RegistryError::Store(flotilla_raft::StoreError::WatchOverflow { .. }) => ApiError::new(StatusCode::GONE, "Expired", format!("{e}; watch again from the last resourceVersion received")),
                            other => other.into(),
                        };
                        st.pending.push_back(line("ERROR", api.to_status()));
                        st.done = true;
                    }
                },
                _ = st.bookmark.tick(), if st.bookmarks => {
                    let rv = st.watch.progress_revision().to_string();
                    st.pending.push_back(line("BOOKMARK", json!({"kind": st.res.kind, "apiVersion": st.res.api_version(), "metadata": {"resourceVersion": rv}})));
                }
                _ = tokio::time::sleep_until(st.deadline) => st.done = true,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))
}
