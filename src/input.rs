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

/// Shortest run of input characters that counts as repeating the input (fuzz targets and
/// property tests check errors against it).
pub const ECHO_RUN: usize = 8;

/// The first run of [`ECHO_RUN`] characters of `input` that `output` repeats, if any; runs that
/// also occur in one of `allowed` (the registry host, the messages' fixed words) do not count.
#[doc(hidden)]
pub fn echoed_run(input: &[u8], output: &str, allowed: &[&str]) -> Option<String> {
    let input = String::from_utf8_lossy(input);
    let chars: Vec<char> = input.chars().collect();
    chars.windows(ECHO_RUN).find_map(|w| {
        let run: String = w.iter().collect();
        (output.contains(&run) && !allowed.iter().any(|a| a.contains(&run))).then_some(run)
    })
}

/// The fixed words of the helper's and the kubelet provider's refusals, which input may happen
/// to share without being repeated (for [`echoed_run`]'s `allowed`).
#[doc(hidden)]
pub const REFUSAL_WORDS: &str =
    "ecr-edge: invalid input: store expects {\"ServerURL\",\"Username\",\
    \"Secret\"}: a value of the wrong type or shape: expected struct StoreInput struct Request \
    a string expected value at line column trailing characters invalid escape EOF while parsing \
    a string an object a value a list not a CredentialProviderRequest: the input ends too early \
    unsupported apiVersion: this provider speaks credentialprovider.kubelet.k8s.io/v1 and \
    credentialprovider.kubelet.k8s.io/v1beta1 the request's kind is not the image is on Docker \
    Hub, not in an Amazon ECR registry; narrow matchImages no credentials server URL username \
    key must be a string control character (\\u0000-\\u001F) found while parsing a string \
    invalid unicode code point lone leading surrogate in hex escape unexpected end of hex escape \
    invalid number number out of range recursion limit exceeded";

/// The registry host a `store` payload's `ServerURL` or a kubelet request's `image` names, if
/// any: the one piece of input an error may repeat.
#[doc(hidden)]
pub fn named_host(input: &[u8]) -> String {
    let input = String::from_utf8_lossy(input);
    let value_of = |key: &str| {
        input
            .split(key)
            .nth(1)
            .map(|rest| rest.split('"').next().unwrap_or("").to_owned())
    };
    if let Some(url) = value_of(r#""ServerURL":""#) {
        return crate::registry::host_of(&url).unwrap_or_default();
    }
    if let Some(image) = value_of(r#""image":""#) {
        return crate::frontend::kubelet::image_registry(&image).unwrap_or_default();
    }
    String::new()
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
