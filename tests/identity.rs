//! Device identities made the way fleets make them, with the `openssl` command line (as the
//! AWS IoT developer guide shows), end to end: the helper exchanges each one with the fake IoT
//! provider over mutual TLS (the fake records the certificate it saw) and signs the ECR call
//! with the exchanged credentials. And every local refusal, with its exact message.
//!
//! The keys are generated at test time; nothing is committed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::iot::{der_of, FakeIot, ROLE_ALIAS, THING_NAME};
use crate::support::{text, Sandbox, TestCa};

const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";

/// Runs `openssl ARGS` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        text(&out.stderr)
    );
}

/// A private key as fleets make them.
#[derive(Debug, Clone, Copy)]
enum Key {
    /// `openssl genpkey` RSA of this size: PKCS#8 (`BEGIN PRIVATE KEY`).
    RsaPkcs8(u32),
    /// The same, converted to PKCS#1 (`BEGIN RSA PRIVATE KEY`, as AWS-generated keys are).
    RsaPkcs1(u32),
    /// `openssl ecparam -genkey` on this curve: SEC1 with an `EC PARAMETERS` block before it.
    EcSec1WithParams(&'static str),
    /// SEC1 without the parameters block (`-noout`).
    EcSec1(&'static str),
    /// Converted to PKCS#8.
    EcPkcs8(&'static str),
}

/// Writes the key as `name` in `dir` (mode 0600).
fn make_key(dir: &Path, name: &str, key: Key) -> PathBuf {
    match key {
        Key::RsaPkcs8(bits) | Key::RsaPkcs1(bits) => {
            let bits = format!("rsa_keygen_bits:{bits}");
            openssl(
                dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    &bits,
                    "-out",
                    "k.tmp",
                ],
            );
            if matches!(key, Key::RsaPkcs1(_)) {
                openssl(dir, &["rsa", "-in", "k.tmp", "-traditional", "-out", name]);
            } else {
                std::fs::rename(dir.join("k.tmp"), dir.join(name)).unwrap();
            }
        }
        Key::EcSec1WithParams(curve) => {
            openssl(dir, &["ecparam", "-name", curve, "-genkey", "-out", name]);
        }
        Key::EcSec1(curve) => {
            openssl(
                dir,
                &["ecparam", "-name", curve, "-genkey", "-noout", "-out", name],
            );
        }
        Key::EcPkcs8(curve) => {
            openssl(
                dir,
                &[
                    "ecparam", "-name", curve, "-genkey", "-noout", "-out", "k.tmp",
                ],
            );
            openssl(
                dir,
                &["pkcs8", "-topk8", "-nocrypt", "-in", "k.tmp", "-out", name],
            );
        }
    }
    let _ = std::fs::remove_file(dir.join("k.tmp"));
    let path = dir.join(name);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A CA made as the AWS IoT guide shows (`openssl req -x509 -new -nodes`): `ca.pem`, `ca.key`
/// in `dir`.
fn make_ca(dir: &Path, key: Key, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    make_key(dir, "ca.key", key);
    let subject = format!("/CN={name}");
    openssl(
        dir,
        &[
            "req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "1024", "-subj",
            &subject, "-out", "ca.pem",
        ],
    );
    dir.join("ca.pem")
}

/// How the device certificate is made.
#[derive(Debug, Clone, Copy)]
enum Cert {
    /// `openssl x509 -req … -CA` without an extensions file: X.509 v1.
    CaV1,
    /// The same with an extensions file (`basicConstraints`, `keyUsage`, `extendedKeyUsage`):
    /// X.509 v3.
    CaV3,
    /// `openssl req -x509`: self-signed, registered without a CA.
    SelfSigned,
    /// Signed by an intermediate CA; the file holds the device certificate, then the
    /// intermediate.
    ViaIntermediate,
}

const EXT_LEAF: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";
const EXT_CA: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n";

/// Makes the device certificate for `key` in `dir` as `name`; returns its path and the
/// device certificate's DER.
fn make_cert(dir: &Path, ca: &Path, key: &Path, how: Cert, name: &str) -> (PathBuf, Vec<u8>) {
    let ca_dir = ca.parent().unwrap();
    let key = key.to_str().unwrap();
    let (ca_pem, ca_key) = (
        ca.to_str().unwrap().to_owned(),
        ca_dir.join("ca.key").to_str().unwrap().to_owned(),
    );
    std::fs::write(dir.join("leaf.ext"), EXT_LEAF).unwrap();
    std::fs::write(dir.join("ca.ext"), EXT_CA).unwrap();
    let sign = |csr: &str, out: &str, by: (&str, &str), ext: Option<&str>| {
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            by.0,
            "-CAkey",
            by.1,
            "-CAcreateserial",
            "-out",
            out,
            "-days",
            "500",
            "-sha256",
        ];
        if let Some(ext) = ext {
            args.extend(["-extfile", ext]);
        }
        openssl(dir, &args);
    };
    let subj = "/CN=AWS IoT Certificate";
    match how {
        Cert::SelfSigned => openssl(
            dir,
            &[
                "req", "-x509", "-new", "-key", key, "-sha256", "-days", "365", "-subj", subj,
                "-out", name,
            ],
        ),
        Cert::CaV1 | Cert::CaV3 => {
            openssl(
                dir,
                &[
                    "req",
                    "-new",
                    "-key",
                    key,
                    "-subj",
                    subj,
                    "-out",
                    "device.csr",
                ],
            );
            let ext = matches!(how, Cert::CaV3).then_some("leaf.ext");
            sign("device.csr", name, (&ca_pem, &ca_key), ext);
        }
        Cert::ViaIntermediate => {
            make_key(dir, "int.key", Key::EcPkcs8("prime256v1"));
            openssl(
                dir,
                &[
                    "req",
                    "-new",
                    "-key",
                    "int.key",
                    "-subj",
                    "/CN=Fleet Intermediate",
                    "-out",
                    "int.csr",
                ],
            );
            sign("int.csr", "int.pem", (&ca_pem, &ca_key), Some("ca.ext"));
            openssl(
                dir,
                &[
                    "req",
                    "-new",
                    "-key",
                    key,
                    "-subj",
                    subj,
                    "-out",
                    "device.csr",
                ],
            );
            sign("device.csr", "leaf.pem", ("int.pem", "int.key"), None);
            let chain = std::fs::read_to_string(dir.join("leaf.pem")).unwrap()
                + &std::fs::read_to_string(dir.join("int.pem")).unwrap();
            std::fs::write(dir.join(name), chain).unwrap();
        }
    }
    let path = dir.join(name);
    let der = der_of(&std::fs::read(&path).unwrap());
    (path, der)
}

/// The X.509 version `openssl` reports for the first certificate in `path`.
fn version_of(path: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(path)
        .output()
        .unwrap();
    text(&out.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with("Version:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_default()
}

/// Rewrites `path` with CRLF line ends.
fn crlf(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap().replace('\n', "\r\n");
    std::fs::write(path, text).unwrap();
}

/// A sandbox whose device identity is `cert` and `key`, against a fake IoT provider that has
/// registered `ca` (or, for a self-signed certificate, the certificate itself).
struct World {
    sb: Sandbox,
    iot: FakeIot,
}

impl World {
    fn new() -> World {
        let mut sb = Sandbox::new();
        // The fake's own device CA is not used: the matrix registers openssl-made ones.
        let iot = FakeIot::start(&sb.ca, &TestCa::new());
        sb.without_aws_keys();
        World { sb, iot }
    }

    fn configure(&mut self, cert: &Path, key: &Path) {
        let config = self.sb.dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[iot]\nendpoint = \"{}\"\nrole_alias = \"{ROLE_ALIAS}\"\nthing_name = \"{THING_NAME}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                self.iot.endpoint,
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        self.sb
            .set("ECR_EDGE_CONFIG", Some(config.to_str().unwrap()));
    }

    fn get(&self) -> (bool, String) {
        self.get_for(HOST)
    }

    fn get_for(&self, registry: &str) -> (bool, String) {
        let out = self.sb.helper("get", registry.as_bytes());
        (out.status.success(), text(&out.stdout))
    }
}

/// Every certificate and key form AWS IoT accepts works end to end: the exchange presents that
/// certificate, and the ECR call is signed with the exchanged credentials.
#[test]
fn every_identity_fleets_make_with_openssl_works() {
    let rows: &[(&str, Cert, Key, bool)] = &[
        (
            "RSA 2048 PKCS#8, CA-signed v1",
            Cert::CaV1,
            Key::RsaPkcs8(2048),
            false,
        ),
        (
            "RSA 2048 PKCS#1, CA-signed v1",
            Cert::CaV1,
            Key::RsaPkcs1(2048),
            false,
        ),
        (
            "RSA 3072 PKCS#1, CA-signed v3",
            Cert::CaV3,
            Key::RsaPkcs1(3072),
            false,
        ),
        (
            "RSA 3072 PKCS#8, CA-signed v1",
            Cert::CaV1,
            Key::RsaPkcs8(3072),
            false,
        ),
        (
            "RSA 4096 PKCS#8, CA-signed v1",
            Cert::CaV1,
            Key::RsaPkcs8(4096),
            false,
        ),
        (
            "RSA 4096 PKCS#1, CA-signed v3",
            Cert::CaV3,
            Key::RsaPkcs1(4096),
            false,
        ),
        (
            "EC P-256 SEC1 with EC PARAMETERS, CA-signed v1",
            Cert::CaV1,
            Key::EcSec1WithParams("prime256v1"),
            false,
        ),
        (
            "EC P-256 PKCS#8, CA-signed v3",
            Cert::CaV3,
            Key::EcPkcs8("prime256v1"),
            false,
        ),
        (
            "EC P-384 SEC1, CA-signed v1",
            Cert::CaV1,
            Key::EcSec1("secp384r1"),
            false,
        ),
        (
            "EC P-384 PKCS#8, CA-signed v3, CRLF line ends",
            Cert::CaV3,
            Key::EcPkcs8("secp384r1"),
            true,
        ),
        (
            "EC P-384 SEC1 with EC PARAMETERS, CRLF, CA-signed v1",
            Cert::CaV1,
            Key::EcSec1WithParams("secp384r1"),
            true,
        ),
        (
            "EC P-256 PKCS#8, self-signed",
            Cert::SelfSigned,
            Key::EcPkcs8("prime256v1"),
            false,
        ),
        (
            "RSA 2048 PKCS#1, self-signed",
            Cert::SelfSigned,
            Key::RsaPkcs1(2048),
            false,
        ),
        (
            "EC P-256 SEC1, leaf and intermediate in one file",
            Cert::ViaIntermediate,
            Key::EcSec1("prime256v1"),
            false,
        ),
    ];
    let mut results = Vec::new();
    for (i, &(row, how, key_form, use_crlf)) in rows.iter().enumerate() {
        let mut w = World::new();
        let dir = w.sb.dir.path().join(format!("row{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        // Half the rows under an RSA CA, half under an EC one.
        let ca_key = if i % 2 == 0 {
            Key::RsaPkcs8(2048)
        } else {
            Key::EcPkcs8("secp384r1")
        };
        let ca = make_ca(&dir.join("ca"), ca_key, "Fleet CA");
        let key = make_key(&dir, "private.pem.key", key_form);
        let (cert, leaf) = make_cert(&dir, &ca, &key, how, "certificate.pem.crt");
        match how {
            Cert::SelfSigned => w.iot.register_device(&leaf),
            _ => w.iot.register_ca(&std::fs::read(&ca).unwrap()),
        }
        if use_crlf {
            crlf(&cert);
            crlf(&key);
        }
        let version = version_of(&cert);
        match how {
            Cert::CaV1 | Cert::ViaIntermediate => {
                assert!(version.contains("1 (0x0)"), "{row}: {version}")
            }
            Cert::CaV3 | Cert::SelfSigned => {
                assert!(version.contains("3 (0x2)"), "{row}: {version}")
            }
        }
        w.configure(&cert, &key);
        let (ok, out) = w.get();
        assert!(ok, "{row}: {out}");
        let calls = w.iot.calls();
        assert_eq!(calls.len(), 1, "{row}");
        assert_eq!(
            calls[0].client_cert.as_deref(),
            Some(leaf.as_slice()),
            "{row}: the exchange presented this certificate"
        );
        let ecr = w.sb.fake.calls();
        assert!(
            ecr.len() == 1 && ecr[0].authentic,
            "{row}: ECR call signed with the exchanged credentials"
        );
        results.push(format!("ok  {row} ({version})"));
    }
    eprintln!("identity matrix:\n{}", results.join("\n"));
}

/// The AWS-generated layout: `<id>-certificate.pem.crt` and `<id>-private.pem.key`, an RSA
/// 2048 PKCS#1 key and a v3 certificate.
#[test]
fn the_aws_generated_pair_layout_works() {
    let mut w = World::new();
    let dir = w.sb.dir.path().join("aws");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = make_ca(
        &dir.join("ca"),
        Key::RsaPkcs8(2048),
        "Amazon RSA 2048 M01/O=Amazon/C=US",
    );
    let id = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let key = make_key(&dir, &format!("{id}-private.pem.key"), Key::RsaPkcs1(2048));
    let (cert, leaf) = make_cert(
        &dir,
        &ca,
        &key,
        Cert::CaV3,
        &format!("{id}-certificate.pem.crt"),
    );
    w.iot.register_ca(&std::fs::read(&ca).unwrap());
    w.configure(&cert, &key);
    let (ok, out) = w.get();
    assert!(ok, "{out}");
    assert_eq!(
        w.iot.calls()[0].client_cert.as_deref(),
        Some(leaf.as_slice())
    );
}

/// Each local refusal names its real cause, before any network call.
#[test]
fn every_refusal_names_its_real_cause() {
    let mut w = World::new();
    let dir = w.sb.dir.path().join("refusals");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = make_ca(&dir.join("ca"), Key::RsaPkcs8(2048), "Fleet CA");
    w.iot.register_ca(&std::fs::read(&ca).unwrap());
    let key = make_key(&dir, "private.pem.key", Key::EcPkcs8("prime256v1"));
    let (cert, _) = make_cert(&dir, &ca, &key, Cert::CaV1, "certificate.pem.crt");
    let refused = |w: &mut World, cert: &Path, key: &Path| {
        w.configure(cert, key);
        let (ok, out) = w.get();
        assert!(!ok, "{out}");
        assert!(w.iot.calls().is_empty(), "no exchange was tried: {out}");
        out
    };

    // Unreadable and non-PEM files.
    let missing = dir.join("missing.key");
    let out = refused(&mut w, &cert, &missing);
    assert!(
        out.contains(&format!("cannot read {}", missing.display())),
        "{out}"
    );
    let not_pem = dir.join("not-pem.crt");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let out = refused(&mut w, &not_pem, &key);
    assert!(
        out.contains(&format!(
            "{}: no CERTIFICATE block in the file (expected -----BEGIN CERTIFICATE-----)",
            not_pem.display()
        )),
        "{out}"
    );

    // Encrypted keys, PKCS#8 and traditional.
    for (name, args) in [
        (
            "enc8.key",
            vec![
                "pkcs8",
                "-topk8",
                "-in",
                "private.pem.key",
                "-passout",
                "pass:secret",
                "-out",
                "enc8.key",
            ],
        ),
        (
            "enc1.key",
            vec![
                "ec",
                "-in",
                "private.pem.key",
                "-aes256",
                "-passout",
                "pass:secret",
                "-out",
                "enc1.key",
            ],
        ),
    ] {
        openssl(&dir, &args);
        let enc = dir.join(name);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&enc, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = refused(&mut w, &cert, &enc);
        assert!(
            out.contains(&format!(
                "private key {} is encrypted, and ecr-edge runs unattended without a passphrase; \
                 decrypt it once with `openssl pkey -in {} -out KEY.new`",
                enc.display(),
                enc.display()
            )),
            "{name}: {out}"
        );
    }

    // A curve TLS here cannot sign with.
    let p521 = make_key(&dir, "p521.key", Key::EcPkcs8("secp521r1"));
    let out = refused(&mut w, &cert, &p521);
    assert!(
        out.contains(&format!(
            "private key {} is EC P-521, which TLS here cannot sign with",
            p521.display()
        )),
        "{out}"
    );

    // A key that belongs to another certificate: both public-key fingerprints, as openssl
    // computes them.
    let other = make_key(&dir, "other.key", Key::EcPkcs8("prime256v1"));
    let out = refused(&mut w, &cert, &other);
    let fingerprint = |args: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        text(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    let cert_fp = fingerprint("openssl x509 -in certificate.pem.crt -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum");
    let key_fp = fingerprint("openssl pkey -in other.key -pubout -outform DER | sha256sum");
    assert!(
        out.contains(&format!(
            "private key {} does not belong to certificate {}: the certificate's public key has SHA-256 {cert_fp}, the private key's {key_fp}",
            other.display(),
            cert.display()
        )),
        "{out}"
    );

    // The chain in the wrong order: intermediate first.
    let chain_dir = dir.join("chain");
    std::fs::create_dir_all(&chain_dir).unwrap();
    let chain_key = make_key(&chain_dir, "private.pem.key", Key::EcPkcs8("prime256v1"));
    make_cert(
        &chain_dir,
        &ca,
        &chain_key,
        Cert::ViaIntermediate,
        "right.pem",
    );
    let wrong = chain_dir.join("wrong.pem");
    std::fs::write(
        &wrong,
        std::fs::read_to_string(chain_dir.join("int.pem")).unwrap()
            + &std::fs::read_to_string(chain_dir.join("leaf.pem")).unwrap(),
    )
    .unwrap();
    let out = refused(&mut w, &wrong, &chain_key);
    assert!(
        out.contains(&format!(
            "{}: the private key belongs to certificate 2 in the file, not the first; put the device certificate first",
            wrong.display()
        )),
        "{out}"
    );
}

/// `doctor` shows the identity in one block, with the certificate ID the AWS IoT console shows
/// (SHA-256 of the certificate) and a warning when fewer than 30 days are left.
#[test]
fn doctor_shows_the_identity_as_the_console_does() {
    for (days, status, left) in [
        ("500", "pass", ["(500 days left)", "(499 days left)"]),
        ("10", "warn", ["(10 days left)", "(9 days left)"]),
    ] {
        let mut w = World::new();
        let dir = w.sb.dir.path().join("doctor");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = make_ca(&dir.join("ca"), Key::RsaPkcs8(2048), "Fleet CA");
        let key = make_key(&dir, "private.pem.key", Key::EcPkcs8("prime256v1"));
        openssl(
            &dir,
            &[
                "req",
                "-new",
                "-key",
                "private.pem.key",
                "-subj",
                "/CN=AWS IoT Certificate",
                "-out",
                "d.csr",
            ],
        );
        let (ca_pem, ca_key) = (ca.to_str().unwrap(), dir.join("ca/ca.key"));
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "d.csr",
                "-CA",
                ca_pem,
                "-CAkey",
                ca_key.to_str().unwrap(),
                "-CAcreateserial",
                "-out",
                "certificate.pem.crt",
                "-days",
                days,
                "-sha256",
            ],
        );
        let cert = dir.join("certificate.pem.crt");
        w.configure(&cert, &key);
        w.iot.register_ca(&std::fs::read(&ca).unwrap());
        let out = crate::support::run_with_input(
            w.sb.command_for(&crate::support::binary(), "doctor"),
            b"",
        );
        let report = text(&out.stdout);
        let block = report
            .split("\n")
            .skip_while(|l| !l.contains("iot-identity"))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n");
        let id = ecr_edge::internal::cert::parse(&der_of(&std::fs::read(&cert).unwrap()))
            .map(|_| {
                let out = Command::new("sh")
                    .arg("-c")
                    .arg("openssl x509 -in certificate.pem.crt -outform DER | sha256sum")
                    .current_dir(&dir)
                    .output()
                    .unwrap();
                text(&out.stdout)
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .unwrap();
        assert!(
            block.starts_with(&format!("{}  iot-identity", status.to_uppercase())),
            "{report}"
        );
        assert!(
            left.iter().any(|l| block.contains(l)),
            "{left:?} in:\n{block}"
        );
        for line in [
            "subject       CN=AWS IoT Certificate",
            "issuer        CN=Fleet CA",
            "version       X.509 v1",
            "key           EC P-256",
            &format!("certificate ID {id}"),
            "chain         0 intermediate certificate(s)",
            "(mode 0600, owner uid",
        ] {
            assert!(block.contains(line), "{line:?} missing in:\n{block}");
        }
        // The credentials endpoint is probed as the exchange reaches it, with the device
        // certificate (it wants one), so it is reachable.
        assert!(
            report.contains(&format!("{} reachable", w.iot.endpoint)),
            "{report}"
        );
    }
}

/// A daemon running on one openssl-made identity, with the next pair a rotation job delivers
/// waiting beside it (a new key of another type, under the same CA).
struct Rotation {
    w: World,
    d: crate::daemon::Daemon,
    cert: PathBuf,
    key: PathBuf,
    new_cert: PathBuf,
    new_key: PathBuf,
    old_leaf: Vec<u8>,
    new_leaf: Vec<u8>,
}

impl Rotation {
    /// `life`: the role credentials' lifetime the fake IoT provider gives, in seconds.
    fn start(life: i64) -> Rotation {
        let mut w = World::new();
        w.iot.set_credentials_life(life);
        let dir = w.sb.dir.path().join("rotation");
        std::fs::create_dir_all(dir.join("new")).unwrap();
        let ca = make_ca(&dir.join("ca"), Key::RsaPkcs8(2048), "Fleet CA");
        w.iot.register_ca(&std::fs::read(&ca).unwrap());
        let key = make_key(&dir, "private.pem.key", Key::EcPkcs8("prime256v1"));
        let (cert, old_leaf) = make_cert(&dir, &ca, &key, Cert::CaV1, "certificate.pem.crt");
        let new_key = make_key(&dir.join("new"), "private.pem.key", Key::RsaPkcs1(2048));
        let (new_cert, new_leaf) = make_cert(
            &dir.join("new"),
            &ca,
            &new_key,
            Cert::CaV3,
            "certificate.pem.crt",
        );
        w.configure(&cert, &key);
        let config = std::fs::read_to_string(w.sb.dir.path().join("config.toml")).unwrap()
            + &format!("[daemon]\nregistries = [\"{HOST}\"]\n");
        let d = crate::daemon::Daemon::start(&mut w.sb, &config);
        d.wait_notify("READY=1", std::time::Duration::from_secs(20));
        let r = Rotation {
            w,
            d,
            cert,
            key,
            new_cert,
            new_key,
            old_leaf,
            new_leaf,
        };
        assert_eq!(r.presented().as_deref(), Some(r.old_leaf.as_slice()));
        r
    }

    /// The certificate the last exchange presented.
    fn presented(&self) -> Option<Vec<u8>> {
        self.w
            .iot
            .calls()
            .last()
            .and_then(|c| c.client_cert.clone())
    }
}

/// A certificate rotation while the daemon runs: new files renamed into place. While only the
/// certificate is new (the pair does not match), the previous identity is kept; once both are
/// in place, the next exchange presents the new certificate. No restart.
#[test]
fn the_daemon_picks_up_a_rotated_identity_never_a_half_written_pair() {
    // Credentials with less life than the SDK's refresh margin (5 minutes, plus up to half of
    // that in jitter): stale at once, so every fetch exchanges.
    let r = Rotation::start(60);

    // Half a rotation: the new certificate, the old key.
    std::fs::rename(&r.new_cert, &r.cert).unwrap();
    let (ok, out) =
        r.w.get_for("210987654321.dkr.ecr.eu-central-1.amazonaws.com");
    assert!(ok, "{out}\n{}", r.d.log());
    assert_eq!(
        r.presented().as_deref(),
        Some(r.old_leaf.as_slice()),
        "a mismatched pair is never used"
    );
    assert!(
        r.d.log().contains("do not form a usable pair yet"),
        "{}",
        r.d.log()
    );

    // The rotation completes.
    std::fs::rename(&r.new_key, &r.key).unwrap();
    let (ok, out) = r.w.get_for("123456789012.dkr.ecr.eu-west-1.amazonaws.com");
    assert!(ok, "{out}\n{}", r.d.log());
    assert_eq!(
        r.presented().as_deref(),
        Some(r.new_leaf.as_slice()),
        "the next exchange presents the new certificate"
    );
    assert!(
        r.d.log().contains("device identity reloaded"),
        "{}",
        r.d.log()
    );
}

/// A rotation job that cannot wait for the next exchange reloads the daemon: with role
/// credentials an hour from expiry (no exchange due), `systemctl reload` (SIGHUP) makes the
/// next fetch exchange with the files now on disk, and the tokens already held stay served.
#[test]
fn a_reload_makes_the_next_exchange_use_the_rotated_identity() {
    let r = Rotation::start(3600);
    std::fs::rename(&r.new_key, &r.key).unwrap();
    std::fs::rename(&r.new_cert, &r.cert).unwrap();
    // Without a reload the exchanged credentials (an hour left) still serve a new registry.
    let (ok, out) =
        r.w.get_for("210987654321.dkr.ecr.eu-central-1.amazonaws.com");
    assert!(ok, "{out}\n{}", r.d.log());
    assert_eq!(r.w.iot.calls().len(), 1, "no exchange was due");

    r.d.signal(nix::sys::signal::Signal::SIGHUP);
    let start = std::time::Instant::now();
    while !r.d.log().contains("configuration reloaded")
        && start.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (ok, out) = r.w.get_for("123456789012.dkr.ecr.eu-west-1.amazonaws.com");
    assert!(ok, "{out}\n{}", r.d.log());
    assert_eq!(
        r.presented().as_deref(),
        Some(r.new_leaf.as_slice()),
        "the first exchange after the reload presents the new certificate\n{}",
        r.d.log()
    );
    // The token held for the configured registry was kept: served without another call.
    let calls = r.w.sb.fake.calls().len();
    let (ok, out) = r.w.get();
    assert!(ok, "{out}");
    assert_eq!(r.w.sb.fake.calls().len(), calls, "{}", r.d.log());
}
