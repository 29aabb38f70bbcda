//! Reading outside input within a bound, and describing bad input without repeating it.
//!
//! serde's messages quote what they could not use (`invalid type: string "hunter2", expected
//! struct X`, ``unknown field `…` ``), and helper `store` input and kubelet requests carry
//! secrets (a registry password, a service account token). Errors about them say where the
//! input went wrong and what was expected, never what it held.

/// All of `input` if it is at most `limit` bytes, `None` if longer (reading stops just past the
/// limit, so an endless stdin cannot exhaust memory).
///
/// # Errors
/// What reading reported.
pub fn read_capped(input: &mut dyn std::io::Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut buf = Vec::new();
    input.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= limit).then_some(buf))
}

/// Describes a JSON parse error by line, column and kind, with serde's own words only where
/// they cannot contain input: syntax errors (`expected value`, `trailing characters`), a
/// missing field, and the "expected …" half of a type or value error, which names our types.
pub fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Io => format!("cannot read the input: {at}"),
        Category::Eof => format!("the input ends too early ({at})"),
        // Syntax messages are fixed texts followed by the position.
        Category::Syntax => e.to_string(),
        Category::Data => {
            let msg = e.to_string();
            // "missing field `Username`": the name is one of ours.
            if let Some(rest) = msg.strip_prefix("missing field `") {
                if let Some((field, _)) = rest.split_once('`') {
                    return format!("missing field {field:?} ({at})");
                }
            }
            // serde writes "<what it found>, expected <what we wanted>": the last
            // ", expected " starts our half, whatever the found value contained.
            match msg.rfind(", expected ") {
                Some(i) => {
                    let expected = &msg[i + ", expected ".len()..];
                    let expected = expected
                        .rsplit_once(" at line ")
                        .map_or(expected, |(head, _)| head);
                    format!("a value of the wrong type or shape: expected {expected} ({at})")
                }
                None => format!("a value of the wrong type or shape ({at})"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Creds {
        #[serde(rename = "Username")]
        username: String,
    }

    fn err(input: &str) -> String {
        describe_json_error(&serde_json::from_str::<Creds>(input).unwrap_err())
    }

    #[test]
    fn never_repeats_the_input() {
        for input in [
            r#""hunter2-SECRET""#,
            r#"{"Username": 12345678901234}"#,
            r#"{"hunter2-SECRET": 1}"#,
            r#"{"Username": ["hunter2-SECRET, expected x"]}"#,
            r#"{"Username": "a", "b": "hunter2-SECRET"}"#,
            "hunter2-SECRET",
            r#"{"Username": "hunter2-SECRET"#,
        ] {
            let e = err(input);
            assert!(
                !e.contains("hunter2") && !e.contains("12345678"),
                "{input} -> {e}"
            );
            assert!(e.contains("line 1 column"), "{e}");
        }
        assert_eq!(
            err(r#""hunter2-SECRET""#),
            "a value of the wrong type or shape: expected struct Creds (line 1 column 16)"
        );
        assert_eq!(err("{}"), r#"missing field "Username" (line 1 column 2)"#);
    }
}
