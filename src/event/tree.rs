//! An event's JSON text parsed into the [`Value`] tree that templates render.
//!
//! serde_json's own `Value` visitor grows each object's map one entry at a time, and the
//! map (an `IndexMap`, since `preserve_order` keeps the event's field order) reallocates and
//! rehashes its table as it grows: about 4 % of rendering for 500-byte events. [`Tree`]
//! gathers an object's entries in a `Vec` first and builds its map at its final size. The
//! result is the same tree: the same fields in the same order, a repeated key keeping its
//! first position and its last value, numbers and strings as serde_json makes them.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `text` into a tree; the errors are serde_json's.
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Tree.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A [`Value`] built with each object's map at its size (see the module header).
#[derive(Clone, Copy)]
struct Tree;

impl<'de> DeserializeSeed<'de> for Tree {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Tree {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(key) = map.next_key::<String>()? {
            entries.push((key, map.next_value_seed(self)?));
        }
        // `Map`'s `FromIterator` sizes the map from the iterator, then inserts in order.
        Ok(Value::Object(entries.into_iter().collect::<Map<_, _>>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same tree as serde_json's own parser: order, repeated keys, numbers, escapes,
    /// empty and nested containers.
    #[test]
    fn builds_the_tree_serde_json_builds() {
        let docs = [
            r#"{"b":1,"a":2,"c":{"z":[1,2,{"y":null}],"x":{}},"d":[]}"#,
            r#"{"k":1,"j":2,"k":3}"#,
            r#"{"n":-9223372036854775808,"u":18446744073709551615,"f":1.5e300,"g":-0.0,"h":0.1}"#,
            r#"{"s":"a\"b\\c\u00e9\ud83d\ude00\n","t":true,"f":false,"e":""}"#,
            r#"[1,"two",[3],{"four":4}]"#,
            r#""just a string""#,
            r#"  {"spaced" : [ 1 , 2 ] }  "#,
        ];
        for text in docs {
            let ours = parse(text).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
            assert_eq!(
                serde_json::to_string(&ours).unwrap(),
                serde_json::to_string(&theirs).unwrap(),
                "field order of {text}"
            );
        }
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for text in [
            r#"{"a":1"#,
            r#"{"a":1} x"#,
            r#"{"a":1e999}"#,
            "",
            r#"{1:2}"#,
        ] {
            assert!(parse(text).is_err(), "{text}");
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
        }
    }
}
