//! How istioctl's Go code writes values into `cluster.env` and `mesh.yaml`: `encoding/json`
//! strings and maps, `[]model.PodPort`, and the readiness probe as protobuf JSON. Pure
//! encoders, byte-for-byte what the goldens expect.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::api::istio::ReadinessProbe;

/// A string as Go's `encoding/json` writes it (HTML-safe escaping included).
pub fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `json.Marshal(map[string]string)`: keys in byte order.
pub fn go_json_string_map(map: &BTreeMap<String, String>) -> String {
    let body: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{}:{}", go_json_string(k), go_json_string(v)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// `ISTIO_META_POD_PORTS`: `json.Marshal([]model.PodPort)` sorted by name. `PodPort` omits an
/// empty `name` but always writes `protocol` (empty here), as istioctl's own
/// `TestWorkloadEntryToPodPortsMeta` expects.
pub fn pod_ports_json(ports: &BTreeMap<String, u32>) -> Option<String> {
    if ports.is_empty() {
        return None;
    }
    let items: Vec<String> = ports
        .iter()
        .map(|(name, port)| {
            let name = if name.is_empty() {
                String::new()
            } else {
                format!("\"name\":{},", go_json_string(name))
            };
            format!("{{{name}\"containerPort\":{port},\"protocol\":\"\"}}")
        })
        .collect();
    Some(format!("[{}]", items.join(",")))
}

/// The readiness probe as protobuf JSON: unset and zero fields are omitted.
pub(super) fn probe_json(probe: &ReadinessProbe) -> Value {
    fn strip(v: Value) -> Option<Value> {
        match v {
            Value::Null => None,
            Value::Bool(false) => None,
            Value::String(s) if s.is_empty() => None,
            Value::Number(n) if n.as_f64() == Some(0.0) => None,
            Value::Array(a) if a.is_empty() => None,
            Value::Array(a) => Some(Value::Array(a.into_iter().filter_map(strip).collect())),
            Value::Object(m) => Some(Value::Object(
                m.into_iter()
                    .filter_map(|(k, v)| strip(v).map(|v| (k, v)))
                    .collect(),
            )),
            other => Some(other),
        }
    }
    let raw = serde_json::to_value(probe).unwrap_or(Value::Null);
    strip(raw).unwrap_or_else(|| Value::Object(Map::new()))
}
