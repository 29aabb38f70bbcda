//! The test certificate authority, and the byte counts of what a fake moved on the wire.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A throwaway certificate authority.
pub struct TestCa {
    pub(crate) issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
    /// One server configuration per host name, kept like a real endpoint keeps its own: its
    /// session cache lets a client resume a TLS session on its next connection.
    pub(crate) servers: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
    /// Whether new server configurations offer session resumption (tickets and a session
    /// cache), as AWS endpoints can; off, for a before/after comparison.
    pub(crate) resumption: AtomicBool,
    /// The validity (not before, not after; seconds since the epoch) of server certificates
    /// issued from now on; rcgen's default (1975 to 4096) when unset.
    pub(crate) server_validity: Mutex<Option<(i64, i64)>>,
}

/// What a fake endpoint moved on the wire, counted under TLS (handshakes included), as the
/// client's own counters should see it.
#[derive(Debug, Default)]
pub struct Wire {
    /// Bytes the fake read from clients.
    pub from_clients: AtomicU64,
    /// Bytes the fake wrote to clients.
    pub to_clients: AtomicU64,
    /// Connections (TLS handshakes started).
    pub connections: AtomicU64,
}

impl Wire {
    /// (read from clients, written to clients, connections).
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.from_clients.load(Ordering::SeqCst),
            self.to_clients.load(Ordering::SeqCst),
            self.connections.load(Ordering::SeqCst),
        )
    }
}

/// A server's side of a connection, its bytes counted in a [`Wire`].
pub struct Metered<S> {
    pub(crate) inner: S,
    pub(crate) wire: Arc<Wire>,
}

impl<S> Metered<S> {
    /// Counts `inner` (one more connection) in `wire`.
    pub fn new(inner: S, wire: Arc<Wire>) -> Metered<S> {
        wire.connections.fetch_add(1, Ordering::SeqCst);
        Metered { inner, wire }
    }
}

impl<S: Read> Read for Metered<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.wire.from_clients.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

impl<S: Write> Write for Metered<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.wire.to_clients.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl TestCa {
    /// Makes a new CA.
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ecr-edge test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        let pem = issuer.pem();
        TestCa {
            issuer,
            pem,
            servers: Mutex::new(HashMap::new()),
            resumption: AtomicBool::new(true),
            server_validity: Mutex::new(None),
        }
    }

    /// Server certificates issued from now on are valid from `not_before` to `not_after`
    /// (seconds since the epoch); endpoints already configured get new ones.
    pub fn set_server_validity(&self, not_before: i64, not_after: i64) {
        *self.server_validity.lock().unwrap() = Some((not_before, not_after));
        self.servers.lock().unwrap().clear();
    }

    /// A certificate for `name` signed by this CA and its private key, both PEM (for servers
    /// that read files, such as the registry).
    pub fn issue_pem(&self, name: &str) -> (String, String) {
        self.issue_pem_for(&[name])
    }

    /// [`TestCa::issue_pem`] for a certificate valid for every one of `names`.
    pub fn issue_pem_for(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let der = self.sign(&params, &key);
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            aws_smithy_types::base64::encode(&der)
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        );
        (pem, key.serialize_pem())
    }

    /// Whether the endpoints this CA serves offer session resumption from now on (new
    /// configurations; existing sessions are forgotten).
    pub fn set_resumption(&self, on: bool) {
        self.resumption.store(on, Ordering::SeqCst);
        self.servers.lock().unwrap().clear();
    }

    /// A TLS server configuration presenting a certificate for `name` signed by this CA.
    /// The same configuration (certificate and session cache) every time for one `name`.
    pub fn server_config(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let mut servers = self.servers.lock().unwrap();
        if let Some(config) = servers.get(name) {
            return config.clone();
        }
        let (chain, key) = self.issue(name);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        if !self.resumption.load(Ordering::SeqCst) {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        let config = Arc::new(config);
        servers.insert(name.to_owned(), config.clone());
        config
    }
}
