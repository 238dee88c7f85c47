//! TLS for Redis tests: a CA, a server certificate for 127.0.0.1 and
//! `localhost`, a client certificate, and a second CA that signed nothing
//! the server has, all made by the `openssl` CLI in a temp dir; and
//! `redis-server` serving TLS on a port of its own beside its plain one
//! (which the test's own commands use).

use crate::redis_server::RedisServer;
use crate::temp::{free_port, TempDir};
use std::path::PathBuf;
use std::process::Command;

/// Certificates of one test, in a temp dir removed on drop.
#[derive(Debug)]
pub struct Certs {
    dir: TempDir,
}

impl Certs {
    /// Makes the CAs and certificates (EC P-256, valid two days). The
    /// server's is also a client certificate: cluster nodes present it to
    /// each other (`tls-cluster yes`).
    pub fn generate() -> Certs {
        let dir = TempDir::new("certs");
        std::fs::write(
            dir.path("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        std::fs::write(dir.path("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            openssl(
                &dir,
                &[
                    &["req", "-x509"],
                    &key[..],
                    &[
                        "-keyout",
                        &format!("{ca}.key"),
                        "-out",
                        &format!("{ca}.crt"),
                        "-days",
                        "2",
                        "-subj",
                        &format!("/CN=gateway test {ca}"),
                    ],
                ]
                .concat(),
            );
        }
        for leaf in ["server", "client"] {
            openssl(
                &dir,
                &[
                    &["req"],
                    &key[..],
                    &[
                        "-keyout",
                        &format!("{leaf}.key"),
                        "-out",
                        &format!("{leaf}.csr"),
                        "-subj",
                        &format!("/CN={leaf}"),
                    ],
                ]
                .concat(),
            );
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{leaf}.csr"),
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &format!("{leaf}.crt"),
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{leaf}.ext"),
                ],
            );
        }
        Certs { dir }
    }

    /// A file of the set: `ca.crt`, `other-ca.crt`, `server.crt`,
    /// `server.key`, `client.crt`, `client.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }
}

fn openssl(dir: &TempDir, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir.root())
        .output()
        .expect("openssl on PATH (make test-deps installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `redis-server` with a TLS port.
#[derive(Debug)]
pub struct TlsRedis {
    /// The server; its plain port is the test's.
    pub server: RedisServer,
    tls_port: u16,
}

impl TlsRedis {
    /// Serves TLS with `certs`' server certificate; with `verify_clients`,
    /// only to clients with a certificate of `certs`' CA. `extra`: more
    /// arguments (ACL users).
    pub async fn start(certs: &Certs, verify_clients: bool, extra: &[String]) -> TlsRedis {
        let tls_port = free_port();
        let path = |n: &str| certs.path(n).display().to_string();
        let mut args: Vec<String> = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path("server.crt"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.crt"),
            "--tls-auth-clients".into(),
            if verify_clients { "yes" } else { "no" }.into(),
        ];
        args.extend(extra.iter().cloned());
        TlsRedis {
            server: RedisServer::start_with(&args).await,
            tls_port,
        }
    }

    /// `rediss://{userinfo}127.0.0.1:{tls port}/0`; `userinfo` such as
    /// `"gateway:pw@"` or empty.
    pub fn url(&self, userinfo: &str) -> String {
        format!("rediss://{userinfo}127.0.0.1:{}/0", self.tls_port)
    }
}
