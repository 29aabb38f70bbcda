//! Device keys in a TPM: swtpm (the reference software TPM) with keys provisioned by
//! tpm2-tools, a certificate for the TPM key signed by a CA the fake IoT provider trusts, and
//! the real binary exchanging it (mutual TLS signed in the TPM) and calling ECR with the result.

use crate::support::iot::{FakeIot, ROLE_ALIAS, THING_NAME};
use crate::support::tpm::{certificate_for, csr_public_key, SignGate, SoftTpm};
use crate::support::{self, text, Sandbox, TestCa};

const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
const HANDLE: &str = "0x81000001";

/// Runs `ecr-edge iot ARGS` in `w`'s sandbox.
fn iot(w: &TpmWorld, args: &[&str]) -> std::process::Output {
    let mut c = w.sb.command_for(&support::binary(), "iot");
    c.args(args);
    support::run_with_input(c, b"")
}

struct TpmWorld {
    sb: Sandbox,
    iot: FakeIot,
    tpm: SoftTpm,
    device_ca: TestCa,
}

impl TpmWorld {
    /// A `get` through the exchange succeeds.
    fn get_succeeds(&self) {
        let out = self.sb.helper("get", HOST.as_bytes());
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    fn new() -> TpmWorld {
        let mut sb = Sandbox::new();
        let device_ca = TestCa::new();
        let iot = FakeIot::start(&sb.ca, &device_ca);
        sb.without_aws_keys();
        let config = sb.dir.path().join("config.toml");
        sb.set("ECR_EDGE_CONFIG", Some(config.to_str().unwrap()));
        TpmWorld {
            sb,
            iot,
            tpm: SoftTpm::start(),
            device_ca,
        }
    }

    fn configure(&self, key: &str) {
        let config = format!(
            "[iot]\nendpoint = \"{}\"\nrole_alias = \"{ROLE_ALIAS}\"\nthing_name = \"{THING_NAME}\"\n\
             cert = \"{}\"\nkey = \"{key}\"\ntpm = \"{}\"\n",
            self.iot.endpoint,
            self.sb.dir.path().join("device.pem.crt").display(),
            self.tpm.tcti()
        );
        std::fs::write(self.sb.dir.path().join("config.toml"), config).unwrap();
    }
}

#[test]
fn a_persistent_tpm_key_signs_the_exchange() {
    let w = TpmWorld::new();
    // What the device holds: the TPM's blobs (the private part wrapped by the TPM) and the
    // certificate.
    let device = w.sb.dir.path().join("device");
    std::fs::create_dir(&device).unwrap();
    let spki = w.tpm.persistent_key(&device, "ecc256", HANDLE);
    certificate_for(&spki, &w.device_ca, &w.sb.dir.path().join("device.pem.crt"));
    w.configure(&format!("handle:{HANDLE}"));
    w.get_succeeds();
    let calls = w.iot.calls();
    assert_eq!(calls.len(), 1, "one exchange");
    assert_eq!(calls[0].thing.as_deref(), Some(THING_NAME));
    let ecr = w.sb.fake.calls();
    assert_eq!(ecr.len(), 1);
    assert!(
        ecr[0].authentic,
        "the ECR call is signed with the exchanged keys"
    );
    assert_eq!(ecr[0].access_key, support::ACCESS_KEY_ID);
    // No private key in the clear on the device: the key is in the TPM.
    for entry in std::fs::read_dir(&device).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "a private key file on the device"
        );
    }
    // doctor says where the key lives.
    let out = support::run_with_input(w.sb.command_for(&support::binary(), "doctor"), b"");
    assert!(
        text(&out.stdout).contains(&format!("in the TPM {} at handle:{HANDLE}", w.tpm.tcti())),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn tpm_problems_are_named_in_words() {
    let w = TpmWorld::new();
    let dir = w.sb.dir.path();
    let spki = w.tpm.persistent_key(dir, "ecc256", HANDLE);
    certificate_for(&spki, &w.device_ca, &dir.join("device.pem.crt"));
    // An empty handle.
    w.configure("handle:0x81000002");
    let out = w.sb.helper("get", HOST.as_bytes());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("the handle holds no object"),
        "{}",
        text(&out.stderr)
    );
    // A key that cannot sign: a restricted decryption (storage) key made persistent.
    w.tpm.tool(
        "createprimary",
        &[
            "-C",
            "o",
            "-G",
            "ecc",
            "-c",
            dir.join("p.ctx").to_str().unwrap(),
        ],
    );
    w.tpm.tool(
        "evictcontrol",
        &[
            "-C",
            "o",
            "-c",
            dir.join("p.ctx").to_str().unwrap(),
            "0x81000003",
        ],
    );
    w.configure("handle:0x81000003");
    let out = w.sb.helper("get", HOST.as_bytes());
    assert!(
        text(&out.stderr).contains("restricted key"),
        "{}",
        text(&out.stderr)
    );
    // A key that is not the certificate's: both fingerprints.
    w.tpm.persistent_key(dir, "ecc256", "0x81000004");
    w.configure("handle:0x81000004");
    let out = w.sb.helper("get", HOST.as_bytes());
    assert!(
        text(&out.stderr).contains("does not belong to certificate"),
        "{}",
        text(&out.stderr)
    );
    // No TPM device (a freed port could be another test's TPM a moment later: a device path
    // that cannot exist says it deterministically).
    let config = dir.join("config.toml");
    let text_now = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_now.replace(&w.tpm.tcti(), "device:/nonexistent/tpmrm0"),
    )
    .unwrap();
    let out = w.sb.helper("get", HOST.as_bytes());
    assert!(
        text(&out.stderr).contains("there is no TPM device /nonexistent/tpmrm0")
            && text(&out.stderr).contains("dtoverlay=tpm-slb9670"),
        "{}",
        text(&out.stderr)
    );
    assert!(w.iot.calls().is_empty(), "no exchange was tried");
}

/// What the TPM refuses for reasons outside ecr-edge, in words: a key with a password, the
/// TPM in dictionary-attack lockout (after that key's failed uses), and a TPM device this user
/// may not open (the `tss` group's words).
#[test]
fn tpm_refusals_are_named_in_words() {
    let w = TpmWorld::new();
    let dir = w.sb.dir.path();
    let p = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    // A DA-protected key with a password, as `tpm2_create -p` makes it.
    w.tpm.tool(
        "createprimary",
        &["-C", "o", "-G", "ecc", "-c", &p("p.ctx")],
    );
    w.tpm.tool(
        "create",
        &[
            "-C",
            &p("p.ctx"),
            "-G",
            "ecc256",
            "-p",
            "secret",
            "-u",
            &p("k.pub"),
            "-r",
            &p("k.priv"),
        ],
    );
    w.tpm.tool(
        "load",
        &[
            "-C",
            &p("p.ctx"),
            "-u",
            &p("k.pub"),
            "-r",
            &p("k.priv"),
            "-c",
            &p("k.ctx"),
        ],
    );
    w.tpm.tool(
        "evictcontrol",
        &["-C", "o", "-c", &p("k.ctx"), "0x81000005"],
    );
    w.tpm.tool(
        "readpublic",
        &["-c", "0x81000005", "-f", "der", "-o", &p("k.der")],
    );
    certificate_for(
        &std::fs::read(p("k.der")).unwrap(),
        &w.device_ca,
        &dir.join("device.pem.crt"),
    );
    // One failed use puts the TPM in lockout for ten minutes.
    w.tpm.tool(
        "dictionarylockout",
        &[
            "--setup-parameters",
            "--max-tries=1",
            "--recovery-time=600",
            "--lockout-recovery-time=600",
        ],
    );
    w.configure("handle:0x81000005");
    let out = w.sb.helper("get", HOST.as_bytes());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("the key has a password; ecr-edge uses keys without one"),
        "{}",
        text(&out.stderr)
    );
    let out = w.sb.helper("get", HOST.as_bytes());
    assert!(
        text(&out.stderr).contains("dictionary-attack lockout")
            && text(&out.stderr).contains("tpm2_dictionarylockout --clear-lockout"),
        "{}",
        text(&out.stderr)
    );
    // A TPM device this user may not open (root is made to obey the file's mode).
    let device = dir.join("tpmrm0");
    std::fs::write(&device, b"").unwrap();
    std::fs::set_permissions(&device, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let config = dir.join("config.toml");
    let now = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        now.replace(&w.tpm.tcti(), &format!("device:{}", device.display())),
    )
    .unwrap();
    let helper = w.sb.helper_command("get");
    let c = if support::is_root() {
        // The same command (under the test's emulator, if any) run by setpriv.
        let mut c = std::process::Command::new("setpriv");
        c.arg("--bounding-set=-dac_override,-dac_read_search")
            .arg(helper.get_program())
            .args(helper.get_args())
            .env_clear()
            .envs(helper.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    } else {
        helper
    };
    let out = support::run_with_input(c, HOST.as_bytes());
    assert!(
        text(&out.stderr).contains(&format!("may not open the TPM device {}", device.display()))
            && text(&out.stderr).contains("tss group"),
        "{}",
        text(&out.stderr)
    );
    assert!(w.iot.calls().is_empty(), "no exchange was finished");
}

/// The whole on-device flow: `iot keygen --tpm` makes the key in the TPM, `iot csr` has the TPM
/// sign a request that openssl verifies, the CA issues the certificate for the request's key,
/// and the exchange presents it; a second keygen at the same handle is refused.
#[test]
fn keygen_and_csr_in_the_tpm_make_an_identity_the_exchange_accepts() {
    let w = TpmWorld::new();
    let tpm = w.tpm.tcti();
    let out = iot(&w, &["keygen", "--tpm", &tpm, "--handle", "0x81000020"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("handle:0x81000020"),
        "{}",
        text(&out.stdout)
    );
    let out = iot(
        &w,
        &[
            "csr",
            "--key",
            "handle:0x81000020",
            "--tpm",
            &tpm,
            "--subject",
            &format!("CN={THING_NAME}"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spki = csr_public_key(&out.stdout, w.sb.dir.path());
    // The key the request names is the TPM's (tpm2-tools reads it back).
    let der = w.sb.dir.path().join("tpm-public.der");
    w.tpm.tool(
        "readpublic",
        &["-c", "0x81000020", "-f", "der", "-o", der.to_str().unwrap()],
    );
    assert_eq!(spki, std::fs::read(&der).unwrap());
    certificate_for(&spki, &w.device_ca, &w.sb.dir.path().join("device.pem.crt"));
    w.configure("handle:0x81000020");
    w.get_succeeds();
    assert_eq!(w.iot.calls().len(), 1);
    assert!(w.sb.fake.calls()[0].authentic);
    // A key is never replaced.
    let out = iot(&w, &["keygen", "--tpm", &tpm, "--handle", "0x81000020"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("holds a key already"),
        "{}",
        text(&out.stderr)
    );
}

/// RSA 2048 keys in the TPM: one made persistent with tpm2-tools and one made by the
/// tpm2-openssl provider sign the exchange's TLS 1.3 handshake (RSA-PSS); `iot csr` signs a
/// request with the TPM's RSA key (PKCS#1 v1.5) that openssl verifies.
#[test]
fn rsa_keys_in_the_tpm_sign_the_exchange() {
    let w = TpmWorld::new();
    let dir = w.sb.dir.path();
    let spki = w.tpm.persistent_key(dir, "rsa2048", "0x81000030");
    certificate_for(&spki, &w.device_ca, &dir.join("device.pem.crt"));
    w.configure("handle:0x81000030");
    w.get_succeeds();
    assert_eq!(w.iot.calls().len(), 1);
    assert!(w.sb.fake.calls()[0].authentic);
    let out = support::run_with_input(w.sb.command_for(&support::binary(), "doctor"), b"");
    assert!(
        text(&out.stdout).contains("RSA 2048"),
        "{}",
        text(&out.stdout)
    );
    let tpm = w.tpm.tcti();
    let out = iot(
        &w,
        &[
            "csr",
            "--key",
            "handle:0x81000030",
            "--tpm",
            &tpm,
            "--subject",
            &format!("CN={THING_NAME}"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(csr_public_key(&out.stdout, dir), spki);
    // A wrapped RSA key from the tpm2-openssl provider.
    let (key, public) = (dir.join("rsa.tss2.pem"), dir.join("rsa.pub.der"));
    let (key_s, public_s) = (key.to_str().unwrap(), public.to_str().unwrap());
    openssl_tpm2(
        &w.tpm,
        &[
            "genpkey",
            "-provider",
            "tpm2",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "bits:2048",
            "-out",
            key_s,
        ],
    );
    openssl_tpm2(
        &w.tpm,
        &[
            "pkey",
            "-provider",
            "tpm2",
            "-provider",
            "default",
            "-in",
            key_s,
            "-pubout",
            "-outform",
            "DER",
            "-out",
            public_s,
        ],
    );
    certificate_for(
        &std::fs::read(&public).unwrap(),
        &w.device_ca,
        &dir.join("device.pem.crt"),
    );
    w.configure(key_s);
    std::fs::remove_dir_all(w.sb.cache_dir()).ok();
    let before = w.iot.calls().len();
    w.get_succeeds();
    assert_eq!(
        w.iot.calls().len(),
        before + 1,
        "the wrapped key made its own exchange"
    );
}

/// Devices without a TPM: `iot keygen --out` makes a 0600 key file (never over an existing
/// one), and `iot csr` signs a request with it that openssl verifies; the subject is as asked.
#[test]
fn keygen_out_and_csr_make_a_file_identity() {
    use std::os::unix::fs::PermissionsExt;
    let w = TpmWorld::new();
    let key = w.sb.dir.path().join("device.key");
    let out = iot(&w, &["keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = std::fs::read(&key).unwrap();
    let out = iot(&w, &["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("never replaces a key"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key is untouched");
    let out = iot(
        &w,
        &[
            "csr",
            "--key",
            key.to_str().unwrap(),
            "--subject",
            "CN=edge-thing-0001,O=Example Fleet",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let request = w.sb.dir.path().join("file.csr");
    std::fs::write(&request, &out.stdout).unwrap();
    let subject = std::process::Command::new("openssl")
        .args(["req", "-noout", "-subject", "-in"])
        .arg(&request)
        .output()
        .unwrap();
    assert!(
        text(&subject.stdout).contains("CN = edge-thing-0001, O = Example Fleet"),
        "{}",
        text(&subject.stdout)
    );
    let spki = csr_public_key(&out.stdout, w.sb.dir.path());
    certificate_for(&spki, &w.device_ca, &w.sb.dir.path().join("device.pem.crt"));
    w.configure(key.to_str().unwrap());
    w.get_succeeds();
    // A subject without a CN is a usage error, in words.
    let out = iot(
        &w,
        &["csr", "--key", key.to_str().unwrap(), "--subject", "O=x"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("needs a CN"),
        "{}",
        text(&out.stderr)
    );
}

/// Runs openssl with the tpm2-openssl provider against `tpm`; panics with its words on failure.
fn openssl_tpm2(tpm: &SoftTpm, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .env("TPM2OPENSSL_TCTI", tpm.tcti())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        text(&out.stderr)
    );
}

/// A key made by `openssl genpkey -provider tpm2` (a `TSS2 PRIVATE KEY` file, wrapped by the
/// owner hierarchy's storage key or by a persistent parent) works unchanged; doctor names the
/// parent; a parent that is gone is named in words.
#[test]
fn keys_made_by_the_tpm2_openssl_provider_work_unchanged() {
    let w = TpmWorld::new();
    let dir = w.sb.dir.path();
    let (key, public) = (dir.join("device.tss2.pem"), dir.join("device.pub.der"));
    let (key_s, public_s) = (key.to_str().unwrap(), public.to_str().unwrap());
    let genpkey = |parent: Option<&str>| {
        let mut args = vec!["genpkey", "-provider", "tpm2", "-algorithm", "EC"];
        args.extend(["-pkeyopt", "group:P-256", "-out", key_s]);
        let opt = parent.map(|p| format!("parent:{p}"));
        if let Some(opt) = &opt {
            args.extend(["-pkeyopt", opt]);
        }
        let _ = std::fs::remove_file(&key);
        openssl_tpm2(&w.tpm, &args);
        openssl_tpm2(
            &w.tpm,
            &[
                "pkey",
                "-provider",
                "tpm2",
                "-provider",
                "default",
                "-in",
                key_s,
                "-pubout",
            ],
        );
        openssl_tpm2(
            &w.tpm,
            &[
                "pkey",
                "-provider",
                "tpm2",
                "-provider",
                "default",
                "-in",
                key_s,
                "-pubout",
                "-outform",
                "DER",
                "-out",
                public_s,
            ],
        );
        certificate_for(
            &std::fs::read(&public).unwrap(),
            &w.device_ca,
            &dir.join("device.pem.crt"),
        );
    };
    // Under the owner hierarchy's storage key (made again from its template for each use).
    genpkey(None);
    w.configure(key_s);
    w.get_succeeds();
    let out = support::run_with_input(w.sb.command_for(&support::binary(), "doctor"), b"");
    assert!(
        text(&out.stdout).contains("under parent 0x40000001 (the owner hierarchy's storage key)"),
        "{}",
        text(&out.stdout)
    );
    // Under a persistent parent.
    let parent = dir.join("parent.ctx");
    w.tpm.tool(
        "createprimary",
        &["-C", "o", "-G", "ecc", "-c", parent.to_str().unwrap()],
    );
    w.tpm.tool(
        "evictcontrol",
        &["-C", "o", "-c", parent.to_str().unwrap(), "0x81000100"],
    );
    genpkey(Some("0x81000100"));
    std::fs::remove_dir_all(w.sb.cache_dir()).ok();
    let before = w.iot.calls().len();
    w.get_succeeds();
    assert_eq!(
        w.iot.calls().len(),
        before + 1,
        "the new key made its own exchange"
    );
    // The parent removed: named.
    w.tpm.tool("evictcontrol", &["-C", "o", "-c", "0x81000100"]);
    std::fs::remove_dir_all(w.sb.cache_dir()).ok();
    let out = w.sb.helper("get", HOST.as_bytes());
    assert!(
        text(&out.stderr).contains("parent 0x81000100 is not in the TPM"),
        "{}",
        text(&out.stderr)
    );
}

/// What a TPM key costs the daemon: with credentials that are stale at once (every fetch
/// exchanges), the exchanges after the first resume its TLS session and need no signature.
/// The count is in `status --json` and the metrics; the figure is printed.
#[test]
fn the_daemon_resumes_sessions_so_the_tpm_signs_rarely() {
    let mut w = TpmWorld::new();
    let device = w.sb.dir.path().join("device");
    std::fs::create_dir(&device).unwrap();
    let spki = w.tpm.persistent_key(&device, "ecc256", HANDLE);
    certificate_for(&spki, &w.device_ca, &w.sb.dir.path().join("device.pem.crt"));
    w.configure(&format!("handle:{HANDLE}"));
    // Less life than the refresh margin: stale at once, so every fetch exchanges.
    w.iot.set_credentials_life(60);
    let config = std::fs::read_to_string(w.sb.dir.path().join("config.toml")).unwrap()
        + &format!("[daemon]\nregistries = [\"{HOST}\"]\n");
    let d = crate::daemon::Daemon::start(&mut w.sb, &config);
    d.wait_notify("READY=1", std::time::Duration::from_secs(20));
    for region in ["eu-west-1", "eu-central-1", "ap-southeast-2", "sa-east-1"] {
        let host = format!("123456789012.dkr.ecr.{region}.amazonaws.com");
        let out = w.sb.helper("get", host.as_bytes());
        assert!(out.status.success(), "{}\n{}", text(&out.stdout), d.log());
    }
    let status = support::run_with_input(
        {
            let mut c = w.sb.command_for(&support::binary(), "status");
            c.arg("--json");
            c
        },
        b"",
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let exchanges = w.iot.calls().len();
    let signatures = status["tpm_signatures"].as_u64().unwrap();
    println!("TPM key: {exchanges} IoT exchanges, {signatures} TPM signature(s)");
    assert!(exchanges >= 5, "every fetch exchanged: {exchanges}");
    assert_eq!(
        signatures, 1,
        "only the first handshake signs; the others resume"
    );
}

/// The daemon keeps serving while its TPM takes its time to sign (the exchange runs on a thread
/// of its own): with the TPM's signature held back by a relay, `status` answers over the socket;
/// once the signature comes, the token is served.
#[test]
fn the_daemon_serves_while_the_tpm_signs() {
    let mut w = TpmWorld::new();
    let device = w.sb.dir.path().join("device");
    std::fs::create_dir(&device).unwrap();
    let spki = w.tpm.persistent_key(&device, "ecc256", HANDLE);
    certificate_for(&spki, &w.device_ca, &w.sb.dir.path().join("device.pem.crt"));
    w.configure(&format!("handle:{HANDLE}"));
    let gate = SignGate::start(&w.tpm);
    let config = std::fs::read_to_string(w.sb.dir.path().join("config.toml"))
        .unwrap()
        .replace(&w.tpm.tcti(), &gate.tcti())
        + &format!("[daemon]\nregistries = [\"{HOST}\"]\n");
    let d = crate::daemon::Daemon::start(&mut w.sb, &config);
    gate.wait_for_a_signature(std::time::Duration::from_secs(20));
    let status = || {
        let mut c = w.sb.command_for(&support::binary(), "status");
        c.arg("--json");
        support::run_with_input(c, b"")
    };
    let held = status();
    // The report itself is the answer (its exit status says no token is held yet).
    let report: Option<serde_json::Value> = serde_json::from_slice(&held.stdout).ok();
    assert!(
        report.is_some_and(|r| r["schema"].is_u64()),
        "status while the TPM signs: {}{}\n{}",
        text(&held.stdout),
        text(&held.stderr),
        d.log()
    );
    assert!(w.iot.calls().is_empty(), "the exchange is still waiting");
    gate.release();
    d.wait_notify("READY=1", std::time::Duration::from_secs(20));
    w.get_succeeds();
    assert_eq!(w.iot.calls().len(), 1);
}

/// Rotation with TPM keys: a new key at another handle and its certificate, the configuration
/// pointed at them, `systemctl reload` (SIGHUP): the next exchange presents the new certificate,
/// signed by the new key.
#[test]
fn a_reload_rotates_to_a_new_tpm_key() {
    let mut w = TpmWorld::new();
    let dir = w.sb.dir.path().to_owned();
    let old = dir.join("old");
    std::fs::create_dir(&old).unwrap();
    let spki = w.tpm.persistent_key(&old, "ecc256", HANDLE);
    certificate_for(&spki, &w.device_ca, &dir.join("device.pem.crt"));
    w.configure(&format!("handle:{HANDLE}"));
    // An hour of role credentials: no exchange is due until the reload.
    w.iot.set_credentials_life(3600);
    let daemon = format!("[daemon]\nregistries = [\"{HOST}\"]\n");
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap() + &daemon;
    let d = crate::daemon::Daemon::start(&mut w.sb, &config);
    d.wait_notify("READY=1", std::time::Duration::from_secs(20));
    assert_eq!(w.iot.calls().len(), 1);
    // The new identity: a key at the next handle, its certificate.
    let new = dir.join("new");
    std::fs::create_dir(&new).unwrap();
    let spki = w.tpm.persistent_key(&new, "ecc256", "0x81000002");
    certificate_for(&spki, &w.device_ca, &new.join("device.pem.crt"));
    let new_leaf = crate::support::iot::der_of(&std::fs::read(new.join("device.pem.crt")).unwrap());
    std::fs::rename(new.join("device.pem.crt"), dir.join("device.pem.crt")).unwrap();
    w.configure("handle:0x81000002");
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap() + &daemon;
    std::fs::write(dir.join("config.toml.new"), config).unwrap();
    std::fs::rename(dir.join("config.toml.new"), dir.join("config.toml")).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let start = std::time::Instant::now();
    while !d.log().contains("configuration reloaded")
        && start.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out =
        w.sb.helper("get", b"123456789012.dkr.ecr.eu-west-1.amazonaws.com");
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), d.log());
    let calls = w.iot.calls();
    assert_eq!(
        calls.last().and_then(|c| c.client_cert.clone()),
        Some(new_leaf),
        "the first exchange after the reload presents the new certificate\n{}",
        d.log()
    );
}
