//! `TestServer`: a `gateway::Endpoint` served in-process on 127.0.0.1 with a
//! port the OS picks (no port to race for), shut down on drop; from a Rust
//! endpoint, or from a TOML config as the binary builds its app.

use crate::phoenix::PhxClient;
use gateway::config::Config;
use gateway::Endpoint;
use std::net::SocketAddr;
use std::sync::Arc;

/// An endpoint served on 127.0.0.1.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub endpoint: Arc<Endpoint>,
}

impl TestServer {
    pub async fn spawn(endpoint: Arc<Endpoint>) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ep = endpoint.clone();
        tokio::spawn(async move { gateway::server::serve(listener, ep).await });
        TestServer { addr, endpoint }
    }

    /// The app a TOML config describes, validated as the binary does, on the
    /// in-memory broker.
    pub async fn from_toml(toml: &str) -> TestServer {
        let config = Config::parse(toml, "test").unwrap();
        config.validate().unwrap();
        TestServer::from_config(&config).await
    }

    /// The app of `config` (already validated), on the in-memory broker.
    pub async fn from_config(config: &Config) -> TestServer {
        let pubsub = gateway::pubsub::PubSub::memory();
        TestServer::spawn(gateway::app::build(config, pubsub).unwrap()).await
    }

    /// `ws://addr/socket/websocket?{query}`.
    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/socket/websocket?{}", self.addr, query)
    }

    /// `ws://addr{path}/websocket?vsn=2.0.0` plus `extra` params.
    pub fn ws_url(&self, path: &str, extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { "&" };
        format!("ws://{}{path}/websocket?vsn=2.0.0{sep}{extra}", self.addr)
    }

    /// Connects with the V2 serializer.
    pub async fn v2(&self) -> PhxClient {
        PhxClient::connect(&self.url("vsn=2.0.0")).await
    }

    /// Connects with the V1 serializer.
    pub async fn v1(&self) -> PhxClient {
        PhxClient::connect(&self.url("vsn=1.0.0")).await
    }

    /// Connects (V2) to `path` with `token`, if any, in the `token` param.
    pub async fn connect(&self, path: &str, token: Option<&str>) -> PhxClient {
        PhxClient::connect(&self.ws_url(path, &token_param(token))).await
    }

    /// The HTTP status of a refused upgrade at `path` with `token`.
    pub async fn refused(&self, path: &str, token: Option<&str>) -> u16 {
        PhxClient::refused_status(self.ws_url(path, &token_param(token))).await
    }
}

fn token_param(token: Option<&str>) -> String {
    token.map(|t| format!("token={t}")).unwrap_or_default()
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.endpoint.shutdown();
    }
}
