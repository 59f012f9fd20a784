//! Test certificates made by rcgen: a CA, a server certificate it signed (for `localhost`
//! and `127.0.0.1`) and a client certificate (for mutual TLS), as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files of one test CA and the certificates it signed.
pub struct TestPki {
    pub ca_pem: PathBuf,
    pub server_cert_pem: PathBuf,
    pub server_key_pem: PathBuf,
    /// Common name [`CLIENT_CN`] (etcd takes it as the user name when auth is on).
    pub client_cert_pem: PathBuf,
    pub client_key_pem: PathBuf,
}

/// The client certificate's common name.
pub const CLIENT_CN: &str = "pushcast";

/// Makes a CA named `name` and its certificates in `dir`. Two calls give two unrelated
/// CAs (for the "wrong CA" tests).
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
    // Servers that are also clients of their peers (etcd members) use the same pair.
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");

    let client_key = KeyPair::generate().expect("client key");
    let mut client = CertificateParams::new(vec![CLIENT_CN.to_owned()]).expect("client params");
    client
        .distinguished_name
        .push(DnType::CommonName, CLIENT_CN);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).expect("client cert");

    let file = |what: &str| dir.join(format!("{name}-{what}"));
    let pki = TestPki {
        ca_pem: file("ca.pem"),
        server_cert_pem: file("server.pem"),
        server_key_pem: file("server.key"),
        client_cert_pem: file("client.pem"),
        client_key_pem: file("client.key"),
    };
    for (path, pem) in [
        (&pki.ca_pem, ca_cert.pem()),
        (&pki.server_cert_pem, server_cert.pem()),
        (&pki.server_key_pem, server_key.serialize_pem()),
        (&pki.client_cert_pem, client_cert.pem()),
        (&pki.client_key_pem, client_key.serialize_pem()),
    ] {
        std::fs::write(path, pem).expect("write PEM");
    }
    pki
}
