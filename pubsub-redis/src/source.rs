//! Where every connection of the bus goes, and how it authenticates: the
//! URL's server, or the master that Sentinel names at the time of the
//! connect; plain TCP or TLS with the configured CAs and client
//! certificate; the URL's user and password. The subscriber, the
//! publishing connections, the stores' dedicated connections and the
//! cluster clients all come from here, so a setting applies to all of them.

use crate::{Config, Error};
use redis::cluster::ClusterClientBuilder;
use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates, TlsMode,
};
use std::sync::Arc;
use std::time::Duration;

/// TLS material, read from files by the caller (the gateway's config
/// checks them at `--check`).
#[derive(Clone, Default)]
pub struct Tls {
    /// PEM certificates of the CAs to trust instead of the system's: a
    /// private CA, as self-hosted Redis and some managed services use.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate and key, for servers that require one
    /// (`tls-auth-clients yes`).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    /// Accept any server certificate and name. Development only: it makes
    /// TLS worthless against anyone on the path.
    pub insecure: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Find the master through Redis Sentinel: the URL then gives the master's
/// scheme (TLS or not), user, password and database, and its host is not
/// used.
#[derive(Clone, Default)]
pub struct Sentinel {
    /// The master's name in Sentinel (`sentinel monitor <name> ...`).
    pub master: String,
    /// Sentinels, `host:port`; asked in order until one answers.
    pub nodes: Vec<String>,
    /// The sentinels' own ACL user, if they require one.
    pub username: Option<String>,
    /// The sentinels' own password (`requirepass` in sentinel.conf).
    pub password: Option<String>,
    /// Talk TLS to the sentinels, with the same [`Tls`] material.
    pub tls: bool,
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinel")
            .field("master", &self.master)
            .field("nodes", &self.nodes)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// The clients the bus connects with; clones share them.
#[derive(Clone)]
pub(crate) struct Source(Arc<Inner>);

struct Inner {
    /// The URL's settings: the address (unless Sentinel), user, password,
    /// database, TLS mode.
    base: ConnectionInfo,
    certs: Option<TlsCertificates>,
    /// The URL's server, built once; `None` with Sentinel.
    fixed: Option<redis::Client>,
    sentinels: Vec<redis::Client>,
    master: String,
    timeout: Duration,
    /// For logs and `/readyz`: where this bus connects, without secrets.
    address: String,
}

impl Source {
    pub(crate) fn new(config: &Config) -> Result<Source, Error> {
        let tls = &config.tls;
        let certs = if tls.ca.is_some() || tls.client.is_some() {
            Some(TlsCertificates {
                client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
                root_cert: tls.ca.clone(),
            })
        } else {
            None
        };
        // The first seed of a cluster gives the settings of every node.
        let first = config.url.split(',').next().unwrap_or("").trim();
        let mut base = first.into_connection_info().map_err(config_error)?;
        if tls.insecure {
            if let ConnectionAddr::TcpTls { host, port, .. } = base.addr().clone() {
                base = base.set_addr(ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: true,
                    tls_params: None,
                });
            }
        }
        let is_tls = matches!(base.addr(), ConnectionAddr::TcpTls { .. });
        if certs.is_some() && !is_tls && config.sentinel.as_ref().is_none_or(|s| !s.tls) {
            return Err(Error::Config(
                "TLS certificates are set, but the URL is not rediss://".into(),
            ));
        }
        let mut inner = Inner {
            base,
            certs,
            fixed: None,
            sentinels: Vec::new(),
            master: String::new(),
            timeout: config.timeout,
            address: String::new(),
        };
        match &config.sentinel {
            None => {
                inner.address = if config.cluster {
                    let seeds: Vec<String> = config
                        .url
                        .split(',')
                        .map(|u| hide_password(u.trim()))
                        .collect();
                    format!("cluster {}", seeds.join(","))
                } else {
                    describe(inner.base.addr())
                };
                inner.fixed = Some(inner.client_with(inner.base.clone())?);
            }
            Some(_) if config.cluster => {
                return Err(Error::Config(
                    "Sentinel and Cluster exclude each other".into(),
                ))
            }
            Some(s) => {
                if s.nodes.is_empty() {
                    return Err(Error::Config("Sentinel needs at least one node".into()));
                }
                for node in &s.nodes {
                    let (host, port) = split_host_port(node)?;
                    let addr = if s.tls {
                        ConnectionAddr::TcpTls {
                            host,
                            port,
                            insecure: tls.insecure,
                            tls_params: None,
                        }
                    } else {
                        ConnectionAddr::Tcp(host, port)
                    };
                    let mut redis = redis::RedisConnectionInfo::default();
                    if let Some(u) = &s.username {
                        redis = redis.set_username(u);
                    }
                    if let Some(p) = &s.password {
                        redis = redis.set_password(p);
                    }
                    let info = inner.base.clone().set_addr(addr).set_redis_settings(redis);
                    inner.sentinels.push(inner.client_with(info)?);
                }
                inner.master = s.master.clone();
                inner.address = format!("master {:?} of sentinels {}", s.master, s.nodes.join(","));
            }
        }
        Ok(Source(Arc::new(inner)))
    }

    /// Where connections go, without secrets: for logs and `/readyz`.
    pub(crate) fn address(&self) -> &str {
        &self.0.address
    }

    /// The client of the server to talk to now: the URL's, or the master
    /// the first answering sentinel names, once it confirms it is master
    /// (so a connect during a failover waits for the promotion instead of
    /// writing to a replica).
    ///
    /// # Errors
    /// When no sentinel answers, none knows the master, or it is not
    /// master (yet).
    pub(crate) async fn client(&self) -> Result<redis::Client, Error> {
        if let Some(fixed) = &self.0.fixed {
            return Ok(fixed.clone());
        }
        let mut last = Error::Unavailable("no sentinel answered".into());
        for sentinel in &self.0.sentinels {
            match self.ask(sentinel).await {
                Ok(client) => return Ok(client),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn ask(&self, sentinel: &redis::Client) -> Result<redis::Client, Error> {
        let timeout = self.0.timeout;
        let at = describe(sentinel.get_connection_info().addr());
        let mut conn = bounded(timeout, sentinel.get_multiplexed_async_connection())
            .await
            .map_err(|e| e.context(&format!("sentinel {at}")))?;
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(&self.0.master);
        let addr: Option<(String, u16)> = bounded(timeout, cmd.query_async(&mut conn))
            .await
            .map_err(|e| e.context(&format!("sentinel {at}")))?;
        let Some((host, port)) = addr else {
            return Err(Error::Unavailable(format!(
                "sentinel {at} knows no master named {:?}",
                self.0.master
            )));
        };
        let client = self.client_for(&host, port)?;
        let mut master = bounded(timeout, client.get_multiplexed_async_connection())
            .await
            .map_err(|e| e.context(&format!("master {host}:{port}")))?;
        let role: redis::Value = bounded(timeout, redis::cmd("ROLE").query_async(&mut master))
            .await
            .map_err(|e| e.context(&format!("master {host}:{port}")))?;
        match role {
            redis::Value::Array(items) if matches!(items.first(), Some(redis::Value::BulkString(r)) if r == b"master") => {
                Ok(client)
            }
            _ => Err(Error::Unavailable(format!(
                "{host}:{port}, named master by sentinel {at}, is not master (yet)"
            ))),
        }
    }

    /// A client of the server at `host:port` with the URL's settings: a
    /// cluster node or the master Sentinel named.
    ///
    /// # Errors
    /// Malformed TLS material.
    pub(crate) fn client_for(&self, host: &str, port: u16) -> Result<redis::Client, Error> {
        self.node(host, port, false)
    }

    /// [`client_for`](Self::client_for), in RESP3 if `resp3` (a cluster
    /// node's subscriber: pushes arrive on the connection that subscribed).
    pub(crate) fn node(&self, host: &str, port: u16, resp3: bool) -> Result<redis::Client, Error> {
        let addr = match self.0.base.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let mut info = self.0.base.clone().set_addr(addr);
        if resp3 {
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            info = info.set_redis_settings(settings);
        }
        self.0.client_with(info)
    }

    /// A cluster client of `seeds` with the URL's TLS and certificates.
    pub(crate) fn cluster(&self, seeds: &str) -> ClusterClientBuilder {
        let nodes: Vec<String> = seeds.split(',').map(|u| u.trim().to_owned()).collect();
        let mut builder = ClusterClientBuilder::new(nodes);
        if let ConnectionAddr::TcpTls { insecure, .. } = self.0.base.addr() {
            builder = builder.tls(if *insecure {
                TlsMode::Insecure
            } else {
                TlsMode::Secure
            });
            if let Some(certs) = &self.0.certs {
                builder = builder.certs(certs.clone());
            }
        }
        builder
    }
}

impl Inner {
    fn client_with(&self, info: ConnectionInfo) -> Result<redis::Client, Error> {
        match (&self.certs, info.addr()) {
            (Some(certs), ConnectionAddr::TcpTls { .. }) => {
                redis::Client::build_with_tls(info, certs.clone()).map_err(config_error)
            }
            _ => redis::Client::open(info).map_err(config_error),
        }
    }
}

/// Runs a Redis future within `timeout`.
async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Unavailable("timed out".into()))?
        .map_err(Error::from)
}

fn config_error(e: redis::RedisError) -> Error {
    Error::Config(e.to_string())
}

fn split_host_port(node: &str) -> Result<(String, u16), Error> {
    let node = node
        .trim()
        .trim_start_matches("redis://")
        .trim_start_matches("rediss://");
    let (host, port) = node
        .rsplit_once(':')
        .ok_or_else(|| Error::Config(format!("sentinel {node:?} must be host:port")))?;
    let port = port
        .trim_end_matches('/')
        .parse()
        .map_err(|_| Error::Config(format!("sentinel {node:?} has no valid port")))?;
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

/// `host:port`, or the socket's path.
pub(crate) fn describe(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (TLS)"),
        ConnectionAddr::Unix(path) => path.display().to_string(),
        _ => "redis".to_owned(),
    }
}

/// `url` with its password replaced by `***`, for logs.
pub fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{userinfo}@{host}"),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            hide_password("rediss://:s3cret@cache:6380/0"),
            "rediss://:***@cache:6380/0"
        );
        assert_eq!(hide_password("redis://gw:p@ss@h:1"), "redis://gw:***@h:1");
        assert_eq!(hide_password("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn sentinel_nodes_are_host_and_port() {
        assert_eq!(
            split_host_port("10.0.0.1:26379").ok(),
            Some(("10.0.0.1".to_owned(), 26379))
        );
        assert_eq!(
            split_host_port("[::1]:26379").ok(),
            Some(("::1".to_owned(), 26379))
        );
        assert!(split_host_port("sentinel").is_err());
    }

    #[test]
    fn certificates_need_a_tls_url() {
        let mut config = Config::new("redis://127.0.0.1:6379");
        config.tls.ca = Some(b"-----BEGIN CERTIFICATE-----\n".to_vec());
        assert!(matches!(Source::new(&config), Err(Error::Config(_))));
    }
}
