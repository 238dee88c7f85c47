//! The operator's commands of the `gateway` binary (docs/admin.md): they
//! ask a running pod's admin API, publish, or mint a development token.
//!
//! Exit codes: 0 done; 1 the pod refused (wrong key, bad request); 3 done,
//! but some pods did not answer (named on stderr); 64 bad usage or config;
//! 69 the pod or Redis cannot be reached.

mod client;
mod print;
mod token;

use clap::{Args, Subcommand};
use gateway::config::{Config, Settings};
use gateway::pubsub::Broadcast;
use gateway::Payload;
use hyper::Method;
use serde_json::{json, Value};
use std::process::ExitCode;

/// What a command can fail with.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad arguments or config.
    Usage(String),
    /// The pod or Redis did not answer.
    Unreachable(String),
    /// The pod answered with an error.
    Refused(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 64,
            Failure::Unreachable(_) => 69,
            Failure::Refused(_) => 1,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Usage(m) | Failure::Unreachable(m) | Failure::Refused(m) => m,
        }
    }
}

/// Exit code of an answer some pods did not give.
const EXIT_PARTIAL: u8 = 3;

/// Where to reach a pod's admin API.
#[derive(Debug, Args)]
pub(crate) struct Pod {
    /// The pod's base URL. Default: http:// and the config's
    /// `server.listen` (0.0.0.0 read as 127.0.0.1).
    #[arg(long, env = "GATEWAY_URL")]
    url: Option<String>,
    /// The admin key. Default: the config's `admin.key` or GATEWAY_ADMIN_KEY.
    #[arg(long)]
    key: Option<String>,
    /// Print the API's JSON answer as it is.
    #[arg(long)]
    json: bool,
}

/// The operator's commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway (what running it without a command does).
    Serve,
    /// Validate the configuration, print a summary and exit (as --check).
    Check,
    /// Publish an event to a topic: through Redis with the config's
    /// [redis] (kept in history when the topic's rule keeps it), or
    /// through a pod's publish API with --url.
    Publish {
        /// The topic, e.g. room:lobby.
        topic: String,
        /// The event, e.g. new_msg.
        event: String,
        /// The payload, a JSON object. Default {}.
        payload: Option<String>,
        /// Publish through this pod's HTTP publish API instead of Redis.
        #[arg(long, env = "GATEWAY_URL")]
        url: Option<String>,
        /// The publish API's key. Default: the config's `api.key` or
        /// GATEWAY_API_KEY.
        #[arg(long)]
        key: Option<String>,
    },
    /// The fleet's pods: connections, channels, state.
    Pods {
        #[command(flatten)]
        pod: Pod,
    },
    /// The fleet's topics with their subscribers.
    Topics {
        #[command(flatten)]
        pod: Pod,
        /// Only topics that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Continue after this topic (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Most topics listed.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The busiest first, instead of by name.
        #[arg(long)]
        busiest: bool,
    },
    /// One topic: subscribers per pod, connections, presence, history.
    Topic {
        #[command(flatten)]
        pod: Pod,
        /// The topic.
        topic: String,
        /// History messages shown.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// Connections listed.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Close connections on every pod: by connection id, socket id or
    /// claim; with --topic, only remove them from that topic (their clients
    /// receive phx_close and stay connected).
    Disconnect {
        #[command(flatten)]
        pod: Pod,
        /// Remove from this topic instead of closing the connection.
        #[arg(long)]
        topic: Option<String>,
        /// A connection id as `topic` lists it (`<pod>/<n>`).
        #[arg(long, group = "who", required = true)]
        conn: Option<String>,
        /// The socket id (`[[socket]] socket_id`), e.g. users_socket:42.
        #[arg(long, group = "who")]
        socket_id: Option<String>,
        /// The `sub` claim of the token.
        #[arg(long, group = "who")]
        user: Option<String>,
        /// Any claim, as name=value.
        #[arg(long, group = "who")]
        claim: Option<String>,
    },
    /// Mint a JWT with a socket's HS* secret, for development and tests.
    Token {
        /// The `sub` claim.
        #[arg(long)]
        sub: String,
        /// Time to live: 90s, 30m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Another claim, as name=value (the value as JSON if it parses);
        /// repeat for more.
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// The socket whose secret signs. Default: the first with HS*.
        #[arg(long)]
        socket: Option<String>,
    },
}

/// Runs `command` with `config` (loaded, env applied) and its `settings`.
pub(crate) fn run(command: Command, config: &Config, settings: &Settings) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(command, config, settings)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("gateway: {}", f.message());
            ExitCode::from(f.code())
        }
    }
}

async fn dispatch(command: Command, config: &Config, settings: &Settings) -> Result<u8, Failure> {
    match command {
        Command::Serve | Command::Check => Err(Failure::Usage("not a client command".into())),
        Command::Publish {
            topic,
            event,
            payload,
            url,
            key,
        } => publish(config, settings, topic, event, payload, url, key).await,
        Command::Pods { pod } => {
            let answer = ask(&pod, config, Method::GET, "pods", None).await?;
            Ok(show(&pod, &answer, print::pods))
        }
        Command::Topics {
            pod,
            prefix,
            after,
            limit,
            busiest,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("prefix", &prefix);
            query.append_pair("limit", &limit.to_string());
            if let Some(a) = &after {
                query.append_pair("after", a);
            }
            if busiest {
                query.append_pair("sort", "subscribers");
            }
            let route = format!("topics?{}", query.finish());
            let answer = ask(&pod, config, Method::GET, &route, None).await?;
            Ok(show(&pod, &answer, print::topics))
        }
        Command::Topic {
            pod,
            topic,
            last,
            limit,
        } => {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("topic", &topic)
                .append_pair("last", &last.to_string())
                .append_pair("limit", &limit.to_string())
                .finish();
            let answer = ask(&pod, config, Method::GET, &format!("topic?{query}"), None).await?;
            Ok(show(&pod, &answer, print::topic))
        }
        Command::Disconnect {
            pod,
            topic,
            conn,
            socket_id,
            user,
            claim,
        } => {
            let who = match (conn, socket_id, user, claim) {
                (Some(c), ..) => json!({ "conn": c }),
                (_, Some(s), ..) => json!({ "socket_id": s }),
                (_, _, Some(u), _) => json!({"claim": {"name": "sub", "value": u}}),
                (_, _, _, Some(c)) => {
                    let (name, value) = c.split_once('=').ok_or_else(|| {
                        Failure::Usage(format!("--claim {c:?}: expected name=value"))
                    })?;
                    json!({"claim": {"name": name, "value": value}})
                }
                _ => {
                    return Err(Failure::Usage(
                        "say who: --conn, --socket-id, --user or --claim".into(),
                    ))
                }
            };
            let answer = match topic {
                Some(t) => {
                    let mut body = who;
                    body["topic"] = Value::String(t);
                    ask(&pod, config, Method::POST, "remove", Some(body)).await?
                }
                None => ask(&pod, config, Method::POST, "disconnect", Some(who)).await?,
            };
            Ok(show(&pod, &answer, print::disconnected))
        }
        Command::Token {
            sub,
            ttl,
            claims,
            socket,
        } => {
            let ttl = token::parse_ttl(&ttl).map_err(|e| Failure::Usage(format!("--ttl {e}")))?;
            let claims = claims
                .iter()
                .map(|c| token::parse_claim(c).map_err(|e| Failure::Usage(format!("--claim {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            println!(
                "{}",
                token::mint(config, socket.as_deref(), &sub, ttl, claims)?
            );
            Ok(0)
        }
    }
}

/// The base URL of the pod the config describes.
fn default_url(config: &Config) -> String {
    let listen = config.server.listen.replace("0.0.0.0", "127.0.0.1");
    format!("http://{listen}")
}

async fn ask(
    pod: &Pod,
    config: &Config,
    method: Method,
    route: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let key = pod
        .key
        .as_deref()
        .or(config.admin.key.as_deref())
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| {
            Failure::Usage("no admin key: pass --key or set GATEWAY_ADMIN_KEY".into())
        })?;
    let base = pod.url.clone().unwrap_or_else(|| default_url(config));
    let url = format!(
        "{}{}/{route}",
        base.trim_end_matches('/'),
        config.admin.path.trim_end_matches('/')
    );
    client::call(method, &url, key, body).await
}

/// Prints an answer (as JSON with --json), naming the pods that did not
/// answer on stderr; the exit code.
fn show(pod: &Pod, answer: &Value, table: fn(&Value)) -> u8 {
    if pod.json {
        println!(
            "{}",
            serde_json::to_string_pretty(answer).unwrap_or_default()
        );
    } else {
        table(answer);
    }
    match answer["missing"].as_array() {
        Some(m) if !m.is_empty() => {
            let names: Vec<&str> = m.iter().filter_map(Value::as_str).collect();
            eprintln!("gateway: these pods did not answer: {}", names.join(", "));
            EXIT_PARTIAL
        }
        _ => 0,
    }
}

async fn publish(
    config: &Config,
    settings: &Settings,
    topic: String,
    event: String,
    payload: Option<String>,
    url: Option<String>,
    key: Option<String>,
) -> Result<u8, Failure> {
    let payload: Value = match payload.as_deref() {
        None => json!({}),
        Some(p) => serde_json::from_str(p)
            .map_err(|e| Failure::Usage(format!("the payload is not JSON: {e}")))?,
    };
    if !payload.is_object() {
        return Err(Failure::Usage("the payload must be a JSON object".into()));
    }
    if let Some(url) = url {
        let key = key
            .as_deref()
            .or(config.api.key.as_deref())
            .ok_or_else(|| {
                Failure::Usage("no API key: pass --key or set GATEWAY_API_KEY".into())
            })?;
        let url = format!("{}{}", url.trim_end_matches('/'), config.api.path);
        let body = json!({"topic": topic, "event": event, "payload": payload});
        let answer = client::call(Method::POST, &url, key, Some(body)).await?;
        println!("{answer}");
        return Ok(0);
    }
    let pubsub = gateway::app::publisher(settings)
        .map_err(|e| Failure::Usage(e.to_string()))?
        .ok_or_else(|| {
            Failure::Usage(
                "no Redis configured ([redis] url or REDIS_URL): pass --url to publish through a pod"
                    .into(),
            )
        })?;
    let msg = Broadcast {
        topic,
        event,
        payload: Payload::json(&payload),
        from: None,
    };
    match pubsub.publish(msg, None).await {
        Ok(Some(position)) => println!("{}", json!({"ok": true, "position": position.to_string()})),
        Ok(None) => println!("{}", json!({"ok": true})),
        Err(gateway::pubsub::PublishError::Broker(e)) => {
            return Err(Failure::Unreachable(e.to_string()))
        }
        Err(e) => return Err(Failure::Refused(e.to_string())),
    }
    Ok(0)
}
