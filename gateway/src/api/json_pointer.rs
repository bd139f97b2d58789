//! Where in a JSON body an error happened, as a JSON Pointer (RFC 6901).
//!
//! serde_json reports the line and column of an error, not its path. The
//! body is well-formed JSON up to that place (otherwise the error would have
//! come earlier), so a small scanner over that prefix recovers the path:
//! the keys of the objects and the indexes of the arrays that are open
//! there, and the key being read. Key segments that are not plain field
//! names (`A-Z a-z 0-9 _ - .`, at most 64 bytes) are shown as `*`, so that a
//! pointer never repeats data from the body.

enum Frame {
    Object { key: Option<String>, after_colon: bool },
    Array { index: usize },
}

/// Escapes one pointer segment (`~` → `~0`, `/` → `~1`).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Whether a key looks like a field name (and not like data).
pub fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn safe_key(key: &str) -> String {
    if is_plain_key(key) {
        key.to_owned()
    } else {
        "*".to_owned()
    }
}

/// The JSON Pointer of the place at `line` (1-based) and `column` (bytes
/// since the line start, as serde_json counts) in `body`. Empty for the
/// document itself or when the place is unknown (line 0).
pub fn pointer_at(body: &[u8], line: usize, column: usize) -> String {
    if line == 0 {
        return String::new();
    }
    let mut start = 0usize;
    for _ in 1..line {
        match body[start..].iter().position(|&b| b == b'\n') {
            Some(p) => start += p + 1,
            None => break,
        }
    }
    let offset = start.saturating_add(column).min(body.len());
    pointer_at_offset(&body[..offset])
}

/// The pointer, relative to `base`, of the first member named `name` in the
/// value at `base` in `body` (objects searched depth-first).
pub fn find_key(body: &[u8], base: &str, name: &str) -> Option<String> {
    fn walk(v: &serde_json::Value, name: &str, out: &mut String) -> bool {
        match v {
            serde_json::Value::Object(map) => {
                if map.contains_key(name) {
                    out.push('/');
                    out.push_str(&escape(&safe_key(name)));
                    return true;
                }
                for (k, child) in map {
                    let len = out.len();
                    out.push('/');
                    out.push_str(&escape(&safe_key(k)));
                    if walk(child, name, out) {
                        return true;
                    }
                    out.truncate(len);
                }
                false
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let len = out.len();
                    out.push('/');
                    out.push_str(&i.to_string());
                    if walk(child, name, out) {
                        return true;
                    }
                    out.truncate(len);
                }
                false
            }
            _ => false,
        }
    }
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut out = String::new();
    walk(doc.pointer(base)?, name, &mut out).then_some(out)
}

fn pointer_at_offset(prefix: &[u8]) -> String {
    let mut frames: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < prefix.len() {
        match prefix[i] {
            b'{' => frames.push(Frame::Object {
                key: None,
                after_colon: false,
            }),
            b'[' => frames.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                frames.pop();
            }
            b',' => match frames.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { key, after_colon }) => {
                    *key = None;
                    *after_colon = false;
                }
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { after_colon, .. }) = frames.last_mut() {
                    *after_colon = true;
                }
            }
            b'"' => {
                let begin = i + 1;
                let mut j = begin;
                while j < prefix.len() && prefix[j] != b'"' {
                    if prefix[j] == b'\\' {
                        j += 1;
                    }
                    j += 1;
                }
                if let Some(Frame::Object {
                    key,
                    after_colon: false,
                }) = frames.last_mut()
                {
                    let raw = prefix.get(begin..j.min(prefix.len())).unwrap_or_default();
                    *key = Some(safe_key(&String::from_utf8_lossy(raw)));
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    let mut out = String::new();
    for f in &frames {
        match f {
            Frame::Object { key: Some(k), .. } => {
                out.push('/');
                out.push_str(&escape(k));
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => {
                out.push('/');
                out.push_str(&index.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Person {
        name: String,
        #[serde(default)]
        age: u8,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        persons: Vec<Person>,
        note: Option<String>,
    }

    fn pointer_of(json: &str) -> String {
        let e = serde_json::from_str::<Doc>(json).unwrap_err();
        pointer_at(json.as_bytes(), e.line(), e.column())
    }

    #[test]
    fn unknown_field_is_named() {
        let json = "{\"persons\": [{\"name\": \"a\"},\n {\"name\": \"b\", \"religion\": \"x\"}]}";
        assert_eq!(pointer_of(json), "/persons/1/religion");
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        assert_eq!(
            pointer_of(r#"{"persons": [{"name": "a", "age": "old"}]}"#),
            "/persons/0/age"
        );
        assert_eq!(pointer_of(r#"{"persons": [], "note": 5}"#), "/note");
    }

    #[test]
    fn missing_field_points_at_the_object() {
        assert_eq!(pointer_of(r#"{"persons": [{"age": 3}]}"#), "/persons/0");
    }

    #[test]
    fn keys_that_are_not_field_names_are_hidden() {
        assert_eq!(
            pointer_of(r#"{"persons": [{"name": "a", "Сейткали": 1}]}"#),
            "/persons/0/*"
        );
        assert_eq!(escape("a/b~c"), "a~1b~0c");
    }
}
