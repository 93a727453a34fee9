//! The HTTP client the object commands (`get`, `apply`, ...) use: finds the
//! server (`--server`, else `$FLOTILLA_SERVER`, else http://127.0.0.1:8080),
//! and turns failures into one line that says what happened.

use std::time::Duration;

use serde_json::Value;

/// Deadline for one non-watch request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

/// A failed call: its HTTP code (0 when the server was not reached) and
/// the message to show.
#[derive(Debug)]
pub struct CallError {
    pub code: u16,
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ApiClient {
    pub fn new(server: Option<String>) -> Result<ApiClient, String> {
        let base = server
            .or_else(|| std::env::var("FLOTILLA_SERVER").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_string())
            .trim_end_matches('/')
            .to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(format!("server URL {base:?} must start with http:// (for example {DEFAULT_SERVER})"));
        }
        let http = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).build().map_err(|e| e.to_string())?;
        Ok(ApiClient { base, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: reqwest::Error) -> CallError {
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        CallError { code: 0, message: format!("cannot reach flotilla at {}: {cause}", self.base) }
    }

    /// Sends a request; answers the parsed JSON body of a 2xx reply.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        accept_table: bool,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Value, CallError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).timeout(REQUEST_TIMEOUT);
        if accept_table {
            req = req.header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json");
        }
        if let Some((content_type, bytes)) = body {
            req = req.header("Content-Type", content_type).body(bytes);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| format!("the server answered {status}: {}", String::from_utf8_lossy(&bytes).trim()));
        Err(CallError { code: status.as_u16(), message })
    }

    pub async fn get(&self, path: &str, table: bool) -> Result<Value, CallError> {
        self.call(reqwest::Method::GET, path, table, None).await
    }

    /// Opens a streaming GET (a watch).
    pub async fn stream(&self, path: &str, table: bool) -> Result<reqwest::Response, CallError> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if table {
            req = req.header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json");
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(CallError {
                code: status.as_u16(),
                message: v.get("message").and_then(Value::as_str).unwrap_or("watch failed").to_string(),
            });
        }
        Ok(resp)
    }
}

/// The API path of a resource (or one object) in a namespace.
pub fn resource_path(res: &flotilla_actors::model::resources::Resource, namespace: Option<&str>, name: Option<&str>) -> String {
    let base = if res.group.is_empty() { format!("/api/{}", res.version) } else { format!("/apis/{}/{}", res.group, res.version) };
    let ns = match (res.namespaced, namespace) {
        (true, Some(ns)) => format!("/namespaces/{ns}"),
        _ => String::new(),
    };
    match name {
        Some(n) => format!("{base}{ns}/{}/{n}", res.plural),
        None => format!("{base}{ns}/{}", res.plural),
    }
}
