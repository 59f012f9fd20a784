//! A TLS terminator (stunnel) in front of a TCP destination, with a test CA and a server
//! certificate for `localhost` and `127.0.0.1` ([`crate::pki`]).

use std::time::Duration;

use crate::net::{free_tcp_port, wait_accepting};
use crate::pki::{TestPki, make_pki};
use crate::proc::Guard;

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
