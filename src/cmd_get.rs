//! `flotilla get`, `flotilla events` and `flotilla describe`: tables as
//! kubectl prints them (from the server's Table), YAML/JSON output, and
//! watching with `-w`.

use flotilla_actors::model::kinds::lookup;
use flotilla_actors::model::resources::Resource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::client::{resource_path, ApiClient};

/// Output format of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Wide,
    Yaml,
    Json,
    Name,
}

pub struct GetOptions {
    pub namespace: Option<String>,
    pub all_namespaces: bool,
    pub output: Option<Output>,
    pub selector: Option<String>,
    pub watch: bool,
}

pub fn resolve(kind: &str) -> Result<&'static Resource, String> {
    lookup(kind).ok_or_else(|| {
        let known: Vec<&str> = flotilla_actors::model::kinds::RESOURCES.iter().map(|r| r.plural).collect();
        format!("the server doesn't have a resource type {kind:?} (known: {})", known.join(", "))
    })
}

fn list_path(res: &Resource, opts: &GetOptions) -> String {
    let ns = if opts.all_namespaces { None } else { Some(opts.namespace.as_deref().unwrap_or("default")) };
    let mut path = resource_path(res, ns, None);
    let mut q = Vec::new();
    if let Some(s) = &opts.selector {
        q.push(format!("labelSelector={}", urlencode(s)));
    }
    if opts.watch {
        q.push("watch=true".to_string());
    }
    if !q.is_empty() {
        path = format!("{path}?{}", q.join("&"));
    }
    path
}

pub fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).unwrap_or_default().trim_start_matches("v=").to_string()
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

/// Prints a Table's rows as aligned columns, kubectl style.
pub struct TablePrinter {
    wide: bool,
    with_namespace: bool,
    widths: Vec<usize>,
    header_done: bool,
}

impl TablePrinter {
    pub fn new(wide: bool, with_namespace: bool) -> Self {
        TablePrinter { wide, with_namespace, widths: Vec::new(), header_done: false }
    }

    fn rows(&self, table: &Value) -> (Vec<String>, Vec<Vec<String>>) {
        let cols = table.get("columnDefinitions").and_then(Value::as_array).cloned().unwrap_or_default();
        let keep: Vec<usize> = cols
            .iter()
            .enumerate()
            .filter(|(_, c)| self.wide || c.get("priority").and_then(Value::as_i64).unwrap_or(0) == 0)
            .map(|(i, _)| i)
            .collect();
        let mut header: Vec<String> =
            keep.iter().map(|&i| cols[i].get("name").and_then(Value::as_str).unwrap_or("").to_ascii_uppercase()).collect();
        if self.with_namespace {
            header.insert(0, "NAMESPACE".into());
        }
        let mut rows = Vec::new();
        for row in table.get("rows").and_then(Value::as_array).into_iter().flatten() {
            let cells = row.get("cells").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut r: Vec<String> = keep.iter().map(|&i| cells.get(i).map(cell_text).unwrap_or_default()).collect();
            if self.with_namespace {
                r.insert(0, row.pointer("/object/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string());
            }
            rows.push(r);
        }
        (header, rows)
    }

    /// Prints a whole table at once, widths fitted to the contents.
    pub fn print_all(&mut self, table: &Value) -> usize {
        let (header, rows) = self.rows(table);
        self.widths = header.iter().map(String::len).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                if i < self.widths.len() {
                    self.widths[i] = self.widths[i].max(c.len());
                }
            }
        }
        if !rows.is_empty() {
            self.line(&header);
            for r in &rows {
                self.line(r);
            }
        }
        rows.len()
    }

    /// Prints rows as they stream in (widths from the header and first rows).
    pub fn print_streaming(&mut self, table: &Value) {
        let (header, rows) = self.rows(table);
        if !self.header_done {
            self.widths = header.iter().map(|h| h.len().max(12)).collect();
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    if i < self.widths.len() {
                        self.widths[i] = self.widths[i].max(c.len());
                    }
                }
            }
            self.line(&header);
            self.header_done = true;
        }
        for r in &rows {
            self.line(r);
        }
    }

    fn line(&self, cells: &[String]) {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}   ", w = self.widths.get(i).copied().unwrap_or(0)));
            }
        }
        println!("{}", out.trim_end());
    }
}

pub fn print_value(v: &Value, output: Output) -> Result<(), String> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).map_err(|e| e.to_string())?),
        _ => print!("{}", serde_yaml::to_string(v).map_err(|e| e.to_string())?),
    }
    Ok(())
}

pub async fn get(client: &ApiClient, kind: &str, name: Option<&str>, opts: GetOptions) -> Result<i32, String> {
    let res = resolve(kind)?;
    let ns = opts.namespace.clone().unwrap_or_else(|| "default".into());
    let ns_opt = if res.namespaced { Some(ns.as_str()) } else { None };
    let structured = matches!(opts.output, Some(Output::Yaml) | Some(Output::Json));
    if let Some(name) = name {
        let path = resource_path(res, ns_opt, Some(name));
        if structured {
            let v = client.get(&path, false).await.map_err(|e| e.message)?;
            print_value(&v, opts.output.unwrap_or(Output::Yaml))?;
        } else if opts.output == Some(Output::Name) {
            client.get(&path, false).await.map_err(|e| e.message)?;
            println!("{}/{name}", res.singular);
        } else {
            let t = client.get(&path, true).await.map_err(|e| e.message)?;
            TablePrinter::new(opts.output == Some(Output::Wide), false).print_all(&t);
        }
        return Ok(0);
    }
    if opts.watch {
        return watch(client, res, &opts).await;
    }
    let path = list_path(res, &opts);
    if structured {
        let mut v = client.get(&path, false).await.map_err(|e| e.message)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("kind".into(), json!("List"));
            o.insert("apiVersion".into(), json!("v1"));
        }
        print_value(&v, opts.output.unwrap_or(Output::Yaml))?;
        return Ok(0);
    }
    if opts.output == Some(Output::Name) {
        let v = client.get(&path, false).await.map_err(|e| e.message)?;
        for item in v.get("items").and_then(Value::as_array).into_iter().flatten() {
            println!("{}/{}", res.singular, item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""));
        }
        return Ok(0);
    }
    let t = client.get(&path, true).await.map_err(|e| e.message)?;
    let shown = TablePrinter::new(opts.output == Some(Output::Wide), opts.all_namespaces && res.namespaced).print_all(&t);
    if shown == 0 {
        if res.namespaced && !opts.all_namespaces {
            eprintln!("No resources found in {ns} namespace.");
        } else {
            eprintln!("No resources found");
        }
    }
    Ok(0)
}

async fn watch(client: &ApiClient, res: &Resource, opts: &GetOptions) -> Result<i32, String> {
    let path = list_path(res, opts);
    let resp = client.stream(&path, true).await.map_err(|e| e.message)?;
    let mut printer = TablePrinter::new(opts.output == Some(Output::Wide), opts.all_namespaces && res.namespaced);
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("watch ended: {e}"))?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            match ev.get("type").and_then(Value::as_str) {
                Some("ERROR") => return Err(ev.pointer("/object/message").and_then(Value::as_str).unwrap_or("watch failed").to_string()),
                Some("BOOKMARK") => {}
                _ => {
                    if let Some(t) = ev.get("object") {
                        printer.print_streaming(t);
                    }
                }
            }
        }
    }
    Ok(0)
}

pub async fn events(client: &ApiClient, namespace: Option<String>, all_namespaces: bool, watch_flag: bool) -> Result<i32, String> {
    let opts = GetOptions { namespace, all_namespaces, output: None, selector: None, watch: watch_flag };
    get(client, "events", None, opts).await
}

fn yaml_block(title: &str, v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(v) => {
            let text = serde_yaml::to_string(v).unwrap_or_default();
            let indented: String = text.lines().map(|l| format!("  {l}\n")).collect();
            format!("{title}:\n{indented}")
        }
    }
}

fn map_text(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        Some(m) if !m.is_empty() => {
            m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(&v.to_string()))).collect::<Vec<_>>().join("\n              ")
        }
        _ => "<none>".into(),
    }
}

pub async fn describe(client: &ApiClient, kind: &str, name: &str, namespace: Option<String>) -> Result<i32, String> {
    let res = resolve(kind)?;
    let ns = namespace.unwrap_or_else(|| "default".into());
    let ns_opt = if res.namespaced { Some(ns.as_str()) } else { None };
    let obj = client.get(&resource_path(res, ns_opt, Some(name)), false).await.map_err(|e| e.message)?;
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    println!("Name:         {name}");
    if res.namespaced {
        println!("Namespace:    {ns}");
    }
    println!("Kind:         {}", res.kind);
    println!("Labels:       {}", map_text(meta.get("labels")));
    let annotations: Value = meta
        .get("annotations")
        .and_then(Value::as_object)
        .map(|m| {
            Value::Object(
                m.iter().filter(|(k, _)| k.as_str() != crate::cmd_apply::LAST_APPLIED).map(|(k, v)| (k.clone(), v.clone())).collect(),
            )
        })
        .unwrap_or(Value::Null);
    println!("Annotations:  {}", map_text(Some(&annotations)));
    println!("Created:      {}", meta.get("creationTimestamp").and_then(Value::as_str).unwrap_or("<unknown>"));
    println!("UID:          {}", meta.get("uid").and_then(Value::as_str).unwrap_or(""));
    if let Some(owner) = meta.get("ownerReferences").and_then(Value::as_array).and_then(|a| a.first()) {
        println!(
            "Controlled By: {}/{}",
            owner.get("kind").and_then(Value::as_str).unwrap_or(""),
            owner.get("name").and_then(Value::as_str).unwrap_or("")
        );
    }
    if res.kind == "Pod" {
        println!("Node:         {}", obj.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("<none>"));
        println!("Status:       {}", flotilla_actors::model::kinds::pod_status(&obj));
        println!("IP:           {}", obj.pointer("/status/podIP").and_then(Value::as_str).unwrap_or("<none>"));
    }
    print!("{}", yaml_block("Spec", obj.get("spec")));
    print!("{}", yaml_block("Status", obj.get("status")));
    for key in ["data", "subsets", "involvedObject"] {
        print!("{}", yaml_block(key, obj.get(key)));
    }
    // Recent events about this object.
    let ev_res = resolve("events")?;
    let path = format!(
        "{}?fieldSelector={}",
        resource_path(ev_res, Some(if res.namespaced { ns.as_str() } else { "default" }), None),
        urlencode(&format!("involvedObject.name={name}"))
    );
    let events = client.get(&path, false).await.map_err(|e| e.message)?;
    let mut items: Vec<Value> = events.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    items.retain(|e| e.pointer("/involvedObject/kind").and_then(Value::as_str) == Some(res.kind));
    items.sort_by(|a, b| a.get("lastTimestamp").and_then(Value::as_str).cmp(&b.get("lastTimestamp").and_then(Value::as_str)));
    if items.is_empty() {
        println!("Events:       <none>");
    } else {
        println!("Events:");
        println!("  {:<8} {:<20} {:<22} MESSAGE", "TYPE", "REASON", "LAST SEEN");
        for e in items.iter().rev().take(20).rev() {
            println!(
                "  {:<8} {:<20} {:<22} {}",
                e.get("type").and_then(Value::as_str).unwrap_or(""),
                e.get("reason").and_then(Value::as_str).unwrap_or(""),
                e.get("lastTimestamp").and_then(Value::as_str).unwrap_or(""),
                e.get("message").and_then(Value::as_str).unwrap_or("")
            );
        }
    }
    Ok(0)
}
