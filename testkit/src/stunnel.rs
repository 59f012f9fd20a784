//! A TLS terminator (stunnel) in front of a TCP destination, with a test CA and a server
//! certificate for `localhost` and `127.0.0.1` made by rcgen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::net::{free_tcp_port, wait_accepting};
use crate::proc::Guard;

/// A CA certificate (PEM file) and a server certificate + key it signed.
pub struct TestPki {
    pub ca_pem: PathBuf,
    pub server_cert_pem: PathBuf,
    pub server_key_pem: PathBuf,
}

/// Makes a CA named `name` and a server certificate for `localhost` / `127.0.0.1` in
/// `dir`. Two calls give two unrelated CAs (for the "wrong CA" test).
pub fn make_pki(dir: &Path, name: &str) -> TestPki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("pushcast test CA {name}"));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");

    let pki = TestPki {
        ca_pem: dir.join(format!("{name}-ca.pem")),
        server_cert_pem: dir.join(format!("{name}-server.pem")),
        server_key_pem: dir.join(format!("{name}-server.key")),
    };
    std::fs::write(&pki.ca_pem, ca_cert.pem()).expect("write CA");
    std::fs::write(&pki.server_cert_pem, server_cert.pem()).expect("write cert");
    std::fs::write(&pki.server_key_pem, server_key.serialize_pem()).expect("write key");
    pki
}

/// stunnel accepting TLS on 127.0.0.1:`port` and forwarding plain TCP to a backend.
pub struct Stunnel {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    _guard: Guard,
}

impl Stunnel {
    pub fn start(backend_port: u16) -> Stunnel {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = make_pki(dir.path(), "stunnel");
        let port = free_tcp_port();
        let log = dir.path().join("stunnel.log");
        let conf = format!(
            "foreground = yes\n\
             pid =\n\
             output = {log}\n\
             debug = info\n\
             [rtmps]\n\
             accept = 127.0.0.1:{port}\n\
             connect = 127.0.0.1:{backend_port}\n\
             cert = {cert}\n\
             key = {key}\n",
            log = log.display(),
            cert = pki.server_cert_pem.display(),
            key = pki.server_key_pem.display(),
        );
        let conf_path = dir.path().join("stunnel.conf");
        std::fs::write(&conf_path, conf).expect("write stunnel.conf");
        let mut guard = Guard::spawn(
            "stunnel",
            &[conf_path.to_str().unwrap()],
            &dir.path().join("stderr.log"),
        );
        let logs = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_accepting(port, &mut guard, Duration::from_secs(10), &logs);
        Stunnel {
            port,
            dir,
            pki,
            _guard: guard,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stunnel.log")).unwrap_or_default()
    }
}
