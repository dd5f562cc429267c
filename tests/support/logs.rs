//! Reading the gateway's log lines (e.g. `GatewayProcess::stderr_text`) in either format:
//! text (with ANSI colours) or JSON.

use serde_json::{Map, Value};

/// Every line of `log` parsed as a JSON object; fails the test on any other line.
#[track_caller]
pub fn json_lines(log: &str) -> Vec<Map<String, Value>> {
    log.lines()
        .enumerate()
        .map(|(i, line)| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => map,
            Ok(other) => panic!(
                "stderr line {} is JSON but not an object: {other}\n{log}",
                i + 1
            ),
            Err(e) => panic!("stderr line {} is not JSON ({e}): {line:?}\n{log}", i + 1),
        })
        .collect()
}

/// `text` without ANSI escape sequences (the text log format colours field names).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// True when a text-format log `line` holds `key=value` or `key="value"`, or a JSON-format
/// line holds `"key":value` or `"key":"value"`.
pub fn log_field(line: &str, key: &str, value: &str) -> bool {
    [
        format!("{key}={value}"),
        format!("{key}=\"{value}\""),
        format!("\"{key}\":{value}"),
        format!("\"{key}\":\"{value}\""),
    ]
    .iter()
    .any(|form| {
        let bytes = line.as_bytes();
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        line.match_indices(form.as_str()).any(|(i, m)| {
            let end = i + m.len();
            let before_ok = i == 0 || !word(bytes[i - 1]);
            let after_ok = end == line.len() || !word(bytes[end]);
            before_ok && after_ok
        })
    })
}
