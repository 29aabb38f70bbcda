//! Many accounts on one device (issue 17): `[[registry]]` tables choosing the credentials per
//! registry, role hops on a shared base, named profiles, aliases, the kubelet's service-account
//! tokens, and the move from ecr-login. The fake STS and ECR keep a key table: each role has
//! its own keys, ECR answers each key with its own password, and a call signed with keys the
//! fake does not know, or an AssumeRole the role's trust does not allow, fails as AWS fails it.

use std::path::Path;
use std::process::Output;

use crate::daemon::Daemon;
use crate::support::iot::{FakeIot, ROLE_ALIAS};
use crate::support::{self, text, Call, Sandbox};

/// The shared base-image account: reached with the default source.
const BASE: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
/// The application account: reached through a role.
const APP: &str = "210987654321.dkr.ecr.eu-west-1.amazonaws.com";
/// A vendor's account: reached with a named profile.
const VENDOR: &str = "345678901234.dkr.ecr.eu-central-1.amazonaws.com";
const APP_ROLE: &str = "arn:aws:iam::210987654321:role/edge-pull";
const ALIAS: &str = "registry.corp.example";

/// A sandbox with a device identity and no AWS keys in the environment.
fn device() -> (Sandbox, FakeIot, String) {
    let mut sb = Sandbox::new();
    let (iot, config) = support::iot::device(&mut sb);
    (sb, iot, config)
}

fn write_config(sb: &mut Sandbox, config: &str) {
    let path = sb.dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    sb.set("ECR_EDGE_CONFIG", Some(path.to_str().unwrap()));
}

fn get(sb: &Sandbox, server_url: &str) -> Output {
    sb.helper("get", server_url.as_bytes())
}

/// The password of a successful `get`, with the whole output in the panic message otherwise.
fn password(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Secret"].as_str().unwrap().to_owned()
}

fn ecr_calls(calls: &[Call]) -> Vec<&Call> {
    calls
        .iter()
        .filter(|c| c.target.ends_with("GetAuthorizationToken"))
        .collect()
}

fn sts_calls<'a>(calls: &'a [Call], action: &str) -> Vec<&'a Call> {
    calls
        .iter()
        .filter(|c| c.sts.as_ref().is_some_and(|(a, _)| a == action))
        .collect()
}

/// Two accounts through the device identity: the base registry with the IoT role alias's
/// credentials, the application registry with a role assumed on top of them (in the IoT
/// endpoint's region). Each token is the one its own identity gets; neither registry's token
/// is handed out for the other, from the cache either.
#[test]
fn device_identity_and_a_role_hop_serve_two_accounts() {
    let (mut sb, iot, iot_config) = device();
    // Only the exchanged key may assume the role.
    let role = sb.fake.add_role(APP_ROLE, None, &[support::ACCESS_KEY_ID]);
    write_config(
        &mut sb,
        &format!("{iot_config}[[registry]]\nhost = \"{APP}\"\nrole_arn = \"{APP_ROLE}\"\n"),
    );
    assert_eq!(password(&get(&sb, BASE)), sb.fake.password());
    assert_eq!(
        password(&get(&sb, &format!("https://{APP}"))),
        role.password
    );
    let calls = sb.fake.calls();
    let assume = sts_calls(&calls, "AssumeRole");
    assert_eq!(assume.len(), 1, "{calls:?}");
    assert_eq!(assume[0].sts.as_ref().unwrap().1, APP_ROLE);
    assert_eq!(
        assume[0].access_key,
        support::ACCESS_KEY_ID,
        "signed with the exchanged key"
    );
    // The fake IoT endpoint (localhost) names no region: the registry's region applies.
    assert_eq!(assume[0].connect_host, "sts.eu-west-1.amazonaws.com");
    let ecr = ecr_calls(&calls);
    assert_eq!(ecr.len(), 2);
    assert!(ecr.iter().all(|c| c.authentic));
    assert_eq!(ecr[0].access_key, support::ACCESS_KEY_ID);
    assert_eq!(ecr[1].access_key, role.key_id);
    assert_eq!(iot.calls().len(), 2, "one exchange per cold helper run");
    // Both cached now, each under its own identity: served again without a call, unmixed.
    assert_eq!(password(&get(&sb, APP)), role.password);
    assert_eq!(password(&get(&sb, BASE)), sb.fake.password());
    assert_eq!(ecr_calls(&sb.fake.calls()).len(), 2);
}

/// A registry with a named profile uses that profile's keys whatever the environment holds; a
/// role on top of a profile sends the configured external ID and session name, and a wrong
/// external ID is refused by STS and explained (the ID itself never shown).
#[test]
fn profiles_and_external_ids() {
    let mut sb = Sandbox::new();
    let vendor_key = "AKIAVENDORKEY0000001";
    let vendor_secret = "vEnDoRsEcReT/0123456789abcdefghijklmnop";
    let vendor_password = sb.fake.add_static_key(vendor_key, vendor_secret);
    std::fs::write(
        sb.dir.path().join("aws-credentials"),
        format!(
            "[vendor]\naws_access_key_id = {vendor_key}\naws_secret_access_key = {vendor_secret}\n"
        ),
    )
    .unwrap();
    let role = sb
        .fake
        .add_role(APP_ROLE, Some("edge-fleet-7"), &[vendor_key]);
    let config = |ext: &str| {
        format!(
            "[[registry]]\nhost = \"{VENDOR}\"\nprofile = \"vendor\"\n\n\
             [[registry]]\nhost = \"{APP}\"\nprofile = \"vendor\"\nrole_arn = \"{APP_ROLE}\"\n\
             external_id = \"{ext}\"\nsession_name = \"edge-7\"\n"
        )
    };
    write_config(&mut sb, &config("edge-fleet-7"));
    assert_eq!(password(&get(&sb, VENDOR)), vendor_password);
    assert_eq!(password(&get(&sb, APP)), role.password);
    // The environment's keys still serve registries without a table.
    assert_eq!(password(&get(&sb, BASE)), sb.fake.password());
    let calls = sb.fake.calls();
    let assume = sts_calls(&calls, "AssumeRole");
    assert_eq!(assume.len(), 1);
    assert_eq!(
        assume[0].access_key, vendor_key,
        "the hop is signed with the profile"
    );
    assert_eq!(assume[0].form_external_id.as_deref(), Some("edge-fleet-7"));
    assert_eq!(
        assume[0].connect_host, "sts.eu-west-1.amazonaws.com",
        "the registry's region"
    );
    let keys: Vec<&str> = ecr_calls(&calls)
        .iter()
        .map(|c| c.access_key.as_str())
        .collect();
    assert_eq!(
        keys,
        [vendor_key, role.key_id.as_str(), support::ACCESS_KEY_ID]
    );

    // A wrong external ID: another identity, so no cached token; STS refuses; the message
    // names the action, the role and what to check.
    write_config(&mut sb, &config("wrong-ext-id-99"));
    let out = get(&sb, APP);
    assert_eq!(out.status.code(), Some(1));
    let msg = text(&out.stdout);
    assert!(
        msg.contains("sts:AssumeRole on arn:aws:iam::210987654321:role/edge-pull was denied")
            && msg.contains("trust policy")
            && msg.contains("sts:ExternalId"),
        "{msg}"
    );
    let all = format!("{msg}{}", text(&out.stderr));
    for secret in ["wrong-ext-id-99", vendor_secret, &role.password] {
        assert!(!all.contains(secret), "{secret} shown: {all}");
    }

    // A profile that does not exist is named as such.
    write_config(
        &mut sb,
        &format!("[[registry]]\nhost = \"{VENDOR}\"\nprofile = \"nosuch\"\n"),
    );
    let msg = text(&get(&sb, VENDOR).stdout);
    assert!(msg.contains("AWS profile \"nosuch\": not defined"), "{msg}");
}

/// An alias answers `get` with the alias as ServerURL and the registry's token; `erase` works
/// on it; a host that is neither an ECR host nor an alias is Docker's "not found".
#[test]
fn aliases_answer_with_their_own_name() {
    let mut sb = Sandbox::new();
    write_config(
        &mut sb,
        &format!(
            "[[registry]]\nhost = \"{BASE}\"\naliases = [\"{ALIAS}\", \"mirror.corp.example\"]\n"
        ),
    );
    let out = get(&sb, &format!("https://{ALIAS}"));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{{\"ServerURL\":\"https://{ALIAS}\",\"Username\":\"AWS\",\"Secret\":\"{}\"}}\n",
            sb.fake.password()
        )
    );
    let calls = sb.fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].connect_host, "api.ecr.us-west-2.amazonaws.com",
        "the real registry's endpoint"
    );
    // The alias shares the registry's cached token.
    assert_eq!(
        password(&get(&sb, "mirror.corp.example")),
        sb.fake.password()
    );
    assert_eq!(password(&get(&sb, BASE)), sb.fake.password());
    assert_eq!(sb.fake.calls().len(), 1);
    assert!(sb.helper("erase", ALIAS.as_bytes()).status.success());
    assert_eq!(password(&get(&sb, BASE)), sb.fake.password());
    assert_eq!(
        sb.fake.calls().len(),
        2,
        "erase through the alias dropped the token"
    );
    let out = get(&sb, "other.corp.example");
    assert_eq!(
        text(&out.stdout),
        "credentials not found in native keychain\n"
    );
    // A broken configuration never turns another registry's pull into an error.
    write_config(&mut sb, "[[registry]]\nhost = 3\n");
    let out = get(&sb, "other.corp.example");
    assert_eq!(
        text(&out.stdout),
        "credentials not found in native keychain\n"
    );
}

/// A token cached for one identity is never served to a request that resolves to another: the
/// same host, once with the default source and once with a role, gets each identity's token.
#[test]
fn caches_are_kept_apart_per_source() {
    let mut sb = Sandbox::new();
    let role = sb.fake.add_role(APP_ROLE, None, &[]);
    assert_eq!(
        password(&get(&sb, APP)),
        sb.fake.password(),
        "default source, cached"
    );
    write_config(
        &mut sb,
        &format!("[[registry]]\nhost = \"{APP}\"\nrole_arn = \"{APP_ROLE}\"\n"),
    );
    assert_eq!(
        password(&get(&sb, APP)),
        role.password,
        "not the default source's token"
    );
    write_config(&mut sb, "");
    assert_eq!(password(&get(&sb, APP)), sb.fake.password());
    assert_eq!(
        ecr_calls(&sb.fake.calls()).len(),
        2,
        "each identity fetched once"
    );
}

/// Cold `get`s racing for two registries behind two roles: every helper gets its own role's
/// token and each role makes exactly one ECR call.
#[test]
fn concurrent_cold_gets_for_two_roles_make_one_call_each() {
    let mut sb = Sandbox::new();
    let other = "arn:aws:iam::345678901234:role/vendor-pull";
    let app = sb.fake.add_role(APP_ROLE, None, &[]);
    let vendor = sb.fake.add_role(other, None, &[]);
    write_config(
        &mut sb,
        &format!(
            "[[registry]]\nhost = \"{APP}\"\nrole_arn = \"{APP_ROLE}\"\n\n\
             [[registry]]\nhost = \"{VENDOR}\"\nrole_arn = \"{other}\"\n"
        ),
    );
    let sb = &sb;
    let results: Vec<(String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let host = if i % 2 == 0 { APP } else { VENDOR };
                s.spawn(move || (host.to_owned(), password(&get(sb, host))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (host, pw) in &results {
        let want = if host == APP {
            &app.password
        } else {
            &vendor.password
        };
        assert_eq!(pw, want, "{host}");
    }
    let calls = sb.fake.calls();
    let ecr = ecr_calls(&calls);
    for key in [&app.key_id, &vendor.key_id] {
        assert_eq!(
            ecr.iter().filter(|c| &c.access_key == key).count(),
            1,
            "{calls:?}"
        );
    }
    assert_eq!(ecr.len(), 2);
}

/// The daemon resolves each registry through its table: it keeps the role's token for the
/// application registry and the default one for the base registry, serves each only to a
/// helper whose identity for that registry matches, and refuses the other.
#[test]
fn daemon_keeps_each_registry_on_its_own_source() {
    let mut sb = Sandbox::new();
    let role = sb.fake.add_role(APP_ROLE, None, &[]);
    let sink = sb.dir.path().join("auth.json");
    let config = format!(
        "[daemon]\nregistries = [\"{BASE}\", \"{APP}\"]\n\
         [[daemon.sink]]\nkind = \"containers-auth\"\npath = \"{}\"\n\n\
         [[registry]]\nhost = \"{APP}\"\nrole_arn = \"{APP_ROLE}\"\naliases = [\"{ALIAS}\"]\n",
        sink.display()
    );
    let d = Daemon::start(&mut sb, &config);
    d.wait_notify("READY=1", std::time::Duration::from_secs(20));
    let before = ecr_calls(&sb.fake.calls()).len();
    assert_eq!(before, 2, "{}", d.log());
    // The sink holds each registry's own token, the alias under its own name too.
    let start = std::time::Instant::now();
    let auth = |host: &str| {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&sink).unwrap_or_default()).unwrap_or_default();
        v["auths"][host]["auth"].as_str().map(str::to_owned)
    };
    while [BASE, APP, ALIAS].iter().any(|h| auth(h).is_none())
        && start.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let basic = |pw: &str| aws_smithy_types::base64::encode(format!("AWS:{pw}"));
    assert_eq!(auth(BASE), Some(basic(&sb.fake.password())));
    assert_eq!(auth(APP), Some(basic(&role.password)));
    assert_eq!(auth(ALIAS), Some(basic(&role.password)));
    assert_eq!(password(&get(&sb, APP)), role.password);
    assert_eq!(password(&get(&sb, ALIAS)), role.password);
    assert_eq!(password(&get(&sb, BASE)), sb.fake.password());
    assert_eq!(
        ecr_calls(&sb.fake.calls()).len(),
        before,
        "all served by the daemon"
    );
    assert!(
        std::fs::read_dir(sb.cache_dir()).map_or(true, |d| d.count() == 0),
        "nothing fetched by the helpers"
    );
    // A client whose identity for the application registry is the default one is refused.
    let default = ecr_edge::internal::credentials::Source::from_env().identity();
    let reply = ask(
        &sb.dir.path().join("agent.sock"),
        &ecr_edge::internal::agent::Request::Get {
            registry: APP.into(),
            identity: default.to_string(),
        },
    );
    assert!(
        reply.contains("refused") && !reply.contains(&role.password),
        "{reply}"
    );
}

fn ask(socket: &Path, request: &ecr_edge::internal::agent::Request) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let mut line = serde_json::to_vec(request).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    reply
}

/// The kubelet's service-account token with the reference provider's role annotation (or
/// `AWS_ECR_ROLE_ARN`): `AssumeRoleWithWebIdentity` for that role, unsigned, and the pod's
/// token in the answer; nothing cached on disk; a refused token explained without showing it.
#[test]
fn kubelet_service_account_token_assumes_the_pod_role() {
    let mut sb = Sandbox::new();
    let pod_role = "arn:aws:iam::210987654321:role/pod-pull";
    let sa_token = "eyJhbGciOiJSUzI1NiJ9.pod-service-account-token.sig";
    let role = sb.fake.add_web_identity_role(pod_role, sa_token);
    let cache = sb.dir.path().join("kubelet-cache");
    sb.set("ECR_EDGE_CACHE_DIR", Some(cache.to_str().unwrap()));
    let request = |token: &str, annotations: &str| {
        format!(
            r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"{APP}/app:1","serviceAccountToken":"{token}","serviceAccountAnnotations":{{{annotations}}}}}"#
        )
    };
    let provider = |sb: &Sandbox, input: &str| {
        let mut c = sb.command_for(&support::binary(), "kubelet-credential-provider");
        c.args::<[&str; 0], &str>([]);
        support::run_with_input(c, input.as_bytes())
    };
    let annotated = format!(r#""eks.amazonaws.com/ecr-role-arn":"{pod_role}""#);
    let out = provider(&sb, &request(sa_token, &annotated));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["auth"][APP]["password"], role.password.as_str());
    assert_eq!(v["cacheKeyType"], "Registry");
    let calls = sb.fake.calls();
    let web = sts_calls(&calls, "AssumeRoleWithWebIdentity");
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].access_key, "", "sent unsigned");
    assert_eq!(ecr_calls(&calls)[0].access_key, role.key_id);
    assert!(
        std::fs::read_dir(&cache).map_or(true, |d| d.count() == 0),
        "a pod's token is not cached on disk"
    );
    // The reference provider's variable names the role when the annotation is absent.
    sb.set("AWS_ECR_ROLE_ARN", Some(pod_role));
    let out = provider(&sb, &request(sa_token, ""));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["auth"][APP]["password"], role.password.as_str());
    // No service-account token: the device's source, as before.
    let plain = format!(
        r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"{APP}/app:1"}}"#
    );
    let v: serde_json::Value = serde_json::from_slice(&provider(&sb, &plain).stdout).unwrap();
    assert_eq!(v["auth"][APP]["password"], sb.fake.password().as_str());
    // A token the identity provider refuses.
    let out = provider(&sb, &request("forged-token-value", &annotated));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("sts:AssumeRoleWithWebIdentity on arn:aws:iam::210987654321:role/pod-pull")
            && err.contains("InvalidIdentityToken"),
        "{err}"
    );
    assert!(
        !err.contains("forged-token-value") && out.stdout.is_empty(),
        "{err}"
    );
    // A role that is not an ARN is refused before any call.
    let out = provider(
        &sb,
        &request(sa_token, r#""eks.amazonaws.com/ecr-role-arn":"pod-pull""#),
    );
    assert!(
        text(&out.stderr).contains("is not a role ARN"),
        "{}",
        text(&out.stderr)
    );
}

/// `AWS_ECR_DISABLE_CACHE` (the incumbent's variable): no token file is written or read.
#[test]
fn disable_cache_keeps_tokens_off_the_disk() {
    let mut sb = Sandbox::new();
    sb.set("AWS_ECR_DISABLE_CACHE", Some("1"));
    sb.set("AWS_ECR_IGNORE_CREDS_STORAGE", Some("true"));
    assert_eq!(password(&get(&sb, BASE)), sb.fake.password());
    assert_eq!(password(&get(&sb, BASE)), sb.fake.password());
    assert_eq!(ecr_calls(&sb.fake.calls()).len(), 2, "fetched each time");
    assert!(std::fs::read_dir(sb.cache_dir()).map_or(true, |d| d.count() == 0));
    let store = r#"{"ServerURL":"123456789012.dkr.ecr.us-west-2.amazonaws.com","Username":"AWS","Secret":"x"}"#;
    assert!(sb.helper("store", store.as_bytes()).status.success());
    assert!(sb.helper("erase", BASE.as_bytes()).status.success());
}

fn configure(sb: &Sandbox, args: &[&str]) -> Output {
    let mut c = support::command(&support::binary());
    c.arg("configure")
        .args(args)
        .env_clear()
        .envs(sb.vars.iter().map(|(k, v)| (k, v)));
    c.output().unwrap()
}

/// `configure` with no `--registry` writes every configured host and alias; `--k3s` lists the
/// aliases among the kubelet's image patterns.
#[test]
fn configure_writes_every_configured_host_and_alias() {
    let mut sb = Sandbox::new();
    write_config(
        &mut sb,
        &format!(
            "[daemon]\nregistries = [\"{BASE}\"]\n\n[[registry]]\nhost = \"{APP}\"\naliases = [\"{ALIAS}\"]\n"
        ),
    );
    let out = configure(&sb, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = sb.dir.path().join("home/.docker/config.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for host in [BASE, APP, ALIAS] {
        assert_eq!(v["credHelpers"][host], "ecr-edge", "{v}");
    }
    let root = sb.dir.path().join("root");
    let out = configure(&sb, &["--k3s", "--root", root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = std::fs::read_to_string(root.join("var/lib/rancher/credentialprovider/config.yaml"))
        .unwrap();
    assert!(yaml.contains(&format!("- \"{ALIAS}\"")), "{yaml}");
}

/// `configure --replace ecr-login` on configs as the incumbent's users have them.
#[test]
fn configure_replace_moves_from_ecr_login() {
    let sb = Sandbox::new();
    let path = sb.dir.path().join("home/.docker/config.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // credHelpers naming ecr-login, mixed with other helpers and other keys.
    let helpers = format!(
        r#"{{"auths":{{"ghcr.io":{{"auth":"dXNlcjpwYXNz"}}}},"credHelpers":{{"{BASE}":"ecr-login","gcr.io":"gcloud","{APP}":"ecr-login"}},"psFormat":"table {{{{.ID}}}}","n":1.50}}"#
    );
    std::fs::write(&path, &helpers).unwrap();
    let out = configure(&sb, &["--replace", "ecr-login", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("would change"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        helpers,
        "dry run writes nothing"
    );
    let out = configure(&sb, &["--replace", "ecr-login"]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        said.contains(&format!(
            "~ credHelpers[\"{BASE}\"] = \"ecr-edge\" (was \"ecr-login\")"
        )),
        "{said}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_str(&helpers).unwrap();
    assert_eq!(v["credHelpers"][BASE], "ecr-edge");
    assert_eq!(v["credHelpers"][APP], "ecr-edge");
    assert_eq!(v["credHelpers"]["gcr.io"], "gcloud");
    for key in ["auths", "psFormat", "n"] {
        assert_eq!(v[key], before[key], "{key}");
    }
    assert!(std::fs::read_to_string(&path).unwrap().contains("1.50"));
    // Twice: nothing more to do.
    let out = configure(&sb, &["--replace", "ecr-login"]);
    assert!(
        text(&out.stdout).contains("already up to date"),
        "{}",
        text(&out.stdout)
    );
    // --remove gives the entries back to ecr-login (issue 19): the file is as it was.
    let out = configure(&sb, &["--remove"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!(
            "~ credHelpers[\"{BASE}\"] = \"ecr-login\" (given back: was \"ecr-edge\")"
        )),
        "{}",
        text(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v, before, "restored");

    // credsStore ecr-login: per-registry entries for the ECR hosts among auths, store gone.
    let store = format!(
        r#"{{"credsStore":"ecr-login","auths":{{"https://{BASE}":{{}},"{VENDOR}":{{}},"docker.io":{{}}}},"credHelpers":{{"public.ecr.aws":"ecr-login"}}}}"#
    );
    std::fs::write(&path, &store).unwrap();
    let out = configure(&sb, &["--replace", "ecr-login"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("- credsStore = \"ecr-login\""),
        "{}",
        text(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(v.get("credsStore").is_none(), "{v}");
    for host in [BASE, VENDOR, "public.ecr.aws"] {
        assert_eq!(v["credHelpers"][host], "ecr-edge", "{v}");
    }
    assert!(v["credHelpers"].get("docker.io").is_none());
    assert_eq!(v["auths"].as_object().unwrap().len(), 3, "auths kept");
    // --remove puts the store back and takes out the entries added in its place.
    let out = configure(&sb, &["--remove"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_str(&store).unwrap();
    assert_eq!(v, before, "restored: {}", text(&out.stdout));
    assert!(
        !sb.dir
            .path()
            .join("home/.config/ecr-edge/replaced.json")
            .exists(),
        "nothing left to give back, no record kept"
    );
    // --remove with --replace is refused.
    let out = configure(&sb, &["--replace", "ecr-login", "--remove"]);
    assert_eq!(out.status.code(), Some(2));
}

/// In the daemon one IoT exchange feeds the default source and every role hop: three
/// registries in three accounts, one exchange, one AssumeRole per role, one token each.
#[test]
fn daemon_shares_one_device_exchange_between_roles() {
    let (mut sb, iot, iot_config) = device();
    let other = "arn:aws:iam::345678901234:role/vendor-pull";
    let app = sb.fake.add_role(APP_ROLE, None, &[support::ACCESS_KEY_ID]);
    let vendor = sb
        .fake
        .add_role(other, Some("v-7"), &[support::ACCESS_KEY_ID]);
    let config = format!(
        "{iot_config}[daemon]\nregistries = [\"{BASE}\", \"{APP}\", \"{VENDOR}\"]\n\n\
         [[registry]]\nhost = \"{APP}\"\nrole_arn = \"{APP_ROLE}\"\n\n\
         [[registry]]\nhost = \"{VENDOR}\"\nrole_arn = \"{other}\"\nexternal_id = \"v-7\"\n"
    );
    let d = Daemon::start(&mut sb, &config);
    d.wait_notify("READY=1", std::time::Duration::from_secs(20));
    assert_eq!(iot.calls().len(), 1, "one exchange: {}", d.log());
    let calls = sb.fake.calls();
    assert_eq!(sts_calls(&calls, "AssumeRole").len(), 2, "{calls:?}");
    let mut keys: Vec<String> = ecr_calls(&calls)
        .iter()
        .map(|c| c.access_key.clone())
        .collect();
    keys.sort();
    let mut want = vec![
        support::ACCESS_KEY_ID.to_owned(),
        app.key_id.clone(),
        vendor.key_id.clone(),
    ];
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(password(&get(&sb, VENDOR)), vendor.password);
    assert_eq!(password(&get(&sb, APP)), app.password);
    assert_eq!(password(&get(&sb, BASE)), sb.fake.password());
    assert_eq!(
        iot.calls().len(),
        1,
        "the helpers were served by the daemon"
    );
    // Status (and so the metrics) carry the certificate's and the exchanged credentials' ends.
    let status = crate::daemon::status_json(&sb);
    let now = ecr_edge::internal::token::now();
    let cert_end = status["device_certificate_expires_at"].as_i64().unwrap();
    let creds_end = status["iot_credentials_expire_at"].as_i64().unwrap();
    assert!(cert_end > now + 86_400, "{status:#}");
    assert!(creds_end > now && creds_end <= now + 3_600, "{status:#}");
    let sources: Vec<&str> = status["registries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    let app_source = format!("role {APP_ROLE} via the device identity (role alias {ROLE_ALIAS})");
    assert!(sources.contains(&app_source.as_str()), "{sources:?}");

    // What the daemon counted on the uplink is what each endpoint saw, byte for byte, TLS
    // handshakes included (once the connections' last records have arrived).
    let summed = |prefix: &str| {
        sb.fake
            .wires()
            .iter()
            .filter(|(h, _)| h.starts_with(prefix))
            .fold((0, 0, 0), |a, (_, w)| (a.0 + w.0, a.1 + w.1, a.2 + w.2))
    };
    let counted = |status: &serde_json::Value, kind: &str| {
        let u = status["upstream"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["endpoint"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {status:#}"))
            .clone();
        (
            u["bytes_sent"].as_u64().unwrap(),
            u["bytes_received"].as_u64().unwrap(),
            u["connections"].as_u64().unwrap(),
        )
    };
    let start = std::time::Instant::now();
    loop {
        let status = crate::daemon::status_json(&sb);
        let pairs = [
            (counted(&status, "ecr"), summed("api.ecr.")),
            (counted(&status, "sts"), summed("sts.")),
            (counted(&status, "iot"), iot.wire.totals()),
        ];
        if pairs.iter().all(|(ours, theirs)| ours == theirs) {
            assert_eq!(pairs[0].0 .2, 3, "one connection per ECR call");
            assert_eq!(pairs[2].0 .2, 1, "one exchange");
            assert!(pairs.iter().all(|(ours, _)| ours.0 > 0 && ours.1 > 0));
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "(sent, received, connections) counted by the daemon vs seen by the fakes \
             (ecr, sts, iot): {pairs:?}\n{status:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// One TLS configuration for every client in the daemon: a role hop made for one registry
/// resumes the session another registry's hop started, and so does the token call of a
/// registry with its own identity (rustls resumes only under the configuration that made the
/// session; issue 18, bytes on the uplink).
#[test]
fn registries_with_different_roles_resume_one_tls_session() {
    let mut sb = Sandbox::new();
    let app = "210987654321.dkr.ecr.us-west-2.amazonaws.com";
    let vendor = "345678901234.dkr.ecr.us-west-2.amazonaws.com";
    let vendor_role = "arn:aws:iam::345678901234:role/vendor-pull";
    let app_keys = sb.fake.add_role(APP_ROLE, None, &[support::ACCESS_KEY_ID]);
    let vendor_keys = sb
        .fake
        .add_role(vendor_role, None, &[support::ACCESS_KEY_ID]);
    let d = Daemon::start(
        &mut sb,
        &format!(
            "[daemon]\nregistries = [\"{BASE}\"]\n\n\
             [[registry]]\nhost = \"{app}\"\nrole_arn = \"{APP_ROLE}\"\n\n\
             [[registry]]\nhost = \"{vendor}\"\nrole_arn = \"{vendor_role}\"\n"
        ),
    );
    d.wait_notify("READY=1", std::time::Duration::from_secs(20));
    // One at a time, on demand: each finds the tickets the previous call left.
    assert_eq!(password(&get(&sb, app)), app_keys.password);
    assert_eq!(password(&get(&sb, vendor)), vendor_keys.password);
    let calls = sb.fake.calls();
    let hops = sts_calls(&calls, "AssumeRole");
    assert_eq!(hops.len(), 2, "{calls:?}");
    assert!(!hops[0].resumed, "the first hop is a full handshake");
    assert!(hops[1].resumed, "the second role's hop resumed: {calls:?}");
    let tokens = ecr_calls(&calls);
    assert_eq!(tokens.len(), 3, "{calls:?}");
    assert!(!tokens[0].resumed);
    assert!(
        tokens[1].resumed && tokens[2].resumed,
        "each role's token call resumed the base registry's session: {calls:?}"
    );
}

/// The README's migration commands, as written (issue 19): on a config of the incumbent's,
/// `--replace ecr-login --dry-run` changes nothing, `--replace ecr-login` moves every entry,
/// and `--remove` gives them back, leaving the file as it was.
#[test]
fn the_readmes_migration_commands_move_and_give_back() {
    let block = &crate::support::doc_block("README.md", "--replace ecr-login --dry-run");
    let commands: Vec<Vec<&str>> = block
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.strip_prefix("ecr-edge configure "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(commands.len(), 3, "{block}");
    let sb = Sandbox::new();
    let path = sb.dir.path().join("home/.docker/config.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let original = format!(
        r#"{{"credsStore":"ecr-login","auths":{{"{BASE}":{{}}}},"credHelpers":{{"{APP}":"ecr-login","gcr.io":"gcloud"}}}}"#
    );
    std::fs::write(&path, &original).unwrap();
    let read =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap() };
    let want: serde_json::Value = serde_json::from_str(&original).unwrap();
    for (i, args) in commands.iter().enumerate() {
        let out = configure(&sb, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        match i {
            0 => assert_eq!(read(), want, "the dry run wrote"),
            1 => {
                let v = read();
                assert_eq!(v["credHelpers"][BASE], "ecr-edge", "{v}");
                assert_eq!(v["credHelpers"][APP], "ecr-edge", "{v}");
                assert!(v.get("credsStore").is_none(), "{v}");
            }
            _ => assert_eq!(read(), want, "given back: {}", text(&out.stdout)),
        }
    }
}
