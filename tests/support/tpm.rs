//! A software TPM for tests: swtpm (the reference TPM 2.0 simulator, Debian's `swtpm`) on
//! loopback ports of its own, and tpm2-tools to provision keys in it the way an operator does.
//! `scripts/install-deps tpm` installs both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running swtpm with its state in a folder of its own; killed when dropped.
pub struct SoftTpm {
    child: Child,
    /// Its command port (its control channel is the next port).
    pub port: u16,
    _state: tempfile::TempDir,
}

/// Held while a swtpm is chosen a port and started, so that two tests of this process never
/// pick the same free port and then find each other's TPM there.
static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Two consecutive loopback ports that were free a moment ago (command, control: the tpm2-tss
/// swtpm TCTI, which tpm2-tools and the tpm2-openssl provider use, finds the control channel at
/// port + 1).
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free loopback ports");
}

impl SoftTpm {
    /// Starts a fresh TPM (manufactured, started up: `--flags not-need-init,startup-clear`).
    pub fn start() -> SoftTpm {
        let state = tempfile::tempdir().unwrap();
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..5 {
            let port = free_port_pair();
            let spawned = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", state.path().display()))
                .args([
                    "--server",
                    &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                ])
                .args([
                    "--ctrl",
                    &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
                ])
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => panic!(
                    "swtpm cannot be started ({e}): install it with `scripts/install-deps tpm`"
                ),
            };
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken after all: try others
                }
                // Ours when it answers and is still running (a port taken after all makes swtpm
                // exit).
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && matches!(child.try_wait(), Ok(None))
                {
                    return SoftTpm {
                        child,
                        port,
                        _state: state,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("swtpm did not start");
    }

    /// The TPM in the tpm2-tss form, as `[iot] tpm` and tpm2-tools take it.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Runs `tpm2_<tool> args` against this TPM, then flushes transient objects (there is no
    /// resource manager); panics with the tool's words when it fails.
    pub fn tool(&self, tool: &str, args: &[&str]) -> Vec<u8> {
        let run = |tool: &str, args: &[&str]| {
            let out = Command::new(format!("tpm2_{tool}"))
                .args(args)
                .env("TPM2TOOLS_TCTI", self.tcti())
                .output()
                .unwrap_or_else(|e| {
                    panic!("tpm2_{tool}: {e} (install tpm2-tools: `scripts/install-deps tpm`)")
                });
            assert!(
                out.status.success(),
                "tpm2_{tool} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let out = run(tool, args);
        run("flushcontext", &["-t"]);
        out
    }

    /// Makes an unrestricted EC P-256 signing key under the owner hierarchy's primary and
    /// makes it persistent at `handle`, as an operator does with tpm2-tools; returns its
    /// public key (SubjectPublicKeyInfo DER).
    pub fn persistent_key(&self, dir: &Path, alg: &str, handle: &str) -> Vec<u8> {
        let p = |name: &str| -> PathBuf { dir.join(name) };
        let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
        let (primary, public, private, ctx, der) = (
            p("primary.ctx"),
            p("key.pub"),
            p("key.priv"),
            p("key.ctx"),
            p("key.der"),
        );
        self.tool(
            "createprimary",
            &["-C", "o", "-g", "sha256", "-G", "ecc", "-c", &s(&primary)],
        );
        self.tool(
            "create",
            &[
                "-C",
                &s(&primary),
                "-G",
                alg,
                "-u",
                &s(&public),
                "-r",
                &s(&private),
            ],
        );
        // Context files are saved contexts: they load again after the flush between tools.
        self.tool(
            "load",
            &[
                "-C",
                &s(&primary),
                "-u",
                &s(&public),
                "-r",
                &s(&private),
                "-c",
                &s(&ctx),
            ],
        );
        self.tool("evictcontrol", &["-C", "o", "-c", &s(&ctx), handle]);
        self.tool("readpublic", &["-c", handle, "-f", "der", "-o", &s(&der)]);
        std::fs::read(&der).unwrap()
    }
}

impl Drop for SoftTpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An rcgen public key made of a SubjectPublicKeyInfo, EC P-256 or RSA (the TPM's key: rcgen
/// never sees a private half).
struct SpkiPublic {
    /// The BIT STRING's contents: the point, or the RSAPublicKey.
    key: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
}

impl SpkiPublic {
    fn new(spki: &[u8]) -> SpkiPublic {
        // SEQUENCE { AlgorithmIdentifier, BIT STRING }: step over the outer header and the
        // algorithm, then the BIT STRING's header and its unused-bits byte.
        fn header(der: &[u8]) -> (usize, usize) {
            match der[1] {
                n @ 0..=0x7f => (2, n as usize),
                0x81 => (3, der[2] as usize),
                0x82 => (4, u16::from_be_bytes([der[2], der[3]]) as usize),
                other => panic!("DER length form {other:#x}"),
            }
        }
        let (outer, _) = header(spki);
        let body = &spki[outer..];
        let (h, n) = header(body);
        let algorithm_id = &body[..h + n];
        let bits = &body[h + n..];
        let (bh, _) = header(bits);
        let rsa_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
        let rsa = algorithm_id.windows(rsa_oid.len()).any(|w| w == rsa_oid);
        SpkiPublic {
            key: bits[bh + 1..].to_vec(),
            algorithm: if rsa {
                &rcgen::PKCS_RSA_SHA256
            } else {
                &rcgen::PKCS_ECDSA_P256_SHA256
            },
        }
    }
}

impl rcgen::PublicKeyData for SpkiPublic {
    fn der_bytes(&self) -> &[u8] {
        &self.key
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

/// The public key (SubjectPublicKeyInfo DER) a PEM certificate request asks a certificate for,
/// after `openssl req -verify` has checked the request's signature.
pub fn csr_public_key(csr: &[u8], dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("request.csr");
    std::fs::write(&path, csr).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["req", "-verify", "-noout", "-pubkey", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && super::text(&out.stderr).contains("verify OK"),
        "openssl req -verify: {}",
        super::text(&out.stderr)
    );
    let pem = super::text(&out.stdout);
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    aws_smithy_types::base64::decode(b64).unwrap()
}

/// A certificate for `spki` signed by `ca`, written as PEM into `path`.
pub fn certificate_for(spki: &[u8], ca: &super::TestCa, path: &std::path::Path) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, super::iot::THING_NAME);
    let cert = ca.sign_public(&params, &SpkiPublic::new(spki));
    let b64 = aws_smithy_types::base64::encode(cert);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    std::fs::write(path, pem).unwrap();
}

/// A relay in front of a [`SoftTpm`]'s command port that holds every `TPM2_Sign` until the test
/// lets it through ([`SignGate::release`]): a TPM that takes as long as the test wants to sign.
pub struct SignGate {
    /// The relay's port: name it as the TPM (`swtpm:host=127.0.0.1,port=…`).
    pub port: u16,
    state: std::sync::Arc<(std::sync::Mutex<GateState>, std::sync::Condvar)>,
}

#[derive(Default)]
struct GateState {
    /// Signatures asked for so far.
    held: u32,
    released: bool,
}

/// TPM2_Sign's command code.
const CC_SIGN: u32 = 0x15D;

impl SignGate {
    /// A relay to `tpm`, holding signatures.
    pub fn start(tpm: &SoftTpm) -> SignGate {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new((
            std::sync::Mutex::new(GateState::default()),
            std::sync::Condvar::new(),
        ));
        let (shared, target) = (state.clone(), tpm.port);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let (Ok(mut client), Ok(mut tpm)) =
                    (client, TcpStream::connect(("127.0.0.1", target)))
                else {
                    continue;
                };
                let shared = shared.clone();
                std::thread::spawn(move || -> std::io::Result<()> {
                    loop {
                        // TPM_SEND_COMMAND (u32), locality (u8), length (u32), the command.
                        let mut head = [0u8; 9];
                        client.read_exact(&mut head)?;
                        let len = u32::from_be_bytes(head[5..9].try_into().unwrap()) as usize;
                        let mut cmd = vec![0u8; len];
                        client.read_exact(&mut cmd)?;
                        let code = cmd
                            .get(6..10)
                            .map(|c| u32::from_be_bytes(c.try_into().unwrap()));
                        if code == Some(CC_SIGN) {
                            let (lock, changed) = &*shared;
                            let mut st = lock.lock().unwrap();
                            st.held += 1;
                            changed.notify_all();
                            while !st.released {
                                st = changed.wait(st).unwrap();
                            }
                        }
                        tpm.write_all(&head)?;
                        tpm.write_all(&cmd)?;
                        // The answer: length (u32), the response, an acknowledgement (u32).
                        let mut len = [0u8; 4];
                        tpm.read_exact(&mut len)?;
                        let mut answer = vec![0u8; u32::from_be_bytes(len) as usize + 4];
                        tpm.read_exact(&mut answer)?;
                        client.write_all(&len)?;
                        client.write_all(&answer)?;
                    }
                });
            }
        });
        SignGate { port, state }
    }

    /// The relay in the tpm2-tss form.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Waits until a signature is being held; panics after `within`.
    pub fn wait_for_a_signature(&self, within: Duration) {
        let (lock, changed) = &*self.state;
        let st = lock.lock().unwrap();
        let (st, _) = changed
            .wait_timeout_while(st, within, |st| st.held == 0)
            .unwrap();
        assert!(
            st.held > 0,
            "nothing asked the TPM to sign within {within:?}"
        );
    }

    /// Lets every held and later signature through.
    pub fn release(&self) {
        let (lock, changed) = &*self.state;
        lock.lock().unwrap().released = true;
        changed.notify_all();
    }
}

impl Drop for SignGate {
    fn drop(&mut self) {
        self.release();
    }
}
