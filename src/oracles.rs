//! Test oracles: what the property tests and fuzz targets check every error message against
//! (that it never repeats a run of the input, except the registry host and the fixed words of
//! the refusals). Not used by the binary; reached through `internal::input`.

/// Shortest run of input characters that counts as repeating the input (fuzz targets and
/// property tests check errors against it).
pub const ECHO_RUN: usize = 8;

/// The first run of [`ECHO_RUN`] characters of `input` that `output` repeats, if any; runs that
/// also occur in one of `allowed` (the registry host, the messages' fixed words) do not count.
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
        return crate::registry::image_registry(&image).unwrap_or_default();
    }
    String::new()
}
