//! Order-preserving JSON objects whose values stay raw text.
//!
//! The gateway sometimes has to change one field deep inside a message (un-namespacing
//! `params.name`, unwrapping `params.uri`, remapping `_meta.progressToken`). Going through
//! `serde_json::Value` would reorder keys and reformat numbers (`1e400`, huge integers), so the
//! forwarded bytes would differ from the authorized ones. [`RawObject`] parses only one level,
//! keeps every member's bytes, and writes them back unchanged except for the edited member.
//! Input must already have passed [`crate::envelope::parse`] (no duplicate keys).

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// One JSON object level: members in their original order, values raw.
#[derive(Debug, Clone, Default)]
pub struct RawObject {
    members: Vec<(String, Box<RawValue>)>,
}

impl RawObject {
    /// Parses a raw value that should be an object; None when it is not one.
    pub fn parse(raw: &RawValue) -> Option<RawObject> {
        let mut de = serde_json::Deserializer::from_str(raw.get());
        de.deserialize_map(ObjectVisitor).ok()
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| &**v)
    }

    /// A member as a string, when it is a JSON string.
    pub fn get_str(&self, key: &str) -> Option<String> {
        self.get(key)
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
    }

    /// A member that is itself an object.
    pub fn get_object(&self, key: &str) -> Option<RawObject> {
        self.get(key).and_then(RawObject::parse)
    }

    /// Replaces a member in place, or appends it.
    pub fn set(&mut self, key: &str, value: Box<RawValue>) {
        match self.members.iter_mut().find(|(k, _)| k == key) {
            Some((_, slot)) => *slot = value,
            None => self.members.push((key.to_owned(), value)),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Box<RawValue>> {
        let index = self.members.iter().position(|(k, _)| k == key)?;
        Some(self.members.remove(index).1)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(k, _)| k.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Writes the object back: `{"k":raw,...}`.
    pub fn to_raw(&self) -> Box<RawValue> {
        let mut out = String::with_capacity(
            2 + self
                .members
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>(),
        );
        out.push('{');
        for (i, (key, value)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(key).unwrap_or_else(|_| "\"\"".into()));
            out.push(':');
            out.push_str(value.get());
        }
        out.push('}');
        RawValue::from_string(out).expect("members are valid JSON, so the object is")
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = RawObject;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
        let mut members = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
            members.push((key, value));
        }
        Ok(RawObject { members })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn editing_one_member_keeps_the_others_byte_for_byte() {
        let input = raw(
            r#"{"z":1e400,"name":"time__now","big":123456789012345678901234567890,"a":{"b" : [1, 2]}}"#,
        );
        let mut obj = RawObject::parse(&input).unwrap();
        obj.set("name", raw(r#""now""#));
        assert_eq!(
            obj.to_raw().get(),
            r#"{"z":1e400,"name":"now","big":123456789012345678901234567890,"a":{"b" : [1, 2]}}"#
        );
    }

    #[test]
    fn non_objects_are_refused() {
        assert!(RawObject::parse(&raw("[1]")).is_none());
        assert!(RawObject::parse(&raw("\"x\"")).is_none());
    }

    #[test]
    fn escaped_keys_are_rewritten_escaped() {
        let mut obj = RawObject::parse(&raw(r#"{"a\"b":1}"#)).unwrap();
        obj.set("c", raw("2"));
        assert_eq!(obj.to_raw().get(), r#"{"a\"b":1,"c":2}"#);
        assert_eq!(obj.get_str("missing"), None);
    }
}
