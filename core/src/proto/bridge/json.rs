//! Reading oc-lib's JSON the way Go's `encoding/json` does: keys matched case-insensitively (an
//! exact match first), `[]byte` as standard base64, enums as numbers — and, more leniently than
//! Go, enums also by name and payloads also as inline JSON.

use super::BridgeError;
use super::codes::Table;
use serde_json::{Map, Value};

/// The value of `key` in `obj`: the exact key if present, else the first key equal to it
/// ignoring ASCII case (Go's rule).
pub fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// A string field (`""` when absent or null); another type is an error.
pub fn string(obj: &Map<String, Value>, key: &'static str) -> Result<String, BridgeError> {
    match field(obj, key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(BridgeError::Field { field: key, expected: "a string" }),
    }
}

/// A list of strings (empty when absent or null).
pub fn strings(obj: &Map<String, Value>, key: &'static str) -> Result<Vec<String>, BridgeError> {
    match field(obj, key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(BridgeError::Field { field: key, expected: "strings" }))
            .collect(),
        Some(_) => Err(BridgeError::Field { field: key, expected: "a list of strings" }),
    }
}

/// An enum field: a number, a numeric string, or a name in `table`. `None` when absent or null.
pub fn code(obj: &Map<String, Value>, key: &'static str, table: &Table) -> Result<Option<i64>, BridgeError> {
    match field(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(BridgeError::Field { field: key, expected: "an integer" }),
        Some(Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => table.code(s).map(Some).ok_or_else(|| BridgeError::UnknownName { field: key, name: s.clone() }),
        },
        Some(_) => Err(BridgeError::Field { field: key, expected: "a number or a name" }),
    }
}

/// A `[]byte` field: standard base64 (as Go encodes it), or — leniently — inline JSON (an object
/// or array, taken as its text). Empty when absent or null.
pub fn bytes(obj: &Map<String, Value>, key: &'static str) -> Result<Vec<u8>, BridgeError> {
    match field(obj, key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => data_encoding::BASE64
            .decode(s.as_bytes())
            .map_err(|_| BridgeError::Field { field: key, expected: "base64" }),
        Some(v @ (Value::Object(_) | Value::Array(_))) => Ok(v.to_string().into_bytes()),
        Some(_) => Err(BridgeError::Field { field: key, expected: "base64 or JSON" }),
    }
}

/// Parses `bytes` as a JSON object.
pub fn object(bytes: &[u8], what: &'static str) -> Result<Map<String, Value>, BridgeError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(BridgeError::NotAnObject(what)),
        Err(e) => Err(BridgeError::Json { what, error: e.to_string() }),
    }
}

/// A value as text the way the seed's `fmt.Sprintf("%v", …)` reads an id or a needle: strings as
/// they are, numbers and booleans printed, anything else absent.
pub fn text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    }
}
