//! Property tests for every parser that reads outside input (the same ones the cargo-fuzz
//! targets in fuzz/ attack): arbitrary input never panics, and generated valid input parses to
//! what it says.

use proptest::prelude::*;

use ecr_edge::internal::registry::{host_of, Registry};

/// Payloads that carry a secret (`{S}`) where a parser refuses it: every JSON kind, keys,
/// values of the wrong type, truncation, trailing text, bad escapes, unknown versions.
const SECRET_SHAPES: &[&str] = &[
    r#""{S}""#,
    "{S}",
    r#"{"Secret":{S}}"#,
    r#"{"Secret":["{S}"]}"#,
    r#"{"Secret":"{S}""#,
    r#"{"Secret":"{S}","Username":true}"#,
    r#"{"{S}":1,"ServerURL":""}"#,
    r#"{"Username":{"a":"{S}"}}"#,
    r#"{"Secret":"{S}"}{"x":1}"#,
    r#"{"Secret":"\q{S}"}"#,
    r#"{"ServerURL":"https://123456789012.dkr.ecr.us-west-2.amazonaws.com","Username":"AWS","Secret":"{S}"}x"#,
    r#"{"ServerURL":"registry.example.com","Username":"AWS","Secret":"{S}"}"#,
    r#"{"apiVersion":"{S}","kind":"CredentialProviderRequest","image":"123456789012.dkr.ecr.us-west-2.amazonaws.com/a"}"#,
    r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"{S}","image":"x"}"#,
    r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"registry.example.com/{S}"}"#,
    r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"{S}"}"#,
    r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","serviceAccountToken":{S},"image":"x/y"}"#,
    r#"{"apiVersion":["{S}"]}"#,
    r#"{"image":{"{S}":"{S}"}}"#,
];

/// The registry host named in a shape, which an error may name.
fn host_in(input: &str) -> String {
    ecr_edge::internal::input::named_host(input.as_bytes())
}

/// A region label as AWS writes them (`us-west-2`, `eusc-de-east-1`, `us-gov-west-1`).
fn region() -> impl Strategy<Value = String> {
    "(us|eu|ap|sa|ca|me|af|il|mx|cn|eusc-de|us-gov)-(north|south|east|west|central|northeast|southeast)-[1-9]"
}

fn account() -> impl Strategy<Value = String> {
    "[0-9]{12}"
}

/// (host, is FIPS, is dual-stack) for every private host form.
fn private_host() -> impl Strategy<Value = (String, String, String)> {
    (account(), region(), 0..7usize).prop_map(|(a, r, form)| {
        let host = match form {
            0 => format!("{a}.dkr.ecr.{r}.amazonaws.com"),
            1 => format!("{a}.dkr.ecr-fips.{r}.amazonaws.com"),
            2 => format!("{a}.dkr-ecr.{r}.on.aws"),
            3 => format!("{a}.dkr-ecr-fips.{r}.on.aws"),
            4 => format!("{a}.dkr.ecr.{r}.amazonaws.com.cn"),
            5 => format!("{a}.dkr-ecr.{r}.on.amazonwebservices.com.cn"),
            _ => format!("{a}.dkr.ecr.{r}.amazonaws.eu"),
        };
        (host, a, r)
    })
}

proptest! {
    #[test]
    fn registry_parsing_never_panics_and_agrees_with_host_of(s in ".{0,300}") {
        let host = host_of(&s);
        if let Some(r) = Registry::parse(&s) {
            prop_assert_eq!(Some(r.host()), host.as_deref());
            prop_assert_eq!(Registry::parse(r.host()), Some(r.clone()));
        }
    }

    #[test]
    fn every_private_form_parses_with_its_account_and_region_however_written(
        (host, account, region) in private_host(),
        scheme in prop::sample::select(vec!["", "https://", "HTTPS://"]),
        port in prop::sample::select(vec!["", ":443", ":5000"]),
        path in prop::sample::select(vec!["", "/", "/v2/", "/v2/app/manifests/1.0"]),
        upper in any::<bool>(),
    ) {
        let written = if upper { host.to_ascii_uppercase() } else { host.clone() };
        let input = format!("{scheme}{written}{port}{path}");
        let r = Registry::parse(&input).unwrap();
        prop_assert_eq!(r.host(), host.as_str());
        prop_assert_eq!(r.region(), region.as_str());
        match r.service() {
            ecr_edge::internal::registry::Service::Private { account: a, .. } => prop_assert_eq!(a, &account),
            other => prop_assert!(false, "{:?}", other),
        }
        // A look-alike under someone else's domain is never ECR.
        let lookalike = format!("{}.example.com", host);
        prop_assert!(Registry::parse(&lookalike).is_none());
    }

    #[test]
    fn kubelet_requests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = ecr_edge::internal::kubelet::parse_request(&bytes);
    }

    #[test]
    fn kubelet_requests_for_ecr_images_parse(
        (host, _, _) in private_host(),
        v1 in any::<bool>(),
        repo in "[a-z0-9]{1,12}(/[a-z0-9]{1,12}){0,2}",
        tag in "(:[a-z0-9.]{1,8})?",
    ) {
        let api = if v1 { ecr_edge::internal::kubelet::API_V1 } else { ecr_edge::internal::kubelet::API_V1BETA1 };
        let req = serde_json::json!({
            "apiVersion": api, "kind": "CredentialProviderRequest",
            "image": format!("{host}/{repo}{tag}"), "serviceAccountToken": "t",
        });
        let (version, registry) =
            ecr_edge::internal::kubelet::parse_request(req.to_string().as_bytes()).unwrap();
        prop_assert_eq!(version, api);
        prop_assert_eq!(registry.host(), host.as_str());
    }

    #[test]
    fn go_durations_are_exact(secs in 0u64..10_000_000) {
        let text = ecr_edge::internal::kubelet::go_duration(secs);
        let mut total = 0;
        let mut n = 0;
        for c in text.chars() {
            match c {
                'h' => { total += n * 3600; n = 0 }
                'm' => { total += n * 60; n = 0 }
                's' => { total += n; n = 0 }
                d => n = n * 10 + u64::from(d.to_digit(10).unwrap()),
            }
        }
        prop_assert_eq!(total, secs);
        prop_assert!(text.ends_with('s'));
    }

    #[test]
    fn config_parsing_never_panics(s in ".{0,400}") {
        let _ = ecr_edge::internal::config::parse(&s);
    }

    #[test]
    fn generated_daemon_configs_parse_to_their_values(
        hosts in proptest::collection::vec(private_host(), 0..4),
        backoff in 1u64..=86_400,
    ) {
        let list: Vec<String> = hosts.iter().map(|(h, _, _)| format!("{h:?}")).collect();
        let text = format!("[daemon]\nregistries = [{}]\nbackoff_max = {backoff}\n", list.join(", "));
        let d = ecr_edge::internal::config::parse(&text).unwrap().daemon.unwrap();
        prop_assert_eq!(d.registries.len(), hosts.len());
        prop_assert_eq!(d.backoff_max, backoff);
    }

    #[test]
    fn docker_config_edits_keep_everything_else_and_are_idempotent(
        other in proptest::collection::btree_map("[a-zA-Z]{1,8}", any::<i64>(), 0..5),
        helpers in proptest::collection::btree_map("[a-z.]{1,20}", "[a-z-]{1,10}", 0..4),
        (host, _, _) in private_host(),
    ) {
        let mut root = serde_json::Map::new();
        for (k, v) in &other {
            root.insert(k.clone(), (*v).into());
        }
        root.insert("credHelpers".into(), serde_json::to_value(&helpers).unwrap());
        let old = serde_json::Value::Object(root).to_string();
        let hosts = vec![host.clone()];
        let (added, changes) = ecr_edge::internal::configure::edit(&old, &hosts, false).unwrap();
        prop_assert_eq!(changes.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&added).unwrap();
        for (k, val) in &other {
            if k != "credHelpers" {
                prop_assert_eq!(&v[k], &serde_json::Value::from(*val));
            }
        }
        for (k, val) in &helpers {
            if k != &host {
                prop_assert_eq!(&v["credHelpers"][k], &serde_json::Value::from(val.as_str()));
            }
        }
        prop_assert_eq!(&v["credHelpers"][&host], "ecr-edge");
        let (_, again) = ecr_edge::internal::configure::edit(&added, &hosts, false).unwrap();
        prop_assert!(again.is_empty());
        // Removing takes out exactly what was added.
        let (removed, _) = ecr_edge::internal::configure::edit(&added, &hosts, true).unwrap();
        let v: serde_json::Value = serde_json::from_str(&removed).unwrap();
        prop_assert!(v.get("credHelpers").and_then(|h| h.get(&host)).is_none());
    }

    #[test]
    fn docker_config_edits_never_panic(s in ".{0,300}", remove in any::<bool>()) {
        let _ = ecr_edge::internal::configure::edit(&s, &["public.ecr.aws".to_owned()], remove);
    }

    #[test]
    fn iot_answers_never_panic(status in 0u16..600, body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = ecr_edge::internal::iot::parse_response(status, &body);
    }

    #[test]
    fn iot_credentials_parse_to_their_fields(
        key in "ASIA[A-Z0-9]{16}", secret in "[A-Za-z0-9/+]{40}", token in "[A-Za-z0-9/+=]{20,200}",
        secs in 1_700_000_000i64..2_000_000_000,
    ) {
        let expiration = aws_smithy_types::DateTime::from_secs(secs)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap();
        let body = serde_json::json!({"credentials": {
            "accessKeyId": key, "secretAccessKey": secret, "sessionToken": token,
            "expiration": expiration,
        }});
        let c = ecr_edge::internal::iot::parse_response(200, body.to_string().as_bytes()).unwrap();
        prop_assert_eq!(c.access_key_id, key);
        prop_assert_eq!(c.session_token, token);
        prop_assert_eq!(c.expiration, secs);
    }

    #[test]
    fn ecr_tokens_decode_to_their_password(pw in "[\\x21-\\x7e]{1,200}", life in 0i64..43_200) {
        let now = 1_800_000_000;
        let encoded = aws_smithy_types::base64::encode(format!("AWS:{pw}"));
        let got = ecr_edge::internal::ecr::token_from(Some(&encoded), Some(now + life), now);
        // A token with less than MIN_REMAINING_SECS left is refused, never handed out.
        if life < ecr_edge::internal::token::MIN_REMAINING_SECS {
            prop_assert!(got.is_err());
            return Ok(());
        }
        let t = got.unwrap();
        prop_assert_eq!(t.password.expose(), pw.as_str());
        // Anything else is refused or decoded, never a panic.
        let _ = ecr_edge::internal::ecr::token_from(Some(&pw), Some(now + life), now);
    }

    /// A secret placed anywhere in a `store` payload or a kubelet request, in any shape the
    /// parsers refuse, never comes back in the error (only the registry host may be named).
    #[test]
    fn errors_never_repeat_secret_input(secret in "[A-Za-z0-9+/=_.-]{8,40}", shape in 0..SECRET_SHAPES.len(), kubelet in any::<bool>()) {
        let input = SECRET_SHAPES[shape].replace("{S}", &secret);
        let (code, out) = if kubelet {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let code = ecr_edge::internal::kubelet::run(None, &mut input.as_bytes(), &mut out, &mut err).code();
            (code, String::from_utf8_lossy(&err).into_owned() + &String::from_utf8_lossy(&out))
        } else {
            let mut out = Vec::new();
            let code = ecr_edge::internal::helper::run(ecr_edge::internal::helper::Action::Store, None, &mut input.as_bytes(), &mut out, None).code();
            (code, String::from_utf8_lossy(&out).into_owned())
        };
        let host = host_in(&input);
        if code != 0 {
            let allowed = [host.as_str(), ecr_edge::internal::input::REFUSAL_WORDS];
            prop_assert_eq!(ecr_edge::internal::input::echoed_run(secret.as_bytes(), &out, &allowed), None, "input {} -> {}", input, out);
        }
    }

    #[test]
    fn helper_store_input_is_one_line_whatever_comes_in(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut out = Vec::new();
        let code = ecr_edge::internal::helper::run(ecr_edge::internal::helper::Action::Store, None, &mut &bytes[..], &mut out, None).code();
        prop_assert!(code == 0 || code == 1);
        prop_assert!(code == 0 && out.is_empty() || out.iter().filter(|&&b| b == b'\n').count() == 1);
    }
}

/// The fuzz targets' seed corpus (`fuzz/corpus/<target>/`), replayed through the same entry
/// points on stable Rust: every seed is handled without a panic, and the accepted ones keep the
/// targets' promises.
#[test]
fn the_fuzz_seed_corpus_replays_cleanly() {
    use ecr_edge::internal::{config, configure, ecr, helper, iot, kubelet};
    const NOW: i64 = 1_800_000_000;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let seeds = |target: &str| -> Vec<Vec<u8>> {
        let dir = root.join(target);
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert!(!seeds.is_empty(), "{target} has no seeds");
        seeds
    };
    let mut accepted = std::collections::BTreeMap::<&str, usize>::new();
    for data in seeds("registry_host") {
        let s = String::from_utf8(data).unwrap();
        if let Some(r) = Registry::parse(&s) {
            assert_eq!(Some(r.host()), host_of(&s).as_deref(), "{s}");
            *accepted.entry("registry_host").or_default() += 1;
        }
    }
    for data in seeds("config_file") {
        if config::parse(std::str::from_utf8(&data).unwrap()).is_ok() {
            *accepted.entry("config_file").or_default() += 1;
        }
    }
    for data in seeds("kubelet_request") {
        if kubelet::parse_request(&data).is_ok() {
            *accepted.entry("kubelet_request").or_default() += 1;
        }
    }
    for data in seeds("helper_stdin") {
        let mut out = Vec::new();
        let code = helper::run(helper::Action::Store, None, &mut &data[..], &mut out, None).code();
        assert!(code == 0 || code == 1);
    }
    for data in seeds("ecr_response") {
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
        let item = &v["authorizationData"][0];
        let expires = item["expiresAt"].as_f64().map(|f| f as i64);
        if let Ok(t) = ecr::token_from(item["authorizationToken"].as_str(), expires, NOW) {
            assert!(t.is_usable(NOW));
            *accepted.entry("ecr_response").or_default() += 1;
        }
    }
    for data in seeds("iot_response") {
        let (status, body) = data.split_first_chunk::<2>().unwrap();
        if iot::parse_response(u16::from_be_bytes(*status), body).is_ok() {
            *accepted.entry("iot_response").or_default() += 1;
        }
    }
    for data in seeds("docker_config") {
        let (&flags, rest) = data.split_first().unwrap();
        let hosts = vec!["123456789012.dkr.ecr.us-west-2.amazonaws.com".to_owned()];
        if let Ok((new, _)) =
            configure::edit(std::str::from_utf8(rest).unwrap(), &hosts, flags & 1 == 1)
        {
            let (_, again) = configure::edit(&new, &hosts, flags & 1 == 1).unwrap();
            assert!(again.is_empty(), "not idempotent");
            *accepted.entry("docker_config").or_default() += 1;
        }
    }
    // Datagrams the kernel sent (x86_64, little-endian) while a veth pair was made, given an
    // address and a default route, brought up and down.
    for data in seeds("netlink_route") {
        if ecr_edge::internal::link::says_link_may_be_back(&data) {
            *accepted.entry("netlink_route").or_default() += 1;
        }
    }
    for data in seeds("registry_response") {
        use ecr_edge::internal::images;
        let read = images::parse_manifest(&data).is_some()
            || images::parse_error(&data).is_some()
            || images::parse_tags(&data).is_some()
            || std::str::from_utf8(&data).is_ok_and(|s| images::Platform::parse(s).is_some());
        if read {
            *accepted.entry("registry_response").or_default() += 1;
        }
    }
    // Each corpus holds inputs that get past the first check, not only refusals.
    for target in [
        "netlink_route",
        "registry_response",
        "registry_host",
        "config_file",
        "kubelet_request",
        "ecr_response",
        "iot_response",
        "docker_config",
    ] {
        assert!(
            accepted.get(target).is_some_and(|&n| n > 0),
            "{target}: {accepted:?}"
        );
    }
}
