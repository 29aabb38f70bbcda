//! Library-level tests that need process-wide settings (`HTTPS_PROXY`, `SSL_CERT_FILE`), kept in
//! their own test binary so they cannot disturb the black-box tests' environment.

mod support;

use std::time::Duration;

use ecr_edge::config::IotConfig;
use ecr_edge::credentials::Source;
use ecr_edge::ecr::Fetcher;
use ecr_edge::registry::Registry;

use support::iot::{device_identity, FakeIot, KeyKind, Validity, ROLE_ALIAS, THING_NAME};
use support::{Sandbox, TestCa};

#[test]
fn one_exchange_serves_many_registries_in_one_process() {
    let sb = Sandbox::new();
    let device_ca = TestCa::new();
    let iot = FakeIot::start(&sb.ca, &device_ca);
    let (cert, key) = device_identity(
        sb.dir.path(),
        &device_ca,
        KeyKind::EcPkcs8,
        Validity::Current,
    );
    for (k, v) in &sb.vars {
        if !k.starts_with("AWS_ACCESS")
            && !k.starts_with("AWS_SECRET")
            && !k.starts_with("AWS_SESSION")
        {
            std::env::set_var(k, v);
        }
    }
    let cfg = IotConfig {
        endpoint: iot.endpoint.clone(),
        role_alias: ROLE_ALIAS.into(),
        thing_name: THING_NAME.into(),
        cert,
        key,
        ca: None,
        role_arn: None,
        allow_insecure_key_permissions: false,
    };
    let fetcher = Fetcher::new(&Source::Iot(cfg), "us-west-2", Duration::from_secs(10)).unwrap();
    for host in [
        "123456789012.dkr.ecr.us-west-2.amazonaws.com",
        "210987654321.dkr.ecr.eu-central-1.amazonaws.com",
        "public.ecr.aws",
    ] {
        let token = fetcher.fetch(&Registry::parse(host).unwrap()).unwrap();
        assert_eq!(token.password.expose(), sb.fake.password());
    }
    assert_eq!(iot.calls().len(), 1, "credentials reused across registries");
    let calls = sb.fake.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls
        .iter()
        .all(|c| c.authentic && c.access_key == support::ACCESS_KEY_ID));
}
