//! One [`Report`] per scenario: ordered fields, printed as an aligned table or one JSON line.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

pub struct Report {
    /// In insertion order, so tables and JSON lines read the same way every time.
    fields: Vec<(String, Value)>,
}

impl Report {
    pub fn new(scenario: &str) -> Report {
        Report {
            fields: vec![("scenario".into(), Value::from(scenario))],
        }
    }

    /// Sets `key` (replacing an earlier value) to `value`; floats are rounded for reading.
    pub fn set(&mut self, key: &str, value: impl Serialize) -> &mut Self {
        let v = round(serde_json::to_value(value).unwrap_or(Value::Null));
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.fields.push((key.to_string(), v)),
        }
        self
    }

    pub fn errors(&self) -> u64 {
        self.fields
            .iter()
            .find(|(k, _)| k == "errors")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(0)
    }

    fn table(&self) -> String {
        let width = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in &self.fields {
            out.push_str(&format!("  {k:<width$}  {}\n", human(v)));
        }
        out
    }
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.fields.len()))?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Three significant decimals are plenty and keep JSON lines short.
fn round(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            let r = if f.abs() >= 100.0 {
                (f * 10.0).round() / 10.0
            } else {
                (f * 1000.0).round() / 1000.0
            };
            serde_json::Number::from_f64(r).map_or(Value::Null, Value::Number)
        }
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, round(v))).collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(round).collect()),
        other => other,
    }
}

fn human(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", human(v)))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Array(a) => a.iter().map(human).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn print(&self, r: &Report) {
        if self.json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            let title = r.fields.first().map(|(_, v)| human(v)).unwrap_or_default();
            println!("== {title}\n{}", r.table());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_field_order_and_counts_errors() {
        let mut r = Report::new("idle-cycle");
        r.set("users", 10).set("errors", 0).set("p50_ms", 1.23456);
        r.set("errors", 2);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"scenario":"idle-cycle","users":10,"errors":2,"p50_ms":1.235}"#
        );
        assert_eq!(r.errors(), 2);
        assert!(r.table().contains("p50_ms"));
    }
}
