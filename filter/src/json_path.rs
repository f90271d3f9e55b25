//! Where in a JSON document an error is, as a path like `rules[2].limit.window`.
//!
//! serde_json reports a line and column; this walks the text up to there,
//! tracking the keys and indices of the containers it is inside. It replaces
//! a path-tracking deserializer wrapper, which doubled the size of every
//! deserializer in the filter (the wasm module must stay small).

enum Frame {
    Object {
        key: Option<String>,
        expect_key: bool,
    },
    Array {
        index: usize,
    },
}

/// The byte offset of the character at 1-based `line` and `column`, where
/// serde_json reports an error: the last character it read, which may be one
/// it only peeked at (the `]` after a bad list element). The path is taken
/// just before it.
pub fn offset_of(text: &[u8], line: usize, column: usize) -> usize {
    let mut offset = 0;
    for _ in 1..line {
        match text[offset..].iter().position(|&b| b == b'\n') {
            Some(newline) => offset += newline + 1,
            None => return text.len(),
        }
    }
    (offset + column.saturating_sub(1)).min(text.len())
}

/// The path of the innermost value being read at byte `offset`.
pub fn path_at(text: &[u8], offset: usize) -> String {
    let mut stack: Vec<Frame> = Vec::new();
    let end = offset.min(text.len());
    let mut i = 0;
    while i < end {
        match text[i] {
            b'{' => stack.push(Frame::Object {
                key: None,
                expect_key: true,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { key, expect_key }) => {
                    *key = None;
                    *expect_key = true;
                }
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < text.len() && text[j] != b'"' {
                    j += if text[j] == b'\\' { 2 } else { 1 };
                }
                if let Some(Frame::Object {
                    key,
                    expect_key: expect @ true,
                }) = stack.last_mut()
                {
                    *key =
                        Some(String::from_utf8_lossy(&text[start..j.min(text.len())]).into_owned());
                    *expect = false;
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(key), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// serde_json's message without its " at line L column C" suffix.
pub fn message_of(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, marker: &str) -> String {
        path_at(text.as_bytes(), text.find(marker).unwrap() + marker.len())
    }

    #[test]
    fn paths_follow_keys_and_indices() {
        let text = r#"{"a":1,"rules":[{"name":"x"},{"name":"y","limit":{"window":"5 minutes"}}]}"#;
        assert_eq!(at(text, r#""5 minutes""#), "rules[1].limit.window");
        assert_eq!(at(text, r#""a":1"#), "a");
        assert_eq!(at(text, r#""x"}"#), "rules[0]");
        assert_eq!(at(text, r#"{"name":"x"}"#), "rules[0]");
        assert_eq!(at(text, "]}"), "");
    }

    #[test]
    fn strings_with_brackets_and_escapes_do_not_confuse_it() {
        let text = r#"{"k":"[{\"","m":{"n":["a,b",2]}}"#;
        assert_eq!(at(text, r#"2"#), "m.n[1]");
    }

    #[test]
    fn lines_and_columns_become_offsets() {
        let text = b"{\n  \"a\": 1\n}";
        assert_eq!(offset_of(text, 2, 8), 9);
        assert_eq!(offset_of(text, 9, 1), text.len());
    }
}
