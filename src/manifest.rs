//! Reading manifests for `apply -f` and `delete -f`: a file, a directory
//! (its .yaml, .yml and .json files in name order) or `-` for stdin, each
//! holding one or more YAML documents or JSON objects (or a `List`).

use std::path::Path;

use serde_json::Value;

/// One object from a manifest, with where it came from for error messages.
#[derive(Debug)]
pub struct Manifest {
    pub source: String,
    pub object: Value,
}

fn parse_text(text: &str, source: &str) -> Result<Vec<Manifest>, String> {
    let mut out = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for (i, doc) in stream.enumerate() {
            let doc = doc.map_err(|e| format!("{source}: object {}: not valid JSON: {e}", i + 1))?;
            push(doc, source, &mut out)?;
        }
        return Ok(out);
    }
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
            .map_err(|e| format!("{source}: document {}: not valid YAML: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(value).map_err(|e| format!("{source}: document {}: {e}", i + 1))?;
        push(json, source, &mut out)?;
    }
    Ok(out)
}

fn push(doc: Value, source: &str, out: &mut Vec<Manifest>) -> Result<(), String> {
    if !doc.is_object() {
        return Err(format!("{source}: expected an object with apiVersion and kind, found {}", short(&doc)));
    }
    if doc.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) {
        for item in doc.get("items").and_then(Value::as_array).cloned().unwrap_or_default() {
            push(item, source, out)?;
        }
        return Ok(());
    }
    out.push(Manifest { source: source.to_string(), object: doc });
    Ok(())
}

fn short(v: &Value) -> String {
    // Cut at a character, not a byte: a multi-byte character near the cut
    // must not panic.
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s,
    }
}

/// Reads every object from `path` (a file, a directory or `-`).
pub fn read(path: &str) -> Result<Vec<Manifest>, String> {
    if path == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| format!("reading stdin: {e}"))?;
        return parse_text(&text, "stdin");
    }
    let p = Path::new(path);
    if p.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(p)
            .map_err(|e| format!("{path}: {e}"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|f| f.extension().and_then(|x| x.to_str()).is_some_and(|x| matches!(x, "yaml" | "yml" | "json")))
            .collect();
        files.sort();
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            out.extend(parse_text(&text, &f.display().to_string())?);
        }
        return Ok(out);
    }
    let text = std::fs::read_to_string(p).map_err(|e| format!("{path}: {e}"))?;
    parse_text(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_lists() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n";
        let docs = parse_text(text, "t").unwrap();
        assert_eq!(docs.iter().map(|d| d.object["metadata"]["name"].as_str().unwrap()).collect::<Vec<_>>(), vec!["a", "b"]);
        let json = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}} {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"d"}}"#;
        assert_eq!(parse_text(json, "t").unwrap().len(), 2);
        assert!(parse_text("a: [", "t").unwrap_err().contains("not valid YAML"));
        assert!(parse_text("- 1\n- 2\n", "t").unwrap_err().contains("expected an object"));
    }

    #[test]
    fn a_multi_byte_character_at_the_cut_of_an_error_message_does_not_panic() {
        // `["` is two bytes, so byte 40 falls inside an `é` (two bytes each).
        for pad in 36..40 {
            let text = format!("- \"{}{}\"\n", "x".repeat(pad), "é".repeat(10));
            let err = parse_text(&text, "t").unwrap_err();
            assert!(err.contains("expected an object") && err.ends_with("..."), "{err}");
        }
    }
}
