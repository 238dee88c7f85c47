//! The connect hook: a [`SocketHandler`] that verifies the token first (as
//! [`TokenSocket`] does alone), then asks the hook, which admits with
//! assigns merged over the token's claims, or refuses with a status.

use super::client::Hook;
use super::wire::ConnectAnswer;
use crate::auth::TokenSocket;
use crate::protocol::Payload;
use crate::socket::{Assigns, ConnectError, ConnectInfo, Params, SocketHandler};
use async_trait::async_trait;
use hyper::StatusCode;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::SystemTime;

/// The assign that keeps the socket id a connect hook gave, so
/// [`SocketHandler::id`] finds it again.
const SOCKET_ID: &str = "socket_id";

/// A socket whose connections the connect hook admits.
#[derive(Debug)]
pub(crate) struct HookSocket {
    inner: TokenSocket,
    hook: Hook,
    /// Request headers forwarded, lower-case.
    headers: Vec<String>,
    pod: Arc<str>,
}

impl HookSocket {
    pub(crate) fn new(inner: TokenSocket, hook: Hook, headers: Vec<String>, pod: Arc<str>) -> Self {
        HookSocket {
            inner,
            hook,
            headers,
            pod,
        }
    }

    /// `{"params","headers","transport","peer","pod","claims"}`.
    fn request(&self, params: &Params, info: &ConnectInfo, claims: &Assigns) -> Value {
        let params: Map<String, Value> = params
            .iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect();
        let mut headers = Map::new();
        for name in &self.headers {
            let values: Vec<&str> = info
                .headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if !values.is_empty() {
                headers.insert(name.clone(), Value::String(values.join(", ")));
            }
        }
        json!({
            "params": params,
            "headers": headers,
            "transport": info.transport.as_str(),
            "peer": info.peer.map(|p| p.ip().to_string()),
            "pod": &*self.pod,
            // None for an anonymous connection.
            "claims": (!claims.is_empty()).then_some(claims),
        })
    }
}

#[async_trait]
impl SocketHandler for HookSocket {
    async fn connect(&self, params: &Params, info: &ConnectInfo) -> Result<Assigns, ConnectError> {
        let mut assigns = self.inner.connect(params, info).await?;
        let body = self.request(params, info, &assigns);
        match self.hook.call::<ConnectAnswer>(&body).await {
            Ok(ConnectAnswer::Ok {
                assigns: given,
                socket_id,
            }) => {
                assigns.extend(given.unwrap_or_default());
                if let Some(id) = socket_id {
                    assigns.insert(SOCKET_ID.into(), Value::String(id));
                }
                Ok(assigns)
            }
            Ok(ConnectAnswer::Error { status, reason }) => Err(ConnectError {
                status: status
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::FORBIDDEN),
                reason: reason.unwrap_or_else(|| "refused by the connect hook".into()),
            }),
            Err(e) => Err(ConnectError {
                status: e.status(),
                reason: format!("connect hook: {e}"),
            }),
        }
    }

    /// The hook's socket id, else the socket's `socket_id` template.
    fn id(&self, assigns: &Assigns) -> Option<String> {
        match assigns.get(SOCKET_ID) {
            Some(Value::String(id)) => Some(id.clone()),
            _ => self.inner.id(assigns),
        }
    }

    fn expires_at(&self, assigns: &Assigns) -> Option<SystemTime> {
        self.inner.expires_at(assigns)
    }

    /// A refresh does not call the hook again: the new token's claims
    /// replace the old ones', the hook's other assigns are kept.
    fn refresh(&self, payload: &Payload, current: &Assigns) -> Option<Result<Assigns, String>> {
        let claims = match self.inner.refresh(payload, current)? {
            Ok(claims) => claims,
            Err(e) => return Some(Err(e)),
        };
        let mut merged = current.clone();
        merged.extend(claims);
        if self.id(&merged) != self.id(current) {
            return Some(Err("token belongs to another socket id".into()));
        }
        Some(Ok(merged))
    }
}
